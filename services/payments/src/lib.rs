//! The payments service: charges orders with a simulated card processor
//! when their stock is reserved, refunds them when they are cancelled, and
//! answers questions about payments.
//!
//! - [`config`]: the service's settings, `[processor]` included.
//! - `domain`: the simulated processor's test tokens and answers, what a
//!   chargeable StockReserved is, the listing's page token; pure.
//! - `processor`: the simulated card processor, with its own ledger and
//!   idempotency keys, called outside our transactions.
//! - `store`: the `payments`, `refunds` and `cancelled_orders` tables (sqlx).
//! - `consumers`: charges on StockReserved, refunds on OrderCancelled, each
//!   serialised per order and applied once per event.
//! - `api`: the `shop.payments.v1.PaymentService` handlers.

pub mod config;

mod api;
mod consumers;
mod domain;
mod processor;
mod store;

pub use config::{Config, ProcessorSettings};

use shop_events::Events;
use shop_proto::shop::payments::v1::payment_service_server::PaymentServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/payments`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/payments")
};

/// Connects to the database (applying migrations) and to JetStream, and
/// binds the server with the outbox relay and both consumers beside it.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let events = Events::connect("payments", &config.events).await?;
    let processor = processor::Processor {
        pool: database.background.clone(),
        slow_delay: config.processor.slow_delay,
        max_attempts: config.events.consumer.max_deliver,
    };
    let charges = consumers::Charges {
        processor: processor.clone(),
        tokens: std::sync::Arc::new(shop_events::sealed::SealingKeys::load(
            &config.payment_tokens,
        )?),
    };
    Ok(Application::bind("payments", &config.server)
        .await?
        .add_service(PaymentServiceServer::new(api::PaymentsApi::new(
            database.api.clone(),
        )))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database.clone())
        .with_task("relay", events.relay(database.background.clone()))
        .with_task(
            "consumer-inventory",
            events.consumer(
                database.background.clone(),
                consumers::charges_spec(charges),
            ),
        )
        .with_task(
            "consumer-orders",
            events.consumer(
                database.background,
                consumers::refunds_spec(consumers::Refunds { processor }),
            ),
        ))
}
