//! Durable JetStream pull consumers that apply many events at once and
//! keep each aggregate's events in order.
//!
//! A consumer holds up to `max_in_flight` messages. Each message goes to
//! the lane of its aggregate (the envelope's correlation id: for the order
//! saga, the order id): a lane applies its messages one at a time in stream
//! order, and lanes run in parallel. So one slow card holds up its own
//! order only, and one order's events of one stream (OrderPlaced, then its
//! OrderCancelled) are applied in the order they were published. Lanes are
//! per consumer: events of different streams, across processes sharing the
//! consumer (replicas) and across redeliveries come in no promised order,
//! as with JetStream itself, and handlers serialise per aggregate in the
//! database where they need to.
//!
//! For every message, [`crate::inbox::apply`] runs the handler in the
//! transaction that records the event; then the message is acked. A handler
//! failure naks with the configured backoff; the attempt that reaches
//! `max_deliver` writes a dead letter and terminates the message. Nothing
//! is terminated unless its dead letter is written: when that write fails
//! the message is nak'ed and stays in the stream. An undecodable envelope
//! is dead-lettered at once (retrying cannot fix it), the same way. A
//! database that does not answer is not the event's fault: the message is
//! kept in progress and tried again until the database is back.
//!
//! A batched consumer ([`ConsumerSpec::batched`], [`batch`]) applies the
//! heads of many lanes in one transaction, and falls back to this path,
//! one event per transaction, when a batch fails.

use crate::catalog::{DomainEvent, StreamDef};
use crate::dead_letters::{self, NewDeadLetter};
use crate::envelope::Received;
use crate::inbox::{self, Handler, Mark, Outcome};
use crate::on::{On, Typed};
use crate::settings::ConsumerSettings;
use crate::stats::ConsumerStats;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use shop_proto::shop::events::v1::Envelope;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque, hash_map::Entry};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

mod batch;

/// What a consumer receives and who applies it: one registration per event
/// type. The consumer's subject filter is made from the registrations and
/// its dispatch goes by them, so the two cannot disagree.
#[derive(Clone)]
pub struct ConsumerSpec {
    /// Durable name, unique per service and stream (`inventory-orders`).
    pub name: String,
    /// The stream to read.
    pub stream: StreamDef,
    routes: Vec<Route>,
    every_event: Option<Arc<dyn Handler>>,
    batched: bool,
}

#[derive(Clone)]
struct Route {
    event_type: &'static str,
    subject: &'static str,
    /// Its handling releases stock or refunds money: a dead letter of it
    /// leaves something held, so it is counted apart and logged at error.
    compensation: bool,
    handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("name", &self.name)
            .field("stream", &self.stream.name)
            .field("subjects", &self.subjects())
            .finish()
    }
}

impl ConsumerSpec {
    /// A consumer `name` of `stream`, receiving nothing until events are
    /// registered.
    pub fn new(name: impl Into<String>, stream: StreamDef) -> Self {
        Self {
            name: name.into(),
            stream,
            routes: Vec::new(),
            every_event: None,
            batched: false,
        }
    }

    /// Applies events in batches ([`batch`]): the ready heads of up to
    /// `events.consumer.batch_max` aggregates' lanes in one transaction.
    /// For handlers that only write to the database; one that calls out
    /// (a card processor) would hold the batch's locks meanwhile.
    pub fn batched(mut self) -> Self {
        self.batched = true;
        self
    }

    /// Events of type `E` are applied by `handler`.
    ///
    /// # Panics
    /// When `E` is not stored in the consumer's stream, or is registered
    /// twice: wiring mistakes, caught by any test that builds the service.
    pub fn on<E: DomainEvent + Send + 'static>(self, handler: Arc<impl On<E>>) -> Self {
        self.register::<E>(Arc::new(Typed::<E, _>::new(handler)), false)
    }

    /// As [`ConsumerSpec::on`], for a compensation (releasing stock,
    /// refunding money).
    pub fn compensation<E: DomainEvent + Send + 'static>(self, handler: Arc<impl On<E>>) -> Self {
        self.register::<E>(Arc::new(Typed::<E, _>::new(handler)), true)
    }

    /// Every event of the stream, whatever its type, goes to `handler`,
    /// undecoded (an observer, in a test or a tool, that sees everything).
    /// Services register typed handlers with [`ConsumerSpec::on`].
    pub fn every_event(mut self, handler: Arc<dyn Handler>) -> Self {
        assert!(
            self.routes.is_empty(),
            "consumer {}: every_event excludes per-type registrations",
            self.name
        );
        self.every_event = Some(handler);
        self
    }

    fn register<E: DomainEvent>(mut self, handler: Arc<dyn Handler>, compensation: bool) -> Self {
        assert_eq!(
            E::STREAM.name,
            self.stream.name,
            "consumer {} reads {}, which does not store {}",
            self.name,
            self.stream.name,
            E::TYPE
        );
        assert!(
            self.every_event.is_none() && !self.routes.iter().any(|r| r.event_type == E::TYPE),
            "consumer {}: {} registered twice",
            self.name,
            E::TYPE
        );
        self.routes.push(Route {
            event_type: E::TYPE,
            subject: E::SUBJECT,
            compensation,
            handler,
        });
        self
    }

    /// The subjects the consumer receives: those of the registered types
    /// (every subject of the stream for [`ConsumerSpec::every_event`]).
    pub fn subjects(&self) -> Vec<String> {
        if self.every_event.is_some() {
            return vec![self.stream.subjects.to_string()];
        }
        self.filter()
    }

    /// The JetStream consumer's subject filter: the registered types'
    /// subjects, none (the whole stream) for [`ConsumerSpec::every_event`].
    fn filter(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.subject.to_string()).collect()
    }

    /// Whether events of `event_type` reach a handler of this consumer.
    pub fn handles(&self, event_type: &str) -> bool {
        self.handler_for(event_type).is_some()
    }

    /// The handler of `event_type`, and whether it is a compensation.
    pub(crate) fn handler_for(&self, event_type: &str) -> Option<(&Arc<dyn Handler>, bool)> {
        match &self.every_event {
            Some(handler) => Some((handler, false)),
            None => self
                .routes
                .iter()
                .find(|r| r.event_type == event_type)
                .map(|r| (&r.handler, r.compensation)),
        }
    }
}

/// A consumer as the process runs it: what the admin service lists and
/// replays dead letters through.
pub(crate) struct Consumer {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: PgPool,
    pub(crate) spec: ConsumerSpec,
    pub(crate) durable: String,
    pub(crate) settings: ConsumerSettings,
    pub(crate) wake_relay: Arc<Notify>,
    pub(crate) stats: ConsumerStats,
}

/// A message held by the consumer, with its share of the in-flight bound.
struct Held {
    message: jetstream::Message,
    decoded: Result<Received, String>,
    _permit: OwnedSemaphorePermit,
}

/// Messages queued behind the one being applied, per aggregate (for a
/// batched consumer, the ones not yet taken into a batch).
type Lanes = Arc<Mutex<HashMap<String, VecDeque<Held>>>>;

impl Consumer {
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(200 * 2u64.pow(failures.min(4)));
                    tracing::warn!(consumer = %self.durable, error = format!("{e:#}"), ?delay, "consumer restarting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The JetStream consumer's configuration.
    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subjects: self.spec.filter(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // `events.consumer.max_deliver` is counted here, not by JetStream:
            // a message whose dead letter could not be written must come back.
            max_deliver: -1,
            ..Default::default()
        }
    }

    /// The durable consumer, created, or updated when the server holds it
    /// with other subjects or another ack wait than this code's (a release
    /// that handles a new event type): never reused silently as it was. A
    /// change the server cannot make in place is an error, logged on every
    /// retry, for an operator to settle.
    async fn create_or_update(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
        let wanted = self.config();
        if let Ok(held) = stream.consumer_info(&self.durable).await {
            let held_filters = filters(&held.config);
            let mut wanted_filters = wanted.filter_subjects.clone();
            wanted_filters.sort();
            if held_filters != wanted_filters || held.config.ack_wait != wanted.ack_wait {
                tracing::warn!(
                    consumer = %self.durable,
                    held_subjects = ?held_filters,
                    subjects = ?wanted_filters,
                    held_ack_wait = ?held.config.ack_wait,
                    ack_wait = ?wanted.ack_wait,
                    "the server holds this consumer with other settings; updating it"
                );
            }
        }
        stream.create_consumer(wanted).await.map_err(|e| {
            tracing::error!(
                consumer = %self.durable,
                error = %e,
                "could not create or update the durable consumer (a setting the server cannot change in place needs the consumer deleted by an operator)"
            );
            anyhow::Error::from(e)
        })
    }

    /// Reads messages until shutdown (`Ok`) or a stream error (`Err`: the
    /// caller re-creates the consumer and tries again). Either way, the
    /// messages already held are finished first.
    async fn consume(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let stream = self.js.get_stream(self.spec.stream.name).await?;
        let consumer = self.create_or_update(&stream).await?;
        let bound = self.settings.max_in_flight.max(1);
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(bound)
            .messages()
            .await?;
        tracing::info!(consumer = %self.durable, stream = self.spec.stream.name, max_in_flight = bound, "consuming");

        let permits = Arc::new(Semaphore::new(bound));
        let lanes: Lanes = Arc::default();
        let tracker = TaskTracker::new();
        let batches = self.batch_max().map(|max| {
            let ready = Arc::new(Notify::new());
            let intake_done = CancellationToken::new();
            tracker.spawn(self.clone().run_batches(
                max,
                lanes.clone(),
                ready.clone(),
                intake_done.clone(),
                shutdown.clone(),
            ));
            (ready, intake_done.drop_guard())
        });
        let result = loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => break Err(e.into()),
                None => break Err(anyhow::anyhow!("message stream ended")),
            };
            let decoded = decode(&message);
            let lane = lane_of(&message, &decoded);
            let held = Held {
                message,
                decoded,
                _permit: permit,
            };
            self.stats.entered();
            let mut queues = lanes.lock().expect("lanes lock");
            if let Some((ready, _)) = &batches {
                queues.entry(lane).or_default().push_back(held);
                ready.notify_one();
                continue;
            }
            match queues.entry(lane) {
                Entry::Occupied(mut queued) => queued.get_mut().push_back(held),
                Entry::Vacant(slot) => {
                    let lane = slot.key().clone();
                    slot.insert(VecDeque::new());
                    tracker.spawn(self.clone().drain_lane(
                        lane,
                        held,
                        lanes.clone(),
                        shutdown.clone(),
                    ));
                }
            }
        };
        // Ends the batcher once it has applied what is held.
        drop(batches);
        tracker.close();
        tracker.wait().await;
        result
    }

    /// Applies `first`, then whatever queued behind it in its lane.
    async fn drain_lane(
        self: Arc<Self>,
        lane: String,
        first: Held,
        lanes: Lanes,
        shutdown: CancellationToken,
    ) {
        let mut next = Some(first);
        while let Some(held) = next {
            if shutdown.is_cancelled() {
                // Queued behind its lane when the process stops: another
                // process (or this one, restarted) takes it now rather than
                // after the ack wait.
                let _ = held.message.ack_with(AckKind::Nak(None)).await;
            } else {
                // A handler that panics loses this delivery (JetStream
                // redelivers it after the ack wait), not the lane: what
                // queued behind it still runs, and its permit comes back.
                let applied = AssertUnwindSafe(self.process(held.message, held.decoded, &shutdown))
                    .catch_unwind()
                    .await;
                if applied.is_err() {
                    tracing::error!(consumer = %self.durable, "a handler panicked; the event will be redelivered");
                }
            }
            self.stats.left();
            let mut queues = lanes.lock().expect("lanes lock");
            next = queues.get_mut(&lane).and_then(VecDeque::pop_front);
            if next.is_none() {
                queues.remove(&lane);
            }
        }
    }

    async fn process(
        &self,
        message: jetstream::Message,
        decoded: Result<Received, String>,
        shutdown: &CancellationToken,
    ) {
        let delivered = message.info().map_or(1, |i| i.delivered);
        if delivered > 1 {
            self.stats.redelivery();
        }
        let routed = decoded.and_then(|received| {
            match self.spec.handler_for(&received.envelope.event_type) {
                Some((handler, compensation)) => Ok((received, handler.clone(), compensation)),
                None => Err(format!(
                    "no handler is registered for {} on consumer {}",
                    received.envelope.event_type, self.durable
                )),
            }
        });
        let (received, handler, compensation) = match routed {
            Ok(routed) => routed,
            Err(error) => {
                // Nothing can make this message applicable: dead-letter it now.
                let letter = NewDeadLetter {
                    consumer: &self.durable,
                    stream: self.spec.stream.name,
                    subject: &message.subject,
                    event_id: None,
                    event_type: "",
                    delivery_count: delivered,
                    last_error: &error,
                    payload: &message.payload,
                    compensation: false,
                };
                self.dead_letter(&message, letter).await;
                return;
            }
        };

        let span = self.span(&message, &received);
        async {
            let mark = Mark::Inbox {
                consumer: &self.durable,
                event_id: received.event_id,
            };
            loop {
                match inbox::apply(&self.pool, mark, handler.as_ref(), &received).await {
                    Outcome::Applied { enqueued } => {
                        self.stats.applied();
                        if enqueued {
                            self.wake_relay.notify_one();
                        }
                        let _ = message.ack().await;
                        return;
                    }
                    Outcome::Duplicate => {
                        self.stats.duplicate();
                        tracing::debug!("already applied");
                        let _ = message.ack().await;
                        return;
                    }
                    Outcome::Unavailable(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "database unavailable; holding the event"
                        );
                        let _ = message.ack_with(AckKind::Progress).await;
                        tokio::select! {
                            () = shutdown.cancelled() => {
                                let _ = message.ack_with(AckKind::Nak(None)).await;
                                return;
                            }
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                    Outcome::Failed(e) => {
                        self.stats.failed_attempt();
                        tracing::Span::current().record("otel.status_code", "error");
                        let error = format!("{e:#}");
                        if delivered >= self.settings.max_deliver {
                            let event_type = received.envelope.event_type.as_str();
                            let event_id = received.event_id.to_string();
                            let letter = NewDeadLetter {
                                consumer: &self.durable,
                                stream: self.spec.stream.name,
                                subject: &received.subject,
                                event_id: Some(&event_id),
                                event_type,
                                delivery_count: delivered,
                                last_error: &error,
                                payload: &message.payload,
                                compensation,
                            };
                            self.dead_letter(&message, letter).await;
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

    /// The span of applying `received`, named and described by
    /// OpenTelemetry's messaging conventions (semantic conventions 1.27
    /// on), a child of the publisher's trace; an attempt that fails is an
    /// error.
    fn span(&self, message: &jetstream::Message, received: &Received) -> tracing::Span {
        let span = tracing::info_span!(
            "event",
            otel.name = %format_args!("process {}", message.subject),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %message.subject,
            messaging.consumer.group.name = %self.durable,
            messaging.message.id = %received.event_id,
            event_type = %received.envelope.event_type,
            delivered = received.delivered,
        );
        if let Some(tp) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_string())
        {
            shop_runtime::telemetry::set_remote_parent(&span, &tp);
        }
        span
    }

    /// Records `letter` and terminates the message, or, when the record
    /// cannot be written, naks it so it stays in the stream.
    async fn dead_letter(&self, message: &jetstream::Message, letter: NewDeadLetter<'_>) {
        match dead_letters::record(&self.pool, &letter).await {
            Ok(None) => {
                // Another copy of the event (a redelivery racing this one)
                // applied it: nothing is dead.
                self.stats.duplicate();
                let _ = message.ack().await;
            }
            Ok(Some(id)) => {
                self.stats.dead_lettered(letter.compensation);
                if letter.compensation {
                    tracing::error!(
                        dead_letter_id = %id,
                        event_type = letter.event_type,
                        error = letter.last_error,
                        "a compensation was dead-lettered: stock or money stays held until it is replayed"
                    );
                } else {
                    tracing::error!(
                        dead_letter_id = %id,
                        event_type = letter.event_type,
                        error = letter.last_error,
                        "dead-lettered after {} attempts",
                        letter.delivery_count
                    );
                }
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                self.stats.dead_letter_write_failed();
                let delay = self.settings.backoff_for(letter.delivery_count);
                tracing::error!(error = %e, ?delay, "could not record a dead letter; the event stays in the stream");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

/// The envelope of `message`, or why it has none.
fn decode(message: &jetstream::Message) -> Result<Received, String> {
    let (stream_sequence, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .map_err(|e| format!("message without JetStream info: {e}"))?;
    let envelope = Envelope::decode(message.payload.as_ref())
        .map_err(|e| format!("undecodable envelope: {e}"))?;
    let event_id = envelope
        .event_id
        .parse()
        .map_err(|e| format!("undecodable envelope: event_id: {e}"))?;
    Ok(Received {
        envelope,
        event_id,
        subject: message.subject.to_string(),
        stream_sequence,
        delivered,
    })
}

/// The lane a message is applied in: its flow (the correlation id, which
/// for the saga is the order id), else its aggregate; an undecodable
/// message is alone in its lane.
fn lane_of(message: &jetstream::Message, decoded: &Result<Received, String>) -> String {
    match decoded {
        Ok(r) if !r.envelope.correlation_id.is_empty() => r.envelope.correlation_id.clone(),
        Ok(r) if !r.envelope.aggregate_id.is_empty() => r.envelope.aggregate_id.clone(),
        Ok(r) => r.event_id.to_string(),
        Err(_) => format!(
            "undecodable-{}",
            message.info().map_or(0, |i| i.stream_sequence)
        ),
    }
}

/// The filter subjects of a consumer's configuration, sorted (one filter
/// or several).
pub(crate) fn filters(config: &jetstream::consumer::Config) -> Vec<String> {
    let mut filters = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        filters.push(config.filter_subject.clone());
    }
    filters.sort();
    filters
}
