//! The server stack, installed by libs/runtime in front of every service
//! through `tonic::transport::Server::builder().layer(ServerLayer::new(..))`.
//!
//! Outer to inner, and why each sits where it does (`ServerService::call`
//! marks each step; the file named holds its work):
//!
//! 1. counting: `requests` and the `in_flight` gauge see every request,
//!    shed or not, so the gauge is what the process is really holding; and
//!    the call metrics of [`crate::metrics`] (`grpc.server.call.started`,
//!    `grpc.server.call.duration` with the status the caller got);
//! 2. deadline (`deadline.rs`): the caller's `grpc-timeout` bounds
//!    everything below it, and the handler runs inside
//!    [`crate::context::with_incoming_deadline`] so its own outgoing calls
//!    never outlive the caller; when it passes, the caller gets a
//!    trailers-only DEADLINE_EXCEEDED and the handler's future is dropped
//!    (its work cancelled);
//! 3. authorization (`authorize.rs`, [`crate::authz`]): the caller's
//!    identity against the callers the policy allows for the method; a
//!    refusal is answered at once (UNAUTHENTICATED or PERMISSION_DENIED),
//!    counted per method and caller, and logged; it takes no slot of the
//!    limit below; then the rate limits (`shed.rs`, [`crate::rate_limit`]):
//!    a caller over its identity's rate, or every caller over the total, is
//!    refused at once with RESOURCE_EXHAUSTED and a pushback saying when a
//!    token is due;
//! 4. concurrency limit (`shed.rs`): beyond `max_concurrency` calls at once
//!    (or, with `adaptive_concurrency` enabled, beyond the limit latency
//!    allows, see [`crate::adaptive`]) a request is shed at once with
//!    RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`, before any work is
//!    done for it (queueing would only add latency the caller's deadline
//!    pays for); the permit is held until the inner future completes or is
//!    dropped;
//!    Below it each request message is held to its method's size limit
//!    ([`crate::message_size`]): one too large fails the call with
//!    RESOURCE_EXHAUSTED as it arrives, before it is buffered;
//! 5. fault injection ([`crate::fault`]) with the server policy, inside the
//!    limit so an injected delay occupies a slot as a slow handler would;
//! 6. the service (tonic's `Routes`), its response body boxed into
//!    [`crate::Body`] (`body.rs`) so the trailers-only answers of the
//!    layers above have the same type.
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

mod authorize;
mod body;
mod deadline;
mod shared;
mod shed;
#[cfg(test)]
mod tests;

pub use body::IntoBody;

use crate::adaptive::AdaptiveLimiter;
use crate::authz::Authorizer;
use crate::context::with_incoming_deadline;
use crate::fault::{Fault, FaultLayer, ServerFaults};
use crate::message_size::LimitedBody;
use crate::metrics::ServerMetrics;
use crate::policy::ServerPolicy;
use crate::rate_limit::RateLimits;
use crate::stats::{self, MeshStats};
use crate::status;
use bytes::Bytes;
use futures::future::BoxFuture;
use shared::{Adaptive, Limiter, Rates};
use shed::AtLimit;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{Semaphore, watch};
use tower::{Layer, Service};

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
        // 1. Counting: every request, shed or not.
        let in_flight = InFlight::start(self.stats.clone());
        // 2. The deadline (`deadline.rs`): read here, enforced around the
        // inner future below.
        let deadline = deadline::incoming(&request);
        let call = self.metrics.started(request.uri().path(), deadline);

        self.refresh();
        // 3. Authorization (`authorize.rs`), then the rate limits
        // (`shed.rs`).
        let peer = request.extensions().get::<shop_identity::Peer>();
        let path = request.uri().path();
        if let Err(status) = self.authorize(path, peer) {
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
        // 4. The concurrency limit (`shed.rs`): a slot of `max_concurrency`,
        // then one of the adaptive limit under it.
        let permit = if infrastructure {
            None
        } else {
            match self.permit() {
                Some(permit) => Some(permit),
                None => {
                    drop(in_flight);
                    let response = self.shed();
                    return Box::pin(async move { call.answer(Ok(response)) });
                }
            }
        };
        // Under the ceiling, the limit latency allows.
        let mut adaptive = None;
        if !infrastructure {
            match self.adaptive_slot() {
                Ok(slot) => adaptive = slot,
                Err(AtLimit) => {
                    drop(in_flight);
                    drop(permit);
                    let response = self.shed();
                    return Box::pin(async move { call.answer(Ok(response)) });
                }
            }
        }

        // Each request message is checked against the method's limit as it
        // arrives: one too large fails the call before it is buffered.
        let limit = self.current.request_limits.for_path(request.uri().path());
        let path = request.uri().path().to_string();
        let request = request.map(|body| crate::Body::new(LimitedBody::new(body, limit, &path)));

        // 5. and 6., fault injection and the service, are `self.inner`.
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
            let answer = deadline::enforce(deadline, future, stats).await;
            if let Some(slot) = adaptive.as_mut() {
                slot.answered();
            }
            call.answer(answer)
        })
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
