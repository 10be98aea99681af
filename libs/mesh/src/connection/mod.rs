//! The connection to one endpoint: one HTTP/2 connection (the `h2` crate's
//! client), opened on first use and opened again after it is lost.
//!
//! # Why `h2` and not a tonic `Channel` or hyper's client
//!
//! A tonic `Channel` is made to be shared, so it puts a
//! [`Buffer`](tower::buffer::Buffer) task in front of the connection and
//! enforces `grpc-timeout` with a timer of its own; hyper's HTTP/2 client
//! below it hands every request to the connection's task through a channel,
//! spawns a task per request to await the response (and another to stream
//! the body when it is not complete at once), and sends the response back
//! through a oneshot. Inside the mesh the endpoint is already shared (the
//! balancer's lock), the deadline already enforced (the deadline and retry
//! layers), and the caller's task is there to be polled: so [`Connection`]
//! opens the stream itself (`h2`'s `SendRequest` is a handle on the
//! connection's stream table), sends the body from the caller's task, and
//! the [`ResponseFuture`] waits on the stream directly. The connection's own
//! task only reads and writes the socket. Per call that is no channel, no
//! spawned task and no oneshot.
//!
//! # Bodies
//!
//! A request body is sent from the call's [`ResponseFuture`] as the caller
//! polls it: a complete body (a unary request, or one the retry layer
//! buffered) goes out with the headers in the first poll. A streaming body
//! keeps being sent while the call waits for its response; at most
//! [`MAX_UNSENT`] bytes beyond the stream's flow-control window are queued
//! before the pipe waits for the peer's window to open. If the response
//! comes while the body is still being sent (a server may answer early),
//! the rest is sent from a task of its own, as hyper would. Response bodies
//! give their flow-control capacity back as they are read.
//!
//! # Readiness and failures
//!
//! `poll_ready` connects if there is no connection, or if the one it had
//! was closed (a GOAWAY, a server gone, the connection's task ended): TCP
//! with `TCP_NODELAY` and the HTTP/2 handshake, bounded by the connect
//! timeout. It is an error if that fails: the outlier detector above counts
//! the error and holds the endpoint back for a moment; the next
//! `poll_ready` tries again. While the peer's `MAX_CONCURRENT_STREAMS` is
//! reached, the stream last opened waits to be sent and `poll_ready` is
//! pending until it is (so the balancer prefers another endpoint). Calls in
//! flight on a lost connection fail with `h2`'s error, which the retry layer
//! treats as UNAVAILABLE.
//!
//! # Keepalive
//!
//! A peer that stops answering without closing (a frozen process, a
//! partition) leaves a half-open connection whose calls would wait until
//! their deadlines, forever for the balancer. So the connection's task
//! sends an HTTP/2 PING every `keepalive.interval`, busy or idle, and
//! closes the connection when the PONG does not come within
//! `keepalive.timeout`: its calls fail at once (UNAVAILABLE, retried
//! elsewhere), and reconnecting to a peer that still does not answer fails
//! the handshake within the connect timeout, which the outlier detector
//! counts until it ejects the endpoint. (A connection counts as open only
//! once the peer has answered a first PING: an HTTP/2 client handshake
//! alone does not wait for the server.)
//!
//! # TLS
//!
//! An `https://` endpoint is mutual TLS (rustls through `tokio-rustls`,
//! TLS 1.3, ALPN `h2`): the connection presents the service's own
//! certificate and accepts the peer only if its certificate chains to the
//! trust bundle and names the SPIFFE ID configured for the upstream (see
//! [`ClientTls`]); the DNS name dialled plays no part. Each handshake takes
//! the identity in force, so a rotated certificate is used from the next
//! connection on. An `http://` endpoint is plaintext HTTP/2 (h2c), for
//! development servers without identities.
//!
//! Failures are [`TransportError`](crate::transport::TransportError)s,
//! typed by what failed.
//!
//! The connection settings are hyper's defaults for a client (2 MiB stream
//! window, 5 MiB connection window, 16 KiB frames and header lists, 1 MiB
//! send buffer per stream, no server push).
//!
//! # Where things are
//!
//! Dialling (TCP, TLS, the HTTP/2 handshake, the connection's task) is in
//! `connect.rs`, the PINGs in `keepalive.rs`, a call's [`ResponseFuture`]
//! in `future.rs`, and the request and response bodies in `pipe.rs`.

mod connect;
mod future;
mod keepalive;
mod pipe;
#[cfg(test)]
mod tests;

pub use future::ResponseFuture;
pub use keepalive::Keepalive;

use crate::{BoxError, Request, Response};
use bytes::Bytes;
use future::Call;
use futures::future::BoxFuture;
use pipe::Pipe;
use shop_identity::{Identity, SpiffeId};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// Bytes of a streaming request body queued beyond the stream's
/// flow-control window before sending waits for the window to open.
pub const MAX_UNSENT: usize = 64 * 1024;

/// One endpoint's HTTP/2 connection; see the module docs.
pub struct Connection {
    address: String,
    authority: http::uri::Authority,
    connect_timeout: Duration,
    keepalive: Keepalive,
    tls: Option<ClientTls>,
    state: State,
}

/// The TLS side of a connection: the identity it presents and the one it
/// accepts.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// This service's identity (reloaded when its files change).
    pub identity: Identity,
    /// The SPIFFE ID the upstream's endpoints must present.
    pub expected: SpiffeId,
}

type Sender = h2::client::SendRequest<Bytes>;

/// A connection's handle and whether its task still runs (it ends when the
/// peer closes, fails, or goes silent past the keepalive).
type Live = (Sender, Arc<AtomicBool>);

enum State {
    Idle,
    Connecting(BoxFuture<'static, Result<Live, BoxError>>),
    Connected(Live),
}

// === impl Connection ===

impl Connection {
    /// A plaintext (h2c) connection to `address` (`http://host:port`), not
    /// opened yet.
    pub fn new(address: &str, connect_timeout: Duration) -> Result<Self, BoxError> {
        Self::open(address, connect_timeout, None)
    }

    /// A mutual-TLS connection to `address` (`https://host:port`), not
    /// opened yet.
    pub fn secure(
        address: &str,
        connect_timeout: Duration,
        tls: ClientTls,
    ) -> Result<Self, BoxError> {
        Self::open(address, connect_timeout, Some(tls))
    }

    fn open(
        address: &str,
        connect_timeout: Duration,
        tls: Option<ClientTls>,
    ) -> Result<Self, BoxError> {
        let uri: http::Uri = address.parse()?;
        match (uri.scheme_str(), &tls) {
            (Some("http"), None) | (Some("https"), Some(_)) => {}
            (Some("http"), Some(_)) => {
                return Err(format!(
                    "{address}: a plaintext endpoint, and every hop of this mesh is mTLS (write https://)"
                )
                .into());
            }
            (Some("https"), None) => {
                return Err(format!(
                    "{address}: an https:// endpoint needs the service's identity (server.tls)"
                )
                .into());
            }
            _ => return Err(format!("{address}: endpoints are http:// or https:// URIs").into()),
        }
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .ok_or_else(|| format!("{address}: an endpoint needs a host and a port"))?
            .clone();
        Ok(Self {
            address: address.to_string(),
            authority,
            connect_timeout,
            keepalive: Keepalive::default(),
            tls,
            state: State::Idle,
        })
    }

    /// The same connection, pinging its peer as `keepalive` says.
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }
}

impl tower::Service<Request> for Connection {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => self.state = State::Connecting(self.connect()),
                State::Connecting(connecting) => match ready!(connecting.as_mut().poll(cx)) {
                    Ok(sender) => self.state = State::Connected(sender),
                    Err(error) => {
                        self.state = State::Idle;
                        return Poll::Ready(Err(error));
                    }
                },
                State::Connected((_, alive)) if !alive.load(Ordering::Acquire) => {
                    tracing::debug!(endpoint = %self.address, "connection ended");
                    self.state = State::Idle;
                }
                State::Connected((sender, _)) => match sender.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => {
                        // Closed (a GOAWAY, an idle close, a server gone):
                        // connect again; only that failing is an error.
                        tracing::debug!(endpoint = %self.address, %error, "connection closed");
                        self.state = State::Idle;
                    }
                },
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let State::Connected((sender, _)) = &mut self.state else {
            panic!("Connection::call before poll_ready said it was ready");
        };
        let (mut head, body) = request.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        uri.authority = Some(self.authority.clone());
        head.uri = http::Uri::from_parts(uri).expect("a path with a scheme and an authority");
        let end_of_stream = http_body::Body::is_end_stream(&body);
        match sender.send_request(http::Request::from_parts(head, ()), end_of_stream) {
            Ok((response, stream)) => ResponseFuture {
                state: Call::Waiting {
                    response,
                    pipe: (!end_of_stream).then(|| Pipe::new(body, stream)),
                },
            },
            Err(error) => ResponseFuture {
                state: Call::Failed(Some(error)),
            },
        }
    }
}

impl Clone for Connection {
    /// Shares the connection if there is one; otherwise the clone opens its
    /// own when polled.
    fn clone(&self) -> Self {
        Self {
            address: self.address.clone(),
            authority: self.authority.clone(),
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            tls: self.tls.clone(),
            state: match &self.state {
                State::Connected(live) => State::Connected(live.clone()),
                State::Idle | State::Connecting(_) => State::Idle,
            },
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Connecting(_) => "connecting",
            State::Connected(_) => "connected",
        };
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("state", &state)
            .finish()
    }
}
