//! The payments service in process against a fresh Postgres and a fresh
//! nats-server, and a second JetStream connection that plays inventory and
//! orders.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use shop_events::sealed::{SealingKeys, SealingSettings};
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{DomainEvent, Events};
use shop_proto::shop::common::v1::{CancellationReason, Money};
use shop_proto::shop::events::v1::{OrderCancelled, StockReserved};
use shop_proto::shop::payments::v1::payment_service_client::PaymentServiceClient;
use shop_proto::shop::payments::v1::{ListPaymentsRequest, Payment, PaymentStatus};
use shop_testkit::inproc::RunningApp;
use shop_testkit::{Nats, Postgres, eventually};
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

/// Deliveries the test consumers allow before dead-lettering.
pub(crate) const MAX_DELIVER: i64 = 3;
/// `[processor] slow_delay` in tests.
pub(crate) const SLOW_DELAY: Duration = Duration::from_millis(300);
/// The keys orders seals payment tokens with, as the test plays orders and
/// inventory: made once, handed to every app.
pub(crate) static TOKEN_KEYS: std::sync::LazyLock<(tempfile::TempDir, SealingKeys)> =
    std::sync::LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        SealingKeys::generate(dir.path(), "k1").unwrap();
        let keys = SealingKeys::load(&SealingSettings {
            keys_dir: dir.path().to_path_buf(),
            current: "k1".into(),
        })
        .unwrap();
        (dir, keys)
    });

/// How long the tests wait for an effect of an event.
pub(crate) const WITHIN: Duration = Duration::from_secs(20);

pub(crate) struct TestApp {
    pub(crate) client: PaymentServiceClient<Channel>,
    pub(crate) db: sqlx::PgPool,
    /// Publishes as inventory and orders would.
    pub(crate) upstream: Events,
    _app: RunningApp,
    _nats: Nats,
    _postgres: Postgres,
}

pub(crate) async fn spawn_app() -> TestApp {
    let postgres = Postgres::start().await.expect("postgres starts");
    let url = postgres.create_database("payments").await.unwrap();
    let nats = Nats::start().await.expect("nats-server starts");
    let config: payments::Config = shop_runtime::config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{url}"
        [events]
        nats_url = "{nats}"
        connect_timeout = "10s"
        [events.relay]
        poll_interval = "50ms"
        [events.consumer]
        ack_wait = "5s"
        max_deliver = {MAX_DELIVER}
        backoff = ["20ms"]
        [processor]
        slow_delay = "{slow}ms"
        [payment_tokens]
        keys_dir = "{keys}"
        "#,
        nats = nats.url(),
        slow = SLOW_DELAY.as_millis(),
        keys = TOKEN_KEYS.0.path().display(),
    ))
    .unwrap();
    let app = RunningApp::spawn(payments::build(config).await.expect("payments builds"));
    let client = PaymentServiceClient::connect(app.url()).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let upstream = Events::connect(
        "test",
        &EventsSettings {
            nats_url: nats.url(),
            nats_user: None,
            nats_password: None,
            tls_dir: None,
            connect_timeout: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
            relay: RelaySettings::default(),
            consumer: ConsumerSettings::default(),
            streams: Default::default(),
            retention: Default::default(),
        },
    )
    .await
    .unwrap();
    TestApp {
        client,
        db,
        upstream,
        _app: app,
        _nats: nats,
        _postgres: postgres,
    }
}

pub(crate) fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "EUR".into(),
    })
}

/// A StockReserved for a new order, to be charged with `token`, sealed as
/// orders seals it.
pub(crate) fn stock_reserved(token: &str, amount_minor: i64) -> StockReserved {
    let order_id = Uuid::now_v7().to_string();
    StockReserved {
        sealed_payment_token: TOKEN_KEYS.1.seal(token, &order_id),
        order_id,
        user_id: Uuid::now_v7().to_string(),
        lines: vec![],
        total: eur(amount_minor),
        payment_token: String::new(),
    }
}

/// The OrderCancelled of the order `reserved` is about.
pub(crate) fn order_cancelled(reserved: &StockReserved) -> OrderCancelled {
    OrderCancelled {
        order_id: reserved.order_id.clone(),
        user_id: reserved.user_id.clone(),
        reason: CancellationReason::UserRequested as i32,
        detail: "changed my mind".into(),
        lines: vec![],
        total: reserved.total.clone(),
    }
}

impl TestApp {
    /// Publishes `event` as its producer would (a new event id each time).
    pub(crate) async fn publish<E: DomainEvent>(&self, order_id: &str, event: &E) {
        self.upstream
            .publish_now(order_id, event, None)
            .await
            .expect("published");
    }

    /// The payments of `order_id`, through the API.
    pub(crate) async fn payments_of(&self, order_id: &str) -> Vec<Payment> {
        self.client
            .clone()
            .list_payments(ListPaymentsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .payments
    }

    /// Waits until `order_id` has a payment in `status`, and returns it.
    pub(crate) async fn payment_in(&self, order_id: &str, status: PaymentStatus) -> Payment {
        eventually(WITHIN, || async {
            let payments = self.payments_of(order_id).await;
            match payments.as_slice() {
                [p] if p.status == status as i32 => Ok(p.clone()),
                _ => Err(format!("waiting for {status:?}: {payments:?}")),
            }
        })
        .await
        .unwrap()
    }

    /// Waits until consumer `consumer` has applied `n` events.
    pub(crate) async fn applied(&self, consumer: &str, n: i64) {
        eventually(WITHIN, || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(&self.db)
                .await
                .unwrap();
            if count >= n {
                Ok(())
            } else {
                Err(format!("{consumer} applied {count} of {n} events"))
            }
        })
        .await
        .unwrap();
    }

    /// Outgoing events of `event_type` enqueued so far.
    pub(crate) async fn outbox_count(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Waits until the relay has published everything in the outbox.
    pub(crate) async fn outbox_drained(&self) {
        eventually(WITHIN, || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&self.db)
                    .await
                    .unwrap();
            if pending == 0 { Ok(()) } else { Err(pending) }
        })
        .await
        .unwrap();
    }
}
