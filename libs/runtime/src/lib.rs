//! What every shop service's `main` stands on, so that `main` is a few lines.
//!
//! - [`config`]: typed settings from defaults, a TOML file and the
//!   environment (figment lives here and nowhere else).
//! - [`telemetry`]: tracing subscriber, pretty or JSON logs, OTLP export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (opentelemetry lives here only).
//! - [`convert`]: timestamps and ids at the API edge.
//! - [`db`]: the Postgres pool, migrations at start, and the probe that keeps
//!   health truthful.
//! - [`server`]: [`server::Application`] binds (port 0 works), adds health and
//!   reflection (v1 and v1alpha), serves, and drains on shutdown.
//! - [`listener`]: accepted connections, mutual TLS with a workload
//!   identity, each tagged with its caller ([`shop_identity::Peer`]).
//! - [`shutdown`]: the SIGINT/SIGTERM future.
//! - [`error`]: [`error::ServiceError`], the one mapping from service errors
//!   to `tonic::Status`.
//! - [`mesh`]: the mesh inside the service: server layer, upstream
//!   clients, admin API, live policy reload.
//! - [`run`]: the whole life of a service binary in one call.

pub mod config;
pub mod convert;
pub mod db;
pub mod error;
pub mod listener;
pub mod mesh;
pub mod paging;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};
pub use error::{FieldViolations, ServiceError};
pub use server::{Application, ServiceInfo};

use std::future::Future;
use std::process::ExitCode;

/// Runs a service binary from start to exit: reads the config (the file named
/// by `--config <path>` or `SHOP_CONFIG`, then `SHOP_<SERVICE>__*` variables),
/// starts telemetry, builds the application with `build`, serves until
/// SIGINT/SIGTERM and drains.
///
/// Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 for
/// any other failure.
pub async fn run<C, F, Fut>(service: &'static str, build: F) -> ExitCode
where
    C: Settings,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
{
    let file = config::file_from_args_or_env(std::env::args());
    let settings: C = match config::load(service, file.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{service}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(service, settings.telemetry()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{service}: cannot start telemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Listening from here on: a stop asked for while the service starts is
    // a drain, not the signal's default kill.
    let shutdown = shutdown::signal();
    let app = match build(settings).await {
        Ok(app) => match &file {
            Some(file) => app.watch_config(config::ConfigSource {
                service,
                defaults: C::DEFAULTS,
                aliases: C::ENV_ALIASES,
                file: file.clone(),
            }),
            None => app,
        },
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}
