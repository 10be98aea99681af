//! HTTP/2 PINGs that find a peer gone silent.

use std::time::Duration;

/// How often a connection PINGs its peer, and how long it waits for the
/// PONG before it gives the connection up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// Time a PONG may take.
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// A PING every second, answered within a second: a silent peer is
    /// noticed within about 2 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }
}

/// PINGs at once (reporting the first PONG through `answered`), then every
/// `keepalive.interval`, until one goes unanswered for `keepalive.timeout`;
/// returns that timeout. Never returns if the connection fails under it:
/// the connection's own future reports that.
pub(super) async fn keep_alive(
    mut pings: h2::PingPong,
    keepalive: Keepalive,
    answered: tokio::sync::oneshot::Sender<()>,
) -> Duration {
    // The first wait is bounded by the connect deadline, not here.
    if pings.ping(h2::Ping::opaque()).await.is_err() {
        return std::future::pending().await;
    }
    let _ = answered.send(());
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return keepalive.timeout,
        }
    }
}
