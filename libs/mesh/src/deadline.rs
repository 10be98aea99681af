//! The overall deadline of a client call.
//!
//! A call gets the smallest of three budgets: the policy's `timeout` for
//! the method, what is left of the incoming call's deadline (the request
//! being served when this call was made, [`crate::context`]), and the
//! caller's own `grpc-timeout` header if it set one. The layer
//!
//! - records the deadline as a [`CallDeadline`] request extension, so the
//!   [`crate::retry`] layer inside never starts an attempt that cannot
//!   finish in time;
//! - sends what is left on as `grpc-timeout`, so the server gives up when
//!   the caller does;
//! - bounds the whole call (every attempt and backoff) by it, answering a
//!   trailers-only `DEADLINE_EXCEEDED` when it passes.
//!
//! # Order
//!
//! Outside [`crate::retry`]: the deadline covers all attempts, not one.

use crate::policy::{EffectiveCache, UpstreamPolicy};
use crate::stats::{UpstreamStats, incr};
use crate::{BoxError, status};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Timeout};

/// When the call must be over: a request extension set by [`Deadline`]
/// and read by the layers inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallDeadline(pub Instant);

/// Bounds each call by its deadline and sends the deadline on.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    effective: Arc<EffectiveCache>,
}

/// Makes [`Deadline`] services.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    effective: Arc<EffectiveCache>,
}

pin_project! {
    /// The response future of [`Deadline`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        stats: Arc<UpstreamStats>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The inner call, bounded by the deadline.
        Running { #[pin] call: Timeout<F> },
        // The deadline had passed before the call was made: the inner
        // service was not called.
        Expired,
    }
}

// === impl Deadline ===

impl<S> Deadline<S> {
    /// Wraps `inner`; the timeout is read from the current `policy` on
    /// every call, counters go to `stats`.
    pub fn new(
        inner: S,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        Self {
            inner,
            policy,
            stats,
            effective: Arc::default(),
        }
    }

    /// A layer making [`Deadline`] services.
    pub fn layer(
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> DeadlineLayer {
        DeadlineLayer::new(policy, stats)
    }
}

/// The deadline of a call starting `now` to the method at `path`: the
/// policy's timeout, the incoming call's deadline, the request's own
/// `grpc-timeout` and an earlier [`CallDeadline`], whichever is soonest.
fn deadline_of<B>(request: &http::Request<B>, timeout: Duration, now: Instant) -> Instant {
    let mut deadline = now + timeout;
    if let Some(incoming) = crate::context::incoming_deadline() {
        deadline = deadline.min(incoming);
    }
    if let Some(own) = request
        .headers()
        .get(status::GRPC_TIMEOUT)
        .and_then(status::parse_grpc_timeout)
    {
        deadline = deadline.min(now + own);
    }
    if let Some(CallDeadline(earlier)) = request.extensions().get::<CallDeadline>() {
        deadline = deadline.min(*earlier);
    }
    deadline
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = crate::Response>,
    S::Error: Into<BoxError>,
{
    type Response = crate::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        incr(&self.stats.counters.calls);
        let now = Instant::now();
        let timeout = {
            let policy = self.policy.borrow();
            self.effective.get(&policy, request.uri().path()).timeout
        };
        let deadline = deadline_of(&request, timeout, now);
        let state = if deadline <= now {
            // Never made: it still ends, as gRPC's own clients record it.
            let metrics = &self.stats.metrics;
            let method = metrics.method(request.uri().path());
            metrics.call_ended(&method, tonic::Code::DeadlineExceeded, now);
            State::Expired
        } else {
            request.headers_mut().insert(
                status::GRPC_TIMEOUT,
                status::format_grpc_timeout(deadline - now),
            );
            request.extensions_mut().insert(CallDeadline(deadline));
            State::Running {
                call: tokio::time::timeout_at(deadline, self.inner.call(request)),
            }
        };
        ResponseFuture {
            state,
            stats: self.stats.clone(),
        }
    }
}

// === impl DeadlineLayer ===

impl DeadlineLayer {
    /// A layer reading the timeout from the current `policy` on every call
    /// and counting into `stats`.
    pub fn new(policy: watch::Receiver<Arc<UpstreamPolicy>>, stats: Arc<UpstreamStats>) -> Self {
        Self {
            policy,
            stats,
            effective: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            policy: self.policy.clone(),
            stats: self.stats.clone(),
            effective: self.effective.clone(),
        }
    }
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<crate::Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<crate::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let expired = match this.state.project() {
            StateProj::Running { call } => match ready!(call.poll(cx)) {
                Ok(result) => return Poll::Ready(result.map_err(Into::into)),
                Err(_elapsed) => "deadline exceeded",
            },
            StateProj::Expired => "deadline exceeded before the call was made",
        };
        // The inner future is dropped with us: nothing inside counts this
        // call, so it is counted here.
        incr(&this.stats.counters.deadline_exceeded);
        incr(&this.stats.counters.failures);
        Poll::Ready(Ok(status::response(tonic::Status::deadline_exceeded(
            expired,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{MeshStats, read};
    use std::time::Duration;
    use tower::{ServiceExt, service_fn};

    const GET_PRODUCT: &str = "/shop.catalog.v1.CatalogService/GetProduct";

    fn policy(timeout: Duration) -> watch::Receiver<Arc<UpstreamPolicy>> {
        let mut policy = default_policy();
        policy.timeout = timeout;
        watch::channel(Arc::new(policy)).1
    }

    /// A policy with every default, built through serde so the test does
    /// not depend on every field.
    fn default_policy() -> UpstreamPolicy {
        use serde::Deserialize;
        let none: Vec<(String, String)> = Vec::new();
        let d =
            serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(none.into_iter());
        UpstreamPolicy::deserialize(d).unwrap()
    }

    fn request() -> crate::Request {
        http::Request::builder()
            .uri(GET_PRODUCT)
            .body(crate::Body::empty())
            .unwrap()
    }

    /// Echoes the outgoing `grpc-timeout` and [`CallDeadline`] back.
    fn echo() -> impl tower::Service<
        crate::Request,
        Response = crate::Response,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        service_fn(|req: crate::Request| async move {
            let mut response = http::Response::new(crate::Body::empty());
            if let Some(t) = req.headers().get(status::GRPC_TIMEOUT) {
                response
                    .headers_mut()
                    .insert(status::GRPC_TIMEOUT, t.clone());
            }
            if let Some(d) = req.extensions().get::<CallDeadline>() {
                response.extensions_mut().insert(*d);
            }
            Ok::<_, BoxError>(response)
        })
    }

    fn sent_timeout(response: &crate::Response) -> Duration {
        status::parse_grpc_timeout(response.headers().get(status::GRPC_TIMEOUT).unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_with_300ms_left_leaves_with_at_most_300ms() {
        let stats = MeshStats::default().upstream("catalog");
        let svc = Deadline::new(echo(), policy(Duration::from_secs(2)), stats.clone());
        let start = Instant::now();
        let incoming = start + Duration::from_millis(300);

        let response =
            crate::context::with_incoming_deadline(Some(incoming), svc.oneshot(request()))
                .await
                .unwrap();

        assert!(sent_timeout(&response) <= Duration::from_millis(300));
        assert!(sent_timeout(&response) > Duration::from_millis(290));
        assert_eq!(
            response.extensions().get::<CallDeadline>(),
            Some(&CallDeadline(incoming))
        );
        assert_eq!(read(&stats.counters.calls), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_timeout_applies_without_an_incoming_deadline() {
        let stats = MeshStats::default().upstream("catalog");
        let svc = Deadline::new(echo(), policy(Duration::from_secs(2)), stats);
        let start = Instant::now();

        let response = svc.oneshot(request()).await.unwrap();

        assert_eq!(sent_timeout(&response), Duration::from_secs(2));
        assert_eq!(
            response.extensions().get::<CallDeadline>(),
            Some(&CallDeadline(start + Duration::from_secs(2)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_own_grpc_timeout_is_kept_when_sooner() {
        let stats = MeshStats::default().upstream("catalog");
        let svc = Deadline::new(echo(), policy(Duration::from_secs(2)), stats);
        let mut req = request();
        req.headers_mut()
            .insert(status::GRPC_TIMEOUT, http::HeaderValue::from_static("150m"));

        let response = svc.oneshot(req).await.unwrap();

        assert_eq!(sent_timeout(&response), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_upstream_yields_deadline_exceeded_at_the_deadline() {
        let stats = MeshStats::default().upstream("catalog");
        let slow = service_fn(|_req: crate::Request| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(http::Response::new(crate::Body::empty()))
        });
        let svc = Deadline::new(slow, policy(Duration::from_millis(500)), stats.clone());
        let start = Instant::now();

        let response = svc.oneshot(request()).await.unwrap();

        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(
            status::header_code(&response),
            Some(tonic::Code::DeadlineExceeded)
        );
        assert_eq!(read(&stats.counters.deadline_exceeded), 1);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_deadline_has_passed_is_not_sent() {
        let stats = MeshStats::default().upstream("catalog");
        let (mock, mut handle) = tower_test::mock::pair::<crate::Request, crate::Response>();
        handle.allow(1);
        let svc = Deadline::new(mock, policy(Duration::from_secs(2)), stats.clone());
        let passed = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;

        let response = crate::context::with_incoming_deadline(Some(passed), svc.oneshot(request()))
            .await
            .unwrap();

        assert_eq!(
            status::header_code(&response),
            Some(tonic::Code::DeadlineExceeded)
        );
        let sent = futures::FutureExt::now_or_never(handle.next_request()).flatten();
        assert!(sent.is_none(), "the upstream was not called");
        assert_eq!(read(&stats.counters.deadline_exceeded), 1);
    }
}
