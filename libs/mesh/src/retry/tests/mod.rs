//! The retry layer's tests, and the scripted upstream they call.

use super::*;
use crate::deadline::CallDeadline;
use crate::policy::{BackoffPolicy, GrpcCode, HedgePolicy, UpstreamPolicy};
use crate::stats::UpstreamStats;
use crate::stats::{MeshStats, read};
use crate::{BoxError, Request, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tower::Service;
use tower::ServiceExt as _;

const GET_PRODUCT: &str = "/shop.catalog.v1.CatalogService/GetProduct";
const CREATE_PRODUCT: &str = "/shop.catalog.v1.CatalogService/CreateProduct";

// --- the policy ---

/// Defaults everywhere (built through serde, so the tests do not depend
/// on every field), with a budget that never runs out unless a test
/// says otherwise.
fn policy() -> UpstreamPolicy {
    use serde::Deserialize;
    let none: Vec<(String, String)> = Vec::new();
    let d = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(none.into_iter());
    let mut policy = UpstreamPolicy::deserialize(d).unwrap();
    policy.retry.max_attempts = 3;
    policy.retry.on = vec![GrpcCode(Code::Unavailable)];
    policy.retry.backoff = BackoffPolicy {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    policy.retry.budget.min_per_second = 100_000;
    policy.retry.budget.ttl = Duration::from_secs(1);
    policy
}

fn retry<S>(inner: S, policy: UpstreamPolicy) -> (Retry<S>, Arc<UpstreamStats>) {
    let stats = MeshStats::default().upstream("catalog");
    let layer = RetryLayer::new(watch::channel(Arc::new(policy)).1, stats.clone())
        .with_rng(StdRng::seed_from_u64(7));
    (tower::Layer::layer(&layer, inner), stats)
}

fn request(path: &str, body: &'static str) -> Request {
    http::Request::builder()
        .uri(path)
        .body(crate::Body::new(http_body_util::Full::new(
            Bytes::from_static(body.as_bytes()),
        )))
        .unwrap()
}

fn with_deadline(mut request: Request, after: Duration) -> Request {
    request
        .extensions_mut()
        .insert(CallDeadline(Instant::now() + after));
    request
}

// --- a scripted upstream ---

/// What the upstream does with one attempt.
#[derive(Clone)]
enum Answer {
    Ok,
    Fail(Code),
    FailWithPushback(Code, &'static str),
    TransportError,
    Hang,
    After(Duration, Box<Answer>),
}

/// One attempt the upstream saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    body: Bytes,
    timeout: Option<Duration>,
}

/// Answers attempt `n` (from 0) with `script(n)` and records it.
#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<dyn Fn(usize) -> Answer + Send + Sync>,
}

impl Upstream {
    fn new(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service<Request> for Upstream {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let at = Instant::now();
        let timeout = request
            .headers()
            .get(status::GRPC_TIMEOUT)
            .and_then(status::parse_grpc_timeout);
        let n = self.seen.lock().unwrap().len();
        let answer = (self.script)(n);
        self.seen.lock().unwrap().push(Seen {
            at,
            body: Bytes::new(),
            timeout,
        });
        let seen = self.seen.clone();
        Box::pin(async move {
            let body = request.into_body().collect().await?.to_bytes();
            seen.lock().unwrap()[n].body = body;
            play(answer, n).await
        })
    }
}

fn play(answer: Answer, n: usize) -> BoxFuture<'static, Result<Response, BoxError>> {
    Box::pin(async move {
        match answer {
            Answer::Ok => {
                let mut response = Response::new(crate::Body::empty());
                response.headers_mut().insert("x-attempt", n.into());
                Ok(response)
            }
            Answer::Fail(code) => Ok(status::response(tonic::Status::new(code, "scripted"))),
            Answer::FailWithPushback(code, ms) => {
                let mut response = status::response(tonic::Status::new(code, "scripted"));
                response
                    .headers_mut()
                    .insert(status::PUSHBACK, http::HeaderValue::from_static(ms));
                Ok(response)
            }
            Answer::TransportError => Err("connection refused".into()),
            Answer::Hang => std::future::pending().await,
            Answer::After(delay, then) => {
                tokio::time::sleep(delay).await;
                play(*then, n).await
            }
        }
    })
}

fn code(answer: &Result<Response, BoxError>) -> Option<Code> {
    status::header_code(answer.as_ref().unwrap())
}

mod budget;
mod hedging;
mod timing;
mod which;
