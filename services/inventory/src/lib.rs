//! The inventory service: stock per product, and the order saga's
//! reservations, made all-or-nothing when an order is placed, committed when
//! it is confirmed and released when it is cancelled.
//!
//! - [`config`]: the service's settings (`[events]` on top of the shared
//!   ones).
//! - `domain`: reservation states, merging an order's lines, deciding
//!   whether an order fits the stock and reporting shortfalls; pure.
//! - `store`: the `stock`, `stock_adjustments`, `reservations` and
//!   `reservation_lines` tables (sqlx); the database's CHECKs keep every
//!   quantity non-negative.
//! - `saga`: the `inventory-orders` consumer ([`OrderEventHandler`]):
//!   OrderPlaced, OrderConfirmed and OrderCancelled in, StockReserved,
//!   StockRejected and StockReleased out, through the outbox.
//! - `api`: the `shop.inventory.v1.InventoryService` handlers; the only
//!   module that speaks tonic.
//!
//! [`build`] wires it all together; `main` calls it through
//! `shop_runtime::run`.

pub mod config;

mod api;
mod domain;
mod saga;
mod store;

pub use config::Config;
pub use saga::{OrderEventHandler, consumer_spec};

use shop_events::Events;
use shop_proto::shop::inventory::v1::inventory_service_server::InventoryServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/inventory`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/inventory")
};

/// Connects to the database (applying migrations) and to JetStream, and
/// binds the server, with the outbox relay and the orders consumer beside
/// it.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let events = Events::connect("inventory", &config.events).await?;
    let api = api::InventoryApi::new(database.api.clone());
    Ok(Application::bind("inventory", &config.server)
        .await?
        .add_service(InventoryServiceServer::new(api))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database.clone())
        .with_task("relay", events.relay(database.background.clone()))
        .with_task(
            "consumer-orders",
            events.consumer(database.background, saga::consumer_spec()),
        ))
}
