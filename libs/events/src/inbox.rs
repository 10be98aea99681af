//! Idempotent consumers.
//!
//! Each consumer is a durable JetStream pull consumer with explicit acks.
//! For every delivery:
//!
//! 1. the envelope is decoded (an undecodable message is dead-lettered at
//!    once: retrying cannot fix it);
//! 2. in one database transaction, the event id is inserted into `inbox`
//!    for this consumer (a conflict means it was already applied: ack and
//!    move on) and the handler applies its effect (and may write outbox
//!    rows);
//! 3. commit, then ack.
//!
//! A handler failure naks with the configured backoff; the attempt that
//! reaches `max_deliver` writes the event to `dead_letters` (with the inbox
//! row, in one transaction) and terminates it, so the consumer keeps going.
//! A database that does not answer is not the event's fault: the consumer
//! tells JetStream the message is in progress and retries the same delivery
//! until the database is back, so outages do not dead-letter good events.

use crate::catalog::StreamDef;
use crate::envelope::Received;
use crate::settings::ConsumerSettings;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt as _;
use prost::Message as _;
use shop_proto::shop::events::v1::Envelope;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// What a consumer applies: the effect of one event, inside the transaction
/// that also records the event in the inbox.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `event`. Any error rolls the transaction back and counts as a
    /// failed attempt, except database unavailability, which is retried.
    async fn handle(&self, tx: &mut PgConnection, event: &Received) -> anyhow::Result<()>;
}

/// Which events a consumer receives.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, unique per service and stream (`inventory-orders`).
    pub name: String,
    /// The stream to read.
    pub stream: StreamDef,
    /// Subjects within the stream (empty: all of them).
    pub subjects: Vec<String>,
}

impl ConsumerSpec {
    /// A consumer `name` of `stream`, for the subjects of the event types.
    pub fn new(name: impl Into<String>, stream: StreamDef, subjects: &[&str]) -> Self {
        Self {
            name: name.into(),
            stream,
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
        }
    }
}

pub(crate) struct Consumer {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: PgPool,
    pub(crate) spec: ConsumerSpec,
    pub(crate) settings: ConsumerSettings,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) wake_relay: Arc<Notify>,
}

enum Attempt {
    Applied,
    Duplicate,
    Unavailable(anyhow::Error),
    Failed(anyhow::Error),
}

impl Consumer {
    fn durable_name(&self) -> String {
        match &self.settings.durable_prefix {
            Some(prefix) => format!("{prefix}-{}", self.spec.name),
            None => self.spec.name.clone(),
        }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let name = self.durable_name();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.consume(&name, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(200 * 2u64.pow(failures.min(4)));
                    tracing::warn!(consumer = %name, error = format!("{e:#}"), ?delay, "consumer restarting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Reads messages until shutdown (`Ok`) or a stream error (`Err`: the
    /// caller re-creates the consumer and tries again).
    async fn consume(&self, name: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let stream = self.js.get_stream(self.spec.stream.name).await?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subjects: self.spec.subjects.clone(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    max_deliver: self.settings.max_deliver,
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer.messages().await?;
        tracing::info!(consumer = %name, stream = self.spec.stream.name, "consuming");
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => self.process(name, message, shutdown).await,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("message stream ended"),
            }
        }
    }

    async fn process(&self, name: &str, message: jetstream::Message, shutdown: &CancellationToken) {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "message without JetStream info");
                return;
            }
        };
        let subject = message.subject.to_string();
        let received = Envelope::decode(message.payload.as_ref())
            .map_err(anyhow::Error::from)
            .and_then(|envelope| {
                let event_id = envelope.event_id.parse()?;
                Ok(Received {
                    envelope,
                    event_id,
                    subject: subject.clone(),
                    stream_sequence,
                    delivered,
                })
            });
        let received = match received {
            Ok(r) => r,
            Err(e) => {
                // Nothing can make this message decodable: dead-letter now.
                let error = format!("undecodable envelope: {e:#}");
                self.dead_letter(
                    name,
                    None,
                    &subject,
                    "",
                    delivered,
                    &error,
                    &message.payload,
                )
                .await;
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };

        let span = tracing::info_span!(
            "event",
            consumer = %name,
            event_type = %received.envelope.event_type,
            event_id = %received.event_id,
            delivered,
        );
        if let Some(tp) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string())
        {
            shop_runtime::telemetry::set_remote_parent(&span, &tp);
        }
        async {
            loop {
                match self.attempt(name, &received).await {
                    Attempt::Applied => {
                        self.wake_relay.notify_one();
                        let _ = message.ack().await;
                        return;
                    }
                    Attempt::Duplicate => {
                        tracing::debug!("already applied");
                        let _ = message.ack().await;
                        return;
                    }
                    Attempt::Unavailable(e) => {
                        tracing::warn!(error = format!("{e:#}"), "database unavailable; holding the event");
                        let _ = message.ack_with(AckKind::Progress).await;
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                    Attempt::Failed(e) => {
                        let error = format!("{e:#}");
                        if delivered >= self.settings.max_deliver {
                            tracing::error!(error = %error, "dead-lettered after {delivered} attempts");
                            self.dead_letter(
                                name,
                                Some(&received),
                                &subject,
                                &received.envelope.event_type,
                                delivered,
                                &error,
                                &message.payload,
                            )
                            .await;
                            let _ = message.ack_with(AckKind::Term).await;
                        } else {
                            let delay = self.settings.backoff_for(delivered);
                            tracing::warn!(error = %error, ?delay, "handler failed; will retry");
                            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                        }
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn attempt(&self, name: &str, received: &Received) -> Attempt {
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return classify(e.into()),
        };
        let inserted = sqlx::query(
            "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(received.event_id)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(r) if r.rows_affected() == 0 => return Attempt::Duplicate,
            Ok(_) => {}
            Err(e) => return classify(e.into()),
        }
        if let Err(e) = self.handler.handle(&mut tx, received).await {
            return classify(e);
        }
        match tx.commit().await {
            Ok(()) => Attempt::Applied,
            // The commit may or may not have happened; the retry finds out
            // through the inbox.
            Err(e) => classify(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        name: &str,
        received: Option<&Received>,
        subject: &str,
        event_type: &str,
        delivered: i64,
        error: &str,
        payload: &[u8],
    ) {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO dead_letters
                     (dead_letter_id, consumer, stream, subject, event_id, event_type,
                      delivery_count, last_error, payload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(name)
            .bind(self.spec.stream.name)
            .bind(subject)
            .bind(received.map(|r| r.event_id.to_string()))
            .bind(event_type)
            .bind(delivered)
            .bind(error)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
            if let Some(r) = received {
                sqlx::query(
                    "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(r.event_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not record a dead letter");
        }
    }
}

/// Database unavailability is retried in place; anything else is the
/// event's (or the handler's) failure.
fn classify(e: anyhow::Error) -> Attempt {
    let unavailable = e
        .chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .any(shop_runtime::error::is_unavailable);
    if unavailable {
        Attempt::Unavailable(e)
    } else {
        Attempt::Failed(e)
    }
}
