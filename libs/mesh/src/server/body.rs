//! The innermost layer: the service's response body boxed into
//! [`crate::Body`], so the trailers-only answers of the layers above have
//! the same type.

use bytes::Bytes;
use std::task::{Context, Poll};
use tower::Service;

/// Boxes the response body of `S` into [`crate::Body`].
#[derive(Debug, Clone)]
pub struct IntoBody<S> {
    pub(super) inner: S,
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
