//! The tower layer: gRPC requests (and gRPC-Web, already turned into gRPC
//! by tonic-web outside it) pass through untouched; an HTTP/JSON request
//! matching a rule becomes one gRPC call of the same inner service, so it
//! meets the same authorization, limits, deadlines, metrics, traces and
//! handlers as a gRPC client's call, and its answer is turned back.
//!
//! Besides the rules: the files of a [`Site`] when one is given (`GET /`
//! is its page), `GET /openapi.json` (the document given), and
//! `GET /health/live` and `/health/ready`, answered from the same health
//! entries as the gRPC probes (the `liveness` entry, and the overall `""`
//! one): 200 when SERVING, 503 otherwise. Another method there is 405, as
//! on a rule's path.

use crate::request::{self, Parts, Refusal};
use crate::rules::{Route, RuleError};
use crate::site::Site;
use crate::status::error_response;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::{Code, Status};

/// Bounds of the HTTP face.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body read; beyond it, 413 before any parsing.
    pub max_request_bytes: usize,
    /// Largest answer turned into JSON; beyond it, 500 (a bug: answers are
    /// bounded by page sizes).
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 64 * 1024,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The HTTP/JSON face of one gRPC service, as a tower layer.
#[derive(Clone)]
pub struct HttpFace {
    face: Arc<Face>,
}

#[derive(Clone)]
struct Face {
    routes: Vec<Route>,
    pool: DescriptorPool,
    openapi: Option<Bytes>,
    site: Option<Site>,
    limits: Limits,
}

impl std::fmt::Debug for HttpFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFace")
            .field("routes", &self.face.routes.len())
            .finish_non_exhaustive()
    }
}

impl HttpFace {
    /// The rules of `service` in `pool`, which must also hold the error
    /// detail types (`google.rpc`) so that errors carry them as JSON.
    pub fn new(pool: DescriptorPool, service: &str, limits: Limits) -> Result<Self, RuleError> {
        let routes = crate::rules::routes(&pool, service)?;
        Ok(HttpFace {
            face: Arc::new(Face {
                routes,
                pool,
                openapi: None,
                site: None,
                limits,
            }),
        })
    }

    /// Serves `document` at `GET /openapi.json`.
    pub fn with_openapi(self, document: Bytes) -> Self {
        let mut face = Face::clone(&self.face);
        face.openapi = Some(document);
        HttpFace {
            face: Arc::new(face),
        }
    }

    /// Serves the files of `site` (`GET /` its `index.html`).
    pub fn with_site(self, site: Site) -> Self {
        let mut face = Face::clone(&self.face);
        face.site = Some(site);
        HttpFace {
            face: Arc::new(face),
        }
    }

    /// How many bindings it serves.
    pub fn routes(&self) -> usize {
        self.face.routes.len()
    }
}

impl<S> tower::Layer<S> for HttpFace {
    type Service = Transcode<S>;

    fn layer(&self, inner: S) -> Transcode<S> {
        Transcode {
            inner,
            face: self.face.clone(),
        }
    }
}

/// The service [`HttpFace`] wraps around a gRPC service.
#[derive(Clone)]
pub struct Transcode<S> {
    inner: S,
    face: Arc<Face>,
}

/// Whether `request` speaks gRPC (or gRPC-Web) already.
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"))
}

impl<S> tower::Service<Request<Body>> for Transcode<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The ready service serves this call; the clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc(&request) {
            let mut inner = inner;
            return Box::pin(inner.call(request));
        }
        let face = self.face.clone();
        Box::pin(async move { Ok(face.serve(request, inner).await) })
    }
}

/// The gRPC health service's path.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

impl Face {
    async fn serve<S>(&self, request: Request<Body>, inner: S) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let get = method == Method::GET;
        let own = match path.as_str() {
            "/openapi.json" => self.openapi.is_some(),
            "/health/live" | "/health/ready" => true,
            other => self.site.as_ref().is_some_and(|site| site.has(other)),
        };
        match path.as_str() {
            "/openapi.json" if get => {
                if let Some(doc) = &self.openapi {
                    return json_response(StatusCode::OK, doc.clone());
                }
            }
            "/health/live" if get => return self.health(request, inner, "liveness").await,
            "/health/ready" if get => return self.health(request, inner, "").await,
            other if get && own => {
                if let Some(file) = self.site.as_ref().and_then(|site| site.get(other)) {
                    return file;
                }
            }
            // The face's own paths answer another method as the rules' do.
            _ if own => return method_not_allowed(&self.pool, &method, &path, &["GET"]),
            _ => {}
        }
        let verb = self.verb_of(&path);
        let mut allowed = Vec::new();
        let mut found = None;
        for route in &self.routes {
            // A path ending in a verb of the rules is only for templates
            // with that verb: `{order_id}` does not take `1:cancel`.
            if route.template.verb.as_deref() != verb {
                continue;
            }
            if let Some(bound) = route.template.matches(&path) {
                if route.method == method {
                    found = Some((route, bound));
                    break;
                }
                allowed.push(route.method.as_str());
            }
        }
        let Some((route, bound)) = found else {
            if allowed.is_empty() {
                let status = Status::not_found(format!("no operation at {method} {path}"));
                return error_response(&self.pool, &status, None);
            }
            return method_not_allowed(&self.pool, &method, &path, &allowed);
        };
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.limits.max_request_bytes)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                let status = Status::invalid_argument(format!(
                    "the body is larger than {} bytes",
                    self.limits.max_request_bytes
                ));
                return error_response(&self.pool, &status, Some(StatusCode::PAYLOAD_TOO_LARGE));
            }
            Err(error) => {
                let status =
                    Status::invalid_argument(format!("the body could not be read: {error}"));
                return error_response(&self.pool, &status, None);
            }
        };
        let text = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let incoming = Parts {
            query: parts.uri.query(),
            body: &body,
            content_type: text(header::CONTENT_TYPE),
            idempotency_key: text(header::HeaderName::from_static("idempotency-key")),
        };
        let message = match request::message(route, bound, &incoming) {
            Ok(message) => message,
            Err(Refusal { status, http }) => return error_response(&self.pool, &status, http),
        };
        let grpc = grpc_request(parts, &route.grpc_path, message.encode_to_vec());
        match call(inner, grpc, self.limits.max_response_bytes).await {
            Ok(bytes) => match DynamicMessage::decode(route.rpc.output(), bytes) {
                Ok(output) => {
                    let shown = match &route.response_body {
                        Some(field) => match output.get_field(field).into_owned() {
                            prost_reflect::Value::Message(m) => m,
                            _ => output,
                        },
                        None => output,
                    };
                    json_response(StatusCode::OK, to_json(&shown))
                }
                Err(error) => {
                    tracing::error!(%error, path = route.grpc_path, "an answer that does not decode");
                    error_response(&self.pool, &Status::internal("internal error"), None)
                }
            },
            Err(status) => error_response(&self.pool, &status, None),
        }
    }

    /// The custom verb `path` ends with (`1:cancel`), when a rule declares
    /// it; a colon elsewhere, or before a verb no rule has, is part of the
    /// segment (as in Envoy's transcoder).
    fn verb_of(&self, path: &str) -> Option<&str> {
        let last = path.rsplit('/').next()?;
        self.routes
            .iter()
            .filter_map(|route| route.template.verb.as_deref())
            .find(|verb| {
                last.strip_suffix(verb)
                    .and_then(|rest| rest.strip_suffix(':'))
                    .is_some_and(|rest| !rest.is_empty())
            })
    }

    /// `GET /health/...`: the gRPC health check of `service` through the
    /// same stack.
    async fn health<S>(&self, request: Request<Body>, inner: S, service: &str) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let (parts, _) = request.into_parts();
        let check = tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        };
        let grpc = grpc_request(parts, HEALTH_CHECK, check.encode_to_vec());
        let serving = match call(inner, grpc, 1024).await {
            Ok(bytes) => tonic_health::pb::HealthCheckResponse::decode(bytes)
                .ok()
                .map(|r| r.status()),
            Err(status) => {
                tracing::debug!(code = ?status.code(), "health check over HTTP failed");
                None
            }
        };
        use tonic_health::pb::health_check_response::ServingStatus;
        let (code, name) = match serving {
            Some(ServingStatus::Serving) => (StatusCode::OK, "SERVING"),
            Some(other) => (StatusCode::SERVICE_UNAVAILABLE, other.as_str_name()),
            None => (StatusCode::SERVICE_UNAVAILABLE, "UNKNOWN"),
        };
        json_response(
            code,
            Bytes::from(serde_json::json!({ "status": name }).to_string()),
        )
    }
}

/// The proto3 JSON of an answer: lowerCamelCase names, every field without
/// presence printed even at its default (`"missing": []`), enums by name,
/// 64-bit integers as strings.
pub fn to_json(message: &DynamicMessage) -> Bytes {
    let mut out = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new().skip_default_fields(false);
    match message.serialize_with_options(&mut out, &options) {
        Ok(()) => Bytes::from(out.into_inner()),
        // Serializing a decoded message into memory does not fail.
        Err(_) => Bytes::from_static(b"{}"),
    }
}

/// 405 for `method` at `path`, where only `allowed` are operations, named
/// in `Allow`.
fn method_not_allowed(
    pool: &DescriptorPool,
    method: &Method,
    path: &str,
    allowed: &[&str],
) -> Response<Body> {
    let status = Status::unimplemented(format!("{method} is not an operation of {path}"));
    let mut response = error_response(pool, &status, Some(StatusCode::METHOD_NOT_ALLOWED));
    if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

fn json_response(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Headers that belong to the HTTP hop or to the JSON request, not to the
/// call's metadata.
const NOT_METADATA: [header::HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::HOST,
];

/// A unary gRPC request carrying `message`, with the HTTP request's
/// metadata (authorization, traceparent, grpc-timeout...) and extensions
/// (the peer and its identity).
fn grpc_request(parts: http::request::Parts, path: &str, message: Vec<u8>) -> Request<Body> {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    let mut headers = parts.headers;
    for name in &NOT_METADATA {
        headers.remove(name);
    }
    headers.remove("idempotency-key");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let mut request = Request::new(Body::new(Full::new(frame.freeze())));
    *request.method_mut() = Method::POST;
    // gRPC is HTTP/2, whatever the client spoke (tonic-web, further in,
    // refuses any other HTTP/1.1 request).
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = http::Uri::from_maybe_shared(Bytes::from(path.to_string()))
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *request.headers_mut() = headers;
    *request.extensions_mut() = parts.extensions;
    request
}

/// Calls `inner` with a unary request and returns the answer's message
/// bytes, or its status.
async fn call<S>(inner: S, request: Request<Body>, max: usize) -> Result<Bytes, Status>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let mut inner = inner;
    let Ok(response) = inner.call(request).await;
    let (parts, body) = response.into_parts();
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return if status.code() == Code::Ok {
            Err(Status::internal("an answer without a message"))
        } else {
            Err(status)
        };
    }
    let collected = Limited::new(body, max).collect().await.map_err(|error| {
        match error.downcast::<Status>() {
            Ok(status) => *status,
            Err(error) => Status::internal(format!("the answer could not be read: {error}")),
        }
    })?;
    let trailers = collected.trailers().cloned().unwrap_or_else(HeaderMap::new);
    let status = Status::from_header_map(&trailers)
        .unwrap_or_else(|| Status::unknown("the answer carried no grpc-status"));
    if status.code() != Code::Ok {
        return Err(status);
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 || data[0] != 0 {
        return Err(Status::internal(
            "an answer that is not one uncompressed message",
        ));
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    if data.len() != len {
        return Err(Status::internal("an answer that is not one message"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    /// What the face answers to `method path` in front of a service that
    /// answers every call NOT_FOUND.
    async fn answer(method: Method, path: &str) -> Response<Body> {
        let pool = crate::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET).unwrap();
        let face = HttpFace::new(
            pool,
            "shop.gateway.v1.ShopGatewayService",
            Limits::default(),
        )
        .unwrap()
        .with_openapi(Bytes::from_static(b"{}"));
        let inner = tower::service_fn(|_: Request<Body>| async {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("5"));
            Ok::<_, Infallible>(response)
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        face.layer(inner).call(request).await.unwrap()
    }

    fn allow(response: &Response<Body>) -> &str {
        response.headers()[header::ALLOW].to_str().unwrap()
    }

    #[tokio::test]
    async fn the_faces_own_paths_answer_another_method_405() {
        for path in ["/openapi.json", "/health/live", "/health/ready"] {
            let response = answer(Method::POST, path).await;
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(allow(&response), "GET");
        }
        assert_eq!(
            answer(Method::GET, "/openapi.json").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(Method::POST, "/nothing").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_path_ending_in_a_rules_verb_is_only_for_that_verbs_templates() {
        // Not GetOrder of the order "1:cancel": CancelOrder's path.
        let response = answer(Method::GET, "/api/orders/1:cancel").await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(allow(&response), "POST");
        let response = answer(Method::OPTIONS, "/api/orders/1").await;
        assert_eq!(allow(&response), "GET");
        // GetOrder's paths (a colon before no rule's verb is the id's, an
        // empty id is no verb): the call is made, and answered NOT_FOUND.
        for path in [
            "/api/orders/1:uncancel",
            "/api/orders/1",
            "/api/orders/:cancel",
        ] {
            assert_eq!(
                answer(Method::GET, path).await.status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }
}
