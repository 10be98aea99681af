//! Values sealed for one service's eyes while they travel through others:
//! a payment token goes from orders to payments through inventory (in
//! OrderPlaced, then StockReserved), and sits in streams and dead letters
//! on the way. Sealed by orders and opened by payments, it is ciphertext to
//! inventory, to NATS, to a dead-letter listing and to any log line.
//!
//! The seal is ChaCha20-Poly1305 (`ring`) with a random nonce, under a key
//! named by its id, bound to a context (the order id), so a sealed token
//! opens only for the order it was sealed for:
//!
//! ```text
//! 1 | kid length | kid | nonce (12) | ciphertext and tag
//! ```
//!
//! Keys are files `<kid>.key` in a directory (32 random bytes, hex), as a
//! Secret mounts them: the sealer seals under `current`, the opener opens
//! with whichever key the seal names, so a new key is added to the
//! directory, made `current`, and the old one removed once no sealed value
//! under it is still in flight (a stream's max age).

use anyhow::Context as _;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const VERSION: u8 = 1;
const KEY_BYTES: usize = 32;

/// `[payment_tokens]`: where the sealing keys are, and which seals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealingSettings {
    /// A directory of `<kid>.key` files (32 bytes, hex).
    pub keys_dir: PathBuf,
    /// The key new seals are made with (orders); the opener ignores it.
    #[serde(default = "d_current")]
    pub current: String,
}

fn d_current() -> String {
    "k1".into()
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Not a seal of this format.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under a key this service does not hold.
    #[error("sealed under key {0:?}, which is not in the keys directory")]
    UnknownKey(String),
    /// Tampered with, or sealed for another context.
    #[error("the seal does not verify (tampered with, or sealed for another order)")]
    Forged,
}

/// The keys of a keys directory.
pub struct SealingKeys {
    keys: BTreeMap<String, LessSafeKey>,
    current: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKeys")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl SealingKeys {
    /// Reads every `<kid>.key` of `settings.keys_dir`; the current key must
    /// be among them.
    pub fn load(settings: &SealingSettings) -> anyhow::Result<Self> {
        let dir = &settings.keys_dir;
        let mut keys = BTreeMap::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the sealing keys in {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let (Some(kid), Some("key")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let bytes = decode_hex(text.trim())
                .filter(|b| b.len() == KEY_BYTES)
                .with_context(|| format!("{} is not 32 bytes in hex", path.display()))?;
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| anyhow::anyhow!("{} is not a key", path.display()))?;
            keys.insert(kid.to_string(), LessSafeKey::new(key));
        }
        anyhow::ensure!(
            keys.contains_key(&settings.current),
            "the current sealing key {:?} is not in {}",
            settings.current,
            dir.display()
        );
        Ok(Self {
            keys,
            current: settings.current.clone(),
            rng: SystemRandom::new(),
        })
    }

    /// Writes a fresh key `<kid>.key` into `dir` (for stacks and tools).
    pub fn generate(dir: &Path, kid: &str) -> anyhow::Result<PathBuf> {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{kid}.key"));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, hex)?;
        Ok(path)
    }

    /// `value` sealed under the current key for `context`.
    pub fn seal(&self, value: &str, context: &str) -> Vec<u8> {
        let key = &self.keys[&self.current];
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system's randomness");
        let mut sealed =
            Vec::with_capacity(2 + self.current.len() + nonce.len() + value.len() + 16);
        sealed.push(VERSION);
        sealed.push(self.current.len() as u8);
        sealed.extend_from_slice(self.current.as_bytes());
        sealed.extend_from_slice(&nonce);
        let mut body = value.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut body,
        )
        .expect("a payment token is far below ChaCha20-Poly1305's limit");
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The value `sealed` holds, if it was sealed for `context` under a
    /// key of this directory.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<String, OpenError> {
        let (&version, rest) = sealed.split_first().ok_or(OpenError::Malformed)?;
        if version != VERSION {
            return Err(OpenError::Malformed);
        }
        let (&kid_len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
        let kid_len = usize::from(kid_len);
        if rest.len() < kid_len + aead::NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (kid, rest) = rest.split_at(kid_len);
        let kid = std::str::from_utf8(kid).map_err(|_| OpenError::Malformed)?;
        let (nonce, body) = rest.split_at(aead::NONCE_LEN);
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| OpenError::UnknownKey(kid.to_string()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| OpenError::Forged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| OpenError::Forged)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, kids: &[&str], current: &str) -> SealingKeys {
        for kid in kids {
            if !dir.join(format!("{kid}.key")).exists() {
                SealingKeys::generate(dir, kid).unwrap();
            }
        }
        SealingKeys::load(&SealingSettings {
            keys_dir: dir.to_path_buf(),
            current: current.into(),
        })
        .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_for_its_order_only_and_shows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path(), &["k1"], "k1");
        let sealed = keys.seal("tok_approve", "order-1");
        assert!(
            !sealed
                .windows(b"tok_approve".len())
                .any(|w| w == b"tok_approve"),
            "the token shows through the seal"
        );
        assert_eq!(keys.open(&sealed, "order-1").unwrap(), "tok_approve");
        assert_eq!(keys.open(&sealed, "order-2"), Err(OpenError::Forged));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open(&tampered, "order-1"), Err(OpenError::Forged));
        assert_eq!(
            keys.open(b"tok_approve", "order-1"),
            Err(OpenError::Malformed)
        );
        assert_eq!(keys.open(&[], "order-1"), Err(OpenError::Malformed));
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_old_one_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let old = keys(dir.path(), &["k1"], "k1");
        let sealed_before = old.seal("tok_approve", "order-1");
        let new = keys(dir.path(), &["k1", "k2"], "k2");
        let sealed_after = new.seal("tok_decline", "order-2");
        assert_eq!(new.open(&sealed_before, "order-1").unwrap(), "tok_approve");
        assert_eq!(new.open(&sealed_after, "order-2").unwrap(), "tok_decline");
        // A service without k2 names what it misses.
        assert_eq!(
            old.open(&sealed_after, "order-2"),
            Err(OpenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn a_missing_current_key_or_a_bad_file_is_a_start_up_error() {
        let dir = tempfile::tempdir().unwrap();
        SealingKeys::generate(dir.path(), "k1").unwrap();
        let missing = SealingKeys::load(&SealingSettings {
            keys_dir: dir.path().to_path_buf(),
            current: "k9".into(),
        });
        assert!(missing.unwrap_err().to_string().contains("k9"));
        std::fs::write(dir.path().join("k2.key"), "not hex").unwrap();
        let bad = SealingKeys::load(&SealingSettings {
            keys_dir: dir.path().to_path_buf(),
            current: "k1".into(),
        });
        assert!(bad.unwrap_err().to_string().contains("k2.key"));
    }
}
