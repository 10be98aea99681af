//! The definitions in force, where they came from, and their reloading: a
//! changed file is read and checked whole; if it passes it replaces that
//! file's flags at once, and if not it is refused (logged once, shown by
//! FlagsAdmin) and the previous definitions stay in force.

use crate::definitions::{self, DefinitionError};
use chrono::{DateTime, Utc};
use flagd_evaluation_engine::FeatureFlag;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One flag in force.
#[derive(Debug)]
pub(crate) struct Definition {
    pub(crate) flag: FeatureFlag,
    /// The targeting rule as compact JSON, `None` without one.
    pub(crate) targeting: Option<String>,
    /// The file that defines it.
    pub(crate) source: Arc<str>,
}

/// One configured file.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) loaded_at: DateTime<Utc>,
    /// Of the contents in force.
    pub(crate) sha256: String,
    pub(crate) flags: BTreeMap<String, Arc<Definition>>,
    /// The newest refused change: why, when, and the hash of what was read
    /// (so one bad version is reported once).
    pub(crate) refused: Option<Refusal>,
}

#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) error: String,
    pub(crate) at: DateTime<Utc>,
    sha256: Option<String>,
}

/// Everything in force, swapped whole.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) sources: Vec<Source>,
    pub(crate) flags: HashMap<String, Arc<Definition>>,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    current: RwLock<Arc<Snapshot>>,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read(path: &PathBuf) -> Result<(String, String), DefinitionError> {
    let bytes = std::fs::read(path).map_err(|source| DefinitionError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let sha = sha256(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| DefinitionError::Json {
        path: path.display().to_string(),
        message: format!("not UTF-8: {e}"),
    })?;
    Ok((text, sha))
}

fn definitions(
    path: &std::path::Path,
    text: &str,
) -> Result<BTreeMap<String, Arc<Definition>>, DefinitionError> {
    let source: Arc<str> = path.display().to_string().into();
    Ok(definitions::parse(path, text)?
        .into_iter()
        .map(|(key, flag)| {
            let targeting = flag
                .targeting
                .as_ref()
                .filter(|t| !definitions::is_empty_rule(t))
                .map(ToString::to_string);
            let definition = Definition {
                flag,
                targeting,
                source: source.clone(),
            };
            (key, Arc::new(definition))
        })
        .collect())
}

/// The flags of `sources` by key; a key in two files is refused.
fn merge(sources: &[Source]) -> Result<HashMap<String, Arc<Definition>>, DefinitionError> {
    let mut flags: HashMap<String, Arc<Definition>> = HashMap::new();
    for source in sources {
        for (key, definition) in &source.flags {
            if let Some(first) = flags.insert(key.clone(), definition.clone()) {
                return Err(DefinitionError::Duplicate {
                    key: key.clone(),
                    first: first.source.to_string(),
                    second: source.path.display().to_string(),
                });
            }
        }
    }
    Ok(flags)
}

impl Store {
    /// Reads every file: at start, any problem is an error.
    pub(crate) fn load(files: &[PathBuf]) -> Result<Self, DefinitionError> {
        let now = Utc::now();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let (text, sha256) = read(path)?;
            sources.push(Source {
                path: path.clone(),
                loaded_at: now,
                sha256,
                flags: definitions(path, &text)?,
                refused: None,
            });
        }
        let flags = merge(&sources)?;
        Ok(Self {
            current: RwLock::new(Arc::new(Snapshot { sources, flags })),
        })
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("flags lock").clone()
    }

    /// Reads the files again and applies what changed; the number of files
    /// whose new contents are now in force.
    pub(crate) fn reload(&self) -> usize {
        let old = self.snapshot();
        let now = Utc::now();
        let mut sources = old.sources.clone();
        let mut applied = 0;
        let mut changed = false;
        for source in &mut sources {
            let read = read(&source.path);
            let seen = match &read {
                Ok((_, sha)) => Some(sha.clone()),
                Err(_) => None,
            };
            if seen.as_ref() == Some(&source.sha256) {
                // Back to (or still at) what is in force.
                changed |= source.refused.take().is_some();
                continue;
            }
            let refused_already = source
                .refused
                .as_ref()
                .is_some_and(|r| r.sha256 == seen && seen.is_some());
            if refused_already {
                continue;
            }
            let parsed = read.and_then(|(text, sha)| Ok((definitions(&source.path, &text)?, sha)));
            changed = true;
            match parsed {
                Ok((flags, sha)) => {
                    tracing::info!(file = %source.path.display(), flags = ?flags.keys().collect::<Vec<_>>(), "flag definitions reloaded");
                    source.flags = flags;
                    source.sha256 = sha;
                    source.loaded_at = now;
                    source.refused = None;
                    applied += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "flag definitions refused; the previous ones stay in force");
                    source.refused = Some(Refusal {
                        error: e.to_string(),
                        at: now,
                        sha256: seen,
                    });
                }
            }
        }
        if !changed {
            return 0;
        }
        let flags = match merge(&sources) {
            Ok(flags) => flags,
            Err(e) => {
                // Keep every file's previous definitions; say why on the
                // file that brought the duplicate.
                tracing::error!(error = %e, "flag definitions refused; the previous ones stay in force");
                let mut sources = old.sources.clone();
                if let DefinitionError::Duplicate { second, .. } = &e
                    && let Some(s) = sources
                        .iter_mut()
                        .find(|s| s.path.display().to_string() == *second)
                {
                    s.refused = Some(Refusal {
                        error: e.to_string(),
                        at: now,
                        sha256: read(&s.path).ok().map(|(_, sha)| sha),
                    });
                }
                *self.current.write().expect("flags lock") = Arc::new(Snapshot {
                    sources,
                    flags: old.flags.clone(),
                });
                return 0;
            }
        };
        *self.current.write().expect("flags lock") = Arc::new(Snapshot { sources, flags });
        applied
    }

    /// Reloads every `interval` until `shutdown`.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let store = self.clone();
            // File reads off the runtime's worker threads.
            if tokio::task::spawn_blocking(move || store.reload())
                .await
                .is_err()
            {
                tracing::error!("reloading flag definitions panicked");
            }
        }
    }
}
