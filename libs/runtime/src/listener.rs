//! The server's connections: accepted from the listener, through the TLS
//! handshake when the service has an identity, each tagged with its
//! [`Peer`] (tonic's `Connected`), which the mesh's authorization layer and
//! the handlers read from the request's extensions.
//!
//! Handshakes run on tasks of their own, bounded by [`HANDSHAKE_TIMEOUT`]
//! and at most [`MAX_HANDSHAKES`] at once, so a slow or silent client never
//! holds up the next accept. A client
//! refused at the handshake (plaintext, a certificate of another CA, an
//! expired one, none where one is required) never reaches tonic; the
//! refusal is logged at debug with its reason.

use futures::Stream;
use shop_identity::{Identity, Peer, SpiffeId};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once (a flood of silent or slow clients
/// holds at most this many tasks and sockets).
pub const MAX_HANDSHAKES: usize = 256;

/// Connections handshaken but not yet taken by the server.
const BACKLOG: usize = 128;

/// An accepted connection, TLS or not, with who is on the other side.
pub struct Conn {
    io: Io,
    peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// The connections of `listener`: plaintext without `identity`, mutual
/// TLS with it (each handshake with the identity in force, so a rotated
/// certificate is presented from the next connection on). Ends when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    identity: Option<Identity>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(listener, identity, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    identity: Option<Identity>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
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
        let _ = tcp.set_nodelay(true);
        let Some(identity) = &identity else {
            let conn = Conn {
                io: Io::Plain(tcp),
                peer: Peer::plaintext(remote_addr),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        // At most MAX_HANDSHAKES at once: beyond, accepting waits (the
        // kernel's backlog holds the rest).
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
        let server = identity.id();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %remote_addr, %error, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
                    return;
                }
            };
            let identity = caller_identity(&tls);
            let conn = Conn {
                io: Io::Tls(Box::new(tls)),
                peer: Peer {
                    remote_addr,
                    tls: true,
                    identity,
                    server: Some(server),
                },
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
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
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
