//! Request bodies that can be sent more than once.
//!
//! A tonic request body is a stream: once an attempt has read it, it is
//! gone. Before the first attempt the body is read into memory, up to
//! `retry.max_buffered_bytes`; each attempt then gets a fresh body over the
//! same bytes. A body larger than that is put back together (what was read
//! followed by the rest) and sent once, unretried: holding megabytes per
//! call for a retry that rarely happens costs more than it saves.
//!
//! Unary bodies are small and complete as soon as the request is made, so
//! reading them first delays nothing. (A streaming request would wait here
//! until the caller finished sending; no contract marks one as safe to
//! retry, and the retry layer only buffers calls that are.)

use crate::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use std::convert::Infallible;

/// What [`buffer`] made of a request body.
#[derive(Debug)]
pub(super) enum Buffered {
    /// The whole body, in memory: it can be sent again.
    Replayable(Replay),
    /// Larger than the limit: this body, sent once, reads out the same
    /// frames as the original.
    TooLarge(Body),
}

/// A complete request body, replayable as many times as needed.
#[derive(Debug, Clone, Default)]
pub(super) struct Replay {
    data: Bytes,
    /// Boxed: rare in requests, and this sits in every retried call's
    /// state.
    trailers: Option<Box<HeaderMap>>,
}

/// Reads `body` into memory if it holds at most `limit` bytes.
pub(super) async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, tonic::Status> {
    // A unary body is one chunk: kept without a vector.
    let mut first: Option<Bytes> = None;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let trailers = loop {
        let Some(frame) = body.frame().await else {
            break None;
        };
        match frame?.into_data() {
            Ok(chunk) => {
                len += chunk.len();
                match first.take() {
                    None if chunks.is_empty() => first = Some(chunk),
                    earlier => chunks.extend(earlier.into_iter().chain([chunk])),
                }
                if len > limit {
                    chunks.splice(0..0, first);
                    return Ok(Buffered::TooLarge(reassemble(chunks, body)));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    // Trailers end a body.
                    break Some(Box::new(trailers));
                }
                // A frame kind this http-body does not know: nothing to keep.
            }
        }
    };
    if let Some(only) = first {
        return Ok(Buffered::Replayable(Replay {
            data: only,
            trailers,
        }));
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    };
    Ok(Buffered::Replayable(Replay { data, trailers }))
}

/// The frames already read, then the rest of `body`.
fn reassemble(read: Vec<Bytes>, rest: Body) -> Body {
    let read = futures::stream::iter(read).map(|chunk| Ok(Frame::data(chunk)));
    Body::new(StreamBody::new(read.chain(BodyStream::new(rest))))
}

// === impl Replay ===

impl Replay {
    /// A fresh body with the same bytes (and trailers).
    pub(super) fn body(&self) -> Body {
        match &self.trailers {
            None => Body::new(Full::new(self.data.clone())),
            Some(trailers) => {
                let frames = [
                    Frame::data(self.data.clone()),
                    Frame::trailers(HeaderMap::clone(trailers)),
                ];
                let frames = futures::stream::iter(frames).map(Ok::<_, Infallible>);
                Body::new(StreamBody::new(frames))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c))))
            .collect::<Vec<_>>();
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    async fn bytes_of(body: Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_small_body_is_replayed_byte_for_byte() {
        let Buffered::Replayable(replay) = buffer(chunked(&[b"ab", b"cd"]), 16).await.unwrap()
        else {
            panic!("a small body is replayable");
        };
        assert_eq!(bytes_of(replay.body()).await, "abcd");
        assert_eq!(bytes_of(replay.body()).await, "abcd");
    }

    #[tokio::test]
    async fn a_large_body_is_put_back_together() {
        let Buffered::TooLarge(body) = buffer(chunked(&[b"abc", b"def", b"gh"]), 4).await.unwrap()
        else {
            panic!("a body over the limit is not buffered");
        };
        assert_eq!(bytes_of(body).await, "abcdefgh");
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", http::HeaderValue::from_static("1"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = Body::new(StreamBody::new(futures::stream::iter(frames)));
        let Buffered::Replayable(replay) = buffer(body, 16).await.unwrap() else {
            panic!("a small body is replayable");
        };
        let collected = replay.body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "ab");
    }
}
