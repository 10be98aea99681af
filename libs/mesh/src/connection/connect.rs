//! Opening a connection: TCP, TLS for `https://`, the HTTP/2 handshake,
//! and the task that reads and writes the socket and PINGs the peer.

use super::keepalive::keep_alive;
use super::{Connection, Live};
use crate::BoxError;
use crate::transport::TransportError;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The target of this file's events: the connection's, which log filters
/// name.
const TARGET: &str = "shop_mesh::connection";

// hyper's defaults for a client (see the module docs).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// What the connection's task reads and writes: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

impl Connection {
    /// Dials the endpoint and waits for the peer's first PONG, all within
    /// the connect timeout.
    pub(super) fn connect(&self) -> BoxFuture<'static, Result<Live, BoxError>> {
        let target = self.authority.as_str().to_string();
        let host = self.authority.host().trim_matches(['[', ']']).to_string();
        let timeout = self.connect_timeout;
        let keepalive = self.keepalive;
        let address = self.address.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let handshake = async {
                let stream = tokio::net::TcpStream::connect(&target)
                    .await
                    .map_err(|e| TransportError::connect(&address, e))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| TransportError::connect(&address, e))?;
                let io: Box<dyn Io> = match &tls {
                    None => Box::new(stream),
                    Some(tls) => {
                        let config = tls.identity.client_config(&tls.expected).map_err(|e| {
                            TransportError::Tls {
                                address: address.clone(),
                                reason: e.to_string(),
                            }
                        })?;
                        // Only SNI: the verifier checks the SPIFFE ID, not
                        // this name.
                        let name =
                            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                                TransportError::Tls {
                                    address: address.clone(),
                                    reason: format!("{host:?} is not a server name: {e}"),
                                }
                            })?;
                        let stream = tokio_rustls::TlsConnector::from(config)
                            .connect(name, stream)
                            .await
                            .map_err(|e| TransportError::tls(&address, e))?;
                        Box::new(stream)
                    }
                };
                let (sender, connection) = h2::client::Builder::new()
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .max_frame_size(MAX_FRAME_SIZE)
                    .max_header_list_size(MAX_HEADER_LIST_SIZE)
                    .max_send_buffer_size(MAX_SEND_BUFFER)
                    .enable_push(false)
                    .handshake::<_, Bytes>(io)
                    .await
                    .map_err(|source| TransportError::Handshake {
                        address: address.clone(),
                        source,
                    })?;
                Ok::<_, TransportError>((sender, connection))
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let (sender, mut connection) = tokio::time::timeout_at(deadline, handshake)
                .await
                .map_err(|_| TransportError::ConnectTimeout {
                    address: address.clone(),
                    after: timeout,
                })??;
            let pings = connection
                .ping_pong()
                .expect("the first call on a new connection");
            let alive = Arc::new(AtomicBool::new(true));
            let running = alive.clone();
            let (answered, first_pong) = tokio::sync::oneshot::channel();
            let endpoint = address.clone();
            let task = tokio::spawn(async move {
                tokio::select! {
                    result = connection => if let Err(error) = result {
                        tracing::debug!(target: TARGET, %endpoint, %error, "connection ended");
                    },
                    silent = keep_alive(pings, keepalive, answered) => {
                        // Dropping the connection closes the socket and
                        // fails its streams.
                        tracing::warn!(target: TARGET, %endpoint, ?silent, "peer did not answer a PING; connection closed");
                    }
                }
                running.store(false, Ordering::Release);
            });
            // An h2 client handshake does not wait for the server: the
            // first PONG is what proves the peer is there.
            match tokio::time::timeout_at(deadline, first_pong).await {
                Ok(Ok(())) => Ok((sender, alive)),
                Ok(Err(_closed)) => {
                    // The connection ended before the first PONG: with TLS
                    // 1.3 that is how a server refusing our certificate
                    // (expired, foreign) answers, after the handshake.
                    Err(match tls {
                        Some(_) => TransportError::Tls {
                            address,
                            reason: "the server closed the connection before answering (it may have refused our certificate)".into(),
                        },
                        None => TransportError::Connect {
                            address,
                            source: std::io::Error::other("the server closed the connection before answering"),
                        },
                    }
                    .into())
                }
                Err(_elapsed) => {
                    task.abort();
                    Err(TransportError::ConnectTimeout {
                        address,
                        after: timeout,
                    }
                    .into())
                }
            }
        })
    }
}
