//! Settings of the analytics service.

use shop_events::EventsSettings;

shop_runtime::service_config! {
    /// Everything the analytics service reads at start.
    pub struct Config {
        database;
        /// `[events]`
        pub events: EventsSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7107"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.analytics.v1.AnalyticsService" = ["operator"]
    "#;
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
}
