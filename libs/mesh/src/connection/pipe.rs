//! The bodies of a call: the request body sent frame by frame within the
//! peer's flow-control window ([`Pipe`]), the response body read with its
//! capacity given back ([`RecvBody`]).

use super::MAX_UNSENT;
use crate::{Body, BoxError};
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

// === impl Pipe ===

/// Sends a request body on its stream, frame by frame.
pub(super) struct Pipe {
    body: Body,
    stream: h2::SendStream<Bytes>,
    /// Bytes queued since the stream last had window to spare.
    unsent: usize,
}

impl Pipe {
    pub(super) fn new(body: Body, stream: h2::SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            unsent: 0,
        }
    }

    /// Ready once the body has been handed to `h2` whole (or could not be).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        use http_body::Body as _;
        loop {
            if self.unsent >= MAX_UNSENT {
                // Enough queued: wait until the peer's window has taken it.
                self.stream.reserve_capacity(1);
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Poll::Ready(Err(error.into())),
                        None => return Poll::Ready(Err("the stream was closed".into())),
                    }
                }
                self.unsent = 0;
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Waiting for the body: stop if the peer reset the
                    // stream meanwhile.
                    return match self.stream.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => {
                            Poll::Ready(Err(format!("the stream was reset: {reason}").into()))
                        }
                        Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            match frame {
                None => {
                    self.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(status)) => {
                    self.stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(status.into()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        self.unsent += data.len();
                        self.stream.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                        // A frame kind HTTP/2 has no use for: skipped.
                    }
                },
            }
        }
    }
}

// === impl RecvBody ===

/// A response body read from its stream, giving the flow-control capacity
/// back as data is read.
pub(super) struct RecvBody(pub(super) h2::RecvStream);

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let stream = &mut self.0;
        if !stream.is_end_stream() {
            match ready!(stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only if the stream is gone, which the next
                    // poll reports.
                    let _ = stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {}
            }
        }
        match ready!(stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}
