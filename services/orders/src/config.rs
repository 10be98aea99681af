//! Settings of the orders service.

use serde::Deserialize;
use shop_events::EventsSettings;
use std::time::Duration;

shop_runtime::service_config! {
    /// Everything the orders service reads at start.
    pub struct Config {
        database;
        /// `[events]`
        pub events: EventsSettings,
        /// `[upstreams.*]`: the services orders calls, through the mesh.
        pub upstreams: Upstreams,
        /// `[saga]`
        #[serde(default)]
        pub saga: SagaSettings,
        /// `[payment_tokens]`: the keys payment tokens are sealed with for
        /// payments, so inventory, NATS and dead letters see ciphertext.
        pub payment_tokens: shop_events::sealed::SealingSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7104"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.orders.v1.OrderService" = ["operator"]
        "shop.orders.v1.OrderService/PlaceOrder" = ["gateway", "operator"]
        "shop.orders.v1.OrderService/GetOrder" = ["gateway", "operator"]
        "shop.orders.v1.OrderService/ListOrders" = ["gateway", "operator"]
        "shop.orders.v1.OrderService/CancelOrder" = ["gateway", "operator"]
        [upstreams.catalog]
        endpoints = ["http://127.0.0.1:7102"]
        timeout = "2s"
        [upstreams.catalog.retry]
        max_attempts = 3
        per_try_timeout = "500ms"
        on = ["unavailable", "resource_exhausted"]
        backoff = { base = "20ms", max = "200ms" }
        budget = { ratio = 0.2, min_per_second = 10 }
        [upstreams.catalog.outlier]
        consecutive_failures = 3
        base_ejection = "5s"
        max_ejected_percent = 50
    "#;
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
}

/// `[upstreams]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    /// `[upstreams.catalog]`: where authoritative prices come from.
    pub catalog: shop_mesh::policy::UpstreamPolicy,
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
