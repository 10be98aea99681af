//! [`ResponseFuture`]: a call on the caller's task.

use super::pipe::{Pipe, RecvBody};
use crate::transport::TransportError;
use crate::{Body, BoxError, Response};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

// === impl ResponseFuture ===

/// The response future of [`Connection`](super::Connection): sends the
/// request body and waits for the response head, on the caller's task.
pub struct ResponseFuture {
    pub(super) state: Call,
}

pub(super) enum Call {
    Waiting {
        response: h2::client::ResponseFuture,
        /// The request body still to send, if any.
        pipe: Option<Pipe>,
    },
    Failed(Option<h2::Error>),
}

impl Future for ResponseFuture {
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (h2's futures are handles on the stream).
        let this = self.get_mut();
        let (response, pipe) = match &mut this.state {
            Call::Failed(error) => {
                let error = error.take().expect("polled after completion");
                return Poll::Ready(Err(TransportError::from(error).into()));
            }
            Call::Waiting { response, pipe } => (response, pipe),
        };
        if let Some(sending) = pipe {
            match sending.poll(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => *pipe = None,
                Poll::Ready(Err(error)) => {
                    *pipe = None;
                    return Poll::Ready(Err(error));
                }
            }
        }
        let head = ready!(Pin::new(response).poll(cx)).map_err(TransportError::from)?;
        if let Some(mut rest) = pipe.take() {
            // Answered before the request was all sent: the rest goes on
            // from a task of its own (or stops when the peer resets).
            tokio::spawn(async move {
                if let Err(error) = std::future::poll_fn(|cx| rest.poll(cx)).await {
                    // Logged under the connection's target, which log filters name.
                    tracing::debug!(target: "shop_mesh::connection", %error, "request body not sent");
                }
            });
        }
        Poll::Ready(Ok(head.map(|stream| Body::new(RecvBody(stream)))))
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
