//! The attempts of one retryable call: the retry loop, each attempt sent
//! bounded by its timeouts, and what its outcome means.

use super::attempt::{AttemptFuture, AttemptState, OpenAttempt};
use super::{Shared, body, budget};
use crate::balance::Tried;
use crate::policy::{EffectivePolicy, GrpcCode, RetryPolicy};
use crate::stats::incr;
use crate::status::{self, Pushback};
use crate::{BoxError, Request, Response};
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;
use tonic::Code;
use tower::Service;

// === the attempts of one call ===

/// How one attempt ended.
pub(super) enum Outcome {
    /// The upstream answered (with any status).
    Answer(Response),
    /// The inner service failed: no answer from the upstream.
    Error(BoxError),
    /// The attempt ran out of time: its own (`per_try_timeout`) or, when
    /// `overall`, the call's.
    TimedOut { overall: bool },
}

/// What an outcome means for the call.
pub(super) enum Verdict {
    /// The answer to give: a success, or a failure not worth repeating.
    Final(Result<Response, BoxError>),
    /// A failure another attempt may not have; the answer if none follows.
    Retryable(Result<Response, BoxError>),
}

/// The request without its body, to make a request per attempt.
pub(super) struct Head {
    pub(super) method: http::Method,
    pub(super) uri: http::Uri,
    pub(super) version: http::Version,
    pub(super) headers: http::HeaderMap,
    /// The request's extensions, for the first attempt only: nothing below
    /// this layer reads the caller's (the balancer, outlier detector, fault
    /// injection and connection read only what this layer adds to each
    /// attempt, and extensions are not sent), so later attempts go without
    /// rather than copy them.
    pub(super) extensions: Option<http::Extensions>,
}

/// An answer and when the attempt that gave it started.
pub(super) type Answered = (Result<Response, BoxError>, Instant);

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
pub(super) struct Attempts<S> {
    /// The service for the next attempt: made ready for this call while
    /// `first_is_ready`, cloned for every later attempt.
    pub(super) service: S,
    pub(super) first_is_ready: bool,
    pub(super) head: Head,
    pub(super) body: body::Replay,
    /// The method's policy (`retry`, `hedge`).
    pub(super) policy: Arc<EffectivePolicy>,
    pub(super) deadline: Option<Instant>,
    pub(super) tokens: budget::Tokens,
    /// The `grpc.method` of its metrics.
    pub(super) method: KeyValue,
    /// When the call started.
    pub(super) started: Instant,
    /// Where its attempts went: each attempt carries it, so the balancer
    /// sends a retry or a hedge to an endpoint not tried yet.
    pub(super) tried: Tried,
    pub(super) shared: Arc<Shared>,
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
    pub(super) fn run(
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
    pub(super) fn superseded(&self, (answer, started): Answered) {
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
    pub(super) fn retry(&self) -> &RetryPolicy {
        &self.policy.retry
    }

    /// The retry loop: one attempt at a time, backing off between them.
    pub(super) async fn retried(&mut self) -> Answered {
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

    /// Sends one attempt, bounded by the per-try timeout and the deadline.
    ///
    /// Boxed: an attempt's future holds the endpoint's call and its timer,
    /// and would otherwise be copied into every future that awaits it.
    pub(super) fn send(&mut self) -> BoxFuture<'static, (Outcome, Instant)> {
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
        request.extensions_mut().insert(self.tried.clone());
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
    pub(super) fn judge(&self, outcome: Outcome) -> Verdict {
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

/// The server's pushback on a failed attempt.
pub(super) fn pushback(answer: &Result<Response, BoxError>) -> Option<Pushback> {
    answer.as_ref().ok().and_then(status::pushback)
}
