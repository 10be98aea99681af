//! The orders service: it records orders and holds the state and timeline
//! of each order's saga.
//!
//! - [`config`]: settings (`[upstreams.catalog]` mesh policy, `[saga]`
//!   timeout, events).
//! - `domain`: what a valid order request is, and its fingerprint; pure.
//! - `store`: orders, lines and saga steps (sqlx), the state transitions
//!   with their outgoing events in one transaction.
//! - `saga`: the event handlers that move a saga on, and the sweeper that
//!   cancels sagas that stopped making progress.
//! - `catalog`: authoritative prices, read from the catalog service through
//!   the mesh.
//! - `api`: `shop.orders.v1.OrderService`.

pub mod config;

mod api;
mod catalog;
mod domain;
mod saga;
mod store;

pub use config::Config;

use shop_events::catalog::{INVENTORY, PAYMENTS};
use shop_events::{ConsumerSpec, Events};
use shop_proto::shop::events::v1::{
    PaymentCaptured, PaymentDeclined, PaymentRefunded, StockRejected, StockReserved,
};
use shop_proto::shop::orders::v1::order_service_server::OrderServiceServer;
use shop_runtime::{Application, db};
use std::sync::Arc;

/// The service's migrations, from `migrations/orders`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/orders")
};

/// Connects to the database, NATS and the catalog, and binds the server.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let background = database.background.clone();
    let events = Events::connect("orders", &config.events).await?;
    let app = Application::bind("orders", &config.server).await?;
    let catalog = catalog::Catalog::new(app.mesh().upstream("catalog", &config.upstreams.catalog)?);
    let handler = Arc::new(saga::SagaHandler {
        timeout: config.saga.timeout,
    });
    let sealing = Arc::new(shop_events::sealed::SealingKeys::load(
        &config.payment_tokens,
    )?);
    let api = api::OrdersApi::new(
        database.api.clone(),
        catalog,
        events.clone(),
        config.saga.timeout,
        app.flags(),
        sealing,
    );
    let sweeper = saga::Sweeper {
        pool: background.clone(),
        events: events.clone(),
        interval: config.saga.sweep_interval,
    };
    Ok(app
        .add_service(OrderServiceServer::new(api))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database)
        .with_task("relay", events.relay(background.clone()))
        .with_task(
            "consumer-inventory",
            events.consumer(
                background.clone(),
                ConsumerSpec::new("orders-inventory", INVENTORY)
                    .on::<StockReserved>(handler.clone())
                    .on::<StockRejected>(handler.clone())
                    .batched(),
            ),
        )
        .with_task(
            "consumer-payments",
            events.consumer(
                background,
                ConsumerSpec::new("orders-payments", PAYMENTS)
                    .on::<PaymentCaptured>(handler.clone())
                    .on::<PaymentDeclined>(handler.clone())
                    .on::<PaymentRefunded>(handler)
                    .batched(),
            ),
        )
        .with_task("saga-timeouts", move |shutdown| {
            Box::pin(sweeper.run(shutdown))
        }))
}
