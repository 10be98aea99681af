//! The one door to NATS JetStream. No other crate names async-nats.
//!
//! - [`catalog`]: every domain event, its subject and its stream
//!   ([`DomainEvent`]); the streams themselves ([`STREAMS`]).
//! - [`envelope`]: the protobuf envelope every event travels in.
//! - [`outbox`]: [`outbox::enqueue`] writes an event in the caller's
//!   transaction; the relay publishes the rows in order with `Nats-Msg-Id` =
//!   event id and marks them published once JetStream acked them.
//! - [`consumer`]: durable pull consumers applying up to `max_in_flight`
//!   events at once, each aggregate's in order. After `max_deliver` failed
//!   attempts an event goes to `dead_letters` and the consumer moves on.
//! - [`On`]: a typed handler of one event type, registered with
//!   [`ConsumerSpec::on`]; the registration is the dispatch.
//! - [`inbox`]: applying an event once: its id is recorded in the `inbox`
//!   table in the same transaction as the handler's effect, so a
//!   redelivered event changes nothing.
//! - [`dead_letters`] and [`admin`]: what consumers gave up on, listed,
//!   replayed and discarded through `shop.events.v1.EventsAdminService`.
//! - [`retention`]: the bounded sweep of published outbox rows and old
//!   inbox rows.
//! - [`permissions`]: each service's least-privilege NATS permissions,
//!   derived from the catalog (for nats-server's configuration).
//! - [`settings`]: `[events]` configuration.
//! - [`Events`]: a connection, with the streams ensured, that makes relays
//!   and consumers for a service.
//!
//! Its tables (`outbox`, `inbox`, `dead_letters`) are its own: [`migrate`]
//! applies `libs/events/migrations` to a service's database, recorded apart
//! from the service's own migrations.

pub mod admin;
pub mod catalog;
pub mod consumer;
pub mod dead_letters;
pub mod envelope;
pub mod inbox;
mod on;
pub mod outbox;
pub mod permissions;
pub mod retention;
pub mod sealed;
pub mod settings;
mod stats;

pub use catalog::{DomainEvent, STREAMS, StreamDef};
pub use consumer::ConsumerSpec;
pub use envelope::Received;
pub use inbox::{AlreadyApplied, Apply, Handler};
pub use on::On;
pub use settings::EventsSettings;

use anyhow::Context as _;
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The library's own migrations (`libs/events/migrations`), recorded in
/// `_events_migrations` so that they never mix with the history of the
/// service's migrations in the same database.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_events_migrations");
    migrator
}

/// Creates (or completes) the library's tables in the database of `pool`.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// A JetStream connection for one service.
#[derive(Clone)]
pub struct Events {
    service: &'static str,
    js: jetstream::Context,
    settings: EventsSettings,
    wake: Arc<Notify>,
    consumers: admin::Registry,
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
        retention::validate(settings)?;
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
            consumers: admin::Registry::default(),
        })
    }

    /// Tells the relay that new outbox rows were committed, so it publishes
    /// them now instead of at its next poll.
    pub fn wake_relay(&self) {
        self.wake.notify_one();
    }

    /// The relay for this service's outbox, and beside it the retention
    /// sweep of its outbox and inbox ([`retention`]); runs until
    /// `shutdown`.
    pub fn relay(
        &self,
        pool: sqlx::PgPool,
    ) -> impl FnOnce(tokio_util::sync::CancellationToken) -> futures::future::BoxFuture<'static, ()>
    + use<> {
        let relay = outbox::Relay {
            js: self.js.clone(),
            pool: pool.clone(),
            settings: self.settings.relay.clone(),
            wake: self.wake.clone(),
        };
        let sweeper = retention::Sweeper {
            pool,
            settings: self.settings.retention.clone(),
        };
        move |shutdown| {
            Box::pin(async move {
                tokio::join!(relay.run(shutdown.clone()), sweeper.run(shutdown));
            })
        }
    }

    /// A consumer of the events `spec` registers, each applied by its
    /// handler.
    pub fn consumer(
        &self,
        pool: sqlx::PgPool,
        spec: ConsumerSpec,
    ) -> impl FnOnce(tokio_util::sync::CancellationToken) -> futures::future::BoxFuture<'static, ()>
    + use<> {
        if catalog::is_service(self.service) {
            if !catalog::reads(self.service).contains(&spec.stream) {
                panic!(
                    "consumer {} of {} reads stream {}, which catalog::READS does not grant it",
                    spec.name, self.service, spec.stream.name
                );
            }
            let granted = catalog::consumer_name(self.service, &spec.stream);
            if spec.name != granted {
                panic!(
                    "consumer {} of {} on {}: its NATS permissions grant {granted} only",
                    spec.name, self.service, spec.stream.name
                );
            }
        }
        let durable = match &self.settings.consumer.durable_prefix {
            Some(prefix) => format!("{prefix}-{}", spec.name),
            None => spec.name.clone(),
        };
        let consumer = Arc::new(consumer::Consumer {
            js: self.js.clone(),
            pool,
            spec,
            durable,
            settings: self.settings.consumer.clone(),
            wake_relay: self.wake.clone(),
            stats: Default::default(),
        });
        self.consumers
            .lock()
            .expect("registry lock")
            .push(consumer.clone());
        move |shutdown| Box::pin(consumer.run(shutdown))
    }

    /// `shop.events.v1.EventsAdminService` over this service's consumers
    /// (those made before and after this call) and its `dead_letters`;
    /// [`admin::EventsAdmin::into_server`] mounts it.
    pub fn admin(&self, pool: sqlx::PgPool) -> admin::EventsAdmin {
        admin::EventsAdmin::new(pool, self.consumers.clone())
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
