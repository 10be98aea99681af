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
//! 5. and tries again, unless that was the last attempt, or the attempt
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

mod body;
mod budget;

use crate::deadline::CallDeadline;
use crate::metrics::ClientMetrics;
use crate::policy::{
    BackoffPolicy, EffectiveCache, EffectivePolicy, GrpcCode, HedgePolicy, RetryPolicy,
    UpstreamPolicy,
};
use crate::stats::{UpstreamStats, incr};
use crate::status::{self, Pushback};
use crate::{BoxError, Request, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
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
use tonic::Code;
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

// === the attempts of one call ===

/// How one attempt ended.
enum Outcome {
    /// The upstream answered (with any status).
    Answer(Response),
    /// The inner service failed: no answer from the upstream.
    Error(BoxError),
    /// The attempt ran out of time: its own (`per_try_timeout`) or, when
    /// `overall`, the call's.
    TimedOut { overall: bool },
}

/// What an outcome means for the call.
enum Verdict {
    /// The answer to give: a success, or a failure not worth repeating.
    Final(Result<Response, BoxError>),
    /// A failure another attempt may not have; the answer if none follows.
    Retryable(Result<Response, BoxError>),
}

/// The request without its body, to make a request per attempt.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    /// The request's extensions, for the first attempt only: nothing below
    /// this layer reads them (the balancer, outlier detector, fault
    /// injection and connection do not, and they are not sent), so later
    /// attempts go without rather than copy them.
    extensions: Option<http::Extensions>,
}

/// An answer and when the attempt that gave it started.
type Answered = (Result<Response, BoxError>, Instant);

impl Head {
    /// A request with this head and `body`; the first one made takes the
    /// extensions.
    fn request(&mut self, body: crate::Body) -> Request {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.take().unwrap_or_default();
        request
    }
}

/// One retryable call: what each attempt needs.
///
/// Its future ([`Attempts::run`]) is boxed once per call and kept small:
/// the loops borrow it rather than move it, and each attempt is a boxed
/// [`AttemptFuture`] of its own.
struct Attempts<S> {
    /// The service for the next attempt: made ready for this call while
    /// `first_is_ready`, cloned for every later attempt.
    service: S,
    first_is_ready: bool,
    head: Head,
    body: body::Replay,
    /// The method's policy (`retry`, `hedge`).
    policy: Arc<EffectivePolicy>,
    deadline: Option<Instant>,
    tokens: budget::Tokens,
    /// The `grpc.method` of its metrics.
    method: KeyValue,
    /// When the call started.
    started: Instant,
    shared: Arc<Shared>,
}

impl<S> Attempts<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    /// Runs the call: buffers the body, then retries or hedges.
    ///
    /// An `async` block rather than an `async fn`: an `async fn` keeps its
    /// arguments twice in its state (as passed, and as bound), and this one
    /// is allocated per call.
    #[allow(clippy::manual_async_fn)] // on purpose, as said above
    fn run(
        mut self,
        body: crate::Body,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send + 'static {
        async move {
            let metrics = self.shared.stats.metrics.clone();
            self.tokens.deposit();
            match body::buffer(body, self.policy.retry.max_buffered_bytes).await {
                Ok(body::Buffered::Replayable(body)) => self.body = body,
                Ok(body::Buffered::TooLarge(body)) => {
                    // Sent once, as it is.
                    incr(&self.shared.stats.counters.attempts);
                    metrics.attempt_started(&self.method);
                    let attempt = Instant::now();
                    let request = self.head.request(body);
                    // Rare: boxed, to keep this future small.
                    let call = Box::pin(self.service.call(request));
                    let answer = call.await.map_err(Into::into);
                    let answer = metrics.answer(self.method.clone(), self.started, attempt, answer);
                    return self.shared.finish(answer);
                }
                // The caller's own body failed: no attempt was made.
                Err(status) => {
                    metrics.call_ended(&self.method, status.code(), self.started);
                    return self.shared.finish(Ok(status::response(status)));
                }
            }
            let (answer, attempt) = match self.policy.hedge {
                // Rare, and its state is larger: boxed.
                Some(hedge) => Box::pin(self.hedged(hedge)).await,
                None => self.retried().await,
            };
            let answer = metrics.answer(self.method.clone(), self.started, attempt, answer);
            self.shared.finish(answer)
        }
    }

    /// Records the end of an attempt that is not the call's answer.
    fn superseded(&self, (answer, started): Answered) {
        let code = match &answer {
            Ok(response) => status::header_code(response).unwrap_or(Code::Unknown),
            Err(_) => Code::Unavailable,
        };
        self.shared
            .stats
            .metrics
            .attempt_ended(&self.method, code, started);
    }

    /// The method's retry policy.
    fn retry(&self) -> &RetryPolicy {
        &self.policy.retry
    }

    /// The retry loop: one attempt at a time, backing off between them.
    async fn retried(&mut self) -> Answered {
        let mut n = 1;
        loop {
            let (outcome, started) = self.send().await;
            let last = match self.judge(outcome) {
                Verdict::Final(answer) => return (answer, started),
                Verdict::Retryable(last) => last,
            };
            if n >= self.retry().max_attempts {
                return (last, started);
            }
            let delay = match pushback(&last) {
                Some(Pushback::Never) => return (last, started),
                Some(Pushback::After(delay)) => delay,
                None => self.shared.backoff(&self.retry().backoff, n),
            };
            if self.deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return (last, started);
            }
            if !self.tokens.withdraw() {
                incr(&self.shared.stats.counters.budget_exhausted);
                return (last, started);
            }
            self.superseded((last, started));
            tokio::time::sleep(delay).await;
            incr(&self.shared.stats.counters.retries);
            n += 1;
        }
    }

    /// Hedging: attempts in parallel, `hedge.delay` apart, first good
    /// answer wins.
    ///
    /// States: `in_flight` attempts are running; the next one goes out at
    /// `next` unless `closed` (all sent, pushback said never, budget spent
    /// or deadline reached). The call ends with the first final answer, or
    /// with the last retryable failure once nothing is in flight and
    /// nothing more will be sent.
    async fn hedged(&mut self, hedge: HedgePolicy) -> Answered {
        let most = 1 + hedge.max_hedges;
        let mut in_flight = FuturesUnordered::new();
        in_flight.push(self.send());
        let mut sent = 1;
        let mut next = Instant::now() + hedge.delay;
        let mut closed = sent >= most;
        let mut last = None;
        loop {
            tokio::select! {
                Some((outcome, started)) = in_flight.next() => {
                    match self.judge(outcome) {
                        Verdict::Final(answer) => return (answer, started),
                        Verdict::Retryable(answer) => {
                            match pushback(&answer) {
                                Some(Pushback::Never) => closed = true,
                                Some(Pushback::After(delay)) => next = Instant::now() + delay,
                                // Shortcut the hedge delay: this one failed.
                                None => next = Instant::now(),
                            }
                            if self.deadline.is_some_and(|d| next >= d) {
                                closed = true;
                            }
                            if let Some(earlier) = last.replace((answer, started)) {
                                self.superseded(earlier);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next), if !closed => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        closed = true;
                    } else if !self.tokens.withdraw() {
                        incr(&self.shared.stats.counters.budget_exhausted);
                        closed = true;
                    } else {
                        incr(&self.shared.stats.counters.hedges);
                        in_flight.push(self.send());
                        sent += 1;
                        next = Instant::now() + hedge.delay;
                        closed = sent >= most;
                    }
                }
                else => {
                    return last.expect("an attempt ended before the call gave up");
                }
            }
            if in_flight.is_empty() && closed {
                return last.expect("an attempt ended before the call gave up");
            }
        }
    }

    /// Sends one attempt, bounded by the per-try timeout and the deadline.
    ///
    /// Boxed: an attempt's future holds the whole stack below (request,
    /// timers, the endpoint's call) and would otherwise be copied into
    /// Sends one attempt, bounded by the per-try timeout and the deadline.
    ///
    /// Boxed: an attempt's future holds the endpoint's call and its timer,
    /// and would otherwise be copied into every future that awaits it.
    fn send(&mut self) -> BoxFuture<'static, (Outcome, Instant)> {
        incr(&self.shared.stats.counters.attempts);
        let metrics = &self.shared.stats.metrics;
        metrics.attempt_started(&self.method);
        let now = Instant::now();
        let per_try = self.retry().per_try_timeout.map(|t| now + t);
        let until = match (per_try, self.deadline) {
            (Some(own), Some(call)) if own < call => Some((own, false)),
            (_, Some(call)) => Some((call, true)),
            (Some(own), None) => Some((own, false)),
            (None, None) => None,
        };
        let mut request = self.head.request(self.body.body());
        if let Some((until, overall)) = until {
            // The server gives up when this attempt does.
            let left = until.saturating_duration_since(now);
            request
                .headers_mut()
                .insert(status::GRPC_TIMEOUT, status::format_grpc_timeout(left));
            if !overall {
                // Cut by its own timeout, the attempt counts against the
                // endpoint that did not answer (outlier detection).
                request
                    .extensions_mut()
                    .insert(crate::outlier::AttemptDeadline(until));
            }
        }
        let is_ready = std::mem::take(&mut self.first_is_ready);
        let service = if is_ready {
            let clone = self.service.clone();
            std::mem::replace(&mut self.service, clone)
        } else {
            self.service.clone()
        };
        Box::pin(AttemptFuture {
            state: AttemptState::Waiting {
                service,
                request: Some(request),
                is_ready,
            },
            timer: until.map(|(until, _)| tokio::time::sleep_until(until)),
            overall: until.is_some_and(|(_, overall)| overall),
            open: OpenAttempt {
                metrics: metrics.clone(),
                method: Some(self.method.clone()),
                started: now,
                until: until.map(|(until, _)| until),
            },
        })
    }

    /// What `outcome` means under `retry.on`.
    fn judge(&self, outcome: Outcome) -> Verdict {
        let retryable = |code: Code| self.retry().on.contains(&GrpcCode(code));
        match outcome {
            Outcome::Answer(response) => match status::header_code(&response) {
                Some(code) if retryable(code) => Verdict::Retryable(Ok(response)),
                _ => Verdict::Final(Ok(response)),
            },
            Outcome::Error(error) if retryable(Code::Unavailable) => Verdict::Retryable(Err(error)),
            Outcome::Error(error) => Verdict::Final(Err(error)),
            Outcome::TimedOut { overall: false } => Verdict::Retryable(Ok(status::response(
                tonic::Status::deadline_exceeded("per-try timeout"),
            ))),
            Outcome::TimedOut { overall: true } => {
                incr(&self.shared.stats.counters.deadline_exceeded);
                Verdict::Final(Ok(status::response(tonic::Status::deadline_exceeded(
                    "deadline exceeded",
                ))))
            }
        }
    }
}

/// An attempt whose end is not recorded yet: if it is dropped in flight
/// (a hedge that lost, a call cut by its deadline or abandoned), it ends
/// then, `DEADLINE_EXCEEDED` if its time was up, else `CANCELLED`.
struct OpenAttempt {
    metrics: Arc<ClientMetrics>,
    /// `None` once it has an outcome (recorded by whoever judges it).
    method: Option<KeyValue>,
    started: Instant,
    until: Option<Instant>,
}

impl Drop for OpenAttempt {
    fn drop(&mut self) {
        if let Some(method) = self.method.take() {
            let code = crate::metrics::abandoned(self.until);
            self.metrics.attempt_ended(&method, code, self.started);
        }
    }
}

pin_project! {
    /// One attempt: `service` made ready (unless it already is), called,
    /// and cut at its timer; yields its outcome and when it started.
    struct AttemptFuture<S, F> {
        #[pin]
        state: AttemptState<S, F>,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        // Whether the timer is the call's deadline (not the per-try timeout).
        overall: bool,
        open: OpenAttempt,
    }
}

pin_project! {
    #[project = AttemptStateProj]
    enum AttemptState<S, F> {
        Waiting { service: S, request: Option<Request>, is_ready: bool },
        Calling { #[pin] call: F },
    }
}

impl<S> Future for AttemptFuture<S, S::Future>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Output = (Outcome, Instant);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = loop {
            match this.state.as_mut().project() {
                AttemptStateProj::Waiting {
                    service,
                    request,
                    is_ready,
                } => {
                    if !*is_ready {
                        match service.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(error)) => break Some(Outcome::Error(error.into())),
                            Poll::Pending => break None,
                        }
                    }
                    let request = request.take().expect("called once");
                    let call = service.call(request);
                    this.state.set(AttemptState::Calling { call });
                }
                AttemptStateProj::Calling { call } => match call.poll(cx) {
                    Poll::Ready(Ok(response)) => break Some(Outcome::Answer(response)),
                    Poll::Ready(Err(error)) => break Some(Outcome::Error(error.into())),
                    Poll::Pending => break None,
                },
            }
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            // Not over: unless its time is up.
            None => match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
                Some(Poll::Ready(())) => Outcome::TimedOut {
                    overall: *this.overall,
                },
                _ => return Poll::Pending,
            },
        };
        // Whoever judges the outcome records the attempt's end.
        this.open.method = None;
        Poll::Ready((outcome, this.open.started))
    }
}

/// The server's pushback on a failed attempt.
fn pushback(answer: &Result<Response, BoxError>) -> Option<Pushback> {
    answer.as_ref().ok().and_then(status::pushback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{MeshStats, read};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use rand::rngs::StdRng;
    use tower::ServiceExt as _;

    const GET_PRODUCT: &str = "/shop.catalog.v1.CatalogService/GetProduct";
    const CREATE_PRODUCT: &str = "/shop.catalog.v1.CatalogService/CreateProduct";

    // --- the policy ---

    /// Defaults everywhere (built through serde, so the tests do not depend
    /// on every field), with a budget that never runs out unless a test
    /// says otherwise.
    fn policy() -> UpstreamPolicy {
        use serde::Deserialize;
        let none: Vec<(String, String)> = Vec::new();
        let d =
            serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(none.into_iter());
        let mut policy = UpstreamPolicy::deserialize(d).unwrap();
        policy.retry.max_attempts = 3;
        policy.retry.on = vec![GrpcCode(Code::Unavailable)];
        policy.retry.backoff = BackoffPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        policy.retry.budget.min_per_second = 100_000;
        policy.retry.budget.ttl = Duration::from_secs(1);
        policy
    }

    fn retry<S>(inner: S, policy: UpstreamPolicy) -> (Retry<S>, Arc<UpstreamStats>) {
        let stats = MeshStats::default().upstream("catalog");
        let layer = RetryLayer::new(watch::channel(Arc::new(policy)).1, stats.clone())
            .with_rng(StdRng::seed_from_u64(7));
        (tower::Layer::layer(&layer, inner), stats)
    }

    fn request(path: &str, body: &'static str) -> Request {
        http::Request::builder()
            .uri(path)
            .body(crate::Body::new(http_body_util::Full::new(
                Bytes::from_static(body.as_bytes()),
            )))
            .unwrap()
    }

    fn with_deadline(mut request: Request, after: Duration) -> Request {
        request
            .extensions_mut()
            .insert(CallDeadline(Instant::now() + after));
        request
    }

    // --- a scripted upstream ---

    /// What the upstream does with one attempt.
    #[derive(Clone)]
    enum Answer {
        Ok,
        Fail(Code),
        FailWithPushback(Code, &'static str),
        TransportError,
        Hang,
        After(Duration, Box<Answer>),
    }

    /// One attempt the upstream saw.
    #[derive(Debug, Clone)]
    struct Seen {
        at: Instant,
        body: Bytes,
        timeout: Option<Duration>,
    }

    /// Answers attempt `n` (from 0) with `script(n)` and records it.
    #[derive(Clone)]
    struct Upstream {
        seen: Arc<Mutex<Vec<Seen>>>,
        script: Arc<dyn Fn(usize) -> Answer + Send + Sync>,
    }

    impl Upstream {
        fn new(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
            Self {
                seen: Arc::default(),
                script: Arc::new(script),
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Service<Request> for Upstream {
        type Response = Response;
        type Error = BoxError;
        type Future = BoxFuture<'static, Result<Response, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request) -> Self::Future {
            let at = Instant::now();
            let timeout = request
                .headers()
                .get(status::GRPC_TIMEOUT)
                .and_then(status::parse_grpc_timeout);
            let n = self.seen.lock().unwrap().len();
            let answer = (self.script)(n);
            self.seen.lock().unwrap().push(Seen {
                at,
                body: Bytes::new(),
                timeout,
            });
            let seen = self.seen.clone();
            Box::pin(async move {
                let body = request.into_body().collect().await?.to_bytes();
                seen.lock().unwrap()[n].body = body;
                play(answer, n).await
            })
        }
    }

    fn play(answer: Answer, n: usize) -> BoxFuture<'static, Result<Response, BoxError>> {
        Box::pin(async move {
            match answer {
                Answer::Ok => {
                    let mut response = Response::new(crate::Body::empty());
                    response.headers_mut().insert("x-attempt", n.into());
                    Ok(response)
                }
                Answer::Fail(code) => Ok(status::response(tonic::Status::new(code, "scripted"))),
                Answer::FailWithPushback(code, ms) => {
                    let mut response = status::response(tonic::Status::new(code, "scripted"));
                    response
                        .headers_mut()
                        .insert(status::PUSHBACK, http::HeaderValue::from_static(ms));
                    Ok(response)
                }
                Answer::TransportError => Err("connection refused".into()),
                Answer::Hang => std::future::pending().await,
                Answer::After(delay, then) => {
                    tokio::time::sleep(delay).await;
                    play(*then, n).await
                }
            }
        })
    }

    fn code(answer: &Result<Response, BoxError>) -> Option<Code> {
        status::header_code(answer.as_ref().unwrap())
    }

    // --- which calls are retried ---

    #[tokio::test(start_paused = true)]
    async fn a_read_failing_unavailable_once_is_retried_with_the_same_body() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::Fail(Code::Unavailable),
            _ => Answer::Ok,
        });
        let (svc, stats) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "product 42")).await;

        assert_eq!(code(&answer), None, "a success");
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].body, "product 42");
        assert_eq!(seen[1].body, "product 42");
        assert_eq!(read(&stats.counters.attempts), 2);
        assert_eq!(read(&stats.counters.retries), 1);
        assert_eq!(read(&stats.counters.failures), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_method_the_contract_does_not_mark_safe_is_not_retried() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let (svc, stats) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(CREATE_PRODUCT, "new product")).await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        assert_eq!(upstream.seen().len(), 1);
        assert_eq!(upstream.seen()[0].body, "new product");
        assert_eq!(read(&stats.counters.attempts), 1);
        assert_eq!(read(&stats.counters.retries), 0);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn codes_outside_retry_on_are_not_retried() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Internal));
        let (svc, stats) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "")).await;

        assert_eq!(code(&answer), Some(Code::Internal));
        assert_eq!(upstream.seen().len(), 1);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_error_is_retried_as_unavailable() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::TransportError,
            _ => Answer::Ok,
        });
        let (svc, _) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), None);
        assert_eq!(upstream.seen().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_max_attempts_and_the_last_failure_is_returned() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let (svc, stats) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        assert_eq!(upstream.seen().len(), 3);
        assert_eq!(read(&stats.counters.retries), 2);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_policy_applies_to_the_next_call() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Internal));
        let stats = MeshStats::default().upstream("catalog");
        let (tx, rx) = watch::channel(Arc::new(policy()));
        let svc = Retry::new(upstream.clone(), rx, stats);

        svc.clone().oneshot(request(GET_PRODUCT, "")).await.unwrap();
        assert_eq!(upstream.seen().len(), 1, "internal is not retried");

        let mut changed = policy();
        changed.retry.on.push(GrpcCode(Code::Internal));
        tx.send(Arc::new(changed)).unwrap();
        svc.oneshot(request(GET_PRODUCT, "")).await.unwrap();
        assert_eq!(upstream.seen().len(), 4, "now it is, up to max_attempts");
    }

    // --- the budget ---

    fn scarce_budget() -> UpstreamPolicy {
        let mut policy = policy();
        policy.retry.budget.ratio = 0.2;
        policy.retry.budget.min_per_second = 10;
        policy.retry.budget.ttl = Duration::from_secs(1);
        policy
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_against_a_failing_upstream_stays_within_the_budget() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let (svc, stats) = retry(upstream.clone(), scarce_budget());
        let calls = 1000;

        let answers = futures::future::join_all(
            (0..calls).map(|_| svc.clone().oneshot(request(GET_PRODUCT, "x"))),
        )
        .await;

        assert!(answers.iter().all(|a| code(a) == Some(Code::Unavailable)));
        let attempts = upstream.seen().len() as f64;
        // calls * (1 + ratio) + floor * ttl
        let allowed = calls as f64 * 1.2 + 10.0;
        assert!(
            attempts <= allowed + 2.0,
            "{attempts} attempts, {allowed} allowed"
        );
        assert!(attempts >= allowed - 2.0, "the budget is used: {attempts}");
        assert!(read(&stats.counters.budget_exhausted) > 0);
        assert_eq!(read(&stats.counters.attempts) as f64, attempts);
        assert_eq!(read(&stats.counters.failures), calls);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_calls_against_a_failing_upstream_stay_within_the_budget() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let (svc, _) = retry(upstream.clone(), scarce_budget());
        let calls = 1000u32;
        let start = Instant::now();

        // One call every 2 ms for two seconds.
        let mut running = Vec::new();
        for _ in 0..calls {
            running.push(tokio::spawn(svc.clone().oneshot(request(GET_PRODUCT, "x"))));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for call in running {
            call.await.unwrap().unwrap();
        }

        let seconds = start.elapsed().as_secs_f64();
        let attempts = upstream.seen().len() as f64;
        // calls * (1 + ratio) + floor * (seconds + ttl): a withdrawal is
        // forgotten one ttl after it was made.
        let allowed = f64::from(calls) * 1.2 + 10.0 * (seconds + 1.0);
        assert!(
            attempts <= allowed + 5.0,
            "{attempts} attempts, {allowed} allowed"
        );
        assert!(
            attempts > f64::from(calls) * 1.1,
            "retries happen: {attempts}"
        );
    }

    // --- when retries go out ---

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_exponentially_with_full_jitter() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let mut policy = policy();
        policy.retry.max_attempts = 6;
        policy.retry.backoff = BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(1000),
        };
        let (svc, _) = retry(upstream.clone(), policy);
        let calls = 200;

        for _ in 0..calls {
            svc.clone()
                .oneshot(request(GET_PRODUCT, "x"))
                .await
                .unwrap();
        }

        let seen = upstream.seen();
        assert_eq!(seen.len(), calls * 6);
        let mut delays = vec![Vec::new(); 5];
        for call in seen.chunks(6) {
            for n in 0..5 {
                delays[n].push(call[n + 1].at - call[n].at);
            }
        }
        let mut means = Vec::new();
        for (n, delays) in delays.iter().enumerate() {
            let cap = Duration::from_millis(10) * 2u32.pow(n as u32);
            // (The timer wheel rounds sleeps up to the millisecond.)
            let slack = Duration::from_millis(1);
            assert!(
                delays.iter().all(|d| *d <= cap + slack),
                "retry {} within {cap:?}",
                n + 1
            );
            let distinct = delays.iter().collect::<std::collections::BTreeSet<_>>();
            assert!(distinct.len() >= 5, "jittered: {distinct:?}");
            let mean = delays.iter().sum::<Duration>() / calls as u32;
            // Full jitter: the mean is half the cap, give or take.
            assert!(
                mean > cap * 4 / 10 && mean < cap * 6 / 10,
                "{mean:?} for {cap:?}"
            );
            means.push(mean);
        }
        assert!(means.windows(2).all(|m| m[0] < m[1]), "growing: {means:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_at_max() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let mut policy = policy();
        policy.retry.max_attempts = 10;
        policy.retry.backoff = BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(30),
        };
        let (svc, _) = retry(upstream.clone(), policy);

        svc.oneshot(request(GET_PRODUCT, "x")).await.unwrap();

        let seen = upstream.seen();
        let cap = Duration::from_millis(30 + 1);
        assert!(seen.windows(2).all(|w| w[1].at - w[0].at <= cap));
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_sets_the_delay_of_the_retry() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::FailWithPushback(Code::Unavailable, "500"),
            _ => Answer::Ok,
        });
        let (svc, _) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), None);
        let seen = upstream.seen();
        assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn negative_pushback_stops_retrying() {
        let upstream = Upstream::new(|_| Answer::FailWithPushback(Code::Unavailable, "-1"));
        let (svc, _) = retry(upstream.clone(), policy());

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        assert_eq!(upstream.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_past_the_deadline() {
        // Slow and failing: 100 ms per attempt, then up to 50 ms of backoff.
        let upstream = Upstream::new(|_| {
            Answer::After(
                Duration::from_millis(100),
                Box::new(Answer::Fail(Code::Unavailable)),
            )
        });
        let mut policy = policy();
        policy.retry.max_attempts = 100;
        policy.retry.backoff = BackoffPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_millis(50),
        };
        let (svc, _) = retry(upstream.clone(), policy);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);

        let answer = svc
            .oneshot(with_deadline(
                request(GET_PRODUCT, "x"),
                Duration::from_secs(1),
            ))
            .await;

        let seen = upstream.seen();
        assert!(seen.iter().all(|s| s.at < deadline));
        assert!((7..=10).contains(&seen.len()), "{} attempts", seen.len());
        assert!(Instant::now() <= deadline);
        assert!(matches!(
            code(&answer),
            Some(Code::Unavailable | Code::DeadlineExceeded)
        ));
        // Each attempt is told how long it has left.
        assert!(seen.iter().all(|s| s.at + s.timeout.unwrap() <= deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_cut_by_the_deadline_answers_deadline_exceeded() {
        let upstream = Upstream::new(|_| Answer::Hang);
        let (svc, stats) = retry(upstream.clone(), policy());
        let start = Instant::now();

        let answer = svc
            .oneshot(with_deadline(
                request(GET_PRODUCT, "x"),
                Duration::from_millis(300),
            ))
            .await;

        assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(upstream.seen().len(), 1);
        assert_eq!(read(&stats.counters.deadline_exceeded), 1);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_cuts_a_hung_attempt_and_the_retry_succeeds() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::Hang,
            _ => Answer::Ok,
        });
        let mut policy = policy();
        policy.retry.per_try_timeout = Some(Duration::from_millis(100));
        let (svc, stats) = retry(upstream.clone(), policy);
        let start = Instant::now();

        let answer = svc
            .oneshot(with_deadline(
                request(GET_PRODUCT, "x"),
                Duration::from_secs(2),
            ))
            .await;

        assert_eq!(code(&answer), None);
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].timeout, Some(Duration::from_millis(100)));
        let waited = seen[1].at - start;
        assert!(waited >= Duration::from_millis(100) && waited <= Duration::from_millis(120));
        assert_eq!(read(&stats.counters.retries), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_larger_than_the_buffer_is_sent_once() {
        let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
        let mut policy = policy();
        policy.retry.max_buffered_bytes = 4;
        let (svc, stats) = retry(upstream.clone(), policy);

        let answer = svc.oneshot(request(GET_PRODUCT, "ten bytes!")).await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, "ten bytes!");
        assert_eq!(read(&stats.counters.attempts), 1);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_the_deadline_layer_a_timed_out_call_is_counted_once() {
        let upstream = Upstream::new(|_| Answer::Hang);
        let mut policy = policy();
        policy.timeout = Duration::from_millis(300);
        let stats = MeshStats::default().upstream("catalog");
        let rx = watch::channel(Arc::new(policy)).1;
        let svc = crate::deadline::Deadline::new(
            Retry::new(upstream.clone(), rx.clone(), stats.clone()),
            rx,
            stats.clone(),
        );
        let start = Instant::now();

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(read(&stats.counters.calls), 1);
        assert_eq!(read(&stats.counters.deadline_exceeded), 1);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    // --- hedging ---

    fn hedged(max_hedges: u32) -> UpstreamPolicy {
        let mut policy = policy();
        policy.hedge = Some(HedgePolicy {
            delay: Duration::from_millis(50),
            max_hedges,
        });
        policy
    }

    fn attempt_of(answer: &Result<Response, BoxError>) -> usize {
        let header = answer.as_ref().unwrap().headers().get("x-attempt").unwrap();
        header.to_str().unwrap().parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_is_hedged_and_the_first_answer_wins() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::After(Duration::from_secs(1), Box::new(Answer::Ok)),
            _ => Answer::After(Duration::from_millis(10), Box::new(Answer::Ok)),
        });
        let (svc, stats) = retry(upstream.clone(), hedged(1));
        let start = Instant::now();

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(attempt_of(&answer), 1, "the hedge answered first");
        assert_eq!(start.elapsed(), Duration::from_millis(60));
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(50));
        assert_eq!(seen[1].body, "x");
        assert_eq!(read(&stats.counters.hedges), 1);
        assert_eq!(read(&stats.counters.attempts), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_read_is_not_hedged() {
        let upstream =
            Upstream::new(|_| Answer::After(Duration::from_millis(10), Box::new(Answer::Ok)));
        let (svc, stats) = retry(upstream.clone(), hedged(2));

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(attempt_of(&answer), 0);
        assert_eq!(upstream.seen().len(), 1);
        assert_eq!(read(&stats.counters.hedges), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hedge_sends_the_next_at_once() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::Fail(Code::Unavailable),
            _ => Answer::Ok,
        });
        let (svc, stats) = retry(upstream.clone(), hedged(2));
        let start = Instant::now();

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(attempt_of(&answer), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(read(&stats.counters.hedges), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_stop_at_max_hedges_and_the_last_failure_is_returned() {
        let upstream = Upstream::new(|_| {
            Answer::After(
                Duration::from_millis(200),
                Box::new(Answer::Fail(Code::Unavailable)),
            )
        });
        let (svc, stats) = retry(upstream.clone(), hedged(2));

        let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        assert_eq!(upstream.seen().len(), 3);
        assert_eq!(read(&stats.counters.hedges), 2);
        assert_eq!(read(&stats.counters.failures), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_waits_past_the_deadline() {
        let upstream = Upstream::new(|_| Answer::FailWithPushback(Code::Unavailable, "500"));
        let (svc, _) = retry(upstream.clone(), hedged(3));
        let start = Instant::now();

        let answer = svc
            .oneshot(with_deadline(
                request(GET_PRODUCT, "x"),
                Duration::from_millis(800),
            ))
            .await;

        assert_eq!(code(&answer), Some(Code::Unavailable));
        assert_eq!(
            upstream.seen().len(),
            2,
            "at 0 and 500 ms; 1000 ms is too late"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_write_is_retried_but_not_hedged() {
        let upstream = Upstream::new(|n| match n {
            0 => Answer::After(
                Duration::from_millis(100),
                Box::new(Answer::Fail(Code::Unavailable)),
            ),
            _ => Answer::Ok,
        });
        let (svc, stats) = retry(upstream.clone(), hedged(1));

        let answer = svc
            .oneshot(request(
                "/shop.catalog.v1.CatalogService/UpdateProduct",
                "x",
            ))
            .await;

        assert_eq!(code(&answer), None);
        assert_eq!(upstream.seen().len(), 2);
        assert_eq!(read(&stats.counters.hedges), 0);
        assert_eq!(read(&stats.counters.retries), 1);
    }
}
