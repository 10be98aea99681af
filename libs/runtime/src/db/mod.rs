//! The service's own Postgres database: its pools, migrations and the
//! readiness probe.
//!
//! A service holds three pools over one database, so that no kind of work
//! can take another's connections:
//!
//! - `api`, `database.max_connections`: the calls the service serves;
//! - `background`, `database.background_connections`: the outbox relay,
//!   event consumers and sweepers, whose backlog can be as deep as a
//!   stream;
//! - the probe's single connection, so readiness says whether the database
//!   answers, not whether a pool has a free connection.
//!
//! A call that finds every API connection busy while the database answers
//! is told so: `RESOURCE_EXHAUSTED` with pushback, not `UNAVAILABLE` (see
//! [`reachability`] and [`crate::error`]). Transactions commit through
//! [`commit`], which completes once started.

pub mod reachability;
mod transaction;

pub use transaction::commit;

use crate::config::DatabaseSettings;
use anyhow::Context as _;
use reachability::Reachability;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tokio::time::Instant;

/// The pools of one service's database.
#[derive(Clone, Debug)]
pub struct Database {
    /// For the calls the service serves.
    pub api: PgPool,
    /// For the outbox relay, event consumers and sweepers.
    pub background: PgPool,
    probe: PgPool,
    probe_interval: Duration,
    reachability: Reachability,
}

impl Database {
    /// Opens the pools, waiting up to `connect_timeout` for the database to
    /// answer (it may still be starting), then applies `migrator`.
    pub async fn connect_and_migrate(
        settings: &DatabaseSettings,
        migrator: &Migrator,
    ) -> anyhow::Result<Self> {
        let options: PgConnectOptions = settings
            .url
            .expose_secret()
            .parse()
            .context("database.url is not a valid Postgres URL")?;
        // No ping before each checkout (sqlx's default): it cost a round
        // trip per transaction. A connection the server dropped fails its
        // first statement instead, which the callers already treat as the
        // database being unavailable (retried, or `UNAVAILABLE`), and the
        // pool discards it.
        let pool = |max: u32, acquire_timeout: Duration| {
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(acquire_timeout)
                .test_before_acquire(false)
                .connect_lazy_with(options.clone())
        };
        let database = Self {
            api: pool(settings.max_connections, settings.acquire_timeout),
            background: pool(settings.background_connections, settings.acquire_timeout),
            probe: pool(1, settings.probe_interval.max(Duration::from_secs(1))),
            probe_interval: settings.probe_interval,
            reachability: Reachability::default(),
        };

        let deadline = Instant::now() + settings.connect_timeout;
        loop {
            match database.background.acquire().await {
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
            .run(&database.background)
            .await
            .context("applying database migrations")?;
        Ok(database)
    }

    /// How often [`Self::probe`] should run.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// Whether the database answers a trivial query on the probe's own
    /// connection within the probe interval (at least a second); the
    /// answer is what [`Self::reachability`] reports from then on.
    pub async fn probe(&self) -> bool {
        let within = self.probe_interval.max(Duration::from_secs(1));
        let up = is_reachable(&self.probe, within).await;
        self.reachability.set(up);
        up
    }

    /// What the last probe found, for the calls being served.
    pub fn reachability(&self) -> Reachability {
        self.reachability.clone()
    }
}

/// Whether the database answers a trivial query within `within`.
pub async fn is_reachable(pool: &PgPool, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
