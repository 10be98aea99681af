//! The users service: accounts, argon2id password hashes, signed access
//! tokens (Ed25519 JWTs: only this service holds the private key).
//!
//! - [`config`]: the service's settings (`[auth]` on top of the shared ones).
//! - `domain`: what a valid email, password and display name are; pure.
//! - `store`: the `users` table (sqlx); UserRegistered goes out through
//!   the transactional outbox (`shop_events`).
//! - `password`: argon2id hashing, at most `auth.hash_concurrency` at once.
//!   Access tokens are signed with `shop_auth::Signer` (Ed25519).
//! - `api`: the `shop.users.v1.UserService` handlers; the only module that
//!   speaks tonic.
//!
//! [`build`] binds the server and wires it all together; `main` calls it
//! through `shop_runtime::run`.

pub mod config;

mod api;
mod domain;
mod password;
mod store;

pub use config::Config;

use anyhow::Context as _;
use shop_proto::shop::users::v1::user_service_server::UserServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/users`.
///
/// The events library's tables are not among them: [`shop_events::migrate`]
/// applies those. Databases made before it owned them still list their
/// old migrations as applied, hence `ignore_missing`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations/users")
};

/// Connects to the database, applies migrations and binds the server.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let auth = &config.auth;
    let key = std::fs::read(&auth.signing_key_file).with_context(|| {
        format!(
            "reading auth.signing_key_file {}",
            auth.signing_key_file.display()
        )
    })?;
    let tokens = shop_auth::Signer::from_pem(
        &key,
        &auth.kid(),
        &auth.issuer,
        &auth.audience,
        auth.token_ttl,
    )
    .with_context(|| format!("auth.signing_key_file {}", auth.signing_key_file.display()))?;
    let passwords = password::Passwords::new(auth.hash_permits(), auth.hash_waiting());
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    shop_events::migrate(&database.background).await?;
    let events = shop_events::Events::connect("users", &config.events).await?;
    let api = api::UsersApi::new(database.api.clone(), tokens, passwords, events.clone());
    Ok(Application::bind("users", &config.server)
        .await?
        .add_service(UserServiceServer::new(api))
        .with_database(database.clone())
        .with_task("relay", events.relay(database.background)))
}
