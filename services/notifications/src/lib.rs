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
pub use consumer::Notifier;

use shop_events::catalog::{ORDERS, USERS};
use shop_events::{ConsumerSpec, Events};
use shop_proto::shop::events::v1::{OrderCancelled, OrderConfirmed, UserRegistered};
use shop_proto::shop::notifications::v1::notification_service_server::NotificationServiceServer;
use shop_runtime::{Application, db};
use std::sync::Arc;

/// The service's migrations, from `migrations/notifications`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/notifications");

/// Connects to the database and NATS, applies migrations and binds the
/// server; the consumers start with it.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    let events = Events::connect("notifications", &config.events).await?;
    let notifier = Arc::new(Notifier);
    let api = api::NotificationsApi::new(database.api.clone());
    Ok(Application::bind("notifications", &config.server)
        .await?
        .add_service(NotificationServiceServer::new(api))
        .add_service(events.admin(database.api.clone()).into_server())
        .with_database(database.clone())
        .with_task(
            "consumer-orders",
            events.consumer(
                database.background.clone(),
                ConsumerSpec::new("notifications-orders", ORDERS)
                    .on::<OrderConfirmed>(notifier.clone())
                    .on::<OrderCancelled>(notifier.clone()),
            ),
        )
        .with_task(
            "consumer-users",
            events.consumer(
                database.background,
                ConsumerSpec::new("notifications-users", USERS).on::<UserRegistered>(notifier),
            ),
        ))
}
