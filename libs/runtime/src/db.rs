//! The service's own Postgres database: pool, migrations, health probe.

use crate::config::DatabaseSettings;
use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tokio::time::Instant;

/// Opens the pool, waiting up to `connect_timeout` for the database to
/// answer (it may still be starting), then applies `migrator`.
pub async fn connect_and_migrate(
    settings: &DatabaseSettings,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .expose_secret()
        .parse()
        .context("database.url is not a valid Postgres URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options);

    let deadline = Instant::now() + settings.connect_timeout;
    loop {
        match pool.acquire().await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).context(format!(
                    "database unreachable for {:?}",
                    settings.connect_timeout
                ));
            }
        }
    }
    migrator
        .run(&pool)
        .await
        .context("applying database migrations")?;
    Ok(pool)
}

/// Whether the database answers a trivial query within `within`.
pub async fn is_reachable(pool: &PgPool, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
