//! Password hashing (argon2id), bounded.
//!
//! Each hash takes about 19 MiB and tens of milliseconds of a CPU, so an
//! unbounded burst of sign-ups or log-ins would exhaust memory and starve
//! every other call. [`Passwords`] runs at most `permits` of them at once
//! on the blocking pool; the rest wait for a permit. Waiting is where a
//! burst queues, and a caller that gives up there (its deadline passed and
//! the server dropped its call, or it disconnected) leaves the queue: its
//! hash is never started. The queue is bounded too (`max_waiting`): beyond
//! it a call is refused at once with [`Busy`] (RESOURCE_EXHAUSTED with a
//! retry time), so a burst from a few addresses cannot make every other
//! user's log-in wait out its deadline.
//!
//! The hashes' working memory is kept between them ([`phc::Memory`]): one
//! set of blocks per permit, allocated once, so a burst costs no more
//! memory than `permits` hashes, however many threads ran them.

mod phc;

use phc::Memory;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Hashes and verifies passwords, at most `permits` at a time and
/// `max_waiting` more queued.
#[derive(Clone, Debug)]
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
    /// Running plus waiting: one token per admitted call.
    admitted: Arc<Semaphore>,
    /// argon2's working memory, one set of blocks per permit at most.
    memory: Arc<Memory>,
    /// A hash of a password nobody has, checked when the email is unknown
    /// so that an unknown email costs as much time as a wrong password.
    decoy: Arc<OnceLock<String>>,
}

/// Why a password could not be checked or hashed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// The queue is full: come back later.
    #[error("too many password checks at once")]
    Busy,
    /// Hashing failed (a bug, or a stored hash that is not one).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// How long a refused caller is told to wait: about one hash.
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

impl From<PasswordError> for shop_runtime::ServiceError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => shop_runtime::ServiceError::Overloaded {
                message: e.to_string(),
                retry_after: BUSY_RETRY_AFTER,
            },
            PasswordError::Failed(cause) => shop_runtime::ServiceError::Internal(cause),
        }
    }
}

impl Passwords {
    pub(crate) fn new(permits: usize, max_waiting: usize) -> Self {
        let permits = permits.max(1);
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            admitted: Arc::new(Semaphore::new(permits + max_waiting)),
            memory: Arc::default(),
            decoy: Arc::default(),
        }
    }

    /// Hashes `password` with argon2id (default parameters: 19 MiB, 2
    /// passes) into a PHC string.
    pub(crate) async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let memory = self.memory.clone();
        self.run(move || memory.hash(password.as_bytes()))
            .await?
            .map_err(PasswordError::Failed)
    }

    /// Whether `password` matches `hash` (a PHC string); `None` checks the
    /// decoy and is always false.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let (memory, decoy) = (self.memory.clone(), self.decoy.clone());
        self.run(move || {
            let Some(hash) = hash else {
                let decoy = decoy.get_or_init(|| {
                    memory
                        .hash(Uuid::new_v4().as_bytes())
                        .expect("hashing a fixed-size input cannot fail")
                });
                return memory.verify(password.as_bytes(), decoy).map(|_| false);
            };
            memory.verify(password.as_bytes(), &hash)
        })
        .await?
        .map_err(PasswordError::Failed)
    }

    /// Runs `work` on the blocking pool once a permit is free, or refuses
    /// it at once when the queue is full. The permits go with the work, so
    /// they are released when the work ends even if the caller has gone.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PasswordError::Busy)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Failed(e.into()))?;
        tokio::task::spawn_blocking(move || {
            let _permits = (permit, admitted);
            work()
        })
        .await
        .map_err(|e| PasswordError::Failed(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let passwords = Passwords::new(2, 16);
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
        let passwords = Passwords::new(2, 16);
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
    async fn beyond_the_queue_calls_are_refused_at_once() {
        let passwords = Passwords::new(1, 2);
        let held = passwords.permits.clone().acquire_owned().await.unwrap();
        // One running (held above stands for it) and two waiting...
        let running = passwords.run(|| ());
        let waiting: Vec<_> = (0..2).map(|_| passwords.run(|| ())).collect();
        let mut queued = Box::pin(futures::future::join(
            running,
            futures::future::join_all(waiting),
        ));
        assert!(futures::poll!(queued.as_mut()).is_pending());
        // ...and the next is refused without waiting.
        let refused = passwords.run(|| ()).await.unwrap_err();
        assert!(matches!(refused, PasswordError::Busy));
        let status = tonic::Status::from(shop_runtime::ServiceError::from(refused));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        drop(held);
        let (first, rest) = queued.await;
        first.unwrap();
        assert!(rest.into_iter().all(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn work_whose_caller_has_gone_is_not_started() {
        let passwords = Passwords::new(1, 4);
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
