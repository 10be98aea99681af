//! Settings of the payments service.

use serde::Deserialize;
use shop_events::EventsSettings;
use std::time::Duration;

shop_runtime::service_config! {
    /// Everything the payments service reads at start.
    pub struct Config {
        database;
        /// `[events]`
        pub events: EventsSettings,
        /// `[processor]`: the simulated card processor.
        #[serde(default)]
        pub processor: ProcessorSettings,
        /// `[payment_tokens]`: the keys that open the payment tokens orders
        /// sealed (`current` is not used here).
        pub payment_tokens: shop_events::sealed::SealingSettings,
    }
    defaults = r#"
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
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
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
