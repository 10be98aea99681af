//! The catalog service: products, their categories and prices, and a
//! filtered, paged listing that holds steady while products are added.
//!
//! - [`config`]: the service's settings.
//! - `domain`: what a valid product is, and the listing's page token; pure.
//! - `store`: the `products` and `categories` tables (sqlx).
//! - `api`: the `shop.catalog.v1.CatalogService` handlers.

pub mod config;

mod api;
mod domain;
mod store;

pub use config::Config;

use shop_proto::shop::catalog::v1::catalog_service_server::CatalogServiceServer;
use shop_runtime::{Application, db};

/// The service's migrations, from `migrations/catalog`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/catalog");

/// Connects to the database, applies migrations and binds the server.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let database = db::Database::connect_and_migrate(&config.database, &MIGRATOR).await?;
    let api = api::CatalogApi::new(database.api.clone());
    Ok(Application::bind("catalog", &config.server)
        .await?
        .add_service(CatalogServiceServer::new(api))
        .with_database(database))
}
