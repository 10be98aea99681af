//! Settings of the orders service.

use serde::Deserialize;
use shop_events::EventsSettings;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};
use std::time::Duration;

/// Everything the orders service reads at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[telemetry]`
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `[events]`
    pub events: EventsSettings,
    /// `[catalog]`: where authoritative prices come from.
    pub catalog: CatalogSettings,
    /// `[saga]`
    #[serde(default)]
    pub saga: SagaSettings,
}

/// `[catalog]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    /// `http://host:port` of the catalog service.
    pub endpoint: String,
    /// Deadline of one catalog call.
    #[serde(with = "humantime_serde", default = "default_catalog_timeout")]
    pub timeout: Duration,
}

fn default_catalog_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `[saga]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    /// A PENDING order whose saga makes no progress for this long is
    /// cancelled (CANCELLATION_REASON_SAGA_TIMEOUT) and compensated.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// How often overdue sagas are looked for.
    #[serde(with = "humantime_serde", default = "default_sweep")]
    pub sweep_interval: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_sweep() -> Duration {
    Duration::from_secs(1)
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            sweep_interval: default_sweep(),
        }
    }
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7104"
        [catalog]
        endpoint = "http://127.0.0.1:7102"
    "#;
    const ENV_ALIASES: &'static [(&'static str, &'static str)] = &[
        ("DATABASE_URL", "database.url"),
        ("NATS_URL", "events.nats_url"),
    ];

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
