//! argon2id into PHC strings, computed in working memory the caller keeps.
//!
//! `argon2`'s `PasswordHasher` allocates its 19 MiB of blocks for every
//! hash and frees them after. On the blocking pool each thread's malloc
//! arena then keeps what it freed, so a burst of log-ins on many threads
//! left the users service at 200 MB for good. [`Memory`] holds one set of
//! blocks per hash that may run at once and lends them out, so the
//! memory hashing uses is allocated once and bounded by the permits.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::Mutex;

/// The most memory a stored hash may ask for (64 MiB in 1 KiB blocks); a
/// larger one is not ours and is refused, not computed.
const MAX_BLOCKS: usize = 64 * 1024;

/// Working memory for hashes, kept between them.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Sets of blocks not in use; at most one per hash run at once.
    idle: Mutex<Vec<Vec<Block>>>,
}

impl Memory {
    /// Runs `f` over `blocks` blocks, reusing a set kept from an earlier
    /// hash when there is one.
    fn lend<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let mut set = self
            .idle
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default();
        if set.len() < blocks {
            set.resize(blocks, Block::new());
        }
        let result = f(&mut set[..blocks]);
        self.idle.lock().expect("not poisoned").push(set);
        result
    }

    /// Hashes `password` with argon2id's default parameters (19 MiB, 2
    /// passes, 1 lane) and a fresh salt into a PHC string.
    pub(crate) fn hash(&self, password: &[u8]) -> anyhow::Result<String> {
        let argon = Argon2::default();
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(phc)?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.lend(argon.params().block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, raw_salt, &mut out, blocks)
        })
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon.params()).map_err(phc)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(phc)?),
        };
        Ok(hash.to_string())
    }

    /// Whether `password` hashes to `stored` (a PHC string of argon2, any
    /// variant, version and parameters up to [`MAX_BLOCKS`]). The
    /// comparison takes constant time (`Output`'s equality).
    pub(crate) fn verify(&self, password: &[u8], stored: &str) -> anyhow::Result<bool> {
        let parsed = PasswordHash::new(stored).map_err(phc)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(phc)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|e| anyhow::anyhow!("stored hash: {e}"))?
            .unwrap_or_default();
        let params = Params::try_from(&parsed).map_err(phc)?;
        anyhow::ensure!(
            params.block_count() <= MAX_BLOCKS,
            "stored hash asks for {} KiB of memory",
            params.block_count()
        );
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            anyhow::bail!("stored hash has no salt or no output");
        };
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(phc)?;
        let argon = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        self.lend(argon.params().block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, raw_salt, &mut out, blocks)
        })
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        Ok(Output::new(&out).map_err(phc)? == expected)
    }

    /// Sets of blocks allocated so far (for tests).
    #[cfg(test)]
    fn sets(&self) -> usize {
        self.idle.lock().expect("not poisoned").len()
    }
}

fn phc(e: argon2::password_hash::Error) -> anyhow::Error {
    anyhow::anyhow!("PHC string: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn agrees_with_the_crates_own_hasher_both_ways() {
        let memory = Memory::default();
        let ours = memory.hash(b"correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert_eq!(parsed.algorithm, Algorithm::Argon2id.ident());
        Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .expect("the crate verifies our hash");
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(memory.verify(b"correct horse", &theirs).unwrap());
        assert!(!memory.verify(b"wrong horse", &theirs).unwrap());
        assert!(!memory.verify(b"wrong horse", &ours).unwrap());
    }

    #[test]
    fn other_parameters_and_variants_verify_too() {
        let memory = Memory::default();
        let argon = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(8, 1, 1, Some(16)).unwrap(),
        );
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let stored = argon.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(memory.verify(b"pw", &stored).unwrap());
        assert!(!memory.verify(b"pW", &stored).unwrap());
    }

    #[test]
    fn a_hash_that_is_not_one_or_asks_too_much_is_an_error() {
        let memory = Memory::default();
        assert!(memory.verify(b"pw", "not a hash").is_err());
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$\
                      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let err = memory.verify(b"pw", greedy).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        assert_eq!(memory.sets(), 0, "nothing was allocated for it");
    }

    #[test]
    fn memory_is_kept_and_reused() {
        let memory = Memory::default();
        for _ in 0..3 {
            memory.hash(b"pw").unwrap();
        }
        assert_eq!(memory.sets(), 1);
    }
}
