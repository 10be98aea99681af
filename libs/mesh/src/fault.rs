//! Fault injection: delays and aborts by percentage, on either side of a
//! call, off unless configured.
//!
//! For each request a [`FaultSource`] says which [`FaultPolicy`] applies
//! (client side: the upstream's policy for the method, as
//! [`UpstreamPolicy::effective`] computes it; server side: the method's entry
//! of [`ServerPolicy::methods`], else [`ServerPolicy::fault`]). Then, each
//! drawn independently, as Envoy does:
//!
//! - with probability `delay_percent / 100` the request waits `delay` before
//!   it is passed on;
//! - with probability `abort_percent / 100` it is answered with a
//!   trailers-only `abort_code` and never reaches the inner service (after
//!   the delay, when both are drawn).
//!
//! An inactive policy costs a policy lookup and nothing else: no random
//! draw, no clone of the inner service, the inner future returned as is.
//!
//! # Order
//!
//! Innermost on both sides: on the client, below outlier detection, so an
//! endpoint with injected faults looks slow or failing to the balancer and
//! outlier detection, as a real one would; on the server, just above the
//! service, inside the deadline and the concurrency limit.

use crate::policy::{FaultPolicy, ServerPolicy, UpstreamPolicy};
use crate::stats::{self, MeshStats, UpstreamStats};
use futures::ready;
use pin_project_lite::pin_project;
use rand::{Rng, RngCore, SeedableRng};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Says which fault policy applies to a request, by its HTTP/2 path
/// (`/shop.catalog.v1.CatalogService/GetProduct`).
///
/// Implemented by [`ClientFaults`], [`ServerFaults`] and any
/// `FnMut(&str) -> FaultPolicy` closure.
pub trait FaultSource {
    /// The policy for the request at `path`.
    fn fault(&mut self, path: &str) -> FaultPolicy;
}

/// Where injected faults are counted.
#[derive(Debug, Clone, Default)]
pub enum FaultCounters {
    /// `UpstreamStats.counters.faults_delayed` / `faults_aborted`.
    Client(Arc<UpstreamStats>),
    /// `MeshStats.server.faults_delayed` / `faults_aborted`.
    Server(Arc<MeshStats>),
    /// Not counted.
    #[default]
    None,
}

/// The random source, shared by every clone of a [`Fault`] service and
/// locked only when a fault policy is active.
type SharedRng = Arc<Mutex<dyn RngCore + Send>>;

/// Builds [`Fault`] services.
#[derive(Clone)]
pub struct FaultLayer<P> {
    source: P,
    counters: FaultCounters,
    rng: SharedRng,
}

/// Injects delays and aborts in front of `S`.
///
/// # Clone
///
/// Clones share the random source and the counters; each has its own copy
/// of the [`FaultSource`].
#[derive(Clone)]
pub struct Fault<S, P> {
    inner: S,
    source: P,
    counters: FaultCounters,
    rng: SharedRng,
}

pin_project! {
    /// The response future of [`Fault`].
    ///
    /// `Inner` is the only state when no fault applies. A delayed request
    /// starts in `Delayed`; when the sleep ends it answers with the abort if
    /// one was drawn, else calls the ready inner service it holds with the
    /// request it holds and moves to `Inner`. An abort without delay starts
    /// (and ends) in `Aborted`.
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F, S, R> {
        /// Waiting for the inner service.
        Inner {
            #[pin]
            future: F,
        },
        /// Waiting out an injected delay (boxed: the rare state should not
        /// make every call's future larger).
        Delayed {
            sleep: Pin<Box<Sleep>>,
            call: Option<Box<(S, R)>>,
            abort: Option<tonic::Code>,
        },
        /// Answering an injected abort.
        Aborted {
            code: tonic::Code,
        },
    }
}

/// The client-side [`FaultSource`]: the upstream's policy, per method, as
/// the policy watch currently has it.
#[derive(Debug, Clone)]
pub struct ClientFaults {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    current: Arc<UpstreamPolicy>,
}

/// The server-side [`FaultSource`]: `ServerPolicy.methods[method]`, falling
/// back to `ServerPolicy.fault`. Health, reflection and mesh admin calls
/// (see [`crate::infrastructure::is_infrastructure`]) are never faulted.
#[derive(Debug, Clone)]
pub struct ServerFaults {
    policy: watch::Receiver<Arc<ServerPolicy>>,
    current: Arc<ServerPolicy>,
}

/// The method name of an HTTP/2 path (`GetProduct`).
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

// === impl FaultSource ===

impl<F: FnMut(&str) -> FaultPolicy> FaultSource for F {
    fn fault(&mut self, path: &str) -> FaultPolicy {
        self(path)
    }
}

// === impl ClientFaults ===

impl ClientFaults {
    /// Follows `policy`.
    pub fn new(mut policy: watch::Receiver<Arc<UpstreamPolicy>>) -> Self {
        let current = policy.borrow_and_update().clone();
        Self { policy, current }
    }
}

impl FaultSource for ClientFaults {
    /// The same as `UpstreamPolicy::effective(path).fault`, without
    /// computing the rest of the effective policy on every request.
    fn fault(&mut self, path: &str) -> FaultPolicy {
        if self.policy.has_changed().unwrap_or(false) {
            self.current = self.policy.borrow_and_update().clone();
        }
        self.current
            .methods
            .get(method_name(path))
            .and_then(|m| m.fault)
            .unwrap_or(self.current.fault)
    }
}

// === impl ServerFaults ===

impl ServerFaults {
    /// Follows `policy`.
    pub fn new(mut policy: watch::Receiver<Arc<ServerPolicy>>) -> Self {
        let current = policy.borrow_and_update().clone();
        Self { policy, current }
    }
}

impl FaultSource for ServerFaults {
    fn fault(&mut self, path: &str) -> FaultPolicy {
        if crate::infrastructure::is_infrastructure(path) {
            return FaultPolicy::default();
        }
        if self.policy.has_changed().unwrap_or(false) {
            self.current = self.policy.borrow_and_update().clone();
        }
        self.current
            .methods
            .get(method_name(path))
            .copied()
            .unwrap_or(self.current.fault)
    }
}

// === impl FaultCounters ===

impl FaultCounters {
    fn delayed(&self) {
        match self {
            FaultCounters::Client(s) => stats::incr(&s.counters.faults_delayed),
            FaultCounters::Server(s) => stats::incr(&s.server.faults_delayed),
            FaultCounters::None => {}
        }
    }

    fn aborted(&self) {
        match self {
            FaultCounters::Client(s) => stats::incr(&s.counters.faults_aborted),
            FaultCounters::Server(s) => stats::incr(&s.server.faults_aborted),
            FaultCounters::None => {}
        }
    }
}

// === impl FaultLayer ===

impl<P> FaultLayer<P> {
    /// Faults as `source` says, counted in `counters`, drawn from an
    /// OS-seeded [`rand::rngs::StdRng`].
    pub fn new(source: P, counters: FaultCounters) -> Self {
        Self {
            source,
            counters,
            rng: Arc::new(Mutex::new(rand::rngs::StdRng::from_os_rng())),
        }
    }

    /// Draws from `rng` instead (a seeded one in tests).
    pub fn with_rng<R: RngCore + Send + 'static>(mut self, rng: R) -> Self {
        self.rng = Arc::new(Mutex::new(rng));
        self
    }
}

impl FaultLayer<ClientFaults> {
    /// Client side: the faults of `policy`, counted in `stats.counters`.
    pub fn client(policy: watch::Receiver<Arc<UpstreamPolicy>>, stats: Arc<UpstreamStats>) -> Self {
        Self::new(ClientFaults::new(policy), FaultCounters::Client(stats))
    }
}

impl FaultLayer<ServerFaults> {
    /// Server side: the faults of `policy`, counted in `stats.server`.
    pub fn server(policy: watch::Receiver<Arc<ServerPolicy>>, stats: Arc<MeshStats>) -> Self {
        Self::new(ServerFaults::new(policy), FaultCounters::Server(stats))
    }
}

impl<S, P: Clone> Layer<S> for FaultLayer<P> {
    type Service = Fault<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            source: self.source.clone(),
            counters: self.counters.clone(),
            rng: self.rng.clone(),
        }
    }
}

impl<P> std::fmt::Debug for FaultLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultLayer")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

// === impl Fault ===

/// What was drawn for one request.
struct Draw {
    delay: bool,
    abort: bool,
}

impl<S, P> Fault<S, P> {
    fn draw(&self, policy: &FaultPolicy) -> Draw {
        let mut rng = self.rng.lock().expect("not poisoned");
        let mut hit = |percent: f64| percent > 0.0 && rng.random::<f64>() * 100.0 < percent;
        let delay = hit(policy.delay_percent) && !policy.delay.is_zero();
        let abort = hit(policy.abort_percent);
        Draw { delay, abort }
    }
}

impl<S, P, B> Service<http::Request<B>> for Fault<S, P>
where
    S: Service<http::Request<B>, Response = crate::Response> + Clone,
    P: FaultSource,
{
    type Response = crate::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, http::Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let policy = self.source.fault(request.uri().path());
        if !policy.is_active() {
            return ResponseFuture::Inner {
                future: self.inner.call(request),
            };
        }
        let draw = self.draw(&policy);
        if draw.delay {
            self.counters.delayed();
        }
        if draw.abort {
            self.counters.aborted();
        }
        match draw {
            Draw {
                delay: false,
                abort: false,
            } => ResponseFuture::Inner {
                future: self.inner.call(request),
            },
            Draw {
                delay: false,
                abort: true,
            } => ResponseFuture::Aborted {
                code: policy.abort_code.0,
            },
            Draw {
                delay: true,
                abort: true,
            } => ResponseFuture::Delayed {
                sleep: Box::pin(tokio::time::sleep(policy.delay)),
                call: None,
                abort: Some(policy.abort_code.0),
            },
            Draw {
                delay: true,
                abort: false,
            } => {
                // The ready service goes with the request; this one's clone
                // is driven to readiness again by the next `poll_ready`.
                let clone = self.inner.clone();
                ResponseFuture::Delayed {
                    sleep: Box::pin(tokio::time::sleep(policy.delay)),
                    call: Some(Box::new((
                        std::mem::replace(&mut self.inner, clone),
                        request,
                    ))),
                    abort: None,
                }
            }
        }
    }
}

impl<S: std::fmt::Debug, P> std::fmt::Debug for Fault<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault")
            .field("inner", &self.inner)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

// === impl ResponseFuture ===

fn aborted(code: tonic::Code) -> crate::Response {
    crate::status::response(tonic::Status::new(code, "fault injected by mesh policy"))
}

impl<F, S, B, E> Future for ResponseFuture<F, S, http::Request<B>>
where
    F: Future<Output = Result<crate::Response, E>>,
    S: Service<http::Request<B>, Future = F, Response = crate::Response, Error = E>,
{
    type Output = Result<crate::Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ResponseFutureProj::Inner { future } => return future.poll(cx),
                ResponseFutureProj::Aborted { code } => return Poll::Ready(Ok(aborted(*code))),
                ResponseFutureProj::Delayed { sleep, call, abort } => {
                    ready!(sleep.as_mut().poll(cx));
                    if let Some(code) = *abort {
                        return Poll::Ready(Ok(aborted(code)));
                    }
                    let (mut service, request) = *call.take().expect("polled after completion");
                    let future = service.call(request);
                    self.set(ResponseFuture::Inner { future });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GrpcCode, MethodPolicy};
    use crate::status::header_code;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{ServiceExt, service_fn};

    const PATH: &str = "/shop.catalog.v1.CatalogService/GetProduct";

    fn request() -> crate::Request {
        http::Request::builder()
            .uri(PATH)
            .body(crate::Body::empty())
            .unwrap()
    }

    /// An inner service that answers OK at once and counts its calls.
    fn counting() -> (
        impl Service<crate::Request, Response = crate::Response, Error = crate::BoxError> + Clone,
        Arc<AtomicU64>,
    ) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let svc = service_fn(move |_req: crate::Request| {
            c.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty())) }
        });
        (svc, calls)
    }

    fn seeded<P>(layer: FaultLayer<P>) -> FaultLayer<P> {
        layer.with_rng(rand::rngs::StdRng::seed_from_u64(7))
    }

    #[tokio::test(start_paused = true)]
    async fn abort_and_delay_percentages_hold_within_two_points() {
        let policy = FaultPolicy {
            delay_percent: 30.0,
            delay: Duration::from_millis(50),
            abort_percent: 10.0,
            abort_code: GrpcCode(tonic::Code::Unavailable),
        };
        let stats = Arc::new(MeshStats::default());
        let layer = seeded(FaultLayer::new(
            move |_: &str| policy,
            FaultCounters::Server(stats.clone()),
        ));
        let (inner, calls) = counting();
        let mut svc = layer.layer(inner);

        const N: u64 = 10_000;
        let (mut delayed, mut aborted) = (0u64, 0u64);
        for _ in 0..N {
            let start = Instant::now();
            let rsp = svc.ready().await.unwrap().call(request()).await.unwrap();
            if start.elapsed() >= Duration::from_millis(50) {
                delayed += 1;
            }
            if header_code(&rsp) == Some(tonic::Code::Unavailable) {
                aborted += 1;
            }
        }

        let pct = |n: u64| n as f64 * 100.0 / N as f64;
        assert!(
            (pct(delayed) - 30.0).abs() <= 2.0,
            "delayed {}%",
            pct(delayed)
        );
        assert!(
            (pct(aborted) - 10.0).abs() <= 2.0,
            "aborted {}%",
            pct(aborted)
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            N - aborted,
            "aborts skip the inner service"
        );
        assert_eq!(stats::read(&stats.server.faults_delayed), delayed);
        assert_eq!(stats::read(&stats.server.faults_aborted), aborted);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inactive_policy_passes_the_request_through_untouched() {
        let (mut svc, mut handle) =
            tower_test::mock::spawn_layer::<crate::Request, crate::Response, _>(FaultLayer::new(
                |_: &str| FaultPolicy::default(),
                FaultCounters::None,
            ));
        assert!(svc.poll_ready().is_ready());
        let mut req = request();
        req.headers_mut()
            .insert("x-mark", http::HeaderValue::from_static("1"));
        let fut = svc.call(req);
        let (seen, send) = handle
            .next_request()
            .await
            .expect("the request reaches the inner service");
        assert_eq!(seen.uri().path(), PATH);
        assert_eq!(seen.headers()["x-mark"], "1");
        send.send_response(http::Response::new(crate::Body::empty()));
        let rsp = fut.await.unwrap();
        assert_eq!(header_code(&rsp), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inactive_policy_never_draws_from_the_rng() {
        /// Panics if asked for a number.
        struct Untouchable;
        impl RngCore for Untouchable {
            fn next_u32(&mut self) -> u32 {
                panic!("drew a random number for an inactive policy")
            }
            fn next_u64(&mut self) -> u64 {
                panic!("drew a random number for an inactive policy")
            }
            fn fill_bytes(&mut self, _: &mut [u8]) {
                panic!("drew a random number for an inactive policy")
            }
        }
        let layer = FaultLayer::new(|_: &str| FaultPolicy::default(), FaultCounters::None)
            .with_rng(Untouchable);
        let (inner, calls) = counting();
        let svc = layer.layer(inner);
        for _ in 0..10 {
            svc.clone().oneshot(request()).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::Relaxed), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_then_abort_never_reaches_the_inner_service() {
        let policy = FaultPolicy {
            delay_percent: 100.0,
            delay: Duration::from_millis(200),
            abort_percent: 100.0,
            abort_code: GrpcCode(tonic::Code::ResourceExhausted),
        };
        let layer = seeded(FaultLayer::new(move |_: &str| policy, FaultCounters::None));
        let (inner, calls) = counting();
        let start = Instant::now();
        let rsp = layer.layer(inner).oneshot(request()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(header_code(&rsp), Some(tonic::Code::ResourceExhausted));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn client_faults_follow_method_overrides_and_policy_changes() {
        let mut policy: UpstreamPolicy = toml_like_policy();
        policy.methods.insert(
            "GetProduct".into(),
            MethodPolicy {
                fault: Some(FaultPolicy {
                    abort_percent: 100.0,
                    ..FaultPolicy::default()
                }),
                ..MethodPolicy::default()
            },
        );
        let (tx, rx) = watch::channel(Arc::new(policy.clone()));
        let stats = Arc::new(MeshStats::default());
        let upstream = stats.upstream("catalog");
        let layer = seeded(FaultLayer::client(rx, upstream.clone()));
        let (inner, calls) = counting();
        let svc = layer.layer(inner);

        assert_eq!(
            ClientFaults::new(tx.subscribe()).fault(PATH),
            policy.effective(PATH).fault,
            "the same as the effective policy's"
        );
        let rsp = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(header_code(&rsp), Some(tonic::Code::Unavailable));
        assert_eq!(stats::read(&upstream.counters.faults_aborted), 1);

        policy.methods.clear();
        tx.send(Arc::new(policy)).unwrap();
        let rsp = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(header_code(&rsp), None);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn server_faults_use_the_method_entry_and_spare_health_checks() {
        let abort = FaultPolicy {
            abort_percent: 100.0,
            abort_code: GrpcCode(tonic::Code::Internal),
            ..FaultPolicy::default()
        };
        let policy = ServerPolicy {
            fault: abort,
            methods: [("ListProducts".to_string(), FaultPolicy::default())].into(),
            ..ServerPolicy::default()
        };
        let (_tx, rx) = watch::channel(Arc::new(policy));
        let mut source = ServerFaults::new(rx);
        assert_eq!(source.fault(PATH), abort);
        assert!(
            !source
                .fault("/shop.catalog.v1.CatalogService/ListProducts")
                .is_active()
        );
        assert!(!source.fault("/grpc.health.v1.Health/Check").is_active());
    }

    fn toml_like_policy() -> UpstreamPolicy {
        UpstreamPolicy {
            keepalive: crate::policy::KeepalivePolicy::default(),
            throttle: Default::default(),
            identity: None,
            endpoints: vec!["http://127.0.0.1:7102".into()],
            dns: None,
            dns_refresh: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            ewma_decay: Duration::from_secs(10),
            retry: Default::default(),
            hedge: None,
            outlier: Default::default(),
            subsets: vec![],
            fault: FaultPolicy::default(),
            methods: Default::default(),
        }
    }
}
