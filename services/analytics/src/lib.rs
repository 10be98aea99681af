//! The analytics service: read-only projections of every event stream
//! (orders by outcome, revenue, units sold, money flows, stock outcomes,
//! registrations), rebuildable by replaying the streams from the start.
//!
//! - [`config`]: the service's settings. `[events.consumer] durable_prefix`
//!   gives the consumers new durable names, so a fresh instance with a fresh
//!   database replays every stream from the start.
//! - `domain`: the checked facts each event states, and the report figures;
//!   pure.
//! - `store`: the projection tables (sqlx): applying facts in an
//!   order-independent way, and deriving the figures.
//! - `projector`: [`Projector`], the event handler of every consumer.
//! - `api`: the `shop.analytics.v1.AnalyticsService` handlers; the only
//!   module that speaks tonic.
//!
//! [`build`] binds the server and wires it all together; `main` calls it
//! through `shop_runtime::run`.

pub mod config;

mod api;
mod domain;
mod projector;
mod store;

pub use config::Config;
pub use projector::consumer_spec;

use shop_events::Events;
use shop_events::catalog::{INVENTORY, ORDERS, PAYMENTS, USERS};
use shop_proto::shop::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/analytics`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/analytics")
};

/// Connects to the database and NATS, applies migrations and binds the
/// server; one consumer per stream (every subject of it) starts with it.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let events = Events::connect("analytics", &config.events).await?;
    let api = api::AnalyticsApi::new(database.api.clone());
    let mut app = Application::bind("analytics", &config.server)
        .await?
        .add_service(AnalyticsServiceServer::new(api))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database.clone());
    for (task, name, stream) in [
        ("consumer-orders", "analytics-orders", ORDERS),
        ("consumer-inventory", "analytics-inventory", INVENTORY),
        ("consumer-payments", "analytics-payments", PAYMENTS),
        ("consumer-users", "analytics-users", USERS),
    ] {
        app = app.with_task(
            task,
            events.consumer(database.background.clone(), consumer_spec(name, stream)),
        );
    }
    Ok(app)
}
