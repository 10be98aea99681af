//! The incoming call's deadline, carried to outgoing calls.
//!
//! The server-side deadline layer runs each request inside
//! [`with_incoming_deadline`]; a client deadline layer reached from that
//! request's handler reads [`incoming_deadline`] and never gives an
//! outgoing call more time than the caller has left. A task-local, so it
//! follows the handler's future (not tasks it spawns).

use std::future::Future;
use tokio::time::Instant;

tokio::task_local! {
    static INCOMING_DEADLINE: Option<Instant>;
}

/// Runs `f` with `deadline` as the incoming call's deadline.
pub async fn with_incoming_deadline<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    INCOMING_DEADLINE.scope(deadline, f).await
}

/// The deadline of the call being served, if any.
pub fn incoming_deadline() -> Option<Instant> {
    INCOMING_DEADLINE.try_with(|d| *d).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_visible_inside_the_scope_only() {
        assert_eq!(incoming_deadline(), None);
        let d = Instant::now() + Duration::from_millis(300);
        let seen = with_incoming_deadline(Some(d), async { incoming_deadline() }).await;
        assert_eq!(seen, Some(d));
        assert_eq!(incoming_deadline(), None);
    }
}
