//! The mesh's OpenTelemetry metrics, read back from an SDK meter provider:
//! a real mesh client calling a real tonic server behind the mesh's server
//! stack, over a real HTTP/2 connection. Its own test binary, because the
//! meter provider is process-global.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use shop_mesh::client::MeshChannel;
use shop_mesh::policy::{GrpcCode, ServerPolicy, UpstreamPolicy};
use shop_mesh::server::ServerLayer;
use shop_mesh::stats::MeshStats;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Code;
use tower::{Service, ServiceExt as _};

const GET_PRODUCT: &str = "/shop.catalog.v1.CatalogService/GetProduct";

/// A stand-in for the catalog: fails the first `failures` calls with
/// UNAVAILABLE (trailers-only), never answers a call carrying `x-hang`,
/// and answers the rest with an empty message and an OK in trailers.
#[derive(Clone, Default)]
struct Scripted {
    failures: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for Scripted {
    const NAME: &'static str = "shop.catalog.v1.CatalogService";
}

impl Service<http::Request<tonic::body::Body>> for Scripted {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let failures = self.failures.clone();
        Box::pin(async move {
            if request.headers().contains_key("x-hang") {
                std::future::pending::<()>().await;
            }
            let fail = failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Ok(shop_mesh::status::response(tonic::Status::unavailable(
                    "scripted failure",
                )));
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = [
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(&[0; 5]))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
            Ok(http::Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::new(body))
                .unwrap())
        })
    }
}

fn upstream_policy(endpoint: String, timeout: Duration) -> UpstreamPolicy {
    let mut policy = shop_mesh::client::bench_policy(&endpoint);
    policy.timeout = timeout;
    policy.retry.max_attempts = 3;
    policy.retry.per_try_timeout = None;
    policy.retry.on = vec![GrpcCode(Code::Unavailable)];
    policy.retry.backoff.base = Duration::from_millis(1);
    policy.retry.backoff.max = Duration::from_millis(5);
    policy
}

fn grpc_request(path: &str, hang: bool) -> http::Request<tonic::body::Body> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if hang {
        builder = builder.header("x-hang", "1");
    }
    builder
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from_static(&[0; 5]),
        )))
        .unwrap()
}

/// Sums of counters and counts of histograms, by instrument name and
/// sorted attributes.
type Points = BTreeMap<(String, Vec<(String, String)>), u64>;

fn points(all: &[ResourceMetrics]) -> Points {
    let mut points = Points::new();
    // Cumulative: the last export has everything.
    let Some(last) = all.last() else {
        return points;
    };
    let key = |attrs: &mut dyn Iterator<Item = &KeyValue>| {
        let mut attrs: Vec<(String, String)> = attrs
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        attrs.sort();
        attrs
    };
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let name = metric.name().to_string();
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        points.insert((name.clone(), key(&mut p.attributes())), p.value());
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    for p in histogram.data_points() {
                        points.insert((name.clone(), key(&mut p.attributes())), p.count());
                    }
                }
                _ => {}
            }
        }
    }
    points
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn get(points: &Points, name: &str, pairs: &[(&str, &str)]) -> u64 {
    points
        .get(&(name.to_string(), attrs(pairs)))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn calls_and_attempts_are_recorded_as_grpc_names_them() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    // The server: the mesh's server stack in front of the stand-in.
    let script = Scripted::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server_stats = Arc::new(MeshStats::default());
    let (_server_policy, server_policy) =
        tokio::sync::watch::channel(Arc::new(ServerPolicy::default()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServerLayer::new(server_policy, server_stats))
            .add_service(script.clone())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let stats = Arc::new(MeshStats::default());
    let (_catalog_policy, catalog_policy) = tokio::sync::watch::channel(Arc::new(upstream_policy(
        address.clone(),
        Duration::from_secs(5),
    )));
    let mut catalog = MeshChannel::new("catalog", catalog_policy, stats.clone()).unwrap();
    let (_slow_policy, slow_policy) = tokio::sync::watch::channel(Arc::new(upstream_policy(
        address.clone(),
        Duration::from_millis(200),
    )));
    let mut slow = MeshChannel::new("slow", slow_policy, stats).unwrap();

    // 1. Two UNAVAILABLE attempts, then an OK one, read to its trailers.
    script.failures.store(2, Ordering::SeqCst);
    let response = catalog
        .ready()
        .await
        .unwrap()
        .call(grpc_request(GET_PRODUCT, false))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");

    // 2. A method no contract defines: the client names it, the server
    //    (which answers UNIMPLEMENTED) calls it `other`.
    let response = catalog
        .ready()
        .await
        .unwrap()
        .call(grpc_request("/x.Unknown/Method", false))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");

    // 3. A call that outlives its 200 ms deadline.
    let response = slow
        .ready()
        .await
        .unwrap()
        .call(grpc_request(GET_PRODUCT, true))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "4");

    // The server records a call that timed out when its deadline passes.
    let mut found = Points::new();
    for _ in 0..100 {
        provider.force_flush().unwrap();
        found = points(&exporter.get_finished_metrics().unwrap());
        let server_deadline = get(
            &found,
            "grpc.server.call.duration",
            &[
                ("grpc.method", "shop.catalog.v1.CatalogService/GetProduct"),
                ("grpc.status", "DEADLINE_EXCEEDED"),
            ],
        );
        if server_deadline == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let method = ("grpc.method", "shop.catalog.v1.CatalogService/GetProduct");
    let catalog_target = ("grpc.target", "catalog");
    let status = |s| ("grpc.status", s);
    // Client, call 1: three attempts, two failed, the call OK.
    assert_eq!(
        get(
            &found,
            "grpc.client.attempt.started",
            &[method, catalog_target]
        ),
        3,
        "{found:#?}"
    );
    let attempt = "grpc.client.attempt.duration";
    let call = "grpc.client.call.duration";
    assert_eq!(
        get(
            &found,
            attempt,
            &[method, catalog_target, status("UNAVAILABLE")]
        ),
        2
    );
    assert_eq!(
        get(&found, attempt, &[method, catalog_target, status("OK")]),
        1
    );
    assert_eq!(
        get(&found, call, &[method, catalog_target, status("OK")]),
        1
    );
    assert_eq!(
        get(
            &found,
            call,
            &[method, catalog_target, status("UNAVAILABLE")]
        ),
        0
    );
    // Client, call 2: named as called; not retried (no contract says so).
    let unknown = ("grpc.method", "x.Unknown/Method");
    assert_eq!(
        get(
            &found,
            "grpc.client.attempt.started",
            &[unknown, catalog_target]
        ),
        1
    );
    assert_eq!(
        get(
            &found,
            call,
            &[unknown, catalog_target, status("UNIMPLEMENTED")]
        ),
        1
    );
    // Client, call 3: the attempt and the call ended at the deadline.
    let slow_target = ("grpc.target", "slow");
    assert_eq!(
        get(
            &found,
            "grpc.client.attempt.started",
            &[method, slow_target]
        ),
        1
    );
    assert_eq!(
        get(
            &found,
            attempt,
            &[method, slow_target, status("DEADLINE_EXCEEDED")]
        ),
        1
    );
    assert_eq!(
        get(
            &found,
            call,
            &[method, slow_target, status("DEADLINE_EXCEEDED")]
        ),
        1
    );

    // Server: every attempt was a call to it.
    let server_call = "grpc.server.call.duration";
    assert_eq!(get(&found, "grpc.server.call.started", &[method]), 4);
    assert_eq!(
        get(&found, server_call, &[method, status("UNAVAILABLE")]),
        2
    );
    assert_eq!(get(&found, server_call, &[method, status("OK")]), 1);
    assert_eq!(
        get(&found, server_call, &[method, status("DEADLINE_EXCEEDED")]),
        1
    );
    let other = ("grpc.method", "other");
    assert_eq!(get(&found, "grpc.server.call.started", &[other]), 1);
    assert_eq!(
        get(&found, server_call, &[other, status("UNIMPLEMENTED")]),
        1
    );
}
