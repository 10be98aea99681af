//! Load balancing across an upstream's endpoints: power of two choices over
//! peak-EWMA latency, with outlier ejection per endpoint.
//!
//! [`Balancer::new`] takes the endpoints as a discovery stream
//! ([`crate::discovery`]) and wraps each, outer to inner, in
//!
//! 1. [`Outlier`]: not ready while ejected;
//! 2. [`Track`]: the endpoint's load, the peak-EWMA of its response latency
//!    (starting from [`DEFAULT_RTT`] until it has answered, decaying over
//!    the policy's `ewma_decay`, also while idle) times its calls in flight
//!    plus one, kept in its stats too (`in_flight`, `ewma_micros`); a call
//!    is complete when its response headers arrive.
//!
//! # Power of two choices
//!
//! For each call, [`P2c`] draws two endpoints at random, polls both for
//! readiness and takes the one with the lower load if it is ready, else the
//! other; only if neither is ready does it look at every endpoint (from a
//! random one on) for a ready one.
//! Readiness is checked right before dispatching, so an ejected endpoint,
//! whose `poll_ready` is pending, is never called whatever its load.
//! (tower's p2c does the same over a cache of ready endpoints; keeping the
//! endpoints in place instead saves every call a re-queueing of its
//! endpoint, an allocation, and a second EWMA.)
//!
//! # Why the outlier detector sits outside the load measurement
//!
//! The EWMA only ever measures real calls: the detector never answers a
//! call itself (it gates readiness, it does not fail requests), so no
//! instant, synthetic failure is fed to the EWMA to make an ejected
//! endpoint look fast. Fast *real* failures (connection refused) do pull
//! its estimate down, slowly (the decay is seconds, failures take
//! microseconds): they are the outlier detector's to act on, after a few
//! of them.
//!
//! # When no endpoint is ready
//!
//! All endpoints ejected, none discovered yet, none connectable: a p2c
//! balancer would wait forever. [`FailFast`] waits at most the policy's
//! `connect_timeout` (the time an endpoint is given to become usable, so the
//! same grace for the pool as a whole), then answers every call at once with
//! a trailers-only UNAVAILABLE, which the retry layer above may retry, until
//! an endpoint is ready again; it checks at every call, so recovery is
//! immediate.
//!
//! # Sharing one balancer without a task hop
//!
//! Every caller of the upstream shares one balancer: [`Balancer`] is an
//! `Arc` around it behind a mutex, not a [`Buffer`](tower::buffer::Buffer)
//! task (a buffer costs each call a channel send, a task switch and a
//! oneshot back, about as much as the rest of the stack together). A
//! `Balancer` is always ready; its response future takes the lock, drives
//! the balancer ready and dispatches, in one critical section, so the
//! endpoint found ready is the one called. When nothing is ready, the
//! future parks its waker in a list and the balancer is polled with a
//! waker that wakes the whole list ([`Waiters`]): whichever endpoint,
//! timer or discovery change makes progress possible wakes every caller
//! waiting for it, not only the last one to poll.

use crate::outlier::{self, EjectionPool, Outlier};
use crate::policy::UpstreamPolicy;
use crate::stats::{EndpointStats, UpstreamStats};
use crate::{BoxError, Request, Response};
use futures::Stream;
use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower::discover::{Change, Discover};

/// The latency assumed of an endpoint before it has answered.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// P2C over peak-EWMA across an upstream's endpoints (each an `E`); `Clone`
/// (all clones share one balancer); never waits for an endpoint longer
/// than the policy's `connect_timeout`.
pub struct Balancer<E> {
    inner: Arc<Mutex<FailFast<P2c<E>>>>,
    waiters: Arc<Waiters>,
}

pin_project! {
    /// The future of a [`Balancer`] call: waits for an endpoint, then for
    /// its answer.
    pub struct ResponseFuture<E: Service<Request>> {
        balancer: Balancer<E>,
        #[pin]
        state: State<FailFastFuture<EndpointFuture<E>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting { request: Option<Request> },
        Calling { #[pin] call: F },
    }
}

/// The future of a call to one endpoint (an `E`), as the balancer makes it.
pub type EndpointFuture<E> = futures::future::MapErr<
    outlier::ResponseFuture<TrackFuture<<E as Service<Request>>::Future>>,
    fn(<E as Service<Request>>::Error) -> BoxError,
>;

/// The callers waiting for the shared balancer to become ready.
///
/// The balancer is always polled with a waker made from this list
/// (`Waiters::waker`); waking it wakes every parked caller. `epoch`
/// counts those wake-ups, so a caller that parks right after one sees it
/// and polls again instead of sleeping through it.
#[derive(Default)]
pub struct Waiters {
    parked: Mutex<Vec<Waker>>,
    epoch: std::sync::atomic::AtomicU64,
}

/// A boxed stream of endpoint changes.
type Changes<E> = Pin<Box<dyn Stream<Item = Result<Change<String, E>, BoxError>> + Send>>;

/// Power of two choices over the endpoints' loads; see the module docs.
pub struct P2c<E> {
    discover: Option<Changes<E>>,
    endpoints: Vec<(String, Outlier<Track<E>>)>,
    pool: Arc<EjectionPool>,
    stats: Arc<UpstreamStats>,
    decay: Duration,
    /// Where a new `ewma_decay` comes from.
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    rng: SmallRng,
    /// The endpoint `poll_ready` found ready, for the next `call`.
    ready: Option<usize>,
}

/// Fails calls fast with UNAVAILABLE once the inner service has not been
/// ready for the policy's `connect_timeout`; see the module docs.
pub struct FailFast<S> {
    inner: S,
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    upstream: String,
    state: FailFastState,
    /// Whether the inner service said it is ready (and so may be called).
    inner_ready: bool,
}

/// ```text
///          inner pending                  connect_timeout
///   Open ----------------> Waiting -----------------------> Failing
///    ^                        |                                |
///    +------------------------+--------------------------------+
///                       inner ready
/// ```
/// `FailFast::poll_ready` is pending only while `Waiting`; `Failing` is
/// ready, and its calls are answered UNAVAILABLE without the inner service.
enum FailFastState {
    Open,
    Waiting(Pin<Box<Sleep>>),
    Failing,
}

pin_project! {
    /// The response future of [`FailFast`].
    #[project = FailFastProj]
    pub enum FailFastFuture<F> {
        /// The inner service's call.
        Inner { #[pin] call: F },
        /// Answered at once: no endpoint is available.
        Unavailable { response: Option<Response> },
    }
}

/// Keeps an endpoint's load, and its `in_flight` and `ewma_micros` stats.
#[derive(Debug)]
pub struct Track<S> {
    inner: S,
    stats: Arc<EndpointStats>,
    ewma: Arc<Mutex<Ewma>>,
}

pin_project! {
    /// The response future of [`Track`].
    #[derive(Debug)]
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        sent_at: Instant,
        ewma: Arc<Mutex<Ewma>>,
        in_flight: Option<InFlight>,
    }
}

/// One call in an endpoint's `in_flight` gauge, until dropped.
#[derive(Debug)]
struct InFlight(Arc<EndpointStats>);

/// A peak-EWMA of latency: a sample above the estimate replaces it, one
/// below is blended in with a weight that grows with the time since the
/// last update (`1 - e^(-elapsed/decay)`).
///
/// Two estimates follow the same samples: the one p2c compares starts from
/// the assumed [`DEFAULT_RTT`], so a new endpoint neither draws every call
/// before it has answered nor is shunned for not having answered yet (as
/// tower's `PeakEwma`); the one reported in the stats starts from zero, so
/// it shows what was measured.
#[derive(Debug)]
struct Ewma {
    load_nanos: f64,
    nanos: f64,
    updated_at: Instant,
    decay_nanos: f64,
}

// === impl Balancer ===

impl<E> Balancer<E>
where
    E: Service<Request, Response = Response> + Send + 'static,
    E::Error: Into<BoxError> + fmt::Display,
    E::Future: Send + 'static,
{
    /// A balancer over the endpoints `discover` yields (plain endpoint
    /// services, keyed by address), each guarded by its own [`Outlier`] in
    /// one [`EjectionPool`], reporting into `stats`. The policy is followed
    /// as it changes: the outlier settings and `connect_timeout` are read at
    /// each decision, a new `ewma_decay` applies to every endpoint's
    /// estimate from the next decision on.
    pub fn new<D>(
        discover: D,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self
    where
        D: Discover<Key = String, Service = E> + Send + 'static,
        D::Error: Into<BoxError>,
    {
        let decay = policy.borrow().ewma_decay;
        let mut decay_watch = policy.clone();
        decay_watch.mark_unchanged();
        let mut discover = Box::pin(discover);
        let changes = futures::stream::poll_fn(move |cx| {
            discover
                .as_mut()
                .poll_discover(cx)
                .map(|change| change.map(|c| c.map_err(Into::into)))
        });
        let p2c = P2c {
            discover: Some(Box::pin(changes)),
            endpoints: Vec::new(),
            pool: EjectionPool::new(policy.clone(), stats.clone()),
            stats: stats.clone(),
            decay,
            policy: decay_watch,
            rng: SmallRng::from_os_rng(),
            ready: None,
        };
        Self {
            inner: Arc::new(Mutex::new(FailFast::new(p2c, policy, &stats.name))),
            waiters: Arc::default(),
        }
    }
}

impl<E> Clone for Balancer<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            waiters: self.waiters.clone(),
        }
    }
}

impl<E> Service<Request> for Balancer<E>
where
    E: Service<Request, Response = Response>,
    E::Error: Into<BoxError> + fmt::Display,
{
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture<E>;

    /// Always ready: the response future waits for an endpoint.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ResponseFuture {
            balancer: self.clone(),
            state: State::Waiting {
                request: Some(request),
            },
        }
    }
}

impl<E> Future for ResponseFuture<E>
where
    E: Service<Request, Response = Response>,
    E::Error: Into<BoxError> + fmt::Display,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StateProj::Waiting { request } = this.state.as_mut().project() {
            let Balancer { inner, waiters } = &*this.balancer;
            let epoch = waiters.epoch.load(Ordering::Acquire);
            let mut balancer = inner.lock().expect("not poisoned");
            let waker = waiters.waker();
            match balancer.poll_ready(&mut Context::from_waker(&waker)) {
                Poll::Ready(Ok(())) => {
                    let request = request.take().expect("polled after completion");
                    let call = balancer.call(request);
                    drop(balancer);
                    this.state.set(State::Calling { call });
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    drop(balancer);
                    waiters.park(cx.waker(), epoch);
                    return Poll::Pending;
                }
            }
        }
        match this.state.project() {
            StateProj::Calling { call } => call.poll(cx),
            StateProj::Waiting { .. } => unreachable!("dispatched above"),
        }
    }
}

impl<E> fmt::Debug for Balancer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer").finish_non_exhaustive()
    }
}

// === impl Waiters ===

impl Waiters {
    /// A waker that wakes every parked caller.
    fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Parks `waker` until the next wake-up; if one happened since `epoch`
    /// (read before polling), wakes it at once instead.
    fn park(&self, waker: &Waker, epoch: u64) {
        let mut parked = self.parked.lock().expect("not poisoned");
        if !parked.iter().any(|w| w.will_wake(waker)) {
            parked.push(waker.clone());
        }
        drop(parked);
        if self.epoch.load(Ordering::Acquire) != epoch {
            waker.wake_by_ref();
        }
    }
}

impl std::task::Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let parked = std::mem::take(&mut *self.parked.lock().expect("not poisoned"));
        for waker in parked {
            waker.wake();
        }
    }
}

// === impl P2c ===

impl<E> P2c<E>
where
    E: Service<Request, Response = Response>,
    E::Error: Into<BoxError> + fmt::Display,
{
    /// Applies the endpoint changes discovery has ready, and a changed
    /// `ewma_decay`.
    fn discover(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.policy.has_changed().unwrap_or(false) {
            let decay = self.policy.borrow_and_update().ewma_decay;
            if decay != self.decay {
                self.decay = decay;
                for (_, endpoint) in &self.endpoints {
                    endpoint.get_ref().set_decay(decay);
                }
            }
        }
        while let Some(changes) = self.discover.as_mut() {
            let change = match changes.as_mut().poll_next(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    self.discover = None;
                    return Ok(());
                }
                Poll::Ready(Some(change)) => change?,
            };
            match change {
                Change::Insert(address, svc) => {
                    let tracked = Track::new(svc, self.stats.endpoint(&address), self.decay);
                    let guarded = Outlier::new(tracked, &address, &self.pool);
                    match self.endpoints.iter().position(|(a, _)| *a == address) {
                        Some(i) => self.endpoints[i].1 = guarded,
                        None => self.endpoints.push((address, guarded)),
                    }
                }
                Change::Remove(address) => {
                    if let Some(i) = self.endpoints.iter().position(|(a, _)| *a == address) {
                        self.endpoints.swap_remove(i);
                    }
                    self.stats.remove_endpoint(&address);
                }
            }
        }
        Ok(())
    }

    /// Whether endpoint `i` is ready to be called now.
    fn is_ready(&mut self, i: usize, cx: &mut Context<'_>) -> bool {
        let (address, endpoint) = &mut self.endpoints[i];
        match endpoint.poll_ready(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => {
                tracing::debug!(endpoint = %address, %error, "endpoint not ready");
                false
            }
            Poll::Pending => false,
        }
    }
}

impl<E> Service<Request> for P2c<E>
where
    E: Service<Request, Response = Response>,
    E::Error: Into<BoxError> + fmt::Display,
{
    type Response = Response;
    type Error = BoxError;
    type Future = EndpointFuture<E>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = None;
        self.discover(cx)?;
        let n = self.endpoints.len();
        if n == 0 {
            return Poll::Pending;
        }
        let (a, b) = if n == 1 {
            (0, 0)
        } else {
            let a = self.rng.random_range(0..n);
            let b = (a + self.rng.random_range(1..n)) % n;
            let now = Instant::now();
            let load = |i: usize| self.endpoints[i].1.get_ref().load(now);
            if load(a) <= load(b) { (a, b) } else { (b, a) }
        };
        // Both choices are polled, the second even when the first is ready:
        // polling is how an endpoint finds out that its connection is gone
        // (and the outlier detector counts it), so one that has lost it is
        // noticed within a few calls rather than only when its load makes
        // it the first choice.
        let a_ready = self.is_ready(a, cx);
        let b_ready = b != a && self.is_ready(b, cx);
        if a_ready || b_ready {
            self.ready = Some(if a_ready { a } else { b });
            return Poll::Ready(Ok(()));
        }
        // Neither choice is ready: any endpoint that is (polling each also
        // registers for the moment one becomes ready).
        let start = self.rng.random_range(0..n);
        for i in (0..n).map(|k| (start + k) % n) {
            if i != a && i != b && self.is_ready(i, cx) {
                self.ready = Some(i);
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let i = self.ready.take().expect("poll_ready must be called first");
        futures::TryFutureExt::map_err(self.endpoints[i].1.call(request), Into::into)
    }
}

impl<E> fmt::Debug for P2c<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2c")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

// === impl FailFast ===

impl<S> FailFast<S> {
    /// Wraps `inner`, the balancer of `upstream`.
    pub fn new(inner: S, policy: watch::Receiver<Arc<UpstreamPolicy>>, upstream: &str) -> Self {
        Self {
            inner,
            policy,
            upstream: upstream.to_string(),
            state: FailFastState::Open,
            inner_ready: false,
        }
    }
}

impl<S> Service<Request> for FailFast<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = BoxError;
    type Future = FailFastFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if matches!(self.state, FailFastState::Failing) {
                    tracing::info!(upstream = %self.upstream, "an endpoint is ready again");
                }
                self.state = FailFastState::Open;
                self.inner_ready = true;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => self.inner_ready = false,
        }
        loop {
            match &mut self.state {
                FailFastState::Open => {
                    let wait = self.policy.borrow().connect_timeout;
                    self.state = FailFastState::Waiting(Box::pin(tokio::time::sleep(wait)));
                }
                FailFastState::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    tracing::warn!(upstream = %self.upstream, "no endpoint ready; failing fast");
                    self.state = FailFastState::Failing;
                }
                FailFastState::Failing => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if std::mem::take(&mut self.inner_ready) {
            return FailFastFuture::Inner {
                call: self.inner.call(request),
            };
        }
        let status =
            tonic::Status::unavailable(format!("no endpoint of {} is available", self.upstream));
        FailFastFuture::Unavailable {
            response: Some(crate::status::response(status)),
        }
    }
}

impl<F, E> Future for FailFastFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FailFastProj::Inner { call } => call.poll(cx).map_err(Into::into),
            FailFastProj::Unavailable { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

impl<S> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            FailFastState::Open => "open",
            FailFastState::Waiting(_) => "waiting",
            FailFastState::Failing => "failing",
        };
        f.debug_struct("FailFast")
            .field("upstream", &self.upstream)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

// === impl Track ===

impl<S> Track<S> {
    /// Wraps one endpoint's service, reporting into `stats`, with the
    /// latency estimate decaying over `decay`.
    pub fn new(inner: S, stats: Arc<EndpointStats>, decay: Duration) -> Self {
        Self {
            inner,
            stats,
            ewma: Arc::new(Mutex::new(Ewma {
                load_nanos: DEFAULT_RTT.as_nanos() as f64,
                nanos: 0.0,
                updated_at: Instant::now(),
                decay_nanos: decay.as_nanos().max(1) as f64,
            })),
        }
    }

    /// Makes the latency estimate decay over `decay` from now on.
    pub fn set_decay(&self, decay: Duration) {
        self.ewma.lock().expect("not poisoned").decay_nanos = decay.as_nanos().max(1) as f64;
    }

    /// The load p2c compares, at `now`: the latency estimate (decayed
    /// since its last sample) times the calls in flight plus one.
    pub fn load(&self, now: Instant) -> f64 {
        let estimate = self.ewma.lock().expect("not poisoned").at(now);
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed);
        estimate * (in_flight as f64 + 1.0)
    }
}

impl<S: Clone> Clone for Track<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            stats: self.stats.clone(),
            ewma: self.ewma.clone(),
        }
    }
}

impl<S, Req> Service<Req> for Track<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        TrackFuture {
            inner: self.inner.call(request),
            sent_at: Instant::now(),
            ewma: self.ewma.clone(),
            in_flight: Some(InFlight(self.stats.clone())),
        }
    }
}

impl<F: Future> Future for TrackFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let Some(InFlight(stats)) = this.in_flight.as_ref() {
            let now = Instant::now();
            let mut ewma = this.ewma.lock().expect("not poisoned");
            let estimate = ewma.update(now.saturating_duration_since(*this.sent_at), now);
            stats
                .ewma_micros
                .store((estimate / 1_000.0) as u64, Ordering::Relaxed);
        }
        this.in_flight.take();
        Poll::Ready(output)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Ewma ===

impl Ewma {
    /// Adds a sample of `rtt` taken at `now`; the new reported estimate,
    /// in nanoseconds.
    fn update(&mut self, rtt: Duration, now: Instant) -> f64 {
        let rtt = rtt.as_nanos() as f64;
        let keep = self.keep(now);
        let peak_ewma = |estimate: f64| {
            if estimate < rtt {
                rtt
            } else {
                estimate * keep + rtt * (1.0 - keep)
            }
        };
        self.load_nanos = peak_ewma(self.load_nanos);
        self.nanos = peak_ewma(self.nanos);
        self.updated_at = now;
        self.nanos
    }

    /// The estimate p2c compares at `now`, decayed towards zero since the
    /// last sample (so an endpoint left alone after a slow spell is tried
    /// again).
    fn at(&self, now: Instant) -> f64 {
        self.load_nanos * self.keep(now)
    }

    /// The weight the estimate keeps after the time since the last sample.
    fn keep(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated_at).as_nanos() as f64;
        (-elapsed / self.decay_nanos).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery;
    use crate::outlier::tests::policy;
    use crate::stats::{EndpointState, MeshStats};
    use futures::channel::mpsc;
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn request() -> Request {
        http::Request::new(crate::Body::empty())
    }

    /// An endpoint that answers after `delay`, UNAVAILABLE if `failing`,
    /// naming itself in an `endpoint` header.
    fn endpoint(
        address: &str,
        delay: Duration,
        failing: bool,
    ) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + use<>
    {
        let address = address.to_string();
        tower::service_fn(move |_: Request| {
            let address = address.clone();
            async move {
                tokio::time::sleep(delay).await;
                let mut rsp = if failing {
                    crate::status::response(tonic::Status::unavailable("down"))
                } else {
                    Response::new(crate::Body::empty())
                };
                rsp.headers_mut()
                    .insert("endpoint", address.parse().unwrap());
                Ok(rsp)
            }
        })
    }

    fn served_by(rsp: &Response) -> String {
        rsp.headers()
            .get("endpoint")
            .map_or("balancer", |v| v.to_str().unwrap())
            .to_string()
    }

    fn setup(
        f: impl FnOnce(&mut UpstreamPolicy),
    ) -> (watch::Receiver<Arc<UpstreamPolicy>>, Arc<UpstreamStats>) {
        let mut p = policy();
        f(&mut p);
        let stats = MeshStats::default().upstream("catalog");
        (watch::channel(Arc::new(p)).1, stats)
    }

    async fn tally<S>(b: &S, calls: usize) -> BTreeMap<String, usize>
    where
        S: Service<Request, Response = Response, Error = BoxError> + Clone,
    {
        let mut seen = BTreeMap::new();
        for _ in 0..calls {
            let rsp = b.clone().oneshot(request()).await.unwrap();
            *seen.entry(served_by(&rsp)).or_default() += 1;
        }
        seen
    }

    #[test]
    fn a_balancer_can_be_shared_between_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Balancer<tonic::transport::Channel>>();
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_ewma_decay_applies_to_the_estimates_already_made() {
        let stats = MeshStats::default().upstream("catalog");
        let track = Track::new((), stats.endpoint("http://a:1"), Duration::from_secs(10));
        let later = Instant::now() + Duration::from_secs(1);
        let rtt = DEFAULT_RTT.as_nanos() as f64;
        // Ten seconds of decay: a second later it kept e^-0.1 of itself.
        assert!((track.load(later) / rtt - (-0.1f64).exp()).abs() < 1e-6);
        // A tenth of a second: the same second leaves nearly nothing.
        track.set_decay(Duration::from_millis(100));
        assert!(track.load(later) / rtt < 1e-4);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_faster_endpoint() {
        let (policy, stats) = setup(|_| {});
        let discover = discovery::static_list(
            ["http://fast:1", "http://slow:1"].map(String::from),
            |a: &str| {
                let delay = if a.contains("fast") { 1 } else { 50 };
                endpoint(a, Duration::from_millis(delay), false)
            },
        );
        let b = Balancer::new(discover, policy, stats.clone());
        tally(&b, 20).await; // warm-up

        let seen = tally(&b, 1000).await;
        let fast = seen.get("http://fast:1").copied().unwrap_or(0);
        assert!(fast > 800, "{seen:?}");

        let ewma = |a: &str| stats.endpoint(a).ewma_micros.load(Ordering::Relaxed);
        assert!(
            (1_000..2_000).contains(&ewma("http://fast:1")),
            "{}",
            ewma("http://fast:1")
        );
        assert!(ewma("http://slow:1") >= 40_000, "{}", ewma("http://slow:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_ejected_then_readmitted() {
        let (policy, stats) = setup(|p| {
            p.outlier.consecutive_failures = 3;
            p.outlier.base_ejection = Duration::from_secs(10);
        });
        let discover = discovery::static_list(
            ["http://good:1", "http://bad:1"].map(String::from),
            |a: &str| endpoint(a, Duration::from_millis(1), a.contains("bad")),
        );
        let b = Balancer::new(discover, policy, stats.clone());

        let seen = tally(&b, 200).await;
        assert!(
            seen.get("http://bad:1").copied().unwrap_or(0) <= 3,
            "{seen:?}"
        );
        assert!(matches!(
            stats.endpoint("http://bad:1").state(),
            EndpointState::Ejected { .. }
        ));
        assert_eq!(crate::stats::read(&stats.counters.ejections), 1);

        tokio::time::sleep(Duration::from_secs(10)).await;
        let seen = tally(&b, 200).await;
        assert!(
            seen.contains_key("http://bad:1"),
            "readmitted and tried: {seen:?}"
        );
        assert_eq!(
            crate::stats::read(&stats.counters.ejections),
            2,
            "and ejected again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_ejected_calls_fail_fast_with_unavailable() {
        let (policy, stats) = setup(|p| {
            p.outlier.consecutive_failures = 1;
            p.outlier.max_ejected_percent = 100;
            p.connect_timeout = Duration::from_millis(200);
        });
        let discover =
            discovery::static_list(["http://a:1", "http://b:1"].map(String::from), |a: &str| {
                endpoint(a, Duration::from_millis(1), true)
            });
        let b = Balancer::new(discover, policy, stats.clone());
        let seen = tally(&b, 2).await;
        assert_eq!(seen.values().sum::<usize>(), 2);
        assert!(!seen.contains_key("balancer"), "{seen:?}");
        assert_eq!(crate::stats::read(&stats.counters.ejections), 2);

        let t0 = Instant::now();
        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(200),
            "waited connect_timeout once"
        );
        assert_eq!(served_by(&rsp), "balancer");
        assert_eq!(
            crate::status::header_code(&rsp),
            Some(tonic::Code::Unavailable)
        );

        let t0 = Instant::now();
        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO, "then at once");
        assert_eq!(
            crate::status::header_code(&rsp),
            Some(tonic::Code::Unavailable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_wait_for_a_first_endpoint_then_recover_from_failing_fast() {
        let (policy, stats) = setup(|p| p.connect_timeout = Duration::from_millis(200));
        let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
        let b = Balancer::new(rx, policy, stats);

        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(
            crate::status::header_code(&rsp),
            Some(tonic::Code::Unavailable)
        );

        let a = endpoint("http://a:1", Duration::from_millis(1), false);
        tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), a)))
            .unwrap();
        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(served_by(&rsp), "http://a:1");
    }

    #[tokio::test(start_paused = true)]
    async fn every_caller_waiting_for_an_endpoint_is_woken_when_one_appears() {
        let (policy, stats) = setup(|p| p.connect_timeout = Duration::from_secs(5));
        let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
        let b = Balancer::new(rx, policy, stats);
        let waiting: Vec<_> = (0..50)
            .map(|_| tokio::spawn(b.clone().oneshot(request())))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            waiting.iter().all(|t| !t.is_finished()),
            "nothing to call yet"
        );

        // Readiness comes from another task, as a real connection's would.
        let a = endpoint("http://a:1", Duration::from_millis(1), false);
        tokio::spawn(async move {
            tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), a)))
                .unwrap();
            std::future::pending::<()>().await
        });
        for call in waiting {
            let rsp = tokio::time::timeout(Duration::from_secs(1), call)
                .await
                .expect("woken well before the connect timeout")
                .unwrap()
                .unwrap();
            assert_eq!(served_by(&rsp), "http://a:1");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn removing_an_endpoint_does_not_break_its_calls_in_flight() {
        let (policy, stats) = setup(|_| {});
        let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
        let slow = endpoint("http://a:1", Duration::from_millis(100), false);
        tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), slow)))
            .unwrap();
        let b = Balancer::new(rx, policy, stats.clone());

        let in_flight = tokio::spawn(b.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            stats
                .endpoint("http://a:1")
                .in_flight
                .load(Ordering::Relaxed),
            1
        );

        tx.unbounded_send(Ok(Change::Remove("http://a:1".into())))
            .unwrap();
        let other = endpoint("http://b:1", Duration::from_millis(1), false);
        tx.unbounded_send(Ok(Change::Insert("http://b:1".into(), other)))
            .unwrap();
        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(served_by(&rsp), "http://b:1");
        assert!(
            stats.endpoints().iter().all(|e| e.address != "http://a:1"),
            "a removed endpoint leaves the stats"
        );

        let rsp = in_flight.await.unwrap().unwrap();
        assert_eq!(served_by(&rsp), "http://a:1");
        assert_eq!(crate::status::header_code(&rsp), None, "answered normally");
    }

    /// A gRPC server answering every call OK (trailers-only), naming
    /// itself in an `endpoint` header.
    #[derive(Clone)]
    struct Named(String);

    impl tonic::server::NamedService for Named {
        const NAME: &'static str = "test.Echo";
    }

    impl Service<http::Request<crate::Body>> for Named {
        type Response = Response;
        type Error = Infallible;
        type Future = futures::future::Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<crate::Body>) -> Self::Future {
            let mut rsp = crate::status::response(tonic::Status::ok(""));
            rsp.headers_mut()
                .insert("endpoint", self.0.parse().unwrap());
            futures::future::ready(Ok(rsp))
        }
    }

    /// Serves [`Named`] on `listener` until the sender is dropped or used.
    fn serve(
        listener: tokio::net::TcpListener,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let address = discovery::address_of("http", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(Named(address))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        (stop, server)
    }

    /// Real calls through `b`: who answered (`error` for an error).
    async fn real_calls<S>(b: &S, n: usize) -> BTreeMap<String, usize>
    where
        S: Service<Request, Response = Response, Error = BoxError> + Clone,
    {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut req = request();
            *req.uri_mut() = "/test.Echo/Call".parse().unwrap();
            let who = match b.clone().oneshot(req).await {
                Ok(rsp) => served_by(&rsp),
                Err(_) => "error".to_string(),
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    }

    #[tokio::test]
    async fn a_stopped_endpoint_is_ejected_and_readmitted_once_it_is_back() {
        let (policy, stats) = setup(|p| {
            p.outlier.consecutive_failures = 2;
            p.outlier.base_ejection = Duration::from_millis(300);
            p.connect_timeout = Duration::from_millis(100);
        });
        let listen = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (a, b) = (listen().await.unwrap(), listen().await.unwrap());
        let a_address = discovery::address_of("http", a.local_addr().unwrap());
        let b_socket = b.local_addr().unwrap();
        let b_address = discovery::address_of("http", b_socket);
        let (_stop_a, _) = serve(a);
        let (stop_b, b_server) = serve(b);
        let discover =
            discovery::static_list([a_address.clone(), b_address.clone()], |addr: &str| {
                crate::connection::Connection::new(addr, Duration::from_millis(100)).unwrap()
            });
        let balancer = Balancer::new(discover, policy, stats.clone());

        let seen = real_calls(&balancer, 40).await;
        assert!(
            seen.contains_key(&a_address) && seen.contains_key(&b_address),
            "{seen:?}"
        );

        stop_b.send(()).unwrap();
        b_server.await.unwrap();
        // The lost connection, then each refused reconnection (one per
        // not-ready backoff) counts against b; meanwhile calls go to a.
        let mut seen = BTreeMap::new();
        let until = Instant::now() + Duration::from_secs(2);
        while !matches!(
            stats.endpoint(&b_address).state(),
            EndpointState::Ejected { .. }
        ) && Instant::now() < until
        {
            for (k, v) in real_calls(&balancer, 10).await {
                *seen.entry(k).or_default() += v;
            }
        }
        assert!(seen.get("error").copied().unwrap_or(0) <= 2, "{seen:?}");
        assert!(!seen.contains_key(&b_address), "{seen:?}");
        match stats.endpoint(&b_address).state() {
            EndpointState::Ejected { reason, .. } => {
                assert_eq!(reason, crate::stats::EjectionReason::ConnectFailure)
            }
            s => panic!("{s:?}"),
        }

        let (_stop_b, _) = serve(tokio::net::TcpListener::bind(b_socket).await.unwrap());
        tokio::time::sleep(Duration::from_millis(350)).await;
        let seen = real_calls(&balancer, 40).await;
        assert!(
            seen.contains_key(&b_address),
            "readmitted and reconnected: {seen:?}"
        );
        assert!(!seen.contains_key("error"), "{seen:?}");
        assert_eq!(stats.endpoint(&b_address).state(), EndpointState::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn track_keeps_in_flight_and_latency() {
        let stats = MeshStats::default()
            .upstream("catalog")
            .endpoint("http://a:1");
        let mut t = Track::new(
            endpoint("http://a:1", Duration::from_millis(20), false),
            stats.clone(),
            Duration::from_secs(10),
        );
        t.ready().await.unwrap();
        let one = t.call(request());
        t.ready().await.unwrap();
        let two = t.call(request());
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 2);
        one.await.unwrap();
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 1);
        drop(two);
        assert_eq!(
            stats.in_flight.load(Ordering::Relaxed),
            0,
            "a dropped call is no longer in flight"
        );
        assert_eq!(stats.ewma_micros.load(Ordering::Relaxed), 20_000);
    }
}
