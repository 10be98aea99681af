//! Transactional outbox: events are rows written in the same transaction as
//! the state change they describe; a relay publishes them.
//!
//! The relay takes a transaction-scoped advisory lock, so with several
//! replicas of a service one relay publishes at a time, in `seq` order. A
//! batch of rows is sent at once on one connection, and each row is marked
//! published only after JetStream acked it: a crash between the two
//! republishes the row, and JetStream's de-duplication window drops the
//! copy (`Nats-Msg-Id` = event id).

use crate::catalog::DomainEvent;
use crate::envelope::wrap;
use crate::settings::RelaySettings;
use anyhow::Context as _;
use async_nats::jetstream;
use prost::Message as _;
use shop_proto::shop::events::v1::Envelope;
use sqlx::{PgConnection, PgPool};
use std::cell::Cell;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Advisory lock key of the relay ("outbox" in ASCII).
const RELAY_LOCK: i64 = 0x6f75_7462_6f78;

tokio::task_local! {
    /// Set by [`enqueue`] while a consumer applies events
    /// ([`noting_enqueues`]), so that the relay is woken after the commit
    /// only when there is something to publish.
    static ENQUEUED: Cell<bool>;
}

/// Runs `work`, and says whether it called [`enqueue`].
pub(crate) async fn noting_enqueues<T>(work: impl Future<Output = T>) -> (T, bool) {
    ENQUEUED
        .scope(Cell::new(false), async {
            let out = work.await;
            (out, ENQUEUED.with(Cell::get))
        })
        .await
}

/// Writes `event` to the outbox inside the caller's transaction and returns
/// its envelope.
pub async fn enqueue<E: DomainEvent>(
    tx: &mut PgConnection,
    producer: &str,
    aggregate_id: &str,
    event: &E,
    cause: Option<&Envelope>,
) -> Result<Envelope, sqlx::Error> {
    let envelope = wrap(producer, aggregate_id, event, cause);
    let event_id: uuid::Uuid = envelope.event_id.parse().expect("wrap makes UUIDs");
    sqlx::query(
        "INSERT INTO outbox (event_id, subject, event_type, envelope, trace_context)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event_id)
    .bind(E::SUBJECT)
    .bind(E::TYPE)
    .bind(envelope.encode_to_vec())
    .bind(shop_runtime::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    let _ = ENQUEUED.try_with(|enqueued| enqueued.set(true));
    Ok(envelope)
}

pub(crate) struct Relay {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: PgPool,
    pub(crate) settings: RelaySettings,
    pub(crate) wake: Arc<Notify>,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    event_id: uuid::Uuid,
    subject: String,
    envelope: Vec<u8>,
    trace_context: Option<String>,
}

impl Relay {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            // Drain everything pending before sleeping again: a batch
            // shorter than the limit was the last one (rows committed
            // meanwhile come with a wake of their own).
            loop {
                match self.publish_batch().await {
                    Ok(n) if n < self.settings.batch_size as usize => {
                        failures = 0;
                        break;
                    }
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        let delay = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                        tracing::warn!(error = format!("{e:#}"), ?delay, "outbox relay");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Publishes up to one batch; the number of rows published.
    ///
    /// Every row of the batch is sent before any ack is awaited (JetStream
    /// stores one connection's publishes in the order sent), then the acks
    /// are awaited in order and the acked prefix is marked in one update:
    /// a batch costs about one round trip and one fsync, not one per
    /// event. A failure stops at the first row not acked; it and the rows
    /// after it stay unmarked and are sent again, and the copies JetStream
    /// already stored are dropped by `Nats-Msg-Id`. When a row's ack fails
    /// but a later row of the batch was stored (a timeout, a leader change
    /// in a cluster), the retried row lands after it in the stream:
    /// consumers do not rely on the order of different events of one
    /// saga across a relay failure (their handlers check state).
    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, event_id, subject, envelope, trace_context FROM outbox
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let mut failure = None;
        let mut sent = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.send(row).await {
                Ok(ack) => sent.push((row, ack)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(sent.len());
        for (row, ack) in sent {
            match tokio::time::timeout(self.settings.ack_timeout, ack.into_future()).await {
                Ok(Ok(ack)) => {
                    tracing::debug!(
                        event_id = %row.event_id,
                        subject = %row.subject,
                        stream_seq = ack.sequence,
                        duplicate = ack.duplicate,
                        "published"
                    );
                    published.push(row.seq);
                }
                Ok(Err(e)) => {
                    failure = Some(anyhow::Error::from(e).context(format!(
                        "publishing event {} to {}",
                        row.event_id, row.subject
                    )));
                    break;
                }
                Err(_) => {
                    failure = Some(anyhow::anyhow!(
                        "no JetStream ack for event {} within {:?}",
                        row.event_id,
                        self.settings.ack_timeout
                    ));
                    break;
                }
            }
        }
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        shop_runtime::db::commit(tx).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(published.len()),
        }
    }

    /// Sends `row` without waiting for its ack.
    async fn send(&self, row: &Row) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", row.event_id.to_string().as_str());
        if let Some(tp) = &row.trace_context {
            headers.insert("traceparent", tp.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(row.subject.clone(), headers, row.envelope.clone().into())
            .await
            .with_context(|| format!("sending event {} to {}", row.event_id, row.subject))?;
        Ok(ack)
    }
}
