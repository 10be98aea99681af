//! Retries and hedging of calls the contract marks safe to repeat.
//!
//! Only a method whose `option idempotency_level` is IDEMPOTENT or
//! NO_SIDE_EFFECTS gets `retry.max_attempts > 1` in its
//! [`EffectivePolicy`], and only a
//! NO_SIDE_EFFECTS one a `hedge`; every other call passes straight through
//! this layer, untouched.
//!
//! A retried call:
//!
//! 1. deposits into the upstream's retry budget (module `budget`) and reads its
//!    body into memory so it can be sent again (module `body`; a body larger
//!    than `retry.max_buffered_bytes` is sent once, unretried);
//! 2. sends an attempt, bounded by `retry.per_try_timeout` and by the
//!    call's [`CallDeadline`], whichever is sooner;
//! 3. judges the answer: a trailers-only status whose code is in
//!    `retry.on`, an error of the inner service (a connection that failed:
//!    taken as UNAVAILABLE) and an attempt cut by its per-try timeout
//!    (DEADLINE_EXCEEDED for that attempt, as Envoy does) may be retried;
//!    anything else is the answer;
//! 4. waits: the server's `grpc-retry-pushback-ms` if it sent one (a
//!    negative one means "do not retry"), else exponential backoff with
//!    full jitter, a random delay in `[0, min(max, base * 2^(n-1))]`
//!    before retry `n`;
//! 5. and tries again, on an endpoint no attempt of this call went to
//!    while another is ready ([`Tried`], Envoy's `previous_hosts`), unless that was the last attempt, or the attempt
//!    would start at or past the deadline, or the budget is spent; then
//!    the last answer is returned as it is.
//!
//! A hedged call (`hedge` set) does not wait for a failure: if no answer
//! has come `hedge.delay` after an attempt was sent, another is sent, up to
//! `1 + hedge.max_hedges` in all; the first answer that is not a retryable
//! failure wins and the others are dropped (cancelled). As gRPC specifies,
//! a retryable failure sends the next hedge at once (or after the
//! pushback), and a hedged method is not retried otherwise: hedging
//! replaces the retry loop for it. Every hedge takes from the budget.
//!
//! # Order
//!
//! Inside [`crate::deadline`] (whose [`CallDeadline`] bounds the attempts
//! and whose timeout covers them all), outside the balancer, so each
//! attempt picks an endpoint afresh.
//!
//! # Clone
//!
//! Clones share the budget and the random source: build one
//! [`RetryLayer`] per upstream.

mod attempt;
mod attempts;
mod body;
mod budget;
mod hedge;
#[cfg(test)]
mod tests;

use crate::balance::Tried;
use crate::deadline::CallDeadline;
use crate::metrics::ClientMetrics;
use crate::policy::{BackoffPolicy, EffectiveCache, UpstreamPolicy};
use crate::stats::{UpstreamStats, incr};
use crate::status::{self};
use crate::{BoxError, Request, Response};
use attempts::{Attempts, Head};
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use rand::{Rng, RngCore, SeedableRng};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

use tower::Service;

/// Retries (or hedges) calls the contract marks safe to repeat.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    shared: Arc<Shared>,
}

/// Makes [`Retry`] services sharing one retry budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    shared: Arc<Shared>,
}

/// What every clone of one upstream's [`Retry`] shares.
struct Shared {
    stats: Arc<UpstreamStats>,
    budget: budget::Budget,
    effective: EffectiveCache,
    /// Jitter. A std mutex: held only to draw one number.
    rng: Mutex<Box<dyn RngCore + Send>>,
}

pin_project! {
    /// The response future of [`Retry`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        open: OpenCall,
    }
}

/// A call whose end is not recorded yet (see [`crate::metrics`]): if it is
/// dropped unanswered (its deadline passed, or the caller gave up), it ends
/// then.
struct OpenCall {
    metrics: Arc<ClientMetrics>,
    /// `None` once the end is recorded or handed on to the answer.
    method: Option<KeyValue>,
    started: Instant,
    deadline: Option<Instant>,
    /// Whether the call's only attempt is in flight here (the `Once`
    /// path); the retry path's attempts record their own ends.
    own_attempt: bool,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if let Some(method) = self.method.take() {
            let code = crate::metrics::abandoned(self.deadline);
            if self.own_attempt {
                self.metrics.attempt_ended(&method, code, self.started);
            }
            self.metrics.call_ended(&method, code, self.started);
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // Not retryable: the inner call as it is, counted.
        Once { #[pin] call: F, stats: Arc<UpstreamStats> },
        // The attempts, backoffs and hedges of a retryable call.
        Retrying { call: BoxFuture<'static, Result<Response, BoxError>> },
    }
}

// === impl Retry ===

impl<S> Retry<S> {
    /// Wraps `inner`, with a budget of its own; the policy is read from the
    /// current `policy` on every call, counters go to `stats`.
    pub fn new(
        inner: S,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        tower::Layer::layer(&RetryLayer::new(policy, stats), inner)
    }

    /// A layer making [`Retry`] services that share one budget.
    pub fn layer(
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> RetryLayer {
        RetryLayer::new(policy, stats)
    }
}

impl<S> Service<Request> for Retry<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let (effective, budget) = {
            let policy = self.policy.borrow();
            let effective = self.shared.effective.get(&policy, request.uri().path());
            (effective, policy.retry.budget)
        };
        let stats = &self.shared.stats;
        let metrics = &stats.metrics;
        let method = metrics.method(request.uri().path());
        let deadline = request.extensions().get::<CallDeadline>().map(|d| d.0);
        if effective.retry.max_attempts <= 1 && effective.hedge.is_none() {
            incr(&stats.counters.attempts);
            metrics.attempt_started(&method);
            return ResponseFuture {
                kind: Kind::Once {
                    call: self.inner.call(request),
                    stats: stats.clone(),
                },
                open: OpenCall {
                    metrics: metrics.clone(),
                    method: Some(method),
                    started,
                    deadline,
                    own_attempt: true,
                },
            };
        }
        // `inner` was driven to readiness for this call: the first attempt
        // takes it; later attempts wait for clones to become ready.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let tokens = self.shared.budget.tokens(&budget);
        let open = OpenCall {
            metrics: metrics.clone(),
            method: Some(method.clone()),
            started,
            deadline,
            own_attempt: false,
        };
        let (parts, body) = request.into_parts();
        let attempts = Attempts {
            service: ready,
            first_is_ready: true,
            deadline,
            head: Head {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                extensions: Some(parts.extensions),
            },
            body: body::Replay::default(),
            policy: effective,
            tokens,
            method,
            started,
            tried: Tried::default(),
            shared: self.shared.clone(),
        };
        ResponseFuture {
            kind: Kind::Retrying {
                call: Box::pin(attempts.run(body)),
            },
            open,
        }
    }
}

// === impl RetryLayer ===

impl RetryLayer {
    /// A layer with one budget, built from `policy`'s `retry.budget` (and
    /// rebuilt when that changes), counting into `stats`.
    pub fn new(policy: watch::Receiver<Arc<UpstreamPolicy>>, stats: Arc<UpstreamStats>) -> Self {
        let budget = budget::Budget::new(&policy.borrow().retry.budget, stats.clone());
        let shared = Arc::new(Shared {
            stats,
            budget,
            effective: EffectiveCache::default(),
            rng: Mutex::new(Box::new(rand::rngs::StdRng::from_os_rng())),
        });
        Self { policy, shared }
    }

    /// Draws the backoff jitter from `rng` (a seeded one makes tests
    /// repeatable).
    pub fn with_rng<R: RngCore + Send + 'static>(self, rng: R) -> Self {
        *self.shared.rng.lock().expect("not poisoned") = Box::new(rng);
        self
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: self.policy.clone(),
            shared: self.shared.clone(),
        }
    }
}

// === impl Shared ===

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats.name)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The delay before retry `n` (1 for the first): full jitter over
    /// `[0, min(max, base * 2^(n-1))]`.
    fn backoff(&self, policy: &BackoffPolicy, n: u32) -> Duration {
        let growth = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        let cap = policy.base.saturating_mul(growth).min(policy.max);
        let cap = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let mut rng = self.rng.lock().expect("not poisoned");
        Duration::from_nanos(rng.random_range(0..=cap))
    }

    /// Counts the answer the caller gets and hands it over.
    fn finish(&self, answer: Result<Response, BoxError>) -> Result<Response, BoxError> {
        if answer.as_ref().map_or(true, status::is_failure) {
            incr(&self.stats.counters.failures);
        }
        answer
    }
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Once { call, stats } => {
                let answer = ready!(call.poll(cx)).map_err(Into::into);
                if answer.as_ref().map_or(true, status::is_failure) {
                    incr(&stats.counters.failures);
                }
                let open = this.open;
                let method = open.method.take().expect("polled after completion");
                Poll::Ready(
                    open.metrics
                        .answer(method, open.started, open.started, answer),
                )
            }
            KindProj::Retrying { call } => {
                let answer = ready!(call.as_mut().poll(cx));
                // Recorded by the attempts.
                this.open.method = None;
                Poll::Ready(answer)
            }
        }
    }
}
