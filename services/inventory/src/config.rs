//! Settings of the inventory service.

use shop_events::EventsSettings;

shop_runtime::service_config! {
    /// Everything the inventory service reads at start.
    pub struct Config {
        database;
        /// `[events]`: JetStream, the outbox relay and the `inventory-orders`
        /// consumer.
        pub events: EventsSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7103"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.inventory.v1.InventoryService" = ["operator"]
        "shop.inventory.v1.InventoryService/GetStock" = ["gateway", "operator"]
        "shop.inventory.v1.InventoryService/BatchGetStock" = ["gateway", "operator"]
    "#;
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
}
