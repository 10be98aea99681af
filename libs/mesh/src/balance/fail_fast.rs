//! [`FailFast`]: UNAVAILABLE at once while no endpoint is ready.

use crate::policy::UpstreamPolicy;
use crate::{BoxError, Request, Response};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::Service;

/// Fails calls fast with UNAVAILABLE once the inner service has not been
/// ready for the policy's `connect_timeout`; see the module docs.
pub struct FailFast<S> {
    inner: S,
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    upstream: String,
    state: FailFastState,
    /// Whether the inner service said it is ready (and so may be called).
    inner_ready: bool,
}

/// ```text
///          inner pending                  connect_timeout
///   Open ----------------> Waiting -----------------------> Failing
///    ^                        |                                |
///    +------------------------+--------------------------------+
///                       inner ready
/// ```
/// `FailFast::poll_ready` is pending only while `Waiting`; `Failing` is
/// ready, and its calls are answered UNAVAILABLE without the inner service.
enum FailFastState {
    Open,
    Waiting(Pin<Box<Sleep>>),
    Failing,
}

pin_project! {
    /// The response future of [`FailFast`].
    #[project = FailFastProj]
    pub enum FailFastFuture<F> {
        /// The inner service's call.
        Inner { #[pin] call: F },
        /// Answered at once: no endpoint is available.
        Unavailable { response: Option<Response> },
    }
}

impl<S> FailFast<S> {
    /// The balancer inside.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Wraps `inner`, the balancer of `upstream`.
    pub fn new(inner: S, policy: watch::Receiver<Arc<UpstreamPolicy>>, upstream: &str) -> Self {
        Self {
            inner,
            policy,
            upstream: upstream.to_string(),
            state: FailFastState::Open,
            inner_ready: false,
        }
    }
}

impl<S> Service<Request> for FailFast<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = BoxError;
    type Future = FailFastFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if matches!(self.state, FailFastState::Failing) {
                    tracing::info!(upstream = %self.upstream, "an endpoint is ready again");
                }
                self.state = FailFastState::Open;
                self.inner_ready = true;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => self.inner_ready = false,
        }
        loop {
            match &mut self.state {
                FailFastState::Open => {
                    let wait = self.policy.borrow().connect_timeout;
                    self.state = FailFastState::Waiting(Box::pin(tokio::time::sleep(wait)));
                }
                FailFastState::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    tracing::warn!(upstream = %self.upstream, "no endpoint ready; failing fast");
                    self.state = FailFastState::Failing;
                }
                FailFastState::Failing => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if std::mem::take(&mut self.inner_ready) {
            return FailFastFuture::Inner {
                call: self.inner.call(request),
            };
        }
        let status =
            tonic::Status::unavailable(format!("no endpoint of {} is available", self.upstream));
        FailFastFuture::Unavailable {
            response: Some(crate::status::response(status)),
        }
    }
}

impl<F, E> Future for FailFastFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FailFastProj::Inner { call } => call.poll(cx).map_err(Into::into),
            FailFastProj::Unavailable { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

impl<S> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            FailFastState::Open => "open",
            FailFastState::Waiting(_) => "waiting",
            FailFastState::Failing => "failing",
        };
        f.debug_struct("FailFast")
            .field("upstream", &self.upstream)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
