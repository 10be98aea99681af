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

use crate::policy::{OutlierPolicy, UpstreamPolicy};
use crate::stats::{self, EjectionReason, EndpointState, EndpointStats, UpstreamStats};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tonic::Code;
use tower::Service;

/// How long an endpoint whose `poll_ready` failed is reported not-ready
/// before it is asked again.
pub const NOT_READY_BACKOFF: Duration = Duration::from_millis(100);

/// The endpoints of one balancer, for the cap on how many are ejected, and
/// the policy and stats they share.
#[derive(Debug)]
pub struct EjectionPool {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    members: AtomicUsize,
    ejected: AtomicUsize,
}

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

/// One endpoint's detector, shared by the [`Outlier`] and its calls in
/// flight. Leaves the pool when the last of them is gone.
#[derive(Debug)]
pub struct Endpoint {
    address: String,
    pool: Arc<EjectionPool>,
    stats: Arc<EndpointStats>,
    detector: Mutex<Detector>,
}

/// The state of one endpoint's detector.
///
/// ```text
///             failures reach a threshold, and the cap allows
///   In pool -------------------------------------------------> Ejected
///   (counting)   <----------------------------------------     (until)
///                  readmitted when polled at or after `until`;
///                  counts start afresh
/// ```
#[derive(Debug)]
struct Detector {
    /// Failures in a row.
    consecutive: u32,
    /// Calls and failures in the current `interval`.
    window: Window,
    /// Set while ejected.
    ejected_until: Option<Instant>,
    /// Grows with each ejection, decays while in the pool.
    multiplier: u32,
    /// Since when the endpoint has been in the pool (creation or last
    /// readmission), for the decay of the multiplier.
    in_pool_since: Instant,
}

/// A tumbling window of `interval`: starts afresh once `interval` has
/// passed since it started.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    requests: u32,
    failures: u32,
}

/// What a call or a readiness check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    /// A status or HTTP code saying the endpoint is unwell.
    Failed,
    /// The endpoint could not be reached (an error, not a response).
    Unreachable,
    /// The endpoint did not answer within the attempt's per-try timeout.
    TimedOut,
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

// === impl EjectionPool ===

impl EjectionPool {
    /// A pool for the endpoints of one balancer of an upstream.
    pub fn new(
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            stats,
            members: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
        })
    }

    /// Endpoints in the pool (ejected or not).
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Acquire)
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    /// How many of `members` endpoints may be out at once with
    /// `max_ejected_percent`: `floor(members * percent / 100)`, at least one
    /// when the percent is above zero and there are two endpoints or more.
    pub fn max_ejected(members: usize, max_ejected_percent: u32) -> usize {
        let share = members * max_ejected_percent.min(100) as usize / 100;
        if max_ejected_percent > 0 && members > 1 {
            share.max(1)
        } else {
            share
        }
    }

    fn policy(&self) -> OutlierPolicy {
        self.policy.borrow().outlier
    }

    /// Takes an ejection slot if the cap allows.
    fn try_eject(&self, max_ejected_percent: u32) -> bool {
        let cap = Self::max_ejected(self.members(), max_ejected_percent);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.ejected.fetch_sub(1, Ordering::AcqRel);
    }
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
        let stats = pool.stats.endpoint(address);
        stats.set_state(EndpointState::Healthy);
        pool.members.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        Self {
            inner,
            endpoint: Arc::new(Endpoint {
                address: address.to_string(),
                pool: pool.clone(),
                stats,
                detector: Mutex::new(Detector {
                    consecutive: 0,
                    window: Window::new(now),
                    ejected_until: None,
                    multiplier: 0,
                    in_pool_since: now,
                }),
            }),
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

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until(Instant::now()).is_some()
    }

    /// The readmission instant while ejected; readmits the endpoint if that
    /// instant has come.
    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let mut d = self.detector.lock().expect("not poisoned");
        let until = d.ejected_until?;
        if now < until {
            return Some(until);
        }
        d.ejected_until = None;
        d.in_pool_since = now;
        d.consecutive = 0;
        d.window = Window::new(now);
        drop(d);
        self.pool.release();
        self.stats.set_state(EndpointState::Healthy);
        tracing::info!(endpoint = %self.address, "endpoint readmitted");
        None
    }

    /// Counts an outcome, and ejects the endpoint if it crossed a threshold
    /// and the cap allows.
    fn record(&self, outcome: Outcome) {
        let policy = self.pool.policy();
        let now = Instant::now();
        let mut d = self.detector.lock().expect("not poisoned");
        if d.ejected_until.is_some() {
            // A late answer to a call sent before the ejection.
            return;
        }
        d.window.roll(now, policy.interval);
        d.window.requests += 1;
        if outcome == Outcome::Success {
            d.consecutive = 0;
            return;
        }
        d.consecutive += 1;
        d.window.failures += 1;

        let reason =
            if policy.consecutive_failures > 0 && d.consecutive >= policy.consecutive_failures {
                if outcome == Outcome::Unreachable {
                    EjectionReason::ConnectFailure
                } else {
                    EjectionReason::ConsecutiveFailures
                }
            } else if policy.failure_rate.is_some_and(|rate| {
                d.window.requests >= policy.failure_rate_min_requests.max(1)
                    && f64::from(d.window.failures) >= rate * f64::from(d.window.requests)
            }) {
                EjectionReason::FailureRate
            } else {
                return;
            };
        if !self.pool.try_eject(policy.max_ejected_percent) {
            tracing::debug!(endpoint = %self.address, ?reason, "not ejected: too many endpoints out already");
            return;
        }

        let intervals_in_pool = now.saturating_duration_since(d.in_pool_since).as_nanos()
            / policy.interval.as_nanos().max(1);
        let decay = u32::try_from(intervals_in_pool).unwrap_or(u32::MAX);
        d.multiplier = d.multiplier.saturating_sub(decay).saturating_add(1);
        let duration = policy
            .base_ejection
            .saturating_mul(d.multiplier)
            .min(policy.max_ejection);
        d.ejected_until = Some(now + duration);
        d.consecutive = 0;
        d.window = Window::new(now);
        let count = d.multiplier;
        drop(d);

        let since = SystemTime::now();
        self.stats.set_state(EndpointState::Ejected {
            since,
            until: since + duration,
            reason,
            count,
        });
        stats::incr(&self.pool.stats.counters.ejections);
        tracing::warn!(endpoint = %self.address, ?reason, ?duration, count, "endpoint ejected");
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.pool.members.fetch_sub(1, Ordering::AcqRel);
        if self
            .detector
            .get_mut()
            .map(|d| d.ejected_until.is_some())
            .unwrap_or(false)
        {
            self.pool.release();
        }
    }
}

// === impl Window ===

impl Window {
    fn new(start: Instant) -> Self {
        Self {
            start,
            requests: 0,
            failures: 0,
        }
    }

    fn roll(&mut self, now: Instant, interval: Duration) {
        if now.saturating_duration_since(self.start) >= interval {
            *self = Self::new(now);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Response;
    use futures::FutureExt;
    use std::sync::atomic::AtomicBool;
    use tower::ServiceExt;

    /// The default policy (every key has a default but `endpoints`).
    pub(crate) fn policy() -> UpstreamPolicy {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        let empty = std::collections::BTreeMap::<String, String>::new();
        let d: serde::de::value::MapDeserializer<'_, _, serde::de::value::Error> =
            empty.into_deserializer();
        UpstreamPolicy::deserialize(d).expect("every key has a default")
    }

    fn outlier_policy(f: impl FnOnce(&mut OutlierPolicy)) -> watch::Receiver<Arc<UpstreamPolicy>> {
        let mut p = policy();
        p.outlier = OutlierPolicy {
            consecutive_failures: 3,
            failure_rate: None,
            failure_rate_min_requests: 10,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 100,
        };
        f(&mut p.outlier);
        watch::channel(Arc::new(p)).1
    }

    /// An endpoint answering OK, or UNAVAILABLE while `failing` is set.
    fn endpoint(
        failing: &Arc<AtomicBool>,
    ) -> impl Service<(), Response = Response, Error = std::convert::Infallible, Future: Send>
    + Clone
    + use<> {
        let failing = failing.clone();
        tower::service_fn(move |()| {
            let failing = failing.load(Ordering::SeqCst);
            async move {
                Ok(if failing {
                    crate::status::response(tonic::Status::unavailable("down"))
                } else {
                    Response::new(crate::Body::empty())
                })
            }
        })
    }

    fn is_ready<S: Service<()>>(svc: &mut S) -> bool {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .now_or_never()
            .is_some()
    }

    async fn calls<S>(svc: &mut S, n: usize)
    where
        S: Service<(), Response = Response, Error = std::convert::Infallible>,
    {
        for _ in 0..n {
            svc.ready().await.unwrap();
            svc.call(()).await.unwrap();
        }
    }

    fn pool(
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
    ) -> (Arc<EjectionPool>, Arc<UpstreamStats>) {
        let stats = crate::stats::MeshStats::default().upstream("catalog");
        (EjectionPool::new(policy, stats.clone()), stats)
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_is_ejected_after_consecutive_failures_and_readmitted_after_the_ejection_time()
     {
        let (pool, stats) = pool(outlier_policy(|_| {}));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);

        calls(&mut a, 2).await;
        assert!(is_ready(&mut a), "two failures are not three");
        calls(&mut a, 1).await;
        assert!(!is_ready(&mut a), "ejected");
        assert_eq!(pool.ejected(), 1);
        assert_eq!(stats::read(&stats.counters.ejections), 1);
        let ep = stats.endpoint("http://a:1");
        assert_eq!(stats::read(&ep.requests), 3);
        assert_eq!(stats::read(&ep.failures), 3);
        match ep.state() {
            EndpointState::Ejected {
                reason,
                count,
                since,
                until,
            } => {
                assert_eq!(reason, EjectionReason::ConsecutiveFailures);
                assert_eq!(count, 1);
                assert_eq!(until.duration_since(since).unwrap(), Duration::from_secs(1));
            }
            s => panic!("{s:?}"),
        }

        let t0 = Instant::now();
        a.ready().await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(1),
            "readmitted at the end of its ejection"
        );
        assert_eq!(ep.state(), EndpointState::Healthy);
        assert_eq!(pool.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_cut_by_their_per_try_timeout_count_and_abandoned_ones_do_not() {
        let (pool, stats) = pool(outlier_policy(|_| {}));
        // An endpoint that never answers (a frozen peer).
        let hung = tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<Response, std::convert::Infallible>>()
        });
        let mut a = Outlier::new(hung, "http://a:1", &pool);
        let _b = Outlier::new(hung, "http://b:1", &pool);
        let ready = |a: &mut Outlier<_>| {
            std::future::poll_fn(|cx| Service::<http::Request<()>>::poll_ready(a, cx))
                .now_or_never()
                .is_some()
        };
        let attempt = |per_try: Option<Duration>| {
            let mut request = http::Request::new(());
            if let Some(t) = per_try {
                request
                    .extensions_mut()
                    .insert(AttemptDeadline(Instant::now() + t));
            }
            request
        };
        let give_up_after = |a: &mut Outlier<_>, request, after| {
            let call = a.call(request);
            async move {
                assert!(tokio::time::timeout(after, call).await.is_err());
            }
        };
        let ms = Duration::from_millis;
        let ep = stats.endpoint("http://a:1");

        // Dropped before its per-try deadline (a hedge that lost), or
        // bounded by the caller's deadline only: no outcome.
        for _ in 0..3 {
            give_up_after(&mut a, attempt(Some(ms(100))), ms(50)).await;
            give_up_after(&mut a, attempt(None), ms(200)).await;
        }
        assert!(ready(&mut a));
        assert_eq!(stats::read(&ep.failures), 0);

        // Cut at its per-try deadline: a failure of this endpoint.
        for _ in 0..3 {
            give_up_after(&mut a, attempt(Some(ms(100))), ms(100)).await;
        }
        assert_eq!(stats::read(&ep.failures), 3);
        assert!(!ready(&mut a), "ejected after three timed-out attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_count() {
        let (pool, _) = pool(outlier_policy(|_| {}));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
        calls(&mut a, 2).await;
        failing.store(false, Ordering::SeqCst);
        calls(&mut a, 1).await;
        failing.store(true, Ordering::SeqCst);
        calls(&mut a, 2).await;
        assert!(is_ready(&mut a));
    }

    #[tokio::test(start_paused = true)]
    async fn the_second_ejection_lasts_twice_the_first() {
        let (pool, stats) = pool(outlier_policy(|_| {}));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);

        let mut ejections = vec![];
        for _ in 0..3 {
            calls(&mut a, 3).await;
            assert!(!is_ready(&mut a));
            let t0 = Instant::now();
            a.ready().await.unwrap();
            ejections.push(t0.elapsed());
        }
        assert_eq!(
            ejections,
            [1, 2, 3].map(Duration::from_secs),
            "the n-th ejection lasts n times the base"
        );
        assert_eq!(stats::read(&stats.counters.ejections), 3);
    }

    /// Fails `a` three times and waits for its readmission: how long it took.
    async fn eject_and_wait<S>(a: &mut S) -> Duration
    where
        S: Service<(), Response = Response, Error = std::convert::Infallible>,
    {
        calls(a, 3).await;
        let t0 = Instant::now();
        a.ready().await.unwrap();
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_is_capped_and_decays_while_in_the_pool() {
        let (pool, _) = pool(outlier_policy(|o| {
            o.max_ejection = Duration::from_millis(2500)
        }));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
        assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(1));
        assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(2));
        assert_eq!(
            eject_and_wait(&mut a).await,
            Duration::from_millis(2500),
            "max_ejection"
        );
        // Two intervals in the pool take the multiplier from 3 to 1.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejected_share_never_exceeds_its_cap() {
        let (pool, stats) = pool(outlier_policy(|o| o.max_ejected_percent = 34));
        let failing = Arc::new(AtomicBool::new(true));
        let mut all: Vec<_> = ["http://a:1", "http://b:1", "http://c:1"]
            .into_iter()
            .map(|a| Outlier::new(endpoint(&failing), a, &pool))
            .collect();
        for _ in 0..5 {
            for svc in all.iter_mut() {
                if is_ready(svc) {
                    calls(svc, 3).await;
                }
            }
            assert_eq!(pool.ejected(), 1, "3 endpoints at 34%: one out at most");
        }
        let ready = all
            .iter_mut()
            .filter_map(|s| is_ready(s).then_some(()))
            .count();
        assert_eq!(ready, 2);
        assert_eq!(stats::read(&stats.counters.ejections), 1);

        // Once the first is readmitted, another one may go (at its next
        // failure: its counts kept going).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready: Vec<usize> = (0..3).filter(|&i| is_ready(&mut all[i])).collect();
        assert_eq!(ready.len(), 3);
        assert_eq!(pool.ejected(), 0);
        calls(&mut all[1], 1).await;
        assert_eq!(pool.ejected(), 1);
    }

    #[test]
    fn the_cap_rounds_down_but_lets_one_go_among_several() {
        assert_eq!(EjectionPool::max_ejected(3, 34), 1);
        assert_eq!(EjectionPool::max_ejected(3, 50), 1);
        assert_eq!(EjectionPool::max_ejected(4, 50), 2);
        assert_eq!(EjectionPool::max_ejected(2, 10), 1);
        assert_eq!(EjectionPool::max_ejected(1, 50), 0, "a sole endpoint stays");
        assert_eq!(EjectionPool::max_ejected(1, 100), 1);
        assert_eq!(EjectionPool::max_ejected(5, 0), 0, "0% disables ejection");
        assert_eq!(EjectionPool::max_ejected(0, 50), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_failure_rate_ejects_without_consecutive_failures() {
        let (pool, stats) = pool(outlier_policy(|o| {
            o.consecutive_failures = 0;
            o.failure_rate = Some(0.5);
            o.failure_rate_min_requests = 10;
        }));
        let failing = Arc::new(AtomicBool::new(false));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
        // Alternate: never two failures in a row, half of them failures.
        for i in 0..9 {
            failing.store(i % 2 == 0, Ordering::SeqCst);
            calls(&mut a, 1).await;
            assert!(is_ready(&mut a), "not judged before 10 calls");
        }
        failing.store(false, Ordering::SeqCst);
        calls(&mut a, 1).await;
        assert!(is_ready(&mut a), "4 of 10 is below 50%");
        failing.store(true, Ordering::SeqCst);
        calls(&mut a, 1).await;
        assert!(!is_ready(&mut a), "6 of 11");
        match stats.endpoint("http://a:1").state() {
            EndpointState::Ejected { reason, .. } => {
                assert_eq!(reason, EjectionReason::FailureRate)
            }
            s => panic!("{s:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_window_starts_afresh_each_interval() {
        let (pool, _) = pool(outlier_policy(|o| {
            o.consecutive_failures = 0;
            o.failure_rate = Some(0.5);
            o.failure_rate_min_requests = 4;
        }));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
        calls(&mut a, 3).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        calls(&mut a, 3).await;
        assert!(is_ready(&mut a), "3 calls per window, 4 needed");
        calls(&mut a, 1).await;
        assert!(!is_ready(&mut a));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_about_the_request_are_not_failures() {
        let (pool, stats) = pool(outlier_policy(|_| {}));
        let svc = tower::service_fn(|()| async {
            Ok::<_, std::convert::Infallible>(crate::status::response(tonic::Status::not_found(
                "no such product",
            )))
        });
        let mut a = Outlier::new(svc, "http://a:1", &pool);
        let _b = Outlier::new(svc, "http://b:1", &pool);
        calls(&mut a, 10).await;
        assert!(is_ready(&mut a));
        assert_eq!(stats::read(&stats.endpoint("http://a:1").failures), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_eject_as_connect_failures() {
        let (pool, stats) = pool(outlier_policy(|_| {}));
        let svc = tower::service_fn(|()| async { Err::<Response, _>("connection refused") });
        let mut a = Outlier::new(svc, "http://a:1", &pool);
        let _b = Outlier::new(svc, "http://b:1", &pool);
        for _ in 0..3 {
            a.ready().await.unwrap();
            assert!(a.call(()).await.is_err(), "the error is passed on");
        }
        assert!(!is_ready(&mut a));
        match stats.endpoint("http://a:1").state() {
            EndpointState::Ejected { reason, .. } => {
                assert_eq!(reason, EjectionReason::ConnectFailure)
            }
            s => panic!("{s:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_poll_ready_is_held_back_and_counted_not_passed_on() {
        let (pool, stats) = pool(outlier_policy(|o| o.consecutive_failures = 2));
        let (mock, mut handle) = tower_test::mock::pair::<(), Response>();
        let mut a = Outlier::new(mock, "http://a:1", &pool);
        let _b = Outlier::new(
            endpoint(&Arc::new(AtomicBool::new(false))),
            "http://b:1",
            &pool,
        );

        handle.send_error("connection refused");
        assert!(!is_ready(&mut a), "not ready rather than failed");
        let t0 = Instant::now();
        a.ready().await.unwrap();
        assert_eq!(
            t0.elapsed(),
            NOT_READY_BACKOFF,
            "asked again after the backoff"
        );
        assert_eq!(
            stats::read(&stats.counters.ejections),
            0,
            "one failure so far"
        );

        handle.send_error("connection refused");
        assert!(!is_ready(&mut a));
        assert_eq!(
            stats::read(&stats.counters.ejections),
            1,
            "the second one ejects"
        );
        match stats.endpoint("http://a:1").state() {
            EndpointState::Ejected { reason, .. } => {
                assert_eq!(reason, EjectionReason::ConnectFailure)
            }
            s => panic!("{s:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_endpoint_leaves_the_pool_when_its_last_call_is_done() {
        let (pool, _) = pool(outlier_policy(|_| {}));
        let failing = Arc::new(AtomicBool::new(true));
        let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
        let b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
        assert_eq!(pool.members(), 2);
        calls(&mut a, 2).await;
        a.ready().await.unwrap();
        let in_flight = a.call(());
        drop(a);
        assert_eq!(pool.members(), 2, "its call still holds it");
        in_flight.await.unwrap();
        assert_eq!(pool.members(), 1);
        assert_eq!(pool.ejected(), 0, "its ejection slot went with it");
        drop(b);
        assert_eq!(pool.members(), 0);
    }
}
