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
    /// When the contents in force were read; `None` before any was accepted.
    pub(crate) loaded_at: Option<DateTime<Utc>>,
    /// Of the contents in force (empty before any was accepted).
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

/// The flags of `sources` by key (they share none: see [`clash`]).
fn merge(sources: &[Source]) -> HashMap<String, Arc<Definition>> {
    sources
        .iter()
        .flat_map(|s| s.flags.iter().map(|(k, d)| (k.clone(), d.clone())))
        .collect()
}

/// A key of `flags` (the new contents of `sources[at]`) that another file
/// defines already.
fn clash(
    sources: &[Source],
    at: usize,
    flags: &BTreeMap<String, Arc<Definition>>,
) -> Result<(), DefinitionError> {
    for (i, other) in sources.iter().enumerate().filter(|(i, _)| *i != at) {
        if let Some(key) = flags.keys().find(|k| other.flags.contains_key(*k)) {
            return Err(DefinitionError::Duplicate {
                key: key.clone(),
                first: sources[i.min(at)].path.display().to_string(),
                second: sources[i.max(at)].path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// One file's checked definitions, by key.
type Flags = BTreeMap<String, Arc<Definition>>;

/// `source`'s file as it is now: its contents' hash (`None` when it cannot
/// be read) and its checked definitions, or why they are refused.
fn check(sources: &[Source], at: usize) -> (Option<String>, Result<Flags, DefinitionError>) {
    let path = &sources[at].path;
    match read(path) {
        Err(e) => (None, Err(e)),
        Ok((text, sha)) => {
            let checked = definitions(path, &text).and_then(|flags| {
                clash(sources, at, &flags)?;
                Ok(flags)
            });
            (Some(sha), checked)
        }
    }
}

impl Store {
    /// Reads every file. One that cannot be read or is refused is reported
    /// (logged, and in FlagsAdmin) and contributes no flags, so its flags
    /// give the code's defaults until it is fixed: a bad edit must not stop
    /// a restarted pod from serving.
    pub(crate) fn load(files: &[PathBuf]) -> Self {
        let store = Self::default();
        let sources: Vec<Source> = files
            .iter()
            .map(|path| Source {
                path: path.clone(),
                loaded_at: None,
                sha256: String::new(),
                flags: BTreeMap::new(),
                refused: None,
            })
            .collect();
        *store.current.write().expect("flags lock") = Arc::new(Snapshot {
            sources,
            flags: HashMap::new(),
        });
        store.reload();
        store
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("flags lock").clone()
    }

    /// Reads the files again and applies what changed, file by file: a
    /// changed file that is refused (unreadable, a mistake, a key another
    /// file defines) keeps its previous definitions and is reported once
    /// per version; the number of files whose new contents are now in force.
    pub(crate) fn reload(&self) -> usize {
        let old = self.snapshot();
        let now = Utc::now();
        let mut sources = old.sources.clone();
        let mut applied = 0;
        let mut changed = false;
        for at in 0..sources.len() {
            let (seen, checked) = check(&sources, at);
            let source = &mut sources[at];
            if seen.is_some() && seen.as_deref() == Some(source.sha256.as_str()) {
                // Back to (or still at) what is in force.
                changed |= source.refused.take().is_some();
                continue;
            }
            let error = checked.as_ref().err().map(ToString::to_string);
            let refused_already = source
                .refused
                .as_ref()
                .is_some_and(|r| r.sha256 == seen && Some(&r.error) == error.as_ref());
            if refused_already {
                continue;
            }
            changed = true;
            match checked {
                Ok(flags) => {
                    tracing::info!(file = %source.path.display(), flags = ?flags.keys().collect::<Vec<_>>(), "flag definitions loaded");
                    source.flags = flags;
                    source.sha256 = seen.unwrap_or_default();
                    source.loaded_at = Some(now);
                    source.refused = None;
                    applied += 1;
                }
                Err(e) => {
                    if source.loaded_at.is_some() {
                        tracing::error!(error = %e, "flag definitions refused; the previous ones stay in force");
                    } else {
                        tracing::error!(error = %e, "flag definitions refused; until the file is fixed its flags give the code's defaults");
                    }
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
        let flags = merge(&sources);
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
