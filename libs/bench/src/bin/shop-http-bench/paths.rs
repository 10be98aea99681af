//! The three ways a shopper's request reaches the gateway, each over one
//! kept-alive connection per worker:
//!
//! - **gRPC**: the generated client, HTTP/2 over TLS to the public port;
//! - **REST**: JSON over HTTP/1.1 and TLS to the same port, transcoded by
//!   the gateway itself;
//! - **Envoy**: JSON over plaintext HTTP/1.1 to a local Envoy, whose
//!   `grpc_json_transcoder` calls the gateway's gRPC port (HTTP/2, TLS).

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use shop_proto::shop::gateway::v1 as gw;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::orders::v1::NewOrderLine;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tonic::transport::Channel;

/// A path through which requests reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Grpc,
    Rest,
    Envoy,
}

impl Route {
    pub(crate) const ALL: [Route; 3] = [Route::Grpc, Route::Rest, Route::Envoy];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Grpc => "gRPC",
            Route::Rest => "REST (gateway)",
            Route::Envoy => "REST (Envoy)",
        }
    }
}

/// One request of the mix.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    GetProduct,
    ListProducts,
    PlaceOrder,
}

/// Where the routes lead.
pub(crate) struct Targets {
    pub(crate) gateway: SocketAddr,
    pub(crate) envoy: SocketAddr,
    pub(crate) tls_h1: Arc<rustls::ClientConfig>,
    pub(crate) grpc: Channel,
}

impl Targets {
    /// TLS trusting the CA in `ca_file`, ALPN `http/1.1`.
    pub(crate) fn tls_h1(ca_file: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(tls))
    }
}

/// A worker's connection on its route.
pub(crate) enum Conn {
    Grpc(ShopGatewayServiceClient<Channel>),
    Http(SendRequest<Full<Bytes>>),
}

/// A new connection on `route`.
pub(crate) async fn connect(route: Route, targets: &Targets) -> anyhow::Result<Conn> {
    Ok(match route {
        // A channel of its own per worker: one HTTP/2 connection each, as
        // the HTTP/1.1 routes have one connection each.
        Route::Grpc => Conn::Grpc(ShopGatewayServiceClient::new(targets.grpc.clone())),
        Route::Rest => {
            let tcp = tokio::net::TcpStream::connect(targets.gateway).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(targets.tls_h1.clone())
                .connect(name, tcp)
                .await?;
            http1(TokioIo::new(tls)).await?
        }
        Route::Envoy => {
            let tcp = tokio::net::TcpStream::connect(targets.envoy).await?;
            tcp.set_nodelay(true)?;
            http1(TokioIo::new(tcp)).await?
        }
    })
}

async fn http1<I>(io: I) -> anyhow::Result<Conn>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(Conn::Http(sender))
}

/// What a call needs of the shop.
pub(crate) struct Call<'a> {
    pub(crate) token: &'a str,
    pub(crate) product: &'a str,
}

/// Sends `action` on `conn`; `Err` with a short reason unless answered OK.
pub(crate) async fn send(conn: &mut Conn, action: Action, call: &Call<'_>) -> anyhow::Result<()> {
    match conn {
        Conn::Grpc(client) => grpc(client, action, call).await,
        Conn::Http(sender) => http(sender, action, call).await,
    }
}

async fn grpc(
    client: &mut ShopGatewayServiceClient<Channel>,
    action: Action,
    call: &Call<'_>,
) -> anyhow::Result<()> {
    match action {
        Action::GetProduct => {
            client
                .get_product(gw::GetProductRequest {
                    product_id: call.product.into(),
                })
                .await?;
        }
        Action::ListProducts => {
            client
                .list_products(gw::ListProductsRequest {
                    page_size: 10,
                    ..Default::default()
                })
                .await?;
        }
        Action::PlaceOrder => {
            let request = gw::PlaceOrderRequest {
                lines: vec![NewOrderLine {
                    product_id: call.product.into(),
                    quantity: 1,
                }],
                payment_token: "tok_approve".into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            };
            client
                .place_order(shop_testkit::with_bearer(call.token, request))
                .await?;
        }
    }
    Ok(())
}

async fn http(
    sender: &mut SendRequest<Full<Bytes>>,
    action: Action,
    call: &Call<'_>,
) -> anyhow::Result<()> {
    let (method, path, body) = match action {
        Action::GetProduct => (Method::GET, format!("/api/products/{}", call.product), None),
        Action::ListProducts => (Method::GET, "/api/products?pageSize=10".to_string(), None),
        Action::PlaceOrder => (
            Method::POST,
            "/api/orders".to_string(),
            Some(
                serde_json::json!({
                    "lines": [{"productId": call.product, "quantity": 1}],
                    "paymentToken": "tok_approve",
                    "idempotencyKey": uuid::Uuid::new_v4().to_string(),
                })
                .to_string(),
            ),
        ),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {}", call.token));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    sender.ready().await.context("the connection closed")?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    // Decoded as a client would: the answer must be JSON.
    let _: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(())
}
