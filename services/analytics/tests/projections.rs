//! The analytics service against a real Postgres and a real nats-server:
//! instances run in process on port 0, each with its own database; the test
//! plays orders, inventory, payments and users by publishing their events
//! straight to JetStream (or, to control times and arrival order, by calling
//! the projector directly).

use shop_events::catalog::{INVENTORY, ORDERS, PAYMENTS, USERS};
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{DomainEvent, Events, Received};
use shop_proto::shop::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use shop_proto::shop::analytics::v1::{
    CancellationCount, CurrencyRevenue, GetSagaOutcomesRequest, GetSagaOutcomesResponse,
    GetSalesReportRequest, GetSalesReportResponse, ListDeadLettersRequest, OrderOutcomeCounts,
    ProductUnits,
};
use shop_proto::shop::common::v1::{
    CancellationReason, Money, PaymentDeclineReason, StockRejectionReason,
};
use shop_proto::shop::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, PaymentCaptured,
    PaymentDeclined, PaymentRefunded, StockLine, StockRejected, StockReleased, StockReserved,
    StockShortfall, UserRegistered,
};
use shop_testkit::inproc::RunningApp;
use shop_testkit::status::violated_fields;
use shop_testkit::{Nats, Postgres, eventually};
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

const MAX_DELIVER: i64 = 2;

/// One analytics instance with its own database.
struct Instance {
    client: AnalyticsServiceClient<Channel>,
    db: sqlx::PgPool,
    _app: RunningApp,
}

/// Postgres, NATS, a publisher playing the other services, and the first
/// analytics instance. Field order is drop order: instances stop first.
struct World {
    live: Instance,
    publisher: Events,
    nats: Nats,
    postgres: Postgres,
}

async fn start_instance(
    postgres: &Postgres,
    nats: &Nats,
    database: &str,
    durable_prefix: Option<&str>,
) -> Instance {
    let url = postgres.create_database(database).await.unwrap();
    let prefix = durable_prefix
        .map(|p| format!("durable_prefix = \"{p}\""))
        .unwrap_or_default();
    let config: analytics::Config = shop_runtime::config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{url}"
        [events]
        nats_url = "{nats}"
        [events.consumer]
        ack_wait = "5s"
        max_deliver = {MAX_DELIVER}
        backoff = ["20ms"]
        {prefix}
        "#,
        nats = nats.url(),
    ))
    .unwrap();
    let app = RunningApp::spawn(analytics::build(config).await.expect("analytics builds"));
    Instance {
        client: AnalyticsServiceClient::connect(app.url()).await.unwrap(),
        db: sqlx::PgPool::connect(&url).await.unwrap(),
        _app: app,
    }
}

async fn world() -> World {
    let postgres = Postgres::start().await.expect("postgres starts");
    let nats = Nats::start().await.expect("nats starts");
    let live = start_instance(&postgres, &nats, "analytics", None).await;
    let publisher = Events::connect(
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
    World {
        live,
        publisher,
        nats,
        postgres,
    }
}

impl Instance {
    async fn sales(&self) -> GetSalesReportResponse {
        self.client
            .clone()
            .get_sales_report(GetSalesReportRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn sagas(&self) -> GetSagaOutcomesResponse {
        self.client
            .clone()
            .get_saga_outcomes(GetSagaOutcomesRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until `n` distinct events are applied, and returns the report.
    async fn wait_applied(&self, n: i64) -> GetSalesReportResponse {
        eventually(Duration::from_secs(30), || async {
            let report = self.sales().await;
            if report.applied_event_count == n {
                Ok(report)
            } else {
                Err(format!("{} events applied", report.applied_event_count))
            }
        })
        .await
        .unwrap()
    }

    /// Applies `event` through the projector in one transaction, as a
    /// consumer does, under a consumer name of its own each time: what is
    /// tested is the projector's own idempotency, not the inbox's.
    async fn apply(&self, event: &Received) {
        let consumer = format!("test-{}", Uuid::now_v7());
        let spec = [ORDERS, INVENTORY, PAYMENTS, USERS]
            .into_iter()
            .map(|stream| analytics::consumer_spec(format!("test-{}", stream.name), stream))
            .find(|spec| spec.handles(&event.envelope.event_type))
            .expect("analytics projects the event");
        shop_events::inbox::apply_as(&self.db, &consumer, &spec, event)
            .await
            .unwrap();
    }
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: currency.into(),
    })
}

fn line(product: Uuid, quantity: i64, unit_minor: i64, currency: &str) -> OrderLine {
    OrderLine {
        product_id: product.to_string(),
        quantity,
        unit_price: money(unit_minor, currency),
    }
}

/// An order as the saga's events describe it.
#[derive(Clone)]
struct Order {
    id: Uuid,
    user: Uuid,
    lines: Vec<OrderLine>,
    currency: &'static str,
    payment: Uuid,
}

impl Order {
    fn new(user: Uuid, currency: &'static str, lines: &[(Uuid, i64, i64)]) -> Self {
        Self {
            id: Uuid::now_v7(),
            user,
            lines: lines
                .iter()
                .map(|&(p, q, price)| line(p, q, price, currency))
                .collect(),
            currency,
            payment: Uuid::now_v7(),
        }
    }

    fn total_minor(&self) -> i64 {
        self.lines
            .iter()
            .map(|l| l.quantity * l.unit_price.as_ref().unwrap().amount_minor)
            .sum()
    }

    fn total(&self) -> Option<Money> {
        money(self.total_minor(), self.currency)
    }

    fn stock_lines(&self) -> Vec<StockLine> {
        self.lines
            .iter()
            .map(|l| StockLine {
                product_id: l.product_id.clone(),
                quantity: l.quantity,
            })
            .collect()
    }

    fn placed(&self) -> OrderPlaced {
        OrderPlaced {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            lines: self.lines.clone(),
            total: self.total(),
            payment_token: "tok_approve".into(),
            sealed_payment_token: Vec::new(),
        }
    }

    fn reserved(&self) -> StockReserved {
        StockReserved {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            lines: self.stock_lines(),
            total: self.total(),
            payment_token: "tok_approve".into(),
            sealed_payment_token: Vec::new(),
        }
    }

    fn rejected(&self) -> StockRejected {
        StockRejected {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            reason: StockRejectionReason::InsufficientStock as i32,
            detail: "not enough stock".into(),
            shortfalls: self
                .lines
                .iter()
                .map(|l| StockShortfall {
                    product_id: l.product_id.clone(),
                    requested_quantity: l.quantity,
                    available_quantity: 0,
                })
                .collect(),
        }
    }

    fn released(&self, was_committed: bool) -> StockReleased {
        StockReleased {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            lines: self.stock_lines(),
            was_committed,
        }
    }

    fn captured(&self) -> PaymentCaptured {
        PaymentCaptured {
            payment_id: self.payment.to_string(),
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            amount: self.total(),
        }
    }

    fn declined(&self) -> PaymentDeclined {
        PaymentDeclined {
            payment_id: self.payment.to_string(),
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            amount: self.total(),
            reason: PaymentDeclineReason::CardDeclined as i32,
            detail: "card declined".into(),
        }
    }

    fn refunded(&self) -> PaymentRefunded {
        PaymentRefunded {
            refund_id: Uuid::now_v7().to_string(),
            payment_id: self.payment.to_string(),
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            amount: self.total(),
        }
    }

    fn confirmed(&self) -> OrderConfirmed {
        OrderConfirmed {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            lines: self.lines.clone(),
            total: self.total(),
            payment_id: self.payment.to_string(),
        }
    }

    fn cancelled(&self, reason: CancellationReason) -> OrderCancelled {
        OrderCancelled {
            order_id: self.id.to_string(),
            user_id: self.user.to_string(),
            reason: reason as i32,
            detail: format!("{reason:?}"),
            lines: self.lines.clone(),
            total: self.total(),
        }
    }
}

fn registered(user: Uuid) -> UserRegistered {
    UserRegistered {
        user_id: user.to_string(),
        email: format!("{}@example.com", user.simple()),
        display_name: "Someone".into(),
    }
}

/// Three products, ordered by id as the report orders them.
fn products() -> [Uuid; 3] {
    let mut p = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    p.sort();
    p
}

fn revenue(currency: &str, confirmed: i64, captured: i64, refunded: i64) -> CurrencyRevenue {
    CurrencyRevenue {
        currency_code: currency.into(),
        confirmed_total: money(confirmed, currency),
        captured: money(captured, currency),
        refunded: money(refunded, currency),
        net_captured: money(captured - refunded, currency),
    }
}

fn units(product: Uuid, units_sold: i64, order_count: i64) -> ProductUnits {
    ProductUnits {
        product_id: product.to_string(),
        units_sold,
        order_count,
    }
}

fn by_reason(reasons: &[(CancellationReason, i64)]) -> Vec<CancellationCount> {
    reasons
        .iter()
        .map(|&(reason, count)| CancellationCount {
            reason: reason as i32,
            count,
        })
        .collect()
}

/// `t` as Postgres stores it: microseconds.
fn micros(t: &prost_types::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos / 1000 * 1000,
    }
}

impl World {
    async fn publish<E: DomainEvent>(&self, aggregate: Uuid, event: &E) -> Envelope {
        self.publisher
            .publish_now(&aggregate.to_string(), event, None)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_sagas_adds_up_exactly_and_a_rebuild_from_the_streams_gives_the_same_report() {
    let w = world().await;
    let [p1, p2, p3] = products();
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    // A: confirmed. B: out of stock. C: confirmed, then cancelled by the
    // user and refunded. D: payment declined. E: still pending. F: confirmed,
    // in another currency.
    let a = Order::new(ada, "EUR", &[(p1, 2, 1000), (p2, 1, 500)]);
    let b = Order::new(bob, "EUR", &[(p1, 100, 1000)]);
    let c = Order::new(ada, "EUR", &[(p2, 2, 500)]);
    let d = Order::new(bob, "USD", &[(p3, 1, 1500)]);
    let e = Order::new(bob, "EUR", &[(p1, 1, 1000)]);
    let f = Order::new(ada, "USD", &[(p3, 2, 1500)]);

    let mut envelopes = vec![
        w.publish(ada, &registered(ada)).await,
        w.publish(bob, &registered(bob)).await,
    ];
    for o in [&a, &b, &c, &d, &e, &f] {
        envelopes.push(w.publish(o.id, &o.placed()).await);
    }
    for o in [&a, &c, &d, &f] {
        envelopes.push(w.publish(o.id, &o.reserved()).await);
    }
    envelopes.push(w.publish(b.id, &b.rejected()).await);
    envelopes.push(
        w.publish(b.id, &b.cancelled(CancellationReason::OutOfStock))
            .await,
    );
    for o in [&a, &c, &f] {
        envelopes.push(w.publish(o.payment, &o.captured()).await);
        envelopes.push(w.publish(o.id, &o.confirmed()).await);
    }
    // The same confirmation published again under a new event id: one more
    // event applied, no figure changes.
    envelopes.push(w.publish(a.id, &a.confirmed()).await);
    envelopes.push(w.publish(d.payment, &d.declined()).await);
    envelopes.push(
        w.publish(d.id, &d.cancelled(CancellationReason::PaymentDeclined))
            .await,
    );
    envelopes.push(w.publish(d.id, &d.released(false)).await);
    envelopes.push(
        w.publish(c.id, &c.cancelled(CancellationReason::UserRequested))
            .await,
    );
    envelopes.push(w.publish(c.id, &c.released(true)).await);
    envelopes.push(w.publish(c.payment, &c.refunded()).await);
    assert_eq!(envelopes.len(), 27);

    let report = w.live.wait_applied(27).await;

    assert_eq!(
        report.orders,
        Some(OrderOutcomeCounts {
            placed_count: 6,
            confirmed_count: 2,
            cancelled_count: 3,
            pending_count: 1,
            cancelled_by_reason: by_reason(&[
                (CancellationReason::UserRequested, 1),
                (CancellationReason::OutOfStock, 1),
                (CancellationReason::PaymentDeclined, 1),
            ]),
        })
    );
    assert_eq!(
        report.revenue,
        [
            revenue("EUR", 2500, 2500 + 1000, 1000),
            revenue("USD", 3000, 3000, 0),
        ]
    );
    assert_eq!(
        report.units_sold,
        [units(p1, 2, 1), units(p2, 1, 1), units(p3, 2, 1)]
    );
    let latest = envelopes
        .iter()
        .filter_map(|e| e.occur_time)
        .max_by_key(|t| (t.seconds, t.nanos))
        .unwrap();
    assert_eq!(report.last_event_time, Some(micros(&latest)));

    let sagas = w.live.sagas().await;
    assert_eq!(sagas.outcomes, report.orders);
    assert_eq!(sagas.stock_rejected_count, 1);
    assert_eq!(sagas.payment_declined_count, 1);
    assert_eq!(sagas.stock_released_count, 2);
    assert_eq!(sagas.payment_refunded_count, 1);
    assert_eq!(sagas.applied_event_count, 27);
    let (median, p99, max) = (
        sagas.median_saga_duration.unwrap(),
        sagas.p99_saga_duration.unwrap(),
        sagas.max_saga_duration.unwrap(),
    );
    let key = |d: &prost_types::Duration| (d.seconds, d.nanos);
    assert!(key(&median) <= key(&p99) && key(&p99) <= key(&max));
    assert!(key(&max) > (0, 0), "{max:?}");

    // A second instance with a fresh database and new durable names replays
    // every stream from the start and ends with the same numbers.
    let rebuilt = start_instance(&w.postgres, &w.nats, "analytics_rebuild", Some("rebuild")).await;
    let rebuilt_report = rebuilt.wait_applied(27).await;
    assert_eq!(rebuilt_report, report);
    assert_eq!(rebuilt.sagas().await, sagas);
    let durable: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT consumer) FROM inbox WHERE consumer LIKE 'rebuild-analytics-%'",
    )
    .fetch_one(&rebuilt.db)
    .await
    .unwrap();
    assert_eq!(durable, 4, "one rebuild consumer per stream");
}

/// `event` as a consumer would receive it, stamped `seconds` after a fixed
/// start.
fn at<E: DomainEvent>(seconds: i64, aggregate: Uuid, event: &E) -> Received {
    const START: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z
    let mut envelope = shop_events::envelope::wrap("test", &aggregate.to_string(), event, None);
    envelope.occur_time = Some(prost_types::Timestamp {
        seconds: START + seconds,
        nanos: 0,
    });
    Received {
        event_id: envelope.event_id.parse().unwrap(),
        envelope,
        subject: E::SUBJECT.into(),
        stream_sequence: 1,
        delivered: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projections_depend_on_the_set_of_events_not_on_their_order_or_repeats() {
    let w = world().await;
    let other = start_instance(&w.postgres, &w.nats, "analytics_other", Some("other")).await;
    let [p1, p2, _] = products();
    let user = Uuid::now_v7();
    let a = Order::new(user, "EUR", &[(p1, 1, 1000)]);
    let b = Order::new(user, "EUR", &[(p2, 3, 200)]);
    let c = Order::new(user, "EUR", &[(p1, 2, 1000), (p2, 1, 200)]);
    let d = Order::new(user, "EUR", &[(p2, 1, 200)]);
    let refund = c.refunded();
    let events = vec![
        at(0, user, &registered(user)),
        at(0, a.id, &a.placed()),
        at(1, b.id, &b.placed()),
        at(2, c.id, &c.placed()),
        at(2, d.id, &d.placed()),
        at(1, a.id, &a.reserved()),
        at(2, a.payment, &a.captured()),
        at(4, a.id, &a.confirmed()),
        at(2, b.id, &b.rejected()),
        at(3, b.id, &b.cancelled(CancellationReason::OutOfStock)),
        at(3, c.id, &c.reserved()),
        at(5, c.payment, &c.captured()),
        // The same capture under a new event id counts once.
        at(6, c.payment, &c.captured()),
        at(10, c.id, &c.confirmed()),
        at(20, c.id, &c.cancelled(CancellationReason::UserRequested)),
        // A later, conflicting cancellation: the earliest one stands.
        at(25, c.id, &c.cancelled(CancellationReason::SagaTimeout)),
        at(21, c.id, &c.released(true)),
        at(22, c.payment, &refund),
        at(22, c.payment, &refund),
    ];

    for event in &events {
        w.live.apply(event).await;
    }
    // The other instance sees them newest first, then all of them again.
    for event in events.iter().rev().chain(events.iter()) {
        other.apply(event).await;
    }

    let report = w.live.sales().await;
    assert_eq!(report, other.sales().await);
    let sagas = w.live.sagas().await;
    assert_eq!(sagas, other.sagas().await);

    assert_eq!(report.applied_event_count, events.len() as i64);
    assert_eq!(
        report.orders,
        Some(OrderOutcomeCounts {
            placed_count: 4,
            confirmed_count: 1,
            cancelled_count: 2,
            pending_count: 1,
            cancelled_by_reason: by_reason(&[
                (CancellationReason::UserRequested, 1),
                (CancellationReason::OutOfStock, 1),
            ]),
        })
    );
    assert_eq!(report.revenue, [revenue("EUR", 1000, 1000 + 2200, 2200)]);
    assert_eq!(report.units_sold, [units(p1, 1, 1)]);
    assert_eq!(
        report.last_event_time,
        Some(prost_types::Timestamp {
            seconds: 1_714_564_800 + 25,
            nanos: 0
        })
    );
    // Ended sagas took 4s (A), 2s (B) and 8s (C, to its confirmation).
    let secs = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    assert_eq!(sagas.median_saga_duration, secs(4));
    assert_eq!(sagas.p99_saga_duration, secs(8));
    assert_eq!(sagas.max_saga_duration, secs(8));
    assert_eq!(sagas.stock_rejected_count, 1);
    assert_eq!(sagas.payment_declined_count, 0);
    assert_eq!(sagas.stock_released_count, 1);
    assert_eq!(sagas.payment_refunded_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_event_the_reports_are_empty() {
    let w = world().await;

    let report = w.live.sales().await;
    let sagas = w.live.sagas().await;

    assert_eq!(
        report,
        GetSalesReportResponse {
            orders: Some(OrderOutcomeCounts::default()),
            ..Default::default()
        }
    );
    assert_eq!(
        sagas,
        GetSagaOutcomesResponse {
            outcomes: Some(OrderOutcomeCounts::default()),
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_projected_is_dead_lettered_and_the_rest_flow_past_it() {
    let w = world().await;
    let user = Uuid::now_v7();
    let good = Order::new(user, "EUR", &[(Uuid::now_v7(), 1, 100)]);
    let mut poison = good.placed();
    poison.order_id = "not-an-order-id".into();

    let published = w.publish(Uuid::now_v7(), &poison).await;
    w.publish(good.id, &good.placed()).await;

    let report = w.live.wait_applied(1).await;
    assert_eq!(report.orders.unwrap().placed_count, 1);
    let mut client = w.live.client.clone();
    let letters = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let page = client
                .list_dead_letters(ListDeadLettersRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if page.dead_letters.len() == 1 {
                Ok(page.dead_letters)
            } else {
                Err(format!("{} dead letters", page.dead_letters.len()))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(letters[0].event_id, published.event_id);
    assert_eq!(letters[0].consumer, "analytics-orders");
    assert_eq!(letters[0].delivery_count, MAX_DELIVER);
    assert!(
        letters[0].last_error.contains("order_id"),
        "{}",
        letters[0].last_error
    );
    assert_eq!(w.live.sales().await.applied_event_count, 1);

    let bad = client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: 101,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["page_size", "page_token"]);
}
