//! Settings of the notifications service.

use serde::Deserialize;
use shop_events::EventsSettings;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};

/// Everything the notifications service reads at start.
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
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7106"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.notifications.v1.NotificationService" = ["operator"]
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
