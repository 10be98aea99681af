//! Settings of the inventory service.

use serde::Deserialize;
use shop_events::EventsSettings;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};

/// Everything the inventory service reads at start.
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
    /// `[events]`: JetStream, the outbox relay and the `inventory-orders`
    /// consumer.
    pub events: EventsSettings,
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7103"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.inventory.v1.InventoryService" = ["operator"]
        "shop.inventory.v1.InventoryService/GetStock" = ["gateway", "operator"]
        "shop.inventory.v1.InventoryService/BatchGetStock" = ["gateway", "operator"]
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
