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
//! Failures are [`TransportError`]s, typed by what failed.
//!
//! The connection settings are hyper's defaults for a client (2 MiB stream
//! window, 5 MiB connection window, 16 KiB frames and header lists, 1 MiB
//! send buffer per stream, no server push).

use crate::transport::TransportError;
use crate::{Body, BoxError, Request, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use shop_identity::{Identity, SpiffeId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// Bytes of a streaming request body queued beyond the stream's
/// flow-control window before sending waits for the window to open.
pub const MAX_UNSENT: usize = 64 * 1024;

const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;

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

/// What the connection's task reads and writes: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// How often a connection PINGs its peer, and how long it waits for the
/// PONG before it gives the connection up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// Time a PONG may take.
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// A PING every second, answered within a second: a silent peer is
    /// noticed within about 2 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }
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

    fn connect(&self) -> BoxFuture<'static, Result<Live, BoxError>> {
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
                        tracing::debug!(%endpoint, %error, "connection ended");
                    },
                    silent = keep_alive(pings, keepalive, answered) => {
                        // Dropping the connection closes the socket and
                        // fails its streams.
                        tracing::warn!(%endpoint, ?silent, "peer did not answer a PING; connection closed");
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

/// PINGs at once (reporting the first PONG through `answered`), then every
/// `keepalive.interval`, until one goes unanswered for `keepalive.timeout`;
/// returns that timeout. Never returns if the connection fails under it:
/// the connection's own future reports that.
async fn keep_alive(
    mut pings: h2::PingPong,
    keepalive: Keepalive,
    answered: tokio::sync::oneshot::Sender<()>,
) -> Duration {
    // The first wait is bounded by the connect deadline, not here.
    if pings.ping(h2::Ping::opaque()).await.is_err() {
        return std::future::pending().await;
    }
    let _ = answered.send(());
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return keepalive.timeout,
        }
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

// === impl ResponseFuture ===

/// The response future of [`Connection`]: sends the request body and waits
/// for the response head, on the caller's task.
pub struct ResponseFuture {
    state: Call,
}

enum Call {
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
                    tracing::debug!(%error, "request body not sent");
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

// === impl Pipe ===

/// Sends a request body on its stream, frame by frame.
struct Pipe {
    body: Body,
    stream: h2::SendStream<Bytes>,
    /// Bytes queued since the stream last had window to spare.
    unsent: usize,
}

impl Pipe {
    fn new(body: Body, stream: h2::SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            unsent: 0,
        }
    }

    /// Ready once the body has been handed to `h2` whole (or could not be).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
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
struct RecvBody(h2::RecvStream);

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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Service as _, ServiceExt as _};

    fn request() -> Request {
        http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn only_h2c_addresses_with_a_port_are_accepted() {
        assert!(Connection::new("http://127.0.0.1:7102", Duration::from_secs(1)).is_ok());
        assert!(Connection::new("https://127.0.0.1:7102", Duration::from_secs(1)).is_err());
        assert!(Connection::new("http://catalog", Duration::from_secs(1)).is_err());
        assert!(Connection::new("not a uri", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_and_the_next_poll_tries_again() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("http://127.0.0.1:{port}");
        let mut connection = Connection::new(&address, Duration::from_secs(1)).unwrap();
        let error = connection.ready().await.unwrap_err();
        assert!(!error.to_string().is_empty());

        // Something listens now: the same connection gets through.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let response = connection.ready().await.unwrap().call(request()).await;
        assert_eq!(response.unwrap().status(), http::StatusCode::OK);
    }

    /// An HTTP/2 server (h2's, no gRPC) that answers each request with the
    /// number of body bytes it read (header `x-read`) and a body of the
    /// size the request's `x-reply` asks for; with `x-early` it answers
    /// before reading the body, and reports the count in a trailer. With
    /// `go_away`, it sends GOAWAY after its first request.
    async fn byte_server(go_away: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.unwrap();
                    let mut served = 0;
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        served += 1;
                        if go_away && served == 1 {
                            connection.graceful_shutdown();
                        }
                        tokio::spawn(async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().parse::<usize>().unwrap())
                            };
                            let reply = header("x-reply").unwrap_or(0);
                            let early = header("x-early").is_some();
                            let mut body = request.into_body();
                            let mut read = 0;
                            let mut send = None;
                            if early {
                                let response = http::Response::new(());
                                send = Some(respond.send_response(response, false).unwrap());
                            }
                            while let Some(chunk) = body.data().await {
                                let chunk = chunk.unwrap();
                                read += chunk.len();
                                body.flow_control().release_capacity(chunk.len()).unwrap();
                            }
                            let mut send = match send {
                                Some(send) => send,
                                None => {
                                    let response = http::Response::builder()
                                        .header("x-read", read)
                                        .body(())
                                        .unwrap();
                                    respond.send_response(response, false).unwrap()
                                }
                            };
                            send.send_data(Bytes::from(vec![7u8; reply]), false)
                                .unwrap();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("x-read", read.into());
                            send.send_trailers(trailers).unwrap();
                        });
                    }
                });
            }
        });
        (address, connections)
    }

    fn streaming_request(chunks: usize, chunk: usize, headers: &[(&str, usize)]) -> Request {
        let frames = (0..chunks).map(move |_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![1u8; chunk])))
        });
        let mut builder = http::Request::builder().uri("/bytes");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Body::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            )))
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_larger_than_every_window_go_both_ways() {
        let (address, _server) = byte_server(false).await;
        let mut connection = Connection::new(&address, Duration::from_secs(1)).unwrap();
        // 8 MiB up (more than the server's 64 KiB default window and the
        // unsent bound), 6 MiB down (more than our stream and connection
        // windows: only read if capacity is given back).
        let request = streaming_request(128, 64 * 1024, &[("x-reply", 6 * 1024 * 1024)]);
        let response = tokio::time::timeout(Duration::from_secs(20), async {
            connection.ready().await.unwrap().call(request).await
        })
        .await
        .expect("no flow-control stall")
        .unwrap();
        assert_eq!(response.headers()["x-read"], (8 * 1024 * 1024).to_string());
        let body = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
            .await
            .expect("no flow-control stall")
            .unwrap();
        assert_eq!(
            body.trailers().unwrap()["x-read"],
            (8 * 1024 * 1024).to_string()
        );
        assert_eq!(body.to_bytes().len(), 6 * 1024 * 1024);
    }

    #[tokio::test]
    async fn a_body_still_sending_when_the_answer_comes_is_sent_in_full() {
        let (address, _server) = byte_server(false).await;
        let mut connection = Connection::new(&address, Duration::from_secs(1)).unwrap();
        let request = streaming_request(64, 64 * 1024, &[("x-early", 1)]);
        let response = connection
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap();
        assert!(response.headers().get("x-read").is_none(), "answered early");
        let body = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
            .await
            .expect("the rest of the body was sent")
            .unwrap();
        assert_eq!(
            body.trailers().unwrap()["x-read"],
            (4 * 1024 * 1024).to_string()
        );
    }

    #[tokio::test]
    async fn a_connection_that_goes_away_is_opened_again() {
        let (address, connections) = byte_server(true).await;
        let mut connection = Connection::new(&address, Duration::from_secs(1)).unwrap();
        for _ in 0..3 {
            let request = streaming_request(1, 10, &[]);
            let response = tokio::time::timeout(Duration::from_secs(5), async {
                connection.ready().await?.call(request).await
            })
            .await
            .expect("not stuck on a closed connection")
            .unwrap();
            assert_eq!(response.headers()["x-read"], "10");
            response.into_body().collect().await.unwrap();
        }
        // Every connection went away after its first request.
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    /// A TCP relay to `upstream` that can be frozen: frozen, it keeps both
    /// sockets open and forwards nothing, as a stopped (SIGSTOP) process or
    /// a partition does.
    async fn freezable_relay(upstream: String) -> (String, Arc<std::sync::atomic::AtomicBool>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(server_read), Box::new(client_write)),
                ] {
                    let frozen = flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf).await {
                            while frozen.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        (address, frozen)
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_is_given_up_within_the_keepalive() {
        let (server, _) = byte_server(false).await;
        let (address, frozen) = freezable_relay(server.trim_start_matches("http://").into()).await;
        let keepalive = Keepalive {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        };
        let mut connection = Connection::new(&address, Duration::from_millis(300))
            .unwrap()
            .with_keepalive(keepalive);
        let response = connection.ready().await.unwrap().call(request()).await;
        assert_eq!(response.unwrap().status(), http::StatusCode::OK);

        // Half-open: the socket stays up, nothing comes back. Without
        // keepalive this call would wait for ever.
        frozen.store(true, Ordering::SeqCst);
        let call = connection.ready().await.unwrap().call(request());
        let outcome = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ends when the PING goes unanswered");
        assert!(
            outcome.is_err(),
            "the call fails (and is retried elsewhere)"
        );

        // Connecting again through the frozen peer fails the handshake
        // within the connect timeout: an error the outlier detector counts.
        let again = tokio::time::timeout(Duration::from_secs(10), connection.ready())
            .await
            .expect("poll_ready does not hang on a silent peer");
        assert!(again.is_err());

        // Thawed, the same endpoint works again.
        frozen.store(false, Ordering::SeqCst);
        let response = connection.ready().await.unwrap().call(request()).await;
        assert_eq!(response.unwrap().status(), http::StatusCode::OK);
    }
}
