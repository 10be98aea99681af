//! Logs, traces and metrics. The only module in the workspace that sets
//! OpenTelemetry up (the mesh records its metrics through the OpenTelemetry
//! API, into whatever meter provider is installed here).
//!
//! Logs go to stdout, pretty or JSON as configured, filtered by `RUST_LOG`
//! when set, else by `telemetry.log_level`. When `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, spans and metrics (the mesh's `grpc.client.*` and `grpc.server.*`
//! instruments) are also exported over OTLP/gRPC, metrics every
//! `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by default); the exporters read
//! the other standard `OTEL_*` variables (headers, timeout, ...)
//! themselves.

use crate::config::{LogFormat, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Flushes and stops the span and metric exporters when dropped (end of
/// `main`).
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp", &self.provider.is_some())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace export shutdown");
        }
        if let Some(meters) = self.meters.take()
            && let Err(e) = meters.shutdown()
        {
            tracing::warn!(error = %e, "metric export shutdown");
        }
    }
}

/// Installs the global tracing subscriber for `service`.
pub fn init(service: &'static str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    // One filter for logs and exported spans alike: what the log would not
    // show (the h2 and hyper crates' trace-level spans among it) is not
    // exported either.
    let directives = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => directives,
        _ => settings.log_level.clone(),
    };
    let filter = EnvFilter::try_new(&directives)?;
    let fmt = match settings.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };

    let (provider, meters) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let meters = otlp_meters(service)?;
            opentelemetry::global::set_meter_provider(meters.clone());
            (Some(otlp_provider(service)?), Some(meters))
        }
        _ => (None, None),
    };
    let otel = match &provider {
        Some(p) => Some(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service))
                .with_filter(EnvFilter::try_new(&directives)?)
                .boxed(),
        ),
        None => None,
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider, meters })
}

fn otlp_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = resource(service);
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// This process as OpenTelemetry describes it: its service, and an
/// instance id of its own, so the cumulative metrics of two replicas of a
/// service are never taken for one series.
fn resource(service: &'static str) -> opentelemetry_sdk::Resource {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| uuid::Uuid::new_v4().to_string());
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.clone(),
        ))
        .build()
}

fn otlp_meters(service: &'static str) -> anyhow::Result<SdkMeterProvider> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()?;
    let resource = resource(service);
    Ok(SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The current span's W3C `traceparent`, for carrying the trace across an
/// asynchronous hop (an event); `None` when traces are not exported.
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span a `traceparent` names.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}
