//! The server's connections: accepted from the listener, through the TLS
//! handshake when the service has an identity, each tagged with its
//! [`Peer`] (tonic's `Connected`), which the mesh's authorization layer and
//! the handlers read from the request's extensions.
//!
//! Nothing a client does can hold the port shut ([`ConnectionLimits`]):
//! - every socket takes a slot of [`slots`] first: at most
//!   `max_connections_per_peer` per address (IPv6: per /64) and
//!   `max_connections` in all; when full, the oldest connection still in
//!   its handshake makes room, and only established connections are never
//!   evicted;
//! - handshakes run on tasks of their own, bounded by `handshake_timeout`,
//!   so a slow or silent client never holds up the next accept;
//! - a connection on which nothing is read or written for `idle_timeout`
//!   is closed (clients that keep long, quiet streams open send keepalive
//!   pings, as the mesh client does).
//!
//! A client refused at the handshake (plaintext, a certificate of another
//! CA, an expired one, none where one is required) never reaches tonic; the
//! refusal is logged at debug with its reason.

mod limits;
mod slots;

pub use limits::ConnectionLimits;
pub use slots::PeerKey;

use futures::Stream;
use shop_identity::{Identity, Peer, SpiffeId};
use slots::{Slot, Slots};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

/// Connections handshaken but not yet taken by the server.
const BACKLOG: usize = 128;

/// An accepted connection, TLS or not, with who is on the other side.
pub struct Conn {
    io: Io,
    peer: Peer,
    idle: Idle,
    /// Given back when the connection is dropped.
    _slot: Slot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Closes a connection on which nothing moved for `timeout`. The timer is
/// re-armed lazily: reads and writes only note the time, and the timer,
/// when it fires early, is pushed to the last activity plus the timeout.
struct Idle {
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// The connections of `listener`: plaintext without `identity`, mutual
/// TLS with it (each handshake with the identity in force, so a rotated
/// certificate is presented from the next connection on), within
/// `limits`. Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    identity: Option<Identity>,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    incoming_with(listener, identity, limits, Protocols::Http2)
}

/// What a TLS port offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// `h2` only: gRPC.
    Http2,
    /// `h2` and `http/1.1`: a port that also serves HTTP/1.1 clients
    /// (REST/JSON, gRPC-Web).
    Http2AndHttp1,
}

/// [`incoming`], offering `protocols`.
pub fn incoming_with(
    listener: TcpListener,
    identity: Option<Identity>,
    limits: ConnectionLimits,
    protocols: Protocols,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(listener, identity, limits, protocols, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The identity's server configuration with `http/1.1` added to its ALPN,
/// derived again only when the identity rotates.
#[derive(Default)]
struct WithHttp1 {
    from: Option<(Arc<ServerConfig>, Arc<ServerConfig>)>,
}

impl WithHttp1 {
    fn get(&mut self, config: Arc<ServerConfig>) -> Arc<ServerConfig> {
        match &self.from {
            Some((source, derived)) if Arc::ptr_eq(source, &config) => derived.clone(),
            _ => {
                let mut derived = (*config).clone();
                derived.alpn_protocols.push(b"http/1.1".to_vec());
                let derived = Arc::new(derived);
                self.from = Some((config, derived.clone()));
                derived
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    identity: Option<Identity>,
    limits: ConnectionLimits,
    protocols: Protocols,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_peer);
    let mut with_http1 = WithHttp1::default();
    loop {
        let (tcp, remote_addr) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.admit(remote_addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(peer = %remote_addr, ?refusal, "connection refused: no free slot");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(identity) = &identity else {
            slot.established();
            let conn = Conn {
                io: Io::Plain(tcp),
                peer: Peer::plaintext(remote_addr),
                idle: Idle::new(limits.idle_timeout),
                _slot: slot,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let config = match protocols {
            Protocols::Http2 => identity.server_config(),
            Protocols::Http2AndHttp1 => with_http1.get(identity.server_config()),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let server = identity.id();
        let tx = tx.clone();
        let handshake_timeout = limits.handshake_timeout;
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                () = slot.evicted() => {
                    tracing::debug!(peer = %remote_addr, "TLS handshake evicted to make room");
                    return;
                }
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %remote_addr, %error, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if !slot.established() {
                return;
            }
            let identity = caller_identity(&tls);
            let conn = Conn {
                io: Io::Tls(Box::new(tls)),
                peer: Peer {
                    remote_addr,
                    tls: true,
                    identity,
                    server: Some(server),
                },
                idle: Idle::new(idle_timeout),
                _slot: slot,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// The SPIFFE ID of the client's certificate (already verified against the
/// bundle by the handshake); `None` without a certificate or without an ID.
fn caller_identity(tls: &TlsStream<TcpStream>) -> Option<SpiffeId> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    shop_identity::material::spiffe_id_of(leaf).ok()
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.idle.touch();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.idle.poll_expired(cx),
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.idle.touch();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.idle.touch();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// === impl Idle ===

impl Idle {
    fn new(timeout: Duration) -> Self {
        let last = Instant::now();
        Self {
            timeout,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + timeout)),
        }
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// While a read is pending: `Pending` (the timer's waker registered),
    /// or an error once nothing has moved for the timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last + self.timeout;
            if due <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle: closed",
                )));
            }
            self.timer.as_mut().reset(due);
        }
    }
}
