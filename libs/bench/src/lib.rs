//! What the benchmark binaries share: the meter provider the mesh bench
//! records into, CPU time from `/proc` ([`procstat`]), latency plots
//! ([`plot`]), a stocked catalog ([`catalog`]) and logged-in shoppers
//! ([`shoppers`]).

pub mod catalog;
pub mod envoy;
pub mod plot;
pub mod procstat;
pub mod resilience;
pub mod shoppers;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use std::time::Duration;

/// A loopback port free now (bound and released), for a process that
/// binds it next.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Installs an SDK meter provider as a service exporting its metrics
/// would (instruments aggregated in memory, read every 60 s), whose
/// exporter drops what it is given: the mesh's metrics are recorded for
/// real, and nothing leaves the machine.
pub fn install_meter_provider() -> SdkMeterProvider {
    let provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(Discard)
                .with_interval(Duration::from_secs(60))
                .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    provider
}

/// A metric exporter that sends nothing anywhere.
#[derive(Debug)]
struct Discard;

impl PushMetricExporter for Discard {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}
