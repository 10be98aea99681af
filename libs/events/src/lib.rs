//! The one door to NATS JetStream. No other crate names async-nats.
//!
//! - [`catalog`]: every domain event, its subject and its stream
//!   ([`DomainEvent`]); the streams themselves ([`STREAMS`]).
//! - [`envelope`]: the protobuf envelope every event travels in.
//! - [`outbox`]: [`outbox::enqueue`] writes an event in the caller's
//!   transaction; the relay publishes the rows in order with `Nats-Msg-Id` =
//!   event id and marks them published once JetStream acked them.
//! - [`inbox`]: durable pull consumers; an event's id is recorded in the
//!   `inbox` table in the same transaction as the handler's effect, so a
//!   redelivered or replayed event changes nothing. After `max_deliver`
//!   failed attempts the event goes to `dead_letters` and the consumer moves
//!   on.
//! - [`permissions`]: each service's least-privilege NATS permissions,
//!   derived from the catalog (for nats-server's configuration).
//! - [`settings`]: `[events]` configuration.
//! - [`Events`]: a connection, with the streams ensured, that makes relays
//!   and consumers for a service.
//!
//! Tables each service's migrations create: `outbox`, `inbox`,
//! `dead_letters` (see `migrations/*/0002_events.sql`).

pub mod catalog;
pub mod dead_letters;
pub mod envelope;
pub mod inbox;
pub mod outbox;
pub mod permissions;
pub mod settings;

pub use catalog::{DomainEvent, STREAMS, StreamDef};
pub use envelope::Received;
pub use inbox::{ConsumerSpec, Handler};
pub use settings::EventsSettings;

use anyhow::Context as _;
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A JetStream connection for one service.
#[derive(Clone)]
pub struct Events {
    service: &'static str,
    js: jetstream::Context,
    settings: EventsSettings,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("service", &self.service)
            .field("nats_url", &self.settings.nats_url)
            .finish()
    }
}

impl Events {
    /// Connects (waiting up to `connect_timeout` for the server), then
    /// creates or updates every stream of [`STREAMS`].
    pub async fn connect(service: &'static str, settings: &EventsSettings) -> anyhow::Result<Self> {
        let url = settings.nats_url.clone();
        let mut options = match (&settings.nats_user, &settings.nats_password) {
            (Some(user), Some(password)) => {
                use secrecy::ExposeSecret as _;
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.expose_secret().to_string(),
                )
            }
            _ => async_nats::ConnectOptions::new(),
        };
        if let Some(dir) = &settings.tls_dir {
            options = options
                .require_tls(true)
                .add_root_certificates(dir.join("ca.crt"))
                .add_client_certificate(dir.join("tls.crt"), dir.join("tls.key"));
        }
        if catalog::is_service(service) {
            // Replies and pull deliveries on the service's own prefix: the
            // only inbox its permissions let it subscribe to.
            options = options.custom_inbox_prefix(permissions::inbox_prefix(service));
        }
        let client = tokio::time::timeout(
            settings.connect_timeout,
            options
                .name(service)
                .retry_on_initial_connect()
                .max_reconnects(None)
                .connection_timeout(Duration::from_secs(2))
                .connect(url.as_str()),
        )
        .await
        .with_context(|| {
            format!(
                "NATS at {url} unreachable for {:?}",
                settings.connect_timeout
            )
        })?
        .with_context(|| format!("connecting to NATS at {url}"))?;
        let js = jetstream::new(client);
        catalog::ensure_streams(&js, service, settings).await?;
        Ok(Self {
            service,
            js,
            settings: settings.clone(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Tells the relay that new outbox rows were committed, so it publishes
    /// them now instead of at its next poll.
    pub fn wake_relay(&self) {
        self.wake.notify_one();
    }

    /// The relay for this service's outbox; runs until `shutdown`.
    pub fn relay(
        &self,
        pool: sqlx::PgPool,
    ) -> impl FnOnce(tokio_util::sync::CancellationToken) -> futures::future::BoxFuture<'static, ()>
    + use<> {
        let relay = outbox::Relay {
            js: self.js.clone(),
            pool,
            settings: self.settings.relay.clone(),
            wake: self.wake.clone(),
        };
        move |shutdown| Box::pin(relay.run(shutdown))
    }

    /// A consumer running `handler` for the events `spec` names.
    pub fn consumer(
        &self,
        pool: sqlx::PgPool,
        spec: ConsumerSpec,
        handler: Arc<dyn Handler>,
    ) -> impl FnOnce(tokio_util::sync::CancellationToken) -> futures::future::BoxFuture<'static, ()>
    + use<> {
        if catalog::is_service(self.service) && !catalog::reads(self.service).contains(&spec.stream)
        {
            panic!(
                "consumer {} of {} reads stream {}, which catalog::READS does not grant it",
                spec.name, self.service, spec.stream.name
            );
        }
        let consumer = inbox::Consumer {
            js: self.js.clone(),
            pool,
            spec,
            settings: self.settings.consumer.clone(),
            handler,
            wake_relay: self.wake.clone(),
        };
        move |shutdown| Box::pin(consumer.run(shutdown))
    }

    /// Publishes `event` straight to JetStream, bypassing any outbox: for
    /// tests and tools that play the part of another service. Services
    /// publish through [`outbox::enqueue`].
    pub async fn publish_now<E: DomainEvent>(
        &self,
        aggregate_id: &str,
        event: &E,
        cause: Option<&shop_proto::shop::events::v1::Envelope>,
    ) -> anyhow::Result<shop_proto::shop::events::v1::Envelope> {
        use prost::Message as _;
        let envelope = envelope::wrap(self.service, aggregate_id, event, cause);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.event_id.as_str());
        self.js
            .publish_with_headers(E::SUBJECT, headers, envelope.encode_to_vec().into())
            .await?
            .await?;
        Ok(envelope)
    }

    /// The JetStream context, for tests and tools that inspect streams.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Number of messages stored in `stream`.
    pub async fn stream_message_count(&self, stream: &str) -> anyhow::Result<u64> {
        let mut s = self.js.get_stream(stream).await?;
        Ok(s.info().await?.state.messages)
    }
}
