//! The users service: accounts, argon2id password hashes, signed access
//! tokens.
//!
//! - [`config`]: the service's settings (`[auth]` on top of the shared ones).
//! - `domain`: what a valid email, password and display name are; pure.
//! - `store`: the `users` table (sqlx); UserRegistered goes out through
//!   the transactional outbox (`shop_events`).
//! - `token`: access tokens (HS256 JWT) and password hashing.
//! - `api`: the `shop.users.v1.UserService` handlers; the only module that
//!   speaks tonic.
//!
//! [`build`] binds the server and wires it all together; `main` calls it
//! through `shop_runtime::run`.

pub mod config;

mod api;
mod domain;
mod store;
mod token;

pub use config::Config;

use shop_proto::shop::users::v1::user_service_server::UserServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/users`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/users");

/// Connects to the database, applies migrations and binds the server.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let tokens = token::TokenIssuer::new(&config.auth)?;
    let pool = db::connect_and_migrate(&config.database, &MIGRATOR).await?;
    let events = shop_events::Events::connect("users", &config.events).await?;
    let api = api::UsersApi::new(pool.clone(), tokens, events.clone());
    Ok(Application::bind("users", &config.server)
        .await?
        .add_service(UserServiceServer::new(api))
        .with_database(pool.clone(), config.database.probe_interval)
        .with_task("relay", events.relay(pool)))
}
