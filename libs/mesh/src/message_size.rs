//! The largest request message a method accepts, enforced on the wire.
//!
//! [`LimitedBody`] reads the 5-byte header of each gRPC message as the
//! request body arrives and, when a message announces more bytes than the
//! method's limit, fails the body with `RESOURCE_EXHAUSTED` (what gRPC's
//! own servers answer for a message over the receive limit) before any of
//! the message is buffered. tonic hands that status to the caller as the
//! call's answer and the handler never runs; the rest of the stream is
//! reset, so an oversized message costs the server one frame's worth of
//! memory, whatever its size.
//!
//! The limits come from the server policy
//! ([`crate::policy::RequestLimits`]): a default for every method and
//! overrides per method name.

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `[server.mesh.request_limits]`: the largest request message each
/// method accepts, in bytes.
///
/// ```toml
/// [server.mesh.request_limits]
/// max_bytes = 4194304                    # every method
/// methods = { LogIn = 4096, SignUp = 4096 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// The limit of every method without its own (4 MiB, tonic's).
    #[serde(default = "d_max_bytes")]
    pub max_bytes: usize,
    /// Limits per method name (`LogIn`), for any service of the server.
    #[serde(default)]
    pub methods: BTreeMap<String, usize>,
}

fn d_max_bytes() -> usize {
    4 * 1024 * 1024
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_bytes: d_max_bytes(),
            methods: BTreeMap::new(),
        }
    }
}

impl RequestLimits {
    /// The limit for a call to `path` (`/pkg.Service/Method`).
    pub fn for_path(&self, path: &str) -> usize {
        let method = path.rsplit('/').next().unwrap_or("");
        self.methods.get(method).copied().unwrap_or(self.max_bytes)
    }
}

/// A request body whose gRPC messages may be at most `limit` bytes each.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    limit: usize,
    method: String,
    /// Where the parser is in the stream of length-prefixed messages.
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a message header: `have` of its 5 bytes seen so far, the
    /// length bytes collected big-endian in `len`.
    Header { have: u8, len: u32 },
    /// Skipping over `remaining` bytes of a message's payload.
    Payload { remaining: u64 },
    /// A message was too large: the body has failed.
    Failed,
}

const HEADER_LEN: u8 = 5;

// === impl LimitedBody ===

impl<B> LimitedBody<B> {
    /// Wraps `inner`, the body of a call to `method` (a path).
    pub fn new(inner: B, limit: usize, method: &str) -> Self {
        Self {
            inner,
            limit,
            method: method.to_string(),
            state: State::Header { have: 0, len: 0 },
        }
    }

    /// Advances the parser over `chunk`; the size of the first message
    /// over the limit, if any.
    fn scan(&mut self, mut chunk: &[u8]) -> Option<u64> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Failed => return None,
                State::Header { have, len } => {
                    // Byte 0 is the compression flag; bytes 1..5 the length.
                    let byte = chunk[0];
                    chunk = &chunk[1..];
                    if *have > 0 {
                        *len = (*len << 8) | u32::from(byte);
                    }
                    *have += 1;
                    if *have == HEADER_LEN {
                        let size = u64::from(*len);
                        if size > self.limit as u64 {
                            self.state = State::Failed;
                            return Some(size);
                        }
                        self.state = if size == 0 {
                            State::Header { have: 0, len: 0 }
                        } else {
                            State::Payload { remaining: size }
                        };
                    }
                }
                State::Payload { remaining } => {
                    let take = (*remaining).min(chunk.len() as u64);
                    chunk = &chunk[take as usize..];
                    *remaining -= take;
                    if *remaining == 0 {
                        self.state = State::Header { have: 0, len: 0 };
                    }
                }
            }
        }
        None
    }

    fn too_large(&self, size: u64) -> tonic::Status {
        tonic::Status::resource_exhausted(format!(
            "request message of {size} bytes exceeds the {} bytes {} accepts",
            self.limit,
            self.method.rsplit('/').next().unwrap_or("")
        ))
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if matches!(this.state, State::Failed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(size) = this.scan(data.chunk())
                {
                    let status = this.too_large(size);
                    tracing::debug!(method = %this.method, size, limit = this.limit, "request message too large");
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Failed) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    type Chunks = StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    /// The body of `bytes` cut into chunks of `chunk` bytes.
    fn chunked(bytes: Vec<u8>, chunk: usize) -> Chunks {
        let frames: Vec<_> = bytes
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn read(
        body: LimitedBody<impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin>,
    ) -> Result<usize, tonic::Status> {
        let mut body = body;
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => total += frame.into_data().map_or(0, |d| d.len()),
                Err(error) => {
                    return Err(*error.downcast::<tonic::Status>().expect("a status"));
                }
            }
        }
        Ok(total)
    }

    #[test]
    fn a_method_limit_overrides_the_default() {
        let limits = RequestLimits {
            max_bytes: 1000,
            methods: [("LogIn".to_string(), 10)].into(),
        };
        assert_eq!(
            limits.for_path("/shop.gateway.v1.ShopGatewayService/LogIn"),
            10
        );
        assert_eq!(
            limits.for_path("/shop.gateway.v1.ShopGatewayService/SignUp"),
            1000
        );
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_whatever_the_chunking() {
        let mut bytes = message(100);
        bytes.extend(message(0));
        bytes.extend(message(4096));
        for chunk in [1, 3, 5, 7, 64, 10_000] {
            let body = LimitedBody::new(chunked(bytes.clone(), chunk), 4096, "/p.S/M");
            assert_eq!(read(body).await.unwrap(), bytes.len(), "chunks of {chunk}");
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_fails_at_its_header() {
        let mut bytes = message(10);
        bytes.extend(message(1 << 20));
        for chunk in [1, 4, 16 * 1024] {
            let body = LimitedBody::new(chunked(bytes.clone(), chunk), 4096, "/p.S/LogIn");
            let status = read(body).await.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::ResourceExhausted,
                "chunks of {chunk}"
            );
            assert!(
                status
                    .message()
                    .contains("1048576 bytes exceeds the 4096 bytes LogIn"),
                "{}",
                status.message()
            );
        }
    }
}
