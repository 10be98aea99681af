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
//!
//! The layer, its service and future are here; the client and server
//! fault sources in `source.rs`.

mod source;
#[cfg(test)]
mod tests;

pub use source::{ClientFaults, ServerFaults};

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

// === impl FaultSource ===

impl<F: FnMut(&str) -> FaultPolicy> FaultSource for F {
    fn fault(&mut self, path: &str) -> FaultPolicy {
        self(path)
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
