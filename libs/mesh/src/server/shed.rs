//! Shedding, never of infrastructure calls: the rate limits
//! ([`crate::rate_limit`]), then the concurrency limit, `max_concurrency`
//! or, with `adaptive_concurrency` enabled, the lower limit latency allows
//! ([`crate::adaptive`]). A call beyond them is answered at once with a
//! trailers-only RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`, before
//! any work is done for it (queueing would only add latency the caller's
//! deadline pays for).

use super::ServerService;
use crate::adaptive::AdaptivePermit;
use crate::stats;
use crate::status::{self, PUSHBACK};
use std::sync::atomic::Ordering;
use tokio::sync::OwnedSemaphorePermit;

/// The adaptive limit is reached: the call is shed.
pub(super) struct AtLimit;

impl<S> ServerService<S> {
    /// A slot of `max_concurrency`, held until the call completes or is
    /// dropped; `None` at the limit.
    pub(super) fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().try_acquire_owned().ok()
    }

    /// Under the ceiling, the limit latency allows: a slot of the adaptive
    /// limit if it is enabled (`None` if not). Records the limit in force.
    pub(super) fn adaptive_slot(&self) -> Result<Option<AdaptivePermit>, AtLimit> {
        let limit = self
            .limiter_now
            .as_ref()
            .map_or(self.current.max_concurrency, |l| l.limit());
        self.stats
            .server
            .concurrency_limit
            .store(limit as u64, Ordering::Relaxed);
        match &self.limiter_now {
            Some(limiter) => limiter.try_acquire().map(Some).ok_or(AtLimit),
            None => Ok(None),
        }
    }

    /// The trailers-only answer to a call over a rate limit, counted.
    pub(super) fn rate_limited(&self, retry_after: std::time::Duration) -> crate::Response {
        stats::incr(&self.stats.server.rate_limited);
        let mut response = status::response(tonic::Status::resource_exhausted(
            "caller over its rate limit; retry after the pushback",
        ));
        // At least a millisecond: a pushback of 0 would mean "now".
        let ms = retry_after.as_millis().max(1);
        response.headers_mut().insert(
            PUSHBACK,
            http::HeaderValue::from_str(&ms.to_string()).expect("digits"),
        );
        response
    }

    /// The trailers-only answer to a shed request, counted.
    pub(super) fn shed(&self) -> crate::Response {
        stats::incr(&self.stats.server.shed);
        let mut response = status::response(tonic::Status::resource_exhausted(
            "server at its concurrency limit; retry after the pushback",
        ));
        let ms = self.current.shed_pushback.as_millis();
        response.headers_mut().insert(
            PUSHBACK,
            http::HeaderValue::from_str(&ms.to_string()).expect("digits"),
        );
        response
    }
}
