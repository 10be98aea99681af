//! Bounded waiting: poll a condition until it holds or a deadline passes.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Calls `check` every `interval` until it returns `Ok`, or fails with the
/// last error once `within` has passed.
pub async fn eventually<T, E, F, Fut>(within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + within;
    let interval = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("condition still false after {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}
