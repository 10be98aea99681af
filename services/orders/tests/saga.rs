//! The orders service in process, against a fresh Postgres, a fresh
//! nats-server and a catalog served in process: its API, and each saga
//! transition driven by events the test publishes as inventory and payments
//! would, with what orders publishes observed on the ORDERS stream.

use shop_events::sealed::{SealingKeys, SealingSettings};
use shop_events::settings::EventsSettings;
use shop_events::{Apply, ConsumerSpec, DomainEvent, Events, Handler, Received, catalog};
use shop_proto::shop::common::v1::{CancellationReason, Money, PaymentDeclineReason};
use shop_proto::shop::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCaptured, PaymentDeclined,
    StockRejected, StockReserved,
};
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{
    GetOrderRequest, NewOrderLine, Order, OrderStatus, PlaceOrderRequest, SagaStepStatus,
    SagaStepType,
};
use shop_testkit::inproc::RunningApp;
use shop_testkit::{Nats, Postgres, eventually};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);
const PRICE: i64 = 1250;

/// Records every event orders publishes.
#[derive(Default)]
struct Observer {
    seen: Mutex<Vec<Envelope>>,
}

#[async_trait::async_trait]
impl Handler for Observer {
    async fn handle(&self, _: &mut Apply<'_>, event: &Received) -> anyhow::Result<()> {
        self.seen.lock().unwrap().push(event.envelope.clone());
        Ok(())
    }
}

struct TestApp {
    client: OrderServiceClient<Channel>,
    /// Publishes as inventory and payments would.
    peers: Events,
    product: Uuid,
    keys: SealingKeys,
    observer: Arc<Observer>,
    stop: CancellationToken,
    // Field order is drop order: the services stop before NATS and Postgres.
    _apps: Vec<RunningApp>,
    _keys_dir: tempfile::TempDir,
    _nats: Nats,
    _postgres: Postgres,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn spawn_app(saga_timeout: &str) -> TestApp {
    let postgres = Postgres::start().await.unwrap();
    let orders_url = postgres.create_database("orders").await.unwrap();
    let catalog_url = postgres.create_database("catalog").await.unwrap();
    let observer_url = postgres.create_database("observer").await.unwrap();
    let nats = Nats::start().await.unwrap();
    let nats_url = nats.url();
    let keys_dir = tempfile::tempdir().unwrap();
    SealingKeys::generate(keys_dir.path(), "k1").unwrap();
    let keys = SealingKeys::load(&SealingSettings {
        keys_dir: keys_dir.path().to_path_buf(),
        current: "k1".into(),
    })
    .unwrap();

    let catalog_config: ::catalog::Config = shop_runtime::config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{catalog_url}"
        "#
    ))
    .unwrap();
    let catalog = RunningApp::spawn(::catalog::build(catalog_config).await.unwrap());
    let product = Uuid::now_v7();
    let catalog_db = sqlx::PgPool::connect(&catalog_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO categories (slug) VALUES ('mugs');
         INSERT INTO products (product_id, sku, name, category, price_minor, currency)
         VALUES ('{product}', 'MUG-1', 'Mug', 'mugs', {PRICE}, 'EUR');"
    )))
    .execute(&catalog_db)
    .await
    .unwrap();

    let config: orders::Config = shop_runtime::config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{orders_url}"
        probe_interval = "100ms"
        [events]
        nats_url = "{nats_url}"
        connect_timeout = "10s"
        [events.relay]
        poll_interval = "50ms"
        [events.consumer]
        ack_wait = "5s"
        max_deliver = 3
        backoff = ["20ms"]
        [upstreams.catalog]
        endpoints = ["{}"]
        [saga]
        timeout = "{saga_timeout}"
        sweep_interval = "100ms"
        [payment_tokens]
        keys_dir = "{}"
        "#,
        catalog.url(),
        keys_dir.path().display()
    ))
    .unwrap();
    let orders = RunningApp::spawn(orders::build(config).await.unwrap());
    let client = OrderServiceClient::connect(orders.url()).await.unwrap();

    let peers = Events::connect("test-peers", &EventsSettings::plaintext(nats_url))
        .await
        .unwrap();
    let observer_db = sqlx::PgPool::connect(&observer_url).await.unwrap();
    shop_events::migrate(&observer_db).await.unwrap();
    let observer = Arc::new(Observer::default());
    let stop = CancellationToken::new();
    tokio::spawn(peers.consumer(
        observer_db,
        ConsumerSpec::new("test-observer", catalog::ORDERS).every_event(observer.clone()),
    )(stop.clone()));
    TestApp {
        client,
        peers,
        product,
        keys,
        observer,
        stop,
        _apps: vec![orders, catalog],
        _keys_dir: keys_dir,
        _nats: nats,
        _postgres: postgres,
    }
}

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "EUR".into(),
    })
}

impl TestApp {
    fn request(&self, quantity: i64, key: Uuid) -> PlaceOrderRequest {
        PlaceOrderRequest {
            user_id: Uuid::now_v7().to_string(),
            lines: vec![NewOrderLine {
                product_id: self.product.to_string(),
                quantity,
            }],
            payment_token: "tok_approve".into(),
            idempotency_key: key.to_string(),
        }
    }

    async fn place(&self, quantity: i64) -> Order {
        self.place_as(self.request(quantity, Uuid::now_v7())).await
    }

    async fn place_as(&self, request: PlaceOrderRequest) -> Order {
        self.client
            .clone()
            .place_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    async fn get(&self, order_id: &str) -> Order {
        self.client
            .clone()
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// The order once it is no longer pending.
    async fn terminal(&self, order_id: &str) -> Order {
        eventually(WITHIN, || async {
            let order = self.get(order_id).await;
            if order.status() == OrderStatus::Pending {
                Err("pending")
            } else {
                Ok(order)
            }
        })
        .await
        .unwrap()
    }

    /// Publishes `event` as its producer would, caused by `cause`.
    async fn publish<E: DomainEvent>(&self, aggregate: &str, event: &E, cause: &Envelope) {
        self.peers
            .publish_now(aggregate, event, Some(cause))
            .await
            .unwrap();
    }

    /// The events of type `E` orders published about `order_id`.
    async fn published<E: DomainEvent>(&self, order_id: &str, count: usize) -> Vec<Envelope> {
        eventually(WITHIN, || async {
            let seen: Vec<Envelope> = self
                .observer
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.event_type == E::TYPE && e.aggregate_id == order_id)
                .cloned()
                .collect();
            if seen.len() >= count {
                Ok(seen)
            } else {
                Err(format!("{} of {count} {}", seen.len(), E::TYPE))
            }
        })
        .await
        .unwrap()
    }

    fn reserved(&self, order: &Order) -> StockReserved {
        StockReserved {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            total: order.total.clone(),
            ..Default::default()
        }
    }

    fn captured(&self, order: &Order, amount_minor: i64) -> PaymentCaptured {
        PaymentCaptured {
            payment_id: Uuid::now_v7().to_string(),
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            amount: eur(amount_minor),
        }
    }
}

fn steps(order: &Order) -> Vec<(SagaStepType, SagaStepStatus)> {
    order
        .timeline
        .iter()
        .map(|s| (s.step(), s.status()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_answers_what_it_stored_and_publishes_order_placed_once() {
    let app = spawn_app("30s").await;
    let key = Uuid::now_v7();
    let request = app.request(2, key);
    let placed = app.place_as(request.clone()).await;
    assert_eq!(placed.status(), OrderStatus::Pending);
    assert_eq!(placed.total, eur(2 * PRICE));
    assert_eq!(placed.lines.len(), 1);
    assert_eq!(placed.lines[0].sku, "MUG-1");
    assert_eq!(placed.lines[0].line_total, eur(2 * PRICE));
    assert_eq!(
        steps(&placed),
        [(SagaStepType::PlaceOrder, SagaStepStatus::Succeeded)]
    );
    // The answer is what a read finds.
    assert_eq!(app.get(&placed.order_id).await, placed);

    // The same request again is the same order; another body under the key
    // is refused.
    let again = app.place_as(request.clone()).await;
    assert_eq!(again, placed);
    let mut other = request;
    other.lines[0].quantity = 3;
    let refused = app.client.clone().place_order(other).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);

    // One OrderPlaced, its token sealed for payments and bound to the order.
    let events = app.published::<OrderPlaced>(&placed.order_id, 1).await;
    assert_eq!(events.len(), 1);
    let event: OrderPlaced = prost::Message::decode(events[0].payload.as_slice()).unwrap();
    assert!(event.payment_token.is_empty());
    assert_eq!(
        app.keys
            .open(&event.sealed_payment_token, &placed.order_id)
            .unwrap(),
        "tok_approve"
    );
    assert_eq!(event.total, eur(2 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reserved_then_payment_captured_confirms_and_publishes_order_confirmed() {
    let app = spawn_app("30s").await;
    let order = app.place(1).await;
    let placed = &app.published::<OrderPlaced>(&order.order_id, 1).await[0];
    app.publish(&order.order_id, &app.reserved(&order), placed)
        .await;
    app.publish(&order.order_id, &app.captured(&order, PRICE), placed)
        .await;
    let done = app.terminal(&order.order_id).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);
    let mut timeline = steps(&done);
    timeline.sort_by_key(|(step, _)| *step as i32);
    assert_eq!(
        timeline,
        [
            (SagaStepType::PlaceOrder, SagaStepStatus::Succeeded),
            (SagaStepType::ReserveStock, SagaStepStatus::Succeeded),
            (SagaStepType::CapturePayment, SagaStepStatus::Succeeded),
            (SagaStepType::ConfirmOrder, SagaStepStatus::Succeeded),
        ]
    );
    let confirmed = &app.published::<OrderConfirmed>(&order.order_id, 1).await[0];
    let event: OrderConfirmed = prost::Message::decode(confirmed.payload.as_slice()).unwrap();
    assert_eq!(event.total, eur(PRICE));
    assert_eq!(event.lines.len(), 1);
    assert_eq!(confirmed.correlation_id, order.order_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_stock_declined_payment_and_a_short_capture_each_cancel_with_their_reason() {
    let app = spawn_app("30s").await;
    let (no_stock, declined, short) = (app.place(1).await, app.place(1).await, app.place(1).await);

    let placed = &app.published::<OrderPlaced>(&no_stock.order_id, 1).await[0];
    let rejected = StockRejected {
        order_id: no_stock.order_id.clone(),
        user_id: no_stock.user_id.clone(),
        detail: "1 of MUG-1 wanted, 0 available".into(),
        ..Default::default()
    };
    app.publish(&no_stock.order_id, &rejected, placed).await;

    let placed = &app.published::<OrderPlaced>(&declined.order_id, 1).await[0];
    app.publish(&declined.order_id, &app.reserved(&declined), placed)
        .await;
    let decline = PaymentDeclined {
        payment_id: Uuid::now_v7().to_string(),
        order_id: declined.order_id.clone(),
        user_id: declined.user_id.clone(),
        reason: PaymentDeclineReason::CardDeclined as i32,
        ..Default::default()
    };
    app.publish(&declined.order_id, &decline, placed).await;

    let placed = &app.published::<OrderPlaced>(&short.order_id, 1).await[0];
    app.publish(&short.order_id, &app.reserved(&short), placed)
        .await;
    app.publish(&short.order_id, &app.captured(&short, PRICE - 1), placed)
        .await;

    for (order, reason) in [
        (&no_stock, CancellationReason::OutOfStock),
        (&declined, CancellationReason::PaymentDeclined),
        (&short, CancellationReason::PaymentMismatch),
    ] {
        let done = app.terminal(&order.order_id).await;
        assert_eq!(done.status(), OrderStatus::Cancelled, "{order:?}");
        assert_eq!(done.cancellation_reason(), reason);
        let cancelled = &app.published::<OrderCancelled>(&order.order_id, 1).await[0];
        let event: OrderCancelled = prost::Message::decode(cancelled.payload.as_slice()).unwrap();
        assert_eq!(event.reason(), reason);
        assert_eq!(event.total, eur(PRICE));
    }
    let declined = app.get(&declined.order_id).await;
    assert_eq!(
        declined.cancellation_detail,
        "PAYMENT_DECLINE_REASON_CARD_DECLINED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_without_progress_is_cancelled_and_late_news_only_joins_its_timeline() {
    let app = spawn_app("1s").await;
    let order = app.place(1).await;
    let done = app.terminal(&order.order_id).await;
    assert_eq!(done.status(), OrderStatus::Cancelled);
    assert_eq!(done.cancellation_reason(), CancellationReason::SagaTimeout);
    app.published::<OrderCancelled>(&order.order_id, 1).await;

    // A capture after the cancellation is recorded, and changes nothing
    // else (payments refunds it when it sees OrderCancelled).
    let placed = &app.published::<OrderPlaced>(&order.order_id, 1).await[0];
    app.publish(&order.order_id, &app.captured(&order, PRICE), placed)
        .await;
    let late = eventually(WITHIN, || async {
        let now = app.get(&order.order_id).await;
        if steps(&now).contains(&(SagaStepType::CapturePayment, SagaStepStatus::Succeeded)) {
            Ok(now)
        } else {
            Err("capture not recorded yet")
        }
    })
    .await
    .unwrap();
    assert_eq!(late.status(), OrderStatus::Cancelled);
    assert!(
        app.observer
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.event_type != OrderConfirmed::TYPE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sagas_at_once_through_the_batched_consumers_all_confirm_once() {
    let app = spawn_app("30s").await;
    let mut orders = Vec::new();
    for _ in 0..40 {
        orders.push(app.place(1).await);
    }
    // Every reservation first, then every capture: the consumers hold many
    // lanes at once and apply them in batches.
    let mut placed = Vec::new();
    for order in &orders {
        placed.push(app.published::<OrderPlaced>(&order.order_id, 1).await[0].clone());
    }
    for (order, cause) in orders.iter().zip(&placed) {
        app.publish(&order.order_id, &app.reserved(order), cause)
            .await;
    }
    for (order, cause) in orders.iter().zip(&placed) {
        app.publish(&order.order_id, &app.captured(order, PRICE), cause)
            .await;
    }
    for order in &orders {
        assert_eq!(
            app.terminal(&order.order_id).await.status(),
            OrderStatus::Confirmed
        );
        assert_eq!(
            app.published::<OrderConfirmed>(&order.order_id, 1)
                .await
                .len(),
            1
        );
    }
}
