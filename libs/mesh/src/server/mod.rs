//! The server stack, installed by libs/runtime in front of every service
//! through `tonic::transport::Server::builder().layer(ServerLayer::new(..))`.
//!
//! Outer to inner, and why each sits where it does:
//!
//! 1. counting: `requests` and the `in_flight` gauge see every request,
//!    shed or not, so the gauge is what the process is really holding; and
//!    the call metrics of [`crate::metrics`] (`grpc.server.call.started`,
//!    `grpc.server.call.duration` with the status the caller got);
//! 2. deadline: the caller's `grpc-timeout` bounds everything below it, and
//!    the handler runs inside [`crate::context::with_incoming_deadline`] so
//!    its own outgoing calls never outlive the caller; when it passes, the
//!    caller gets a trailers-only DEADLINE_EXCEEDED and the handler's
//!    future is dropped (its work cancelled);
//! 3. authorization ([`crate::authz`]): the caller's identity against the
//!    callers the policy allows for the method; a refusal is answered at
//!    once (UNAUTHENTICATED or PERMISSION_DENIED), counted per method and
//!    caller, and logged; it takes no slot of the limit below;
//!    then the rate limits ([`crate::rate_limit`]): a caller over its
//!    identity's rate, or every caller over the total, is refused at once
//!    with RESOURCE_EXHAUSTED and a pushback saying when a token is due;
//! 4. concurrency limit: beyond `max_concurrency` calls at once (or, with
//!    `adaptive_concurrency` enabled, beyond the limit latency allows, see
//!    [`crate::adaptive`]) a request is shed at once with
//!    RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`,
//!    before any work is done for it (queueing would only add latency the
//!    caller's deadline pays for); the permit is held until the inner
//!    future completes or is dropped;
//!    Below it each request message is held to its method's size limit
//!    ([`crate::message_size`]): one too large fails the call with
//!    RESOURCE_EXHAUSTED as it arrives, before it is buffered;
//! 5. fault injection ([`crate::fault`]) with the server policy, inside the
//!    limit so an injected delay occupies a slot as a slow handler would;
//! 6. the service (tonic's `Routes`), its response body boxed into
//!    [`crate::Body`] so the trailers-only answers of the layers above have
//!    the same type.
//!
//! Health (`/grpc.health.v1.Health/`), reflection (`/grpc.reflection.`) and
//! mesh admin (`/shop.mesh.v1.MeshAdminService/`) calls are counted and
//! bound by their deadline, but never shed or faulted (see
//! [`crate::infrastructure::is_infrastructure`]): an overloaded server must still answer its
//! health checks and let an operator look inside.
//!
//! # Streams
//!
//! The deadline, the permit and the in-flight gauge cover the inner future,
//! which for a unary call is the whole handler (tonic answers once it has
//! returned). A streaming response's body goes on being sent after that,
//! outside them.
//!
//! # Policy changes
//!
//! The policy comes from a `watch` channel. Pushback and faults follow it
//! on the next request. A new `max_concurrency` rebuilds the semaphore: the
//! next request of any connection takes its permit from the new one, while
//! calls holding permits of the old one finish on it, so right after a
//! change up to old in-flight plus the new limit may run at once, briefly.
//! A `max_concurrency` of 0 sheds every request that is not
//! infrastructure.

use crate::adaptive::AdaptiveLimiter;
use crate::authz::{Authorizer, Decision};
use crate::context::with_incoming_deadline;
use crate::fault::{Fault, FaultLayer, ServerFaults};
use crate::message_size::LimitedBody;
use crate::metrics::ServerMetrics;
use crate::policy::ServerPolicy;
use crate::rate_limit::RateLimits;
use crate::stats::{self, MeshStats};
use crate::status::{self, GRPC_TIMEOUT, PUSHBACK};
use bytes::Bytes;
use futures::future::BoxFuture;
use shared::{Adaptive, Limiter, Rates};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::{Layer, Service};

mod shared;

/// Builds the server stack around a service (tonic's `Routes`).
///
/// # Clone
///
/// Clones share the counters and the concurrency limit.
#[derive(Clone)]
pub struct ServerLayer {
    policy: watch::Receiver<Arc<ServerPolicy>>,
    stats: Arc<MeshStats>,
    metrics: Arc<ServerMetrics>,
    limiter: Arc<Mutex<Limiter>>,
    rates: Arc<Mutex<Rates>>,
    adaptive: Arc<Mutex<Adaptive>>,
    faults: FaultLayer<ServerFaults>,
}

/// Counting, deadline enforcement and the concurrency limit, in front of
/// `S` (fault injection and the body mapping are below it, see
/// [`ServerLayer`]).
///
/// # Clone
///
/// tonic clones the service per connection; clones share the counters and
/// the concurrency limit.
#[derive(Clone)]
pub struct ServerService<S> {
    inner: S,
    stats: Arc<MeshStats>,
    metrics: Arc<ServerMetrics>,
    policy: watch::Receiver<Arc<ServerPolicy>>,
    /// The policy as of the last change this clone saw.
    current: Arc<ServerPolicy>,
    /// The semaphore for `current.max_concurrency`.
    semaphore: Arc<Semaphore>,
    /// `current.authorization`, compiled.
    authorizer: Arc<Authorizer>,
    limiter: Arc<Mutex<Limiter>>,
    /// The buckets of `current.rate_limit`, shared by every connection.
    rate_limits: Arc<RateLimits>,
    rates: Arc<Mutex<Rates>>,
    /// The adaptive limit of `current`, if enabled, shared likewise.
    limiter_now: Option<Arc<AdaptiveLimiter>>,
    adaptive: Arc<Mutex<Adaptive>>,
}

/// The whole server stack around `S`.
pub type ServerStack<S> = ServerService<Fault<IntoBody<S>, ServerFaults>>;

/// Boxes the response body of `S` into [`crate::Body`].
#[derive(Debug, Clone)]
pub struct IntoBody<S> {
    inner: S,
}

/// Keeps `in_flight` up to date, however the request ends (answered,
/// timed out, or dropped because the client went away).
struct InFlight(Arc<MeshStats>);

// === impl ServerLayer ===

impl ServerLayer {
    /// The stack for `policy`, reporting into `stats.server`.
    pub fn new(policy: watch::Receiver<Arc<ServerPolicy>>, stats: Arc<MeshStats>) -> Self {
        let max = policy.borrow().max_concurrency;
        let rates = Rates::new(&policy.borrow().rate_limit);
        let adaptive = Adaptive::new(&policy.borrow());
        Self {
            adaptive: Arc::new(Mutex::new(adaptive)),
            faults: FaultLayer::server(policy.clone(), stats.clone()),
            limiter: Arc::new(Mutex::new(Limiter::new(max))),
            rates: Arc::new(Mutex::new(rates)),
            metrics: Arc::new(ServerMetrics::new()),
            policy,
            stats,
        }
    }

    /// Draws injected faults from `rng` (a seeded one in tests).
    pub fn with_rng<R: rand::RngCore + Send + 'static>(mut self, rng: R) -> Self {
        self.faults = self.faults.with_rng(rng);
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerStack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut policy = self.policy.clone();
        let current = policy.borrow_and_update().clone();
        let semaphore = self
            .limiter
            .lock()
            .expect("not poisoned")
            .semaphore_for(current.max_concurrency);
        let rate_limits = self
            .rates
            .lock()
            .expect("not poisoned")
            .limits_for(&current.rate_limit);
        let limiter_now = self
            .adaptive
            .lock()
            .expect("not poisoned")
            .limiter_for(&current);
        ServerService {
            inner: self.faults.layer(IntoBody { inner }),
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            policy,
            authorizer: Arc::new(Authorizer::new(&current.authorization)),
            current,
            semaphore,
            limiter: self.limiter.clone(),
            rate_limits,
            rates: self.rates.clone(),
            limiter_now,
            adaptive: self.adaptive.clone(),
        }
    }
}

impl std::fmt::Debug for ServerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLayer")
            .field("policy", &*self.policy.borrow())
            .finish_non_exhaustive()
    }
}

// === impl InFlight ===

impl InFlight {
    fn start(stats: Arc<MeshStats>) -> Self {
        stats::incr(&stats.server.requests);
        stats.server.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.server.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl ServerService ===

impl<S> ServerService<S> {
    /// Picks up a changed policy and, if its limit changed, the rebuilt
    /// semaphore.
    fn refresh(&mut self) {
        if !self.policy.has_changed().unwrap_or(false) {
            return;
        }
        self.current = self.policy.borrow_and_update().clone();
        self.authorizer = Arc::new(Authorizer::new(&self.current.authorization));
        self.semaphore = self
            .limiter
            .lock()
            .expect("not poisoned")
            .semaphore_for(self.current.max_concurrency);
        self.rate_limits = self
            .rates
            .lock()
            .expect("not poisoned")
            .limits_for(&self.current.rate_limit);
        self.limiter_now = self
            .adaptive
            .lock()
            .expect("not poisoned")
            .limiter_for(&self.current);
    }

    /// The trailers-only answer to a call over a rate limit, counted.
    fn rate_limited(&self, retry_after: std::time::Duration) -> crate::Response {
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
    fn shed(&self) -> crate::Response {
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

impl<S, B> Service<http::Request<B>> for ServerService<S>
where
    S: Service<crate::Request, Response = crate::Response>,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = crate::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<crate::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = InFlight::start(self.stats.clone());
        let deadline = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(status::parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let call = self.metrics.started(request.uri().path(), deadline);

        self.refresh();
        let peer = request.extensions().get::<shop_identity::Peer>();
        let path = request.uri().path();
        let decision = self.authorizer.decide(path, peer);
        if decision != Decision::Allow {
            let caller = peer.and_then(|p| p.identity.as_ref()).map(|id| id.as_str());
            let status = match decision {
                Decision::Unauthenticated => tonic::Status::unauthenticated(
                    "a client certificate with a SPIFFE ID of this mesh's trust bundle is required",
                ),
                _ => tonic::Status::permission_denied(format!(
                    "{} may not call {path}",
                    caller.unwrap_or("this caller")
                )),
            };
            tracing::warn!(method = path, caller = caller.unwrap_or(""), code = ?status.code(), "call refused by authorization");
            self.stats
                .server
                .denied(counted_method(path), caller, status.code());
            drop(in_flight);
            // Answered when polled: inside the call's span, which records
            // the status.
            let response = status::response(status);
            return Box::pin(async move { call.answer(Ok(response)) });
        }

        let infrastructure = crate::infrastructure::is_infrastructure(request.uri().path());
        if !infrastructure {
            let caller = peer.and_then(|p| p.identity.as_ref()).map(|id| id.as_str());
            if let Err(retry_after) = self.rate_limits.check(caller) {
                drop(in_flight);
                let response = self.rate_limited(retry_after);
                return Box::pin(async move { call.answer(Ok(response)) });
            }
        }
        let permit = if infrastructure {
            None
        } else {
            match self.semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    drop(in_flight);
                    let response = self.shed();
                    return Box::pin(async move { call.answer(Ok(response)) });
                }
            }
        };
        // Under the ceiling, the limit latency allows.
        let mut adaptive = None;
        if !infrastructure {
            let limit = self
                .limiter_now
                .as_ref()
                .map_or(self.current.max_concurrency, |l| l.limit());
            self.stats
                .server
                .concurrency_limit
                .store(limit as u64, Ordering::Relaxed);
            if let Some(limiter) = &self.limiter_now {
                match limiter.try_acquire() {
                    Some(slot) => adaptive = Some(slot),
                    None => {
                        drop(in_flight);
                        drop(permit);
                        let response = self.shed();
                        return Box::pin(async move { call.answer(Ok(response)) });
                    }
                }
            }
        }

        // Each request message is checked against the method's limit as it
        // arrives: one too large fails the call before it is buffered.
        let limit = self.current.request_limits.for_path(request.uri().path());
        let path = request.uri().path().to_string();
        let request = request.map(|body| crate::Body::new(LimitedBody::new(body, limit, &path)));

        // tonic runs the handler when the future is polled, so it is the
        // polling that must happen inside the deadline's scope.
        let future = with_incoming_deadline(deadline, self.inner.call(request));
        let stats = self.stats.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            let _permit = permit;
            let mut adaptive = adaptive;
            let Some(deadline) = deadline else {
                let answer = future.await;
                if let Some(slot) = adaptive.as_mut() {
                    slot.answered();
                }
                return call.answer(answer);
            };
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
            if let Some(slot) = adaptive.as_mut() {
                slot.answered();
            }
            call.answer(answer)
        })
    }
}

/// The method a refusal is counted under: its path if the contracts (or
/// reflection) define it, else `other`, so that callers sending made-up
/// paths cannot grow the table.
fn counted_method(path: &str) -> &str {
    const REFLECTION: &[&str] = &[
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    if REFLECTION.contains(&path) || shop_proto::methods().iter().any(|m| m.path == path) {
        path
    } else {
        "other"
    }
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

impl<S: std::fmt::Debug> std::fmt::Debug for ServerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerService")
            .field("inner", &self.inner)
            .field("policy", &self.current)
            .finish_non_exhaustive()
    }
}

// === impl IntoBody ===

impl<S, B, ResBody> Service<http::Request<B>> for IntoBody<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<crate::BoxError>,
{
    type Response = crate::Response;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<ResBody>) -> crate::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::TryFutureExt as _;
        self.inner
            .call(request)
            .map_ok(|response| response.map(crate::Body::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::incoming_deadline;
    use crate::status::header_code;
    use std::time::Duration;
    use tower::ServiceExt;
    use tower_test::mock;

    fn request(path: &str, timeout: Option<&'static str>) -> crate::Request {
        let mut builder = http::Request::builder().uri(path);
        if let Some(t) = timeout {
            builder = builder.header(GRPC_TIMEOUT, t);
        }
        builder.body(crate::Body::empty()).unwrap()
    }

    fn policy(max_concurrency: usize) -> watch::Receiver<Arc<ServerPolicy>> {
        let (_tx, rx) = watch::channel(Arc::new(ServerPolicy {
            max_concurrency,
            shed_pushback: Duration::from_millis(250),
            ..ServerPolicy::default()
        }));
        rx
    }

    const PATH: &str = "/shop.catalog.v1.CatalogService/GetProduct";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_answers_deadline_exceeded_at_its_deadline() {
        let stats = Arc::new(MeshStats::default());
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let slow = tower::service_fn(move |_req: crate::Request| {
            let seen = seen2.clone();
            async move {
                *seen.lock().unwrap() = Some(incoming_deadline());
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
            }
        });
        let svc = ServerLayer::new(policy(8), stats.clone()).layer(slow);

        let start = Instant::now();
        let rsp = svc.oneshot(request(PATH, Some("300m"))).await.unwrap();

        assert_eq!(header_code(&rsp), Some(tonic::Code::DeadlineExceeded));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(
            *seen.lock().unwrap(),
            Some(Some(start + Duration::from_millis(300))),
            "the handler sees the incoming deadline"
        );
        assert_eq!(stats::read(&stats.server.deadline_exceeded), 1);
        assert_eq!(stats.server.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_grpc_timeout_there_is_no_deadline() {
        let stats = Arc::new(MeshStats::default());
        let svc = ServerLayer::new(policy(8), stats.clone()).layer(tower::service_fn(
            |_req: crate::Request| async {
                assert_eq!(incoming_deadline(), None);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
            },
        ));
        let rsp = svc.oneshot(request(PATH, None)).await.unwrap();
        assert_eq!(header_code(&rsp), None);
        assert_eq!(stats::read(&stats.server.requests), 1);
        assert_eq!(stats::read(&stats.server.deadline_exceeded), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_limit_calls_are_shed_with_pushback_until_one_finishes() {
        let stats = Arc::new(MeshStats::default());
        let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
        let svc = ServerLayer::new(policy(2), stats.clone()).layer(inner);
        let call = |path: &'static str| {
            let svc = svc.clone();
            tokio::spawn(svc.oneshot(request(path, None)))
        };

        let first = call(PATH);
        let (_, first_send) = handle.next_request().await.unwrap();
        let second = call(PATH);
        let (_, _second_send) = handle.next_request().await.unwrap();

        let start = Instant::now();
        let shed = call(PATH).await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "shed at once");
        assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));
        assert_eq!(shed.headers()[PUSHBACK], "250");
        assert_eq!(stats::read(&stats.server.shed), 1);
        assert_eq!(stats.server.in_flight.load(Ordering::Relaxed), 2);

        first_send.send_response(http::Response::new(crate::Body::empty()));
        let ok = first.await.unwrap().unwrap();
        assert_eq!(header_code(&ok), None);

        let third = call(PATH);
        let (_, third_send) = handle
            .next_request()
            .await
            .expect("a freed slot serves a new call");
        third_send.send_response(http::Response::new(crate::Body::empty()));
        assert_eq!(header_code(&third.await.unwrap().unwrap()), None);
        assert_eq!(stats::read(&stats.server.shed), 1);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn with_adaptive_concurrency_queueing_lowers_the_limit_and_the_excess_is_shed() {
        use std::sync::atomic::AtomicU64;
        let stats = Arc::new(MeshStats::default());
        let (_tx, policy) = watch::channel(Arc::new(ServerPolicy {
            max_concurrency: 256,
            adaptive_concurrency: crate::adaptive::AdaptivePolicy {
                enabled: true,
                min_limit: 4,
                initial_limit: 32,
                ..Default::default()
            },
            ..ServerPolicy::default()
        }));
        // A handler whose latency the test sets, in ms.
        let latency = Arc::new(AtomicU64::new(10));
        let set = latency.clone();
        let svc = ServerLayer::new(policy, stats.clone()).layer(tower::service_fn(
            move |_req: crate::Request| {
                let ms = latency.load(Ordering::Relaxed);
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
                }
            },
        ));
        // `waves` rounds of `calls` calls at once; how many were shed.
        let run = |waves: usize, calls: usize| {
            let svc = svc.clone();
            async move {
                let mut shed = 0;
                for _ in 0..waves {
                    let answers = futures::future::join_all(
                        (0..calls).map(|_| svc.clone().oneshot(request(PATH, None))),
                    )
                    .await;
                    shed += answers
                        .into_iter()
                        .filter(|a| {
                            header_code(a.as_ref().unwrap()) == Some(tonic::Code::ResourceExhausted)
                        })
                        .count();
                }
                shed
            }
        };
        // Steady: 16 at once, 10 ms each, for 5 s: nothing shed.
        assert_eq!(run(500, 16).await, 0);
        assert!(stats::read(&stats.server.concurrency_limit) >= 32);
        // Calls queue somewhere below: 8 times slower. The limit falls and
        // what exceeds it is shed at once.
        set.store(80, Ordering::Relaxed);
        let shed = run(80, 32).await;
        let limit = stats::read(&stats.server.concurrency_limit);
        assert!(limit < 16, "the limit is still {limit}");
        assert!(shed > 0);
        assert_eq!(stats::read(&stats.server.shed) as usize, shed);
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_are_never_shed() {
        let stats = Arc::new(MeshStats::default());
        let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
        let svc = ServerLayer::new(policy(1), stats.clone()).layer(inner);
        let call = |path: &'static str| {
            let svc = svc.clone();
            tokio::spawn(svc.oneshot(request(path, None)))
        };

        let _busy = call(PATH);
        let (_, _busy_send) = handle.next_request().await.unwrap();
        let shed = call(PATH).await.unwrap().unwrap();
        assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));

        for _ in 0..3 {
            let health = call(HEALTH);
            let (req, send) = handle
                .next_request()
                .await
                .expect("health reaches the service");
            assert_eq!(req.uri().path(), HEALTH);
            send.send_response(http::Response::new(crate::Body::empty()));
            assert_eq!(header_code(&health.await.unwrap().unwrap()), None);
        }
        assert_eq!(stats::read(&stats.server.shed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_limit_applies_to_the_next_request() {
        let stats = Arc::new(MeshStats::default());
        let (tx, rx) = watch::channel(Arc::new(ServerPolicy {
            max_concurrency: 1,
            ..ServerPolicy::default()
        }));
        let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
        let svc = ServerLayer::new(rx, stats.clone()).layer(inner);
        let call = || tokio::spawn(svc.clone().oneshot(request(PATH, None)));

        let _busy = call();
        let _held = handle.next_request().await.unwrap();
        let shed = call().await.unwrap().unwrap();
        assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));

        tx.send(Arc::new(ServerPolicy {
            max_concurrency: 3,
            ..ServerPolicy::default()
        }))
        .unwrap();
        let _a = call();
        let _b = call();
        assert!(handle.next_request().await.is_some());
        assert!(handle.next_request().await.is_some());
        assert_eq!(stats::read(&stats.server.shed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn server_faults_abort_calls_but_not_health_checks() {
        let stats = Arc::new(MeshStats::default());
        let (_tx, rx) = watch::channel(Arc::new(ServerPolicy {
            fault: crate::policy::FaultPolicy {
                abort_percent: 100.0,
                ..Default::default()
            },
            ..ServerPolicy::default()
        }));
        let ok = tower::service_fn(|_req: crate::Request| async {
            Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
        });
        let svc = ServerLayer::new(rx, stats.clone()).layer(ok);
        let rsp = svc.clone().oneshot(request(PATH, None)).await.unwrap();
        assert_eq!(header_code(&rsp), Some(tonic::Code::Unavailable));
        let rsp = svc.oneshot(request(HEALTH, None)).await.unwrap();
        assert_eq!(header_code(&rsp), None);
        assert_eq!(stats::read(&stats.server.faults_aborted), 1);
    }

    #[tokio::test]
    async fn a_real_tonic_server_sheds_calls_but_answers_mesh_admin() {
        use shop_proto::shop::catalog::v1 as catalog;
        use shop_proto::shop::mesh::v1 as pb;
        let stats = Arc::new(MeshStats::default());
        let admin = Arc::new(crate::admin::MeshAdmin::new(stats.clone(), policy(0)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(ServerLayer::new(policy(0), stats.clone()))
                .add_service(pb::mesh_admin_service_server::MeshAdminServiceServer::from_arc(admin))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        stopped.await.ok();
                    },
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        let err = catalog::catalog_service_client::CatalogServiceClient::new(channel.clone())
            .get_product(catalog::GetProductRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(err.metadata().get(PUSHBACK.as_str()).unwrap(), "250");

        let mut request = tonic::Request::new(pb::GetStatsRequest {});
        request.set_timeout(Duration::from_secs(5));
        let counters = pb::mesh_admin_service_client::MeshAdminServiceClient::new(channel)
            .get_stats(request)
            .await
            .unwrap()
            .into_inner()
            .server
            .unwrap();
        assert_eq!(
            (counters.requests, counters.in_flight, counters.shed),
            (2, 1, 1)
        );

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
