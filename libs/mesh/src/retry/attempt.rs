//! One attempt: made ready, called, and cut at its per-try timeout or the
//! call's deadline.

use super::attempts::Outcome;
use crate::metrics::ClientMetrics;
use crate::{BoxError, Request, Response};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::Service;

/// An attempt whose end is not recorded yet: if it is dropped in flight
/// (a hedge that lost, a call cut by its deadline or abandoned), it ends
/// then, `DEADLINE_EXCEEDED` if its time was up, else `CANCELLED`.
pub(super) struct OpenAttempt {
    pub(super) metrics: Arc<ClientMetrics>,
    /// `None` once it has an outcome (recorded by whoever judges it).
    pub(super) method: Option<KeyValue>,
    pub(super) started: Instant,
    pub(super) until: Option<Instant>,
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
    pub(super) struct AttemptFuture<S, F> {
        #[pin]
        pub(super) state: AttemptState<S, F>,
        #[pin]
        pub(super) timer: Option<tokio::time::Sleep>,
        // Whether the timer is the call's deadline (not the per-try timeout).
        pub(super) overall: bool,
        pub(super) open: OpenAttempt,
    }
}

pin_project! {
    #[project = AttemptStateProj]
    pub(super) enum AttemptState<S, F> {
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
