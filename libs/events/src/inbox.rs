//! Applying one event exactly once: the handler's effect and the record
//! that the event was applied commit in one transaction.
//!
//! A handler gets an [`Apply`]: the transaction opens (and the event is
//! recorded) the first time the handler asks for it, so a handler may first
//! call another system that must not be called with a transaction or a lock
//! held (the card processor), provided that call is idempotent: a
//! redelivery makes it again.
//!
//! What records the event depends on how it arrived:
//! - a delivery from JetStream inserts `(consumer, event_id)` into `inbox`;
//!   a conflict means it was applied before, and the handler is stopped
//!   with [`AlreadyApplied`];
//! - a replayed dead letter moves the letter from `pending` to `replayed`;
//!   a letter no longer pending is [`AlreadyApplied`] the same way, so
//!   racing replays apply it once.

use crate::envelope::Received;
use crate::outbox;
use futures::FutureExt as _;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// What a consumer applies: the effect of one event.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `event`, writing through [`Apply::tx`]. Any error rolls the
    /// transaction back and counts as a failed attempt, except database
    /// unavailability, which is retried in place, and [`AlreadyApplied`].
    async fn handle(&self, apply: &mut Apply<'_>, event: &Received) -> anyhow::Result<()>;
}

/// The event was applied before (or the dead letter was resolved
/// meanwhile): nothing more to do. Handlers pass it on with `?`.
#[derive(Debug, thiserror::Error)]
#[error("the event was already applied")]
pub struct AlreadyApplied;

/// What marks an event applied, in the transaction of its effect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark<'a> {
    /// A delivery: the consumer's inbox row.
    Inbox { consumer: &'a str, event_id: Uuid },
    /// A replay: the dead letter, from pending to replayed, by `by`.
    Replay { dead_letter_id: Uuid, by: &'a str },
    /// One of a batch's events, whose inbox rows the batch inserted.
    Batch,
}

/// One attempt at applying an event.
pub struct Apply<'a> {
    pool: &'a PgPool,
    mark: Mark<'a>,
    tx: Tx<'a>,
}

/// The transaction an [`Apply`] writes in.
enum Tx<'a> {
    /// Not opened yet.
    Closed,
    /// Its own, opened by [`Apply::tx`], committed by [`Apply::commit`].
    Own(Transaction<'static, Postgres>),
    /// A batch's, the event already recorded in it; the batch commits.
    Batch(&'a mut PgConnection),
}

impl<'a> Apply<'a> {
    pub(crate) fn new(pool: &'a PgPool, mark: Mark<'a>) -> Self {
        Self {
            pool,
            mark,
            tx: Tx::Closed,
        }
    }

    /// An event of a batch: its inbox row is in `batch`'s transaction.
    pub(crate) fn in_batch(pool: &'a PgPool, batch: &'a mut PgConnection) -> Self {
        Self {
            pool,
            mark: Mark::Batch,
            tx: Tx::Batch(batch),
        }
    }

    /// The service's pool, for reads before the transaction opens.
    pub fn pool(&self) -> &PgPool {
        self.pool
    }

    /// The transaction the effect goes in: opened on first use, with the
    /// event recorded as applied in it. [`AlreadyApplied`] when it was.
    pub async fn tx(&mut self) -> anyhow::Result<&mut PgConnection> {
        if let Tx::Closed = self.tx {
            let mut tx = self.pool.begin().await?;
            let marked = match self.mark {
                Mark::Inbox { consumer, event_id } => sqlx::query(
                    "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(consumer)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Mark::Replay { dead_letter_id, by } => sqlx::query(
                    "UPDATE dead_letters
                     SET status = 'replayed', resolved_at = now(), resolved_by = $2,
                         replay_attempts = replay_attempts + 1
                     WHERE dead_letter_id = $1 AND status = 'pending'",
                )
                .bind(dead_letter_id)
                .bind(by)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Mark::Batch => unreachable!("a batch's events come with its transaction"),
            };
            if marked == 0 {
                return Err(AlreadyApplied.into());
            }
            self.tx = Tx::Own(tx);
        }
        match &mut self.tx {
            Tx::Own(tx) => Ok(&mut **tx),
            Tx::Batch(conn) => Ok(&mut **conn),
            Tx::Closed => unreachable!("opened above"),
        }
    }

    /// Commits the effect (recording the event even when the handler wrote
    /// nothing).
    pub(crate) async fn commit(mut self) -> anyhow::Result<()> {
        self.tx().await?;
        if let Tx::Own(tx) = std::mem::replace(&mut self.tx, Tx::Closed) {
            shop_runtime::db::commit(tx).await?;
        }
        Ok(())
    }
}

/// How one attempt ended.
pub(crate) enum Outcome {
    /// Applied; `enqueued` when the handler wrote to the outbox.
    Applied {
        enqueued: bool,
    },
    Duplicate,
    /// The database did not answer: not the event's fault.
    Unavailable(anyhow::Error),
    Failed(anyhow::Error),
}

/// Runs `handler` on `event` once, marking it applied with `mark`.
pub(crate) async fn apply(
    pool: &PgPool,
    mark: Mark<'_>,
    handler: &dyn Handler,
    event: &Received,
) -> Outcome {
    let (result, enqueued) = outbox::noting_enqueues(async {
        let unit = Apply::new(pool, mark);
        run(handler, unit, event).await
    })
    .await;
    match result {
        Ok(()) => Outcome::Applied { enqueued },
        Err(e) if e.chain().any(|c| c.is::<AlreadyApplied>()) => Outcome::Duplicate,
        Err(e) => classify(e),
    }
}

/// Runs `handler` in `unit` and commits what it wrote.
async fn run(handler: &dyn Handler, mut unit: Apply<'_>, event: &Received) -> anyhow::Result<()> {
    // A handler that panics fails this attempt like one that returns an
    // error (its transaction rolled back, the attempt counted, dead-lettered
    // after `max_deliver`), instead of killing the task and leaving the
    // message to be redelivered forever.
    let handled = std::panic::AssertUnwindSafe(handler.handle(&mut unit, event))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(anyhow::anyhow!(
                "the handler panicked: {}",
                panic_message(&*panic)
            ))
        });
    match handled {
        Ok(()) => unit.commit().await,
        Err(e) => Err(e),
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Applies `event` once through the handler `spec` registers for its type,
/// as consumer `consumer` does: for tests and tools that drive a consumer's
/// handlers without JetStream. `Ok(false)` when the consumer applied it
/// before; an error when `spec` has no handler for it.
pub async fn apply_as(
    pool: &PgPool,
    consumer: &str,
    spec: &crate::ConsumerSpec,
    event: &Received,
) -> anyhow::Result<bool> {
    let Some((handler, _)) = spec.handler_for(&event.envelope.event_type) else {
        anyhow::bail!(
            "consumer {} registers no handler for {}",
            spec.name,
            event.envelope.event_type
        );
    };
    let mark = Mark::Inbox {
        consumer,
        event_id: event.event_id,
    };
    match apply(pool, mark, handler.as_ref(), event).await {
        Outcome::Applied { .. } => Ok(true),
        Outcome::Duplicate => Ok(false),
        Outcome::Unavailable(e) | Outcome::Failed(e) => Err(e),
    }
}

/// Database unavailability is retried in place; anything else is the
/// event's (or the handler's) failure.
fn classify(e: anyhow::Error) -> Outcome {
    let unavailable = e
        .chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .any(shop_runtime::error::is_unavailable);
    if unavailable {
        Outcome::Unavailable(e)
    } else {
        Outcome::Failed(e)
    }
}

/// How a batch ended.
pub(crate) enum BatchOutcome {
    /// Committed. `fresh[i]` says whether `events[i]` was applied (else its
    /// inbox row was there: a duplicate); `enqueued` whether any handler
    /// wrote to the outbox.
    Committed { fresh: Vec<bool>, enqueued: bool },
    /// Rolled back: one handler failed or panicked, or the database did not
    /// answer. Nothing of the batch was applied.
    RolledBack(anyhow::Error),
}

/// Applies `events` (at most one per aggregate, in the order given) in one
/// transaction as consumer `consumer`: their inbox rows in one statement,
/// a conflict skipping that event, then each handler, then one commit.
pub(crate) async fn apply_batch(
    pool: &PgPool,
    consumer: &str,
    events: &[(&dyn Handler, &Received, tracing::Span)],
) -> BatchOutcome {
    let (result, enqueued) = outbox::noting_enqueues(run_batch(pool, consumer, events)).await;
    match result {
        Ok(fresh) => BatchOutcome::Committed { fresh, enqueued },
        Err(e) => BatchOutcome::RolledBack(e),
    }
}

async fn run_batch(
    pool: &PgPool,
    consumer: &str,
    events: &[(&dyn Handler, &Received, tracing::Span)],
) -> anyhow::Result<Vec<bool>> {
    use tracing::Instrument as _;
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = events.iter().map(|(_, e, _)| e.event_id).collect();
    let mut inserted: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[])
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut fresh = Vec::with_capacity(events.len());
    for (handler, event, span) in events {
        // The first copy of an id is the one its row was inserted for.
        let is_fresh = inserted.remove(&event.event_id);
        fresh.push(is_fresh);
        if !is_fresh {
            continue;
        }
        let unit = Apply::in_batch(pool, &mut tx);
        run(*handler, unit, event)
            .instrument(span.clone())
            .await
            .inspect_err(|_| {
                span.record("otel.status_code", "error");
            })?;
    }
    shop_runtime::db::commit(tx).await?;
    Ok(fresh)
}
