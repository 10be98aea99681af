//! `[server.flags]`: where a service's flag definitions are and how often
//! they are checked for changes.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[server.flags]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSettings {
    /// flagd flag-definition files (JSON), in order. None: every flag
    /// evaluates to the code's default (reason ERROR, FLAG_NOT_FOUND).
    /// A key defined in two files is refused.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// How often the files are read again; a changed file is applied, or
    /// refused with the previous definitions kept. Reading by path (not
    /// inotify) follows a Kubernetes ConfigMap's symlink swap.
    #[serde(with = "humantime_serde", default = "default_watch_interval")]
    pub watch_interval: Duration,
}

impl Default for FlagSettings {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            watch_interval: default_watch_interval(),
        }
    }
}

fn default_watch_interval() -> Duration {
    Duration::from_secs(1)
}
