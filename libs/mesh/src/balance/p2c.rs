//! [`P2c`]: power of two choices over the endpoints' loads.

use super::{EndpointFuture, Track, Tried};
use crate::outlier::{EjectionPool, Outlier};
use crate::policy::UpstreamPolicy;
use crate::stats::UpstreamStats;
use crate::{BoxError, Request, Response};
use futures::Stream;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;
use tower::discover::Change;

/// A boxed stream of endpoint changes.
type Changes<E> = Pin<Box<dyn Stream<Item = Result<Change<String, E>, BoxError>> + Send>>;

/// Power of two choices over the endpoints' loads; see the module docs.
pub struct P2c<E> {
    discover: Option<Changes<E>>,
    endpoints: Vec<(Arc<str>, Outlier<Track<E>>)>,
    pool: Arc<EjectionPool>,
    stats: Arc<UpstreamStats>,
    decay: Duration,
    /// Where a new `ewma_decay` comes from.
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    rng: SmallRng,
    /// The endpoint `poll_ready` found ready, for the next `call`.
    ready: Option<usize>,
    /// Where the earlier attempts of the call about to be made went.
    tried: Option<Tried>,
}

impl<E> P2c<E>
where
    E: Service<Request, Response = Response>,
    E::Error: Into<BoxError> + fmt::Display,
{
    /// A balancer over the endpoints `changes` yields, following `policy`.
    pub(super) fn new(
        changes: Changes<E>,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        let decay = policy.borrow().ewma_decay;
        let mut decay_watch = policy.clone();
        decay_watch.mark_unchanged();
        Self {
            discover: Some(changes),
            endpoints: Vec::new(),
            pool: EjectionPool::new(policy, stats.clone()),
            stats,
            decay,
            policy: decay_watch,
            rng: SmallRng::from_os_rng(),
            ready: None,
            tried: None,
        }
    }

    /// Makes the next pick avoid the endpoints in `tried` (the call's
    /// earlier attempts) while another is ready, and record its own.
    pub(super) fn avoid(&mut self, tried: Option<Tried>) {
        self.tried = tried;
    }

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
                    match self.endpoints.iter().position(|(a, _)| **a == address) {
                        Some(i) => self.endpoints[i].1 = guarded,
                        None => self.endpoints.push((address.into(), guarded)),
                    }
                }
                Change::Remove(address) => {
                    if let Some(i) = self.endpoints.iter().position(|(a, _)| **a == address) {
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
        // Endpoints this call tried already are picked only if no other is
        // ready (empty, and not allocated, for a first attempt).
        let tried = self.tried.as_ref().map(|t| t.among(&self.endpoints));
        let fresh = |i: usize| tried.as_ref().is_none_or(|t| !t.contains(&i));
        let mut fallback = None;
        for (i, ready) in [(a, a_ready), (b, b_ready)] {
            if ready {
                if fresh(i) {
                    self.ready = Some(i);
                    return Poll::Ready(Ok(()));
                }
                fallback.get_or_insert(i);
            }
        }
        // Neither choice will do: any endpoint that is ready (polling each
        // also registers for the moment one becomes ready).
        let start = self.rng.random_range(0..n);
        for i in (0..n).map(|k| (start + k) % n) {
            if i != a && i != b && self.is_ready(i, cx) {
                if fresh(i) {
                    self.ready = Some(i);
                    return Poll::Ready(Ok(()));
                }
                fallback.get_or_insert(i);
            }
        }
        self.ready = fallback;
        if fallback.is_some() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let i = self.ready.take().expect("poll_ready must be called first");
        if let Some(tried) = self.tried.take() {
            tried.add(self.endpoints[i].0.clone());
        }
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
