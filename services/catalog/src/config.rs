//! Settings of the catalog service.

use serde::Deserialize;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};

/// Everything the catalog service reads at start.
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
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7102"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.catalog.v1.CatalogService" = ["operator"]
        "shop.catalog.v1.CatalogService/GetProduct" = ["gateway", "orders", "operator"]
        "shop.catalog.v1.CatalogService/BatchGetProducts" = ["gateway", "orders", "operator"]
        "shop.catalog.v1.CatalogService/ListProducts" = ["gateway", "orders", "operator"]
    "#;

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
