//! The connection to one endpoint: one HTTP/2 connection (hyper's client),
//! opened on first use and opened again after it is lost.
//!
//! Why not a tonic `Channel`: a channel is made to be shared, so it puts a
//! [`Buffer`](tower::buffer::Buffer) task in front of the connection, and
//! enforces `grpc-timeout` with a timer of its own. Inside the mesh the
//! endpoint is already shared (the balancer's lock) and the deadline
//! already enforced (the deadline and retry layers), so each call would pay
//! a task hop and a timer for nothing. [`Connection`] hands a request
//! straight to hyper's `SendRequest`, which queues it for the connection's
//! own task.
//!
//! # Readiness and failures
//!
//! `poll_ready` connects if there is no connection, or if the one it had
//! was closed (a GOAWAY, a server gone): TCP with `TCP_NODELAY`, bounded by
//! the connect timeout, then the HTTP/2 handshake. It is an error if that
//! fails: the outlier detector above counts the error and holds the
//! endpoint back for a moment; the next `poll_ready` tries again. Calls in
//! flight on a lost connection fail with hyper's error, which the retry
//! layer treats as UNAVAILABLE.
//!
//! Plain-text HTTP/2 (h2c) only, as between the services here.

use crate::{Body, BoxError, Request, Response};
use futures::future::BoxFuture;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::fmt;
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// One endpoint's HTTP/2 connection; see the module docs.
pub struct Connection {
    address: String,
    authority: http::uri::Authority,
    connect_timeout: Duration,
    state: State,
}

enum State {
    Idle,
    Connecting(BoxFuture<'static, Result<http2::SendRequest<Body>, BoxError>>),
    Connected(http2::SendRequest<Body>),
}

// === impl Connection ===

impl Connection {
    /// A connection to `address` (`http://host:port`), not opened yet.
    pub fn new(address: &str, connect_timeout: Duration) -> Result<Self, BoxError> {
        let uri: http::Uri = address.parse()?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(format!("{address}: only http:// (h2c) endpoints are supported").into());
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
            state: State::Idle,
        })
    }

    fn connect(&self) -> BoxFuture<'static, Result<http2::SendRequest<Body>, BoxError>> {
        let target = self.authority.as_str().to_string();
        let timeout = self.connect_timeout;
        let address = self.address.clone();
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target))
                .await
                .map_err(|_| format!("connecting to {address} timed out after {timeout:?}"))??;
            stream.set_nodelay(true)?;
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(endpoint = %address, %error, "connection ended");
                }
            });
            Ok(sender)
        })
    }
}

impl tower::Service<Request> for Connection {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

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
                State::Connected(sender) => match sender.poll_ready(cx) {
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
        let State::Connected(sender) = &mut self.state else {
            panic!("Connection::call before poll_ready said it was ready");
        };
        let (mut head, body) = request.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        head.uri = http::Uri::from_parts(uri).expect("a path with a scheme and an authority");
        let response = sender.send_request(Request::from_parts(head, body));
        Box::pin(async move { Ok(response.await?.map(Body::new)) })
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
            state: match &self.state {
                State::Connected(sender) => State::Connected(sender.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
