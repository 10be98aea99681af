//! Deadline enforcement: the caller's `grpc-timeout` bounds the call; when
//! it passes, the caller gets a trailers-only DEADLINE_EXCEEDED and the
//! handler's future is dropped (its work cancelled).

use crate::stats::{self, MeshStats};
use crate::status::{self, GRPC_TIMEOUT};
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;

/// The deadline the request's `grpc-timeout` sets, if it has one.
pub(super) fn incoming<B>(request: &http::Request<B>) -> Option<Instant> {
    request
        .headers()
        .get(GRPC_TIMEOUT)
        .and_then(status::parse_grpc_timeout)
        .and_then(|timeout| Instant::now().checked_add(timeout))
}

/// The answer of `future`, or DEADLINE_EXCEEDED (counted in `stats`) once
/// `deadline` passes.
pub(super) async fn enforce<F, E>(
    deadline: Instant,
    future: F,
    stats: Arc<MeshStats>,
) -> Result<crate::Response, E>
where
    F: Future<Output = Result<crate::Response, E>>,
{
    // A caller whose own timer fires first resets the stream and
    // this future is dropped unanswered: its deadline still passed.
    let mut watch = DeadlineWatch {
        deadline,
        stats: Some(stats.clone()),
    };
    let answer = match tokio::time::timeout_at(deadline, future).await {
        Ok(result) => result,
        Err(_elapsed) => {
            stats::incr(&stats.server.deadline_exceeded);
            Ok(status::response(tonic::Status::deadline_exceeded(
                "deadline given in grpc-timeout passed",
            )))
        }
    };
    watch.stats = None;
    answer
}

/// Counts a call dropped unanswered at its deadline (the caller's own timer
/// for the same deadline fired first and reset the stream) as
/// `deadline_exceeded`. The caller's deadline and ours differ by the
/// network latency, so "at" allows [`DEADLINE_SLACK`].
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(5);

struct DeadlineWatch {
    deadline: Instant,
    /// `None` once the call was answered.
    stats: Option<Arc<MeshStats>>,
}

impl Drop for DeadlineWatch {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.take()
            && Instant::now() + DEADLINE_SLACK >= self.deadline
        {
            stats::incr(&stats.server.deadline_exceeded);
        }
    }
}
