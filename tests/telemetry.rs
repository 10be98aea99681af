//! Telemetry of real service processes: JSON logs when configured, and
//! spans and metrics exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, received here by a minimal OTLP
//! collector: one trace across a mesh call, and the call measured on both
//! sides under gRPC's metric names.

mod common;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use shop_proto::shop::catalog::v1::ListProductsRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_testkit::{Postgres, ServiceProcess};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP traces and metrics on a port of its own.
    async fn start(&self) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        (
            addr,
            tokio::spawn(async move {
                server.await.unwrap();
            }),
        )
    }

    /// Every span received: (service, name, attributes, trace id, span id,
    /// parent span id).
    fn spans(&self) -> Vec<SpanSeen> {
        let mut spans = Vec::new();
        for request in self.received.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let service =
                    service_name(resource_spans.resource.iter().flat_map(|r| &r.attributes));
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push(SpanSeen {
                            service: service.clone(),
                            name: span.name.clone(),
                            kind: span.kind(),
                            error: span.status.as_ref().is_some_and(|s| s.code == 2),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), string_attr(&span.attributes, &kv.key)))
                                .collect(),
                            trace_id: span.trace_id.clone(),
                            span_id: span.span_id.clone(),
                            parent_span_id: span.parent_span_id.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every metric point, summed over a service's instances (each
    /// exports cumulative values: the latest of each instance counts):
    /// (service, metric name, sorted attributes) -> count (histograms) or
    /// value (sums).
    fn points(&self) -> Points {
        let mut latest = BTreeMap::new();
        for request in self.metrics.lock().unwrap().iter() {
            for resource_metrics in &request.resource_metrics {
                let resource: Vec<KeyValue> = resource_metrics
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.clone())
                    .collect();
                let service = string_attr(&resource, "service.name");
                let instance = string_attr(&resource, "service.instance.id");
                for scope in &resource_metrics.scope_metrics {
                    for metric in &scope.metrics {
                        let mut add = |attributes: &[KeyValue], value: u64| {
                            let mut attrs: Vec<(String, String)> = attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), string_attr(attributes, &kv.key)))
                                .collect();
                            attrs.sort();
                            let key = (service.clone(), metric.name.clone(), attrs);
                            latest.insert((instance.clone(), key), value);
                        };
                        match &metric.data {
                            Some(Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    add(&p.attributes, p.count);
                                }
                            }
                            Some(Data::Sum(sum)) => {
                                for p in &sum.data_points {
                                    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
                                    let value = match p.value {
                                        Some(N::AsInt(v)) => v as u64,
                                        Some(N::AsDouble(v)) => v as u64,
                                        None => 0,
                                    };
                                    add(&p.attributes, value);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        let mut points = BTreeMap::new();
        for ((_instance, key), value) in latest {
            *points.entry(key).or_insert(0) += value;
        }
        points
    }
}

/// (service, metric name, sorted attributes) -> count or value.
type Points = BTreeMap<(String, String, Vec<(String, String)>), u64>;

#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    kind: SpanKind,
    /// The span's status is ERROR.
    error: bool,
    attributes: BTreeMap<String, String>,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

fn string_attr(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.clone()))
        .map(|v| match v {
            Value::StringValue(s) => s,
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

fn service_name<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> String {
    let attributes: Vec<KeyValue> = attributes.cloned().collect();
    string_attr(&attributes, "service.name")
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_logs_json_and_exports_its_spans_over_otlp() {
    let collector = Collector::default();
    let (otlp, server) = collector.start().await;
    let postgres = Postgres::start().await.unwrap();
    let db = postgres.create_database("catalog").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = ServiceProcess::start(
        "catalog",
        vec![
            ("DATABASE_URL".into(), db),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{otlp}"),
            ),
            ("SHOP_CATALOG__TELEMETRY__LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        dir.path(),
        None,
    )
    .await
    .unwrap();

    CatalogServiceClient::new(catalog.channel().await.unwrap())
        .list_products(ListProductsRequest::default())
        .await
        .unwrap();
    // Shutdown flushes the batch exporter.
    let status = catalog.stop(Duration::from_secs(15)).await.unwrap();
    assert!(status.success());

    let log = catalog.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }

    // The call's server span, by OpenTelemetry's RPC conventions.
    let spans = collector.spans();
    let call = spans
        .iter()
        .find(|s| s.name == "shop.catalog.v1.CatalogService/ListProducts")
        .unwrap_or_else(|| panic!("no span of the call: {spans:#?}"));
    assert_eq!(call.service, "catalog");
    assert_eq!(call.kind, SpanKind::Server);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "shop.catalog.v1.CatalogService"),
        ("rpc.method", "ListProducts"),
        ("rpc.grpc.status_code", "IntValue(0)"),
    ] {
        assert_eq!(
            call.attributes.get(key).map(String::as_str),
            Some(value),
            "{call:?}"
        );
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_call_is_one_trace_and_is_measured_on_both_sides() {
    let collector = Collector::default();
    let (otlp, server) = collector.start().await;
    let mesh = common::mesh::Mesh::start_with_env(vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{otlp}"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL".into(), "200".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ])
    .await;
    let mut orders = mesh.orders().await;
    for _ in 0..3 {
        orders.place_order(mesh.request()).await.unwrap();
    }

    const BATCH_GET: &str = "shop.catalog.v1.CatalogService/BatchGetProducts";
    let attrs = |pairs: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    let ok_call = attrs(&[
        ("grpc.method", BATCH_GET),
        ("grpc.status", "OK"),
        ("grpc.target", "catalog"),
    ]);
    let attempts = attrs(&[("grpc.method", BATCH_GET), ("grpc.target", "catalog")]);
    let served = attrs(&[("grpc.method", BATCH_GET), ("grpc.status", "OK")]);
    // Orders measured its three calls to the catalog; the replicas
    // measured the calls they answered.
    shop_testkit::eventually(Duration::from_secs(20), || {
        let points = collector.points();
        let traced = collector.spans();
        let ok_call = ok_call.clone();
        let attempts = attempts.clone();
        let served = served.clone();
        async move {
            let get = |service: &str, name: &str, attrs: &Vec<(String, String)>| {
                points
                    .get(&(service.to_string(), name.to_string(), attrs.clone()))
                    .copied()
                    .unwrap_or(0)
            };
            let calls = get("orders", "grpc.client.call.duration", &ok_call);
            let started = get("orders", "grpc.client.attempt.started", &attempts);
            let tried = get("orders", "grpc.client.attempt.duration", &ok_call);
            let answered = get("catalog", "grpc.server.call.duration", &served);
            let spans = traced
                .iter()
                .filter(|s| s.name == BATCH_GET)
                .count();
            if calls == 3 && started == 3 && tried == 3 && answered == 3 && spans >= 6 {
                Ok(())
            } else {
                Err(format!(
                    "calls {calls}, attempts {started}/{tried}, served {answered}, spans {spans}: {:#?}",
                    points.keys().filter(|k| k.1.starts_with("grpc.")).collect::<Vec<_>>()
                ))
            }
        }
    })
    .await
    .unwrap();

    // Every catalog span of the call is a child of orders' client span for
    // it, in the same trace.
    let spans = collector.spans();
    let clients: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.service == "orders" && s.kind == SpanKind::Client && s.name == BATCH_GET)
        .collect();
    let servers: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.service == "catalog" && s.kind == SpanKind::Server && s.name == BATCH_GET)
        .collect();
    assert_eq!(clients.len(), 3, "{spans:#?}");
    assert_eq!(servers.len(), 3, "{spans:#?}");
    for server_span in servers {
        assert!(
            clients
                .iter()
                .any(|c| c.trace_id == server_span.trace_id
                    && c.span_id == server_span.parent_span_id),
            "{server_span:?} has no parent among {clients:?}"
        );
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_the_saga_with_no_span_of_a_library() {
    let collector = Collector::default();
    let (otlp, server) = collector.start().await;
    let mut env = common::fast_env();
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{otlp}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        // Idle metrics are not what this test reads.
        (
            "OTEL_METRIC_EXPORT_INTERVAL".to_string(),
            "60000".to_string(),
        ),
    ]);
    let mut services: Vec<String> = common::SAGA_SERVICES
        .iter()
        .map(|s| s.to_string())
        .collect();
    services.push("notifications".into());
    let stack = shop_testkit::Stack::start_with(shop_testkit::stack::StackOptions {
        services,
        env,
        ..Default::default()
    })
    .await
    .unwrap();
    let product = common::stocked_product(&stack, None, 1_250, 5).await;
    let mut orders = shop_proto::shop::orders::v1::order_service_client::OrderServiceClient::new(
        stack.service("orders").channel().await.unwrap(),
    );
    let order = orders
        .place_order(shop_proto::shop::orders::v1::PlaceOrderRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
            lines: vec![shop_proto::shop::orders::v1::NewOrderLine {
                product_id: product,
                quantity: 1,
            }],
            payment_token: "tok_approve".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();

    // The saga's spans arrive as each service handles its events: the
    // order's trace, from PlaceOrder to analytics' projection of
    // OrderConfirmed.
    const PLACE: &str = "shop.orders.v1.OrderService/PlaceOrder";
    let wanted: &[(&str, SpanKind, &str)] = &[
        ("orders", SpanKind::Server, PLACE),
        (
            "orders",
            SpanKind::Client,
            "shop.catalog.v1.CatalogService/BatchGetProducts",
        ),
        (
            "catalog",
            SpanKind::Server,
            "shop.catalog.v1.CatalogService/BatchGetProducts",
        ),
        (
            "inventory",
            SpanKind::Consumer,
            "process shop.orders.order_placed",
        ),
        (
            "payments",
            SpanKind::Consumer,
            "process shop.inventory.stock_reserved",
        ),
        (
            "orders",
            SpanKind::Consumer,
            "process shop.inventory.stock_reserved",
        ),
        (
            "orders",
            SpanKind::Consumer,
            "process shop.payments.payment_captured",
        ),
        (
            "inventory",
            SpanKind::Consumer,
            "process shop.orders.order_confirmed",
        ),
        (
            "notifications",
            SpanKind::Consumer,
            "process shop.orders.order_confirmed",
        ),
        (
            "analytics",
            SpanKind::Consumer,
            "process shop.orders.order_confirmed",
        ),
    ];
    let trace = shop_testkit::eventually(Duration::from_secs(30), || {
        let spans = collector.spans();
        let order_id = order.order_id.clone();
        async move {
            let place = spans
                .iter()
                .find(|s| s.name == PLACE && s.kind == SpanKind::Server)
                .ok_or("no PlaceOrder span yet")?;
            let trace: Vec<SpanSeen> = spans
                .iter()
                .filter(|s| s.trace_id == place.trace_id)
                .cloned()
                .collect();
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(service, kind, name)| {
                    !trace
                        .iter()
                        .any(|s| s.service == *service && s.kind == *kind && s.name == *name)
                })
                .collect();
            if missing.is_empty() {
                Ok(trace)
            } else {
                Err(format!("order {order_id}'s trace lacks {missing:?}"))
            }
        }
    })
    .await
    .unwrap();
    // A consumer span says what it processed, by the messaging conventions.
    let consumed = trace
        .iter()
        .find(|s| s.service == "payments" && s.kind == SpanKind::Consumer)
        .unwrap();
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "process"),
        (
            "messaging.destination.name",
            "shop.inventory.stock_reserved",
        ),
        ("messaging.consumer.group.name", "payments-inventory"),
    ] {
        assert_eq!(
            consumed.attributes.get(key).map(String::as_str),
            Some(value),
            "{consumed:?}"
        );
    }

    // A call refused by authorization is answered before the handler, and
    // its span still says how it ended (PERMISSION_DENIED, 7), a caller's
    // mistake and so not an error of the server's span.
    let inventory = shop_testkit::identities::client_tls(
        &shop_testkit::identities::Identities::dir_in(stack.dir(), "inventory"),
    )
    .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(stack.service("catalog").url())
        .unwrap()
        .tls_config(inventory)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused =
        shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient::new(channel)
            .create_product(shop_proto::shop::catalog::v1::CreateProductRequest::default())
            .await
            .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let denied = shop_testkit::eventually(Duration::from_secs(10), || {
        let spans = collector.spans();
        async move {
            spans
                .into_iter()
                .find(|s| {
                    s.service == "catalog"
                        && s.name == "shop.catalog.v1.CatalogService/CreateProduct"
                        && s.attributes.get("caller").map(String::as_str)
                            == Some("spiffe://shop.local/ns/shop/sa/inventory")
                })
                .ok_or("no span of the refused call yet")
        }
    })
    .await
    .unwrap();
    assert_eq!(
        denied
            .attributes
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("IntValue(7)"),
        "{denied:?}"
    );
    assert!(!denied.error, "{denied:?}");

    // Nothing exported is a library's own span (h2's frames, hyper's
    // connections, tonic's internals): every span is a call, a message
    // processed, or one of ours below them.
    let spans = collector.spans();
    let foreign: BTreeMap<&str, usize> = spans
        .iter()
        .filter(|s| !(s.name.contains('/') || s.name.starts_with("process ")))
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.name.as_str()).or_insert(0) += 1;
            m
        });
    assert!(foreign.is_empty(), "spans of libraries: {foreign:?}");
    server.abort();
}
