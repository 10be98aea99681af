use super::*;
use crate::Body;
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
