//! Settings of the payments service.

use serde::Deserialize;
use shop_events::EventsSettings;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};
use std::time::Duration;

/// Everything the payments service reads at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[events]`
    pub events: EventsSettings,
    /// `[processor]`: the simulated card processor.
    #[serde(default)]
    pub processor: ProcessorSettings,
    /// `[telemetry]`
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// `[processor]`: the simulated card processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSettings {
    /// How long `tok_approve_slow` takes to be approved.
    #[serde(with = "humantime_serde", default = "default_slow_delay")]
    pub slow_delay: Duration,
}

fn default_slow_delay() -> Duration {
    Duration::from_millis(1500)
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            slow_delay: default_slow_delay(),
        }
    }
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7105"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.payments.v1.PaymentService" = ["operator"]
        "shop.payments.v1.PaymentService/GetPayment" = ["gateway", "operator"]
        "shop.payments.v1.PaymentService/ListPayments" = ["gateway", "operator"]
        [processor]
        slow_delay = "1500ms"
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
