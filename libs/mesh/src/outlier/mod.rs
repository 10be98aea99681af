//! Outlier ejection: an endpoint that keeps failing is taken out of its
//! balancer for a while, as Envoy's outlier detection does.
//!
//! [`Outlier`] wraps one endpoint's service. It watches each call's outcome
//! and, when the endpoint has failed `outlier.consecutive_failures` times in
//! a row, or its failure rate over `outlier.interval` reached
//! `outlier.failure_rate` (once `outlier.failure_rate_min_requests` calls
//! were seen in that window), ejects it: its `poll_ready` returns `Pending`
//! until the readmission instant, so a p2c balancer, which only picks among
//! ready endpoints, routes around it. At readmission it is ready again.
//!
//! # What counts as a failure
//!
//! An error from the inner service (for a connection: the endpoint could
//! not be connected to or the connection broke), an HTTP status other than
//! 200, or a trailers-only gRPC status that says the *endpoint* is unwell:
//! UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS ([`is_endpoint_failure`]).
//! Statuses about the request (NOT_FOUND, INVALID_ARGUMENT,
//! FAILED_PRECONDITION...) are answers, not failures: a healthy replica
//! asked for a missing product must not be ejected. DEADLINE_EXCEEDED is the
//! caller's budget running out and RESOURCE_EXHAUSTED is load shedding with
//! a pushback; neither ejects (slowness is the balancer's business, through
//! peak-EWMA). An attempt cut by its per-try timeout is a failure of the
//! endpoint that did not answer in time (a timeout of local origin, as
//! Envoy counts it): the retry layer marks each attempt with its
//! [`AttemptDeadline`], and a call dropped at or after it counts. A call
//! dropped before (a hedge that lost, a caller that gave up, the caller's
//! own deadline) has no outcome and is not counted.
//!
//! # Ejection time
//!
//! The n-th ejection of an endpoint lasts `min(base_ejection * n,
//! max_ejection)`. The multiplier n decays as Envoy's does: each full
//! `interval` the endpoint stays in the pool after a readmission takes one
//! off it before the next ejection adds one.
//!
//! # The cap
//!
//! Endpoints of one balancer share an [`EjectionPool`], which knows how many
//! endpoints there are and how many are out. At most
//! [`EjectionPool::max_ejected`] of them are out at once:
//! `floor(n * max_ejected_percent / 100)`, but at least one when the percent
//! is above zero and there are two endpoints or more (so 3 endpoints at 34%
//! allow one, 2 endpoints at 10% allow one, a sole endpoint at 50% is never
//! ejected, and 0% disables ejection). A failure that would eject an
//! endpoint beyond the cap leaves it in; its counts keep going, so it is
//! ejected at its next failure once there is room.
//!
//! # A failing `poll_ready`
//!
//! tower's balancers drop for good an endpoint whose `poll_ready` fails. Instead
//! of passing such an error on, [`Outlier`] counts it as a failure (which
//! may eject the endpoint) and reports not-ready for [`NOT_READY_BACKOFF`]
//! before asking the inner service again (a connection that could not
//! connect tries again when asked).
//!
//! The policy is read from the watch channel at each decision, so a changed
//! `outlier` section applies to the next outcome.

mod endpoint;
mod pool;
#[cfg(test)]
pub(crate) mod tests;

pub use endpoint::Endpoint;
use endpoint::Outcome;
pub use pool::EjectionPool;

use crate::stats::{self};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Code;
use tower::Service;

/// How long an endpoint whose `poll_ready` failed is reported not-ready
/// before it is asked again.
pub const NOT_READY_BACKOFF: Duration = Duration::from_millis(100);

/// Wraps one endpoint's service: not ready while the endpoint is ejected.
#[derive(Debug)]
pub struct Outlier<S> {
    inner: S,
    endpoint: Arc<Endpoint>,
    /// Timer for the instant readiness may change (readmission, or the end
    /// of a [`NOT_READY_BACKOFF`]), while waiting for it.
    sleep: Option<Pin<Box<Sleep>>>,
    /// After the inner `poll_ready` failed: not ready before this.
    not_ready_until: Option<Instant>,
}

pin_project! {
    /// The response future of [`Outlier`]: records the outcome (also when
    /// it is dropped past its attempt's per-try deadline).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        endpoint: Option<Arc<Endpoint>>,
        per_try_deadline: Option<Instant>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(endpoint), Some(deadline)) = (this.endpoint.take(), *this.per_try_deadline)
                && Instant::now() >= deadline
            {
                stats::incr(&endpoint.stats.failures);
                endpoint.record(Outcome::TimedOut);
            }
        }
    }
}

/// When an attempt's per-try timeout cuts it: a request extension set by
/// the retry layer when that timeout (not the call's deadline) bounds the
/// attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptDeadline(pub Instant);

/// A request that may carry an [`AttemptDeadline`].
pub trait Attempt {
    /// The attempt's per-try deadline, if one bounds it.
    fn attempt_deadline(&self) -> Option<Instant>;
}

impl<B> Attempt for http::Request<B> {
    fn attempt_deadline(&self) -> Option<Instant> {
        self.extensions().get::<AttemptDeadline>().map(|d| d.0)
    }
}

impl Attempt for () {
    fn attempt_deadline(&self) -> Option<Instant> {
        None
    }
}

/// Whether a response says the endpoint is unwell (see the module docs):
/// an HTTP status other than 200, or a trailers-only UNAVAILABLE, INTERNAL,
/// UNKNOWN or DATA_LOSS.
pub fn is_endpoint_failure<B>(response: &http::Response<B>) -> bool {
    response.status() != http::StatusCode::OK
        || matches!(
            crate::status::header_code(response),
            Some(Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss)
        )
}

// === impl Outlier ===

impl<S> Outlier<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Wraps the service of endpoint `address`, joining `pool`; reports into
    /// `pool`'s upstream stats under `address`.
    pub fn new(inner: S, address: &str, pool: &Arc<EjectionPool>) -> Self {
        Self {
            inner,
            endpoint: Endpoint::join(address, pool),
            sleep: None,
            not_ready_until: None,
        }
    }

    /// The endpoint's shared detector.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Waits for `until`, with the timer registered for `cx`.
    fn wait_until(&mut self, until: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.deadline() != until {
            sleep.as_mut().reset(until);
        }
        sleep.as_mut().poll(cx)
    }
}

impl<S: Clone> Clone for Outlier<S> {
    /// A second handle on the same endpoint (same detector, same counts).
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            endpoint: self.endpoint.clone(),
            sleep: None,
            not_ready_until: self.not_ready_until,
        }
    }
}

impl<S, Req, B> Service<Req> for Outlier<S>
where
    Req: Attempt,
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<crate::BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            let now = Instant::now();
            if let Some(until) = self.endpoint.ejected_until(now) {
                ready!(self.wait_until(until, cx));
                continue;
            }
            if let Some(until) = self.not_ready_until {
                if now < until {
                    ready!(self.wait_until(until, cx));
                    continue;
                }
                self.not_ready_until = None;
            }
            self.sleep = None;
            match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => {
                    let error: crate::BoxError = error.into();
                    let kind = crate::transport::transport_error(&*error)
                        .map_or("error", crate::transport::TransportError::kind);
                    tracing::debug!(endpoint = %self.endpoint.address, kind, %error, "endpoint not ready");
                    self.endpoint.stats.set_last_error(kind, error.to_string());
                    self.endpoint.record(Outcome::Unreachable);
                    self.not_ready_until = Some(now + NOT_READY_BACKOFF);
                }
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        stats::incr(&self.endpoint.stats.requests);
        let per_try_deadline = request.attempt_deadline();
        ResponseFuture {
            inner: self.inner.call(request),
            endpoint: Some(self.endpoint.clone()),
            per_try_deadline,
        }
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(endpoint) = this.endpoint.take() {
            let outcome = match &result {
                Err(_) => Outcome::Unreachable,
                Ok(rsp) if is_endpoint_failure(rsp) => Outcome::Failed,
                Ok(_) => Outcome::Success,
            };
            if outcome != Outcome::Success {
                stats::incr(&endpoint.stats.failures);
            }
            endpoint.record(outcome);
        }
        Poll::Ready(result)
    }
}
