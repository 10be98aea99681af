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
//! # Retries go elsewhere
//!
//! A call the retry layer may repeat carries a [`Tried`] in each attempt's
//! extensions: the endpoints its earlier attempts (and hedges in flight)
//! went to. Those are picked only when no other endpoint is ready, so a
//! retry after a failure lands on another replica, as Envoy's
//! `previous_hosts` predicate does, rather than wherever p2c's loads point
//! (a replica that fails fast has the lowest latency estimate of all).
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

mod fail_fast;
mod p2c;
#[cfg(test)]
mod tests;
mod track;
mod tried;

pub use fail_fast::{FailFast, FailFastFuture};
pub use p2c::P2c;
pub use track::{DEFAULT_RTT, Track, TrackFuture};
pub use tried::Tried;

use crate::outlier;
use crate::policy::UpstreamPolicy;
use crate::stats::UpstreamStats;
use crate::{BoxError, Request, Response};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::sync::watch;
use tower::Service;
use tower::discover::Discover;

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
        let mut discover = Box::pin(discover);
        let changes = futures::stream::poll_fn(move |cx| {
            discover
                .as_mut()
                .poll_discover(cx)
                .map(|change| change.map(|c| c.map_err(Into::into)))
        });
        let p2c = P2c::new(Box::pin(changes), policy.clone(), stats.clone());
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
            let tried = request.as_ref().and_then(|r| r.extensions().get::<Tried>());
            balancer.get_mut().avoid(tried.cloned());
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
