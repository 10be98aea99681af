//! Settings of the notifications service.

use shop_events::EventsSettings;

shop_runtime::service_config! {
    /// Everything the notifications service reads at start.
    pub struct Config {
        database;
        /// `[events]`
        pub events: EventsSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7106"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.notifications.v1.NotificationService" = ["operator"]
    "#;
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
}
