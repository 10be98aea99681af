//! The notifications service: one message per registered user, per
//! confirmed order and per cancelled order. Delivery is simulated: a
//! notification is stored and logged.
//!
//! - [`config`]: the service's settings.
//! - `domain`: what each notification says, and the listing's page token;
//!   pure.
//! - `store`: the `notifications` table (sqlx).
//! - `consumer`: [`Notifier`], the event handler behind the
//!   `notifications-orders` and `notifications-users` consumers.
//! - `api`: the `shop.notifications.v1.NotificationService` handlers; the
//!   only module that speaks tonic.
//!
//! [`build`] binds the server and wires it all together; `main` calls it
//! through `shop_runtime::run`.

pub mod config;

mod api;
mod consumer;
mod domain;
mod store;

pub use config::Config;
pub use consumer::{Notifier, consumer_specs};

use shop_events::Events;
use shop_proto::shop::notifications::v1::notification_service_server::NotificationServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/notifications`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/notifications")
};

/// Connects to the database and NATS, applies migrations and binds the
/// server; the consumers start with it.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let events = Events::connect("notifications", &config.events).await?;
    let [orders, users] = consumer_specs();
    let api = api::NotificationsApi::new(database.api.clone());
    Ok(Application::bind("notifications", &config.server)
        .await?
        .add_service(NotificationServiceServer::new(api))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database.clone())
        .with_task(
            "consumer-orders",
            events.consumer(database.background.clone(), orders),
        )
        .with_task(
            "consumer-users",
            events.consumer(database.background, users),
        ))
}
