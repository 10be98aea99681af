//! An HTTP/JSON client for the gateway's REST face, as a browser or `curl`
//! would reach it: TLS trusting the stack's CA, no client certificate,
//! HTTP/1.1 or HTTP/2 chosen by ALPN, one connection per request; or
//! plaintext ([`Rest::plaintext`]), for a local proxy's listener or admin
//! port.

use anyhow::Context as _;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Which HTTP version a [`Rest`] client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

/// A REST client of one server.
#[derive(Clone)]
pub struct Rest {
    addr: SocketAddr,
    /// `None`: plaintext (HTTP/1.1 as is, HTTP/2 with prior knowledge).
    tls: Option<Arc<rustls::ClientConfig>>,
    version: Version,
}

/// An answer: status, headers and the body (JSON when it parses).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as JSON, `Null` when empty or not JSON.
    pub json: serde_json::Value,
    /// The body as text.
    pub text: String,
    /// The body as sent.
    pub bytes: bytes::Bytes,
}

impl Answer {
    /// A header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The fields a `google.rpc.BadRequest` detail names, sorted.
    pub fn violated_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self.json["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v["field"].as_str().map(str::to_string))
            .collect();
        fields.sort();
        fields
    }
}

impl Rest {
    /// A client of `addr` trusting the CA in the identity directory `dir`
    /// (its `ca.crt`), presenting no certificate.
    pub fn new(addr: SocketAddr, dir: &Path, version: Version) -> anyhow::Result<Self> {
        let ca = dir.join(shop_identity::files::CA);
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&pem)? {
            roots.add(cert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![match version {
            Version::Http1 => b"http/1.1".to_vec(),
            Version::Http2 => b"h2".to_vec(),
        }];
        Ok(Rest {
            addr,
            tls: Some(Arc::new(tls)),
            version,
        })
    }

    /// A plaintext client of `addr` (HTTP/2 with prior knowledge): a
    /// proxy's local listener, an admin port.
    pub fn plaintext(addr: SocketAddr, version: Version) -> Self {
        Rest {
            addr,
            tls: None,
            version,
        }
    }

    /// Sends one request: `body` as JSON when given, `headers` besides.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Answer> {
        let raw = body.map(|b| b.to_string().into_bytes());
        self.send_raw(method, path, headers, raw).await
    }

    /// Sends one request with `body` as given (no Content-Type unless in
    /// `headers`, except `application/json` when `body` is some and none
    /// is given).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.exchange(method, path, headers, body),
        )
        .await
        .context("no answer within 20 s")?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let uri = match (&self.tls, self.version) {
            (Some(_), _) => format!("https://localhost:{}{path}", self.addr.port()),
            // Origin-form, which every HTTP/1.1 server reads (Envoy's
            // admin interface does not read an absolute URI).
            (None, Version::Http1) => path.to_string(),
            (None, Version::Http2) => format!("http://localhost:{}{path}", self.addr.port()),
        };
        let mut request = Request::builder().method(method).uri(uri);
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if self.version == Version::Http1 && !has_host {
            request = request.header("host", format!("localhost:{}", self.addr.port()));
        }
        let request = request.body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
        let response = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await?;
                self.over(TokioIo::new(tls), request).await?
            }
            None => self.over(TokioIo::new(tcp), request).await?,
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            text,
            bytes,
        })
    }

    /// Sends `request` over the connection `io` in this client's version.
    async fn over<I>(
        &self,
        io: I,
        request: Request<Full<bytes::Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        Ok(match self.version {
            Version::Http1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
            Version::Http2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await?;
                tokio::spawn(conn);
                sender.send_request(request).await?
            }
        })
    }
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the CA file is not PEM")
}
