//! Load balancing across an upstream's endpoints: power of two choices over
//! peak-EWMA latency, with outlier ejection per endpoint.
//!
//! [`Balancer::new`] takes the endpoints as a discovery stream
//! ([`crate::discovery`]) and stacks, per endpoint, outer to inner:
//!
//! 1. [`PeakEwma`](tower::load::PeakEwma) (tower): the load p2c compares,
//!    the peak-EWMA of response latency times the calls in flight plus one,
//!    starting from [`DEFAULT_RTT`] and decaying over the policy's
//!    `ewma_decay`; a call is complete when its response headers arrive
//!    ([`CompleteOnResponse`]).
//! 2. [`Outlier`]: not ready while ejected.
//! 3. [`Track`]: the endpoint's `in_flight` gauge and `ewma_micros` in the
//!    stats (a peak-EWMA of its own, computed the same way, since tower's is
//!    private).
//!
//! # Why the outlier detector sits inside the load measurement
//!
//! p2c only ever picks among *ready* endpoints and checks the pick is still
//! ready right before dispatching, so an ejected endpoint, whose
//! `poll_ready` is pending, is never chosen whatever its load. And the EWMA
//! only ever measures real calls: the detector never answers a call itself
//! (it gates readiness, it does not fail requests), so no instant,
//! synthetic failure is fed to the EWMA to make an ejected endpoint look
//! fast. Fast *real* failures (connection refused) do pull its estimate
//! down, slowly (the decay is seconds, failures take microseconds): they
//! are the outlier detector's to act on, after a few of them.
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
//! The balancer runs in a [`Buffer`](tower::buffer::Buffer) task (bound
//! [`BUFFER_CAPACITY`]) so that [`Balancer`] is `Clone` and shared by all
//! callers of the upstream.

use crate::outlier::{EjectionPool, Outlier};
use crate::policy::UpstreamPolicy;
use crate::stats::{EndpointStats, UpstreamStats};
use crate::{BoxError, Request, Response};
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower::discover::{Change, Discover};
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};

/// The latency assumed of an endpoint before it has answered.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Calls waiting for the balancer task at most; more wait for room.
pub const BUFFER_CAPACITY: usize = 1024;

/// The future of a [`Balancer`] call.
pub type ResponseFuture =
    tower::buffer::future::ResponseFuture<BoxFuture<'static, Result<Response, BoxError>>>;

/// P2C over peak-EWMA across an upstream's endpoints; `Clone` (all clones
/// share one balancer); never waits for an endpoint longer than the policy's
/// `connect_timeout`.
#[derive(Clone)]
pub struct Balancer {
    inner: tower::buffer::Buffer<Request, BoxFuture<'static, Result<Response, BoxError>>>,
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

/// Keeps an endpoint's `in_flight` and `ewma_micros` stats.
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
#[derive(Debug)]
struct Ewma {
    nanos: f64,
    updated_at: Instant,
    decay_nanos: f64,
}

pin_project! {
    /// Maps discovered endpoint services to tracked, outlier-guarded ones,
    /// and forgets the stats of removed endpoints.
    struct Endpoints<D> {
        #[pin]
        discover: D,
        pool: Arc<EjectionPool>,
        stats: Arc<UpstreamStats>,
        decay: Duration,
    }
}

// === impl Balancer ===

impl Balancer {
    /// A balancer over the endpoints `discover` yields (plain endpoint
    /// services, keyed by address), each guarded by its own [`Outlier`] in
    /// one [`EjectionPool`], reporting into `stats`. The peak-EWMA decay is
    /// the policy's `ewma_decay` at construction; the outlier settings and
    /// `connect_timeout` are read at each decision.
    ///
    /// Spawns the balancer task: call from within a tokio runtime.
    pub fn new<D, S>(
        discover: D,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self
    where
        D: Discover<Key = String, Service = S> + Send + 'static,
        D::Error: Into<BoxError>,
        S: Service<Request, Response = Response> + Send + 'static,
        S::Error: Into<BoxError> + fmt::Display,
        S::Future: Send + 'static,
    {
        let decay = policy.borrow().ewma_decay;
        let endpoints = Endpoints {
            discover,
            pool: EjectionPool::new(policy.clone(), stats.clone()),
            stats: stats.clone(),
            decay,
        };
        let loaded = PeakEwmaDiscover::new::<Request>(
            endpoints,
            DEFAULT_RTT,
            decay,
            CompleteOnResponse::default(),
        );
        let p2c = tower::balance::p2c::Balance::new(Box::pin(loaded));
        let fail_fast = FailFast::new(p2c, policy, &stats.name);
        Self {
            inner: tower::buffer::Buffer::new(fail_fast, BUFFER_CAPACITY),
        }
    }
}

impl Service<Request> for Balancer {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.inner.call(request)
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer").finish_non_exhaustive()
    }
}

// === impl Endpoints ===

impl<D, S> futures::Stream for Endpoints<D>
where
    D: Discover<Key = String, Service = S>,
{
    type Item = Result<Change<String, Outlier<Track<S>>>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let change = match ready!(this.discover.poll_discover(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(change)) => change,
        };
        Poll::Ready(Some(Ok(match change {
            Change::Insert(address, svc) => {
                let tracked = Track::new(svc, this.stats.endpoint(&address), *this.decay);
                let guarded = Outlier::new(tracked, &address, this.pool);
                Change::Insert(address, guarded)
            }
            Change::Remove(address) => {
                this.stats.remove_endpoint(&address);
                Change::Remove(address)
            }
        })))
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
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

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
            return self.inner.call(request).map_err(Into::into).boxed();
        }
        let status =
            tonic::Status::unavailable(format!("no endpoint of {} is available", self.upstream));
        futures::future::ready(Ok(crate::status::response(status))).boxed()
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
                nanos: 0.0,
                updated_at: Instant::now(),
                decay_nanos: decay.as_nanos().max(1) as f64,
            })),
        }
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
    /// Adds a sample of `rtt` taken at `now`; the new estimate, in
    /// nanoseconds.
    fn update(&mut self, rtt: Duration, now: Instant) -> f64 {
        let rtt = rtt.as_nanos() as f64;
        if self.nanos < rtt {
            self.nanos = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.updated_at).as_nanos() as f64;
            let keep = (-elapsed / self.decay_nanos).exp();
            self.nanos = self.nanos * keep + rtt * (1.0 - keep);
        }
        self.updated_at = now;
        self.nanos
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

    async fn tally(b: &Balancer, calls: usize) -> BTreeMap<String, usize> {
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
        shareable::<Balancer>();
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
        let address = discovery::address_of(listener.local_addr().unwrap());
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
    async fn real_calls(b: &Balancer, n: usize) -> BTreeMap<String, usize> {
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
        let a_address = discovery::address_of(a.local_addr().unwrap());
        let b_socket = b.local_addr().unwrap();
        let b_address = discovery::address_of(b_socket);
        let (_stop_a, _) = serve(a);
        let (stop_b, b_server) = serve(b);
        let discover =
            discovery::static_list([a_address.clone(), b_address.clone()], |addr: &str| {
                discovery::channel(addr, Duration::from_millis(100)).unwrap()
            });
        let balancer = Balancer::new(discover, policy, stats.clone());

        let seen = real_calls(&balancer, 40).await;
        assert!(
            seen.contains_key(&a_address) && seen.contains_key(&b_address),
            "{seen:?}"
        );

        stop_b.send(()).unwrap();
        b_server.await.unwrap();
        let seen = real_calls(&balancer, 40).await;
        assert!(seen.get("error").copied().unwrap_or(0) <= 2, "{seen:?}");
        assert_eq!(
            seen.get(&a_address).copied().unwrap_or(0) + seen.get("error").copied().unwrap_or(0),
            40
        );
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
