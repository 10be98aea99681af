//! The bounded sweep of what the outbox and the inbox no longer need:
//! outbox rows some time after JetStream acked them, inbox rows some time
//! after their event was applied (never sooner than the streams'
//! de-duplication window, inside which JetStream drops a republished copy
//! by itself).
//!
//! Each sweep deletes at most `batch` rows per statement, oldest first, so
//! no statement holds the database for long, and goes on while statements
//! find full batches, for up to a quarter of the interval: it keeps up with
//! the insert rate; what is left waits for the next sweep.
//!
//! An inbox row is what keeps a redelivered event from being applied
//! twice, so a durable consumer must never be recreated to read from the
//! start under the same name once rows were swept (a rebuild uses a new
//! `durable_prefix`, whose inbox rows are its own).

use crate::settings::{EventsSettings, RetentionSettings};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A retention setting that would let a republished event through.
#[derive(Debug, thiserror::Error)]
#[error(
    "events.retention.inbox_after ({inbox_after:?}) is shorter than events.duplicate_window ({window:?}): an event republished after its inbox row is gone would be applied twice"
)]
pub struct RetentionTooShort {
    inbox_after: Duration,
    window: Duration,
}

/// Checks `settings.retention` against the de-duplication window.
pub fn validate(settings: &EventsSettings) -> Result<(), RetentionTooShort> {
    if settings.retention.inbox_after < settings.duplicate_window {
        return Err(RetentionTooShort {
            inbox_after: settings.retention.inbox_after,
            window: settings.duplicate_window,
        });
    }
    Ok(())
}

pub(crate) struct Sweeper {
    pub(crate) pool: PgPool,
    pub(crate) settings: RetentionSettings,
}

/// Rows one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Published outbox rows.
    pub outbox: u64,
    /// Inbox rows.
    pub inbox: u64,
}

impl Sweeper {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            match self.sweep().await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::debug!(
                        outbox = swept.outbox,
                        inbox = swept.inbox,
                        "retention sweep"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; trying again at the next one")
                }
            }
        }
    }

    /// One sweep.
    pub(crate) async fn sweep(&self) -> sqlx::Result<Swept> {
        let outbox = self
            .rounds(
                "DELETE FROM outbox WHERE seq IN (
                     SELECT seq FROM outbox
                     WHERE published_at < now() - make_interval(secs => $1)
                     ORDER BY seq LIMIT $2)",
                self.settings.outbox_after,
            )
            .await?;
        let inbox = self
            .rounds(
                "DELETE FROM inbox WHERE (consumer, event_id) IN (
                     SELECT consumer, event_id FROM inbox
                     WHERE processed_at < now() - make_interval(secs => $1)
                     ORDER BY processed_at LIMIT $2)",
                self.settings.inbox_after,
            )
            .await?;
        Ok(Swept { outbox, inbox })
    }

    async fn rounds(&self, statement: &'static str, after: Duration) -> sqlx::Result<u64> {
        let mut total = 0;
        // Rounds go on while they find full batches, for up to a quarter
        // of the interval: a sweep keeps up with any insert rate the
        // database itself keeps up with, and still yields.
        let until = tokio::time::Instant::now() + self.settings.interval / 4;
        loop {
            let n = sqlx::query(statement)
                .bind(after.as_secs_f64())
                .bind(self.settings.batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < self.settings.batch.max(1) as u64 || tokio::time::Instant::now() >= until {
                break;
            }
        }
        Ok(total)
    }
}

/// Runs one sweep of `pool` now, with `settings`: for tests and tools.
pub async fn sweep_now(pool: &PgPool, settings: &RetentionSettings) -> sqlx::Result<Swept> {
    Sweeper {
        pool: pool.clone(),
        settings: settings.clone(),
    }
    .sweep()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_rows_outlive_the_deduplication_window() {
        let mut settings: EventsSettings =
            serde_json::from_value(serde_json::json!({ "nats_url": "nats://127.0.0.1:1" }))
                .unwrap();
        assert!(validate(&settings).is_ok());
        settings.retention.inbox_after = Duration::from_secs(60);
        let err = validate(&settings).unwrap_err().to_string();
        assert!(err.contains("events.retention.inbox_after"), "{err}");
        assert!(err.contains("events.duplicate_window"), "{err}");
    }
}
