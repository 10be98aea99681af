//! Ed25519 keys: fresh key pairs in PEM, and the directory of public keys a
//! verifier trusts.
//!
//! A verifier's keys live in one directory, one file per key, named
//! `<kid>.pem` (SubjectPublicKeyInfo PEM, as `openssl pkey -pubout`
//! writes). That is the layout of a Kubernetes Secret mounted as a volume,
//! and it makes rotation a file operation: add `k2.pem`, switch the signer
//! to `k2`, later delete `k1.pem`. [`KeyDir::watch`] re-reads the
//! directory while the service runs; a change that does not parse is
//! refused (logged, naming the file) and the keys in force stay.

use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A fresh Ed25519 key pair, both halves in PEM.
#[derive(Clone)]
pub struct KeyPair {
    /// PKCS#8 `PRIVATE KEY` PEM: for the signer only.
    pub private_pem: String,
    /// SubjectPublicKeyInfo `PUBLIC KEY` PEM: for verifiers.
    pub public_pem: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): a
/// SEQUENCE of the algorithm id 1.3.101.112 and a 32-byte BIT STRING.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl KeyPair {
    /// A new key pair from the operating system's random source.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring parses its own key");
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        Self {
            private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", &spki),
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Why a key directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The directory (or a file in it) cannot be read.
    #[error("reading {path}: {source}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `<kid>.pem` file is not an Ed25519 public key.
    #[error("{path} is not an Ed25519 public key in PEM: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// No `<kid>.pem` file in the directory.
    #[error("no public key (<kid>.pem) in {0}")]
    Empty(PathBuf),
}

/// The public keys a verifier trusts, by key id.
pub type KeySet = BTreeMap<String, DecodingKey>;

/// The keys in force, shared between the verifier and the watcher.
pub type SharedKeys = Arc<RwLock<Arc<KeySet>>>;

/// A directory of `<kid>.pem` public keys.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// The keys of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Reads every `<kid>.pem` of the directory; other files are ignored.
    /// All or nothing: one unreadable key fails the whole read.
    pub fn load(&self) -> Result<KeySet, KeyError> {
        Ok(self.read()?.1)
    }

    /// The files' contents (to notice changes) and the keys they hold.
    fn read(&self) -> Result<(BTreeMap<String, Vec<u8>>, KeySet), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        let mut raw = BTreeMap::new();
        let mut keys = KeySet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            // Kubernetes mounts a Secret's keys as symlinks into a hidden
            // `..data` directory: follow links, skip dot files.
            let (Some(stem), Some("pem")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if stem.starts_with('.') || !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let key = DecodingKey::from_ed_pem(&bytes).map_err(|source| KeyError::Parse {
                path: path.clone(),
                source,
            })?;
            keys.insert(stem.to_string(), key);
            raw.insert(stem.to_string(), bytes);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty(self.dir.clone()));
        }
        Ok((raw, keys))
    }

    /// Re-reads the directory every `every` until `shutdown`, replacing
    /// `keys` when the files change. A change that cannot be read is
    /// logged and refused; the keys in force stay.
    /// The directory is read once when this is called (not when the future
    /// is first polled), so a change made right after is noticed.
    pub fn watch(
        self,
        keys: SharedKeys,
        every: Duration,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let last = self.read().ok().map(|(raw, _)| raw);
        self.watch_from(last, keys, every, shutdown)
    }

    async fn watch_from(
        self,
        mut last: Option<BTreeMap<String, Vec<u8>>>,
        keys: SharedKeys,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.read() {
                Ok((raw, set)) if last.as_ref() != Some(&raw) => {
                    let kids: Vec<&String> = set.keys().collect();
                    tracing::info!(dir = %self.dir.display(), ?kids, "token verification keys reloaded");
                    *keys.write().expect("not poisoned") = Arc::new(set);
                    last = Some(raw);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "token verification keys unchanged: the new set cannot be used");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_on_both_sides() {
        let pair = KeyPair::generate();
        assert!(
            pair.private_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        jsonwebtoken::EncodingKey::from_ed_pem(pair.private_pem.as_bytes()).unwrap();
        DecodingKey::from_ed_pem(pair.public_pem.as_bytes()).unwrap();
    }

    #[test]
    fn a_directory_names_keys_by_file_stem_and_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        assert!(matches!(keys.load().err(), Some(KeyError::Empty(_))));
        std::fs::write(dir.path().join("k1.pem"), KeyPair::generate().public_pem).unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        assert_eq!(keys.load().unwrap().keys().collect::<Vec<_>>(), ["k1"]);
        std::fs::write(dir.path().join("k2.pem"), "garbage").unwrap();
        let err = keys
            .load()
            .err()
            .expect("a bad file is refused")
            .to_string();
        assert!(err.contains("k2.pem"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_adds_removes_and_keeps_keys_on_a_bad_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1.pem"), KeyPair::generate().public_pem).unwrap();
        let key_dir = KeyDir::new(dir.path());
        let shared: SharedKeys = Arc::new(RwLock::new(Arc::new(key_dir.load().unwrap())));
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(key_dir.watch(shared.clone(), Duration::from_secs(1), stop.clone()));
        let kids = || {
            shared
                .read()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<String>>()
        };
        let tick = || tokio::time::sleep(Duration::from_millis(1100));

        std::fs::write(dir.path().join("k2.pem"), KeyPair::generate().public_pem).unwrap();
        tick().await;
        assert_eq!(kids(), ["k1", "k2"]);

        std::fs::write(dir.path().join("k3.pem"), "garbage").unwrap();
        tick().await;
        assert_eq!(kids(), ["k1", "k2"], "a bad change keeps the keys in force");

        std::fs::remove_file(dir.path().join("k3.pem")).unwrap();
        std::fs::remove_file(dir.path().join("k1.pem")).unwrap();
        tick().await;
        assert_eq!(kids(), ["k2"]);

        stop.cancel();
        task.await.unwrap();
    }
}
