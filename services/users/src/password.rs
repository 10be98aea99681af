//! Password hashing (argon2id), bounded.
//!
//! Each hash takes about 19 MiB and tens of milliseconds of a CPU, so an
//! unbounded burst of sign-ups or log-ins would exhaust memory and starve
//! every other call. [`Passwords`] runs at most `permits` of them at once
//! on the blocking pool; the rest wait for a permit. Waiting is where a
//! burst queues, and a caller that gives up there (its deadline passed and
//! the server dropped its call, or it disconnected) leaves the queue: its
//! hash is never started.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Hashes and verifies passwords, at most `permits` at a time.
#[derive(Clone, Debug)]
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
}

/// A hash of a password nobody has, checked when the email is unknown so
/// that an unknown email costs as much time as a wrong password.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(Uuid::new_v4().as_bytes(), &salt)
        .expect("hashing a fixed-size input cannot fail")
        .to_string()
});

impl Passwords {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// Hashes `password` with argon2id (default parameters: 19 MiB, 2
    /// passes) into a PHC string.
    pub(crate) async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.run(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
    }

    /// Whether `password` matches `hash` (a PHC string); `None` checks the
    /// decoy and is always false.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> anyhow::Result<bool> {
        self.run(move || {
            let decoy = hash.is_none();
            let hash = hash.unwrap_or_else(|| DECOY_HASH.clone());
            let parsed =
                PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
            let matches = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(matches && !decoy)
        })
        .await?
    }

    /// Runs `work` on the blocking pool once a permit is free. The permit
    /// goes with the work, so it is released when the work ends even if
    /// the caller has gone by then.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self.permits.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let passwords = Passwords::new(2);
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn no_more_than_the_permits_run_at_once() {
        let passwords = Passwords::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..16).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            passwords.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn work_whose_caller_has_gone_is_not_started() {
        let passwords = Passwords::new(1);
        let held = passwords.permits.clone().acquire_owned().await.unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let waiting = passwords.run(move || seen.fetch_add(1, Ordering::SeqCst));
        // The caller gives up while queued (what a passed deadline does).
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        drop(held);
        // The permit is free again and the abandoned work never ran.
        passwords.run(|| ()).await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }
}
