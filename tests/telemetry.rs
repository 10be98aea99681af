//! Telemetry of a real service process: JSON logs when configured, and
//! spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! received here by a minimal OTLP collector.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use shop_proto::shop::catalog::v1::ListProductsRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_testkit::{Postgres, ServiceProcess};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
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

    CatalogServiceClient::connect(catalog.url())
        .await
        .unwrap()
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

    let received = collector.received.lock().unwrap().clone();
    let mut service_names = Vec::new();
    let mut span_methods = Vec::new();
    for request in &received {
        for resource_spans in &request.resource_spans {
            for attr in resource_spans.resource.iter().flat_map(|r| &r.attributes) {
                if attr.key == "service.name"
                    && let Some(Value::StringValue(s)) =
                        attr.value.as_ref().and_then(|v| v.value.clone())
                {
                    service_names.push(s);
                }
            }
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    for attr in &span.attributes {
                        if attr.key == "method"
                            && let Some(Value::StringValue(s)) =
                                attr.value.as_ref().and_then(|v| v.value.clone())
                        {
                            span_methods.push(s);
                        }
                    }
                }
            }
        }
    }
    assert!(
        service_names.iter().any(|s| s == "catalog"),
        "{service_names:?}"
    );
    assert!(
        span_methods
            .iter()
            .any(|m| m == "/shop.catalog.v1.CatalogService/ListProducts"),
        "{span_methods:?}"
    );
    server.abort();
}
