//! The notifications service against a real Postgres and a real
//! nats-server: the service runs in process on port 0; the test plays
//! orders and users by publishing their events straight to JetStream.

use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{DomainEvent, Events, Received};
use shop_proto::shop::common::v1::{CancellationReason, Money};
use shop_proto::shop::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderLine, UserRegistered,
};
use shop_proto::shop::notifications::v1::notification_service_client::NotificationServiceClient;
use shop_proto::shop::notifications::v1::{
    ListDeadLettersRequest, ListNotificationsRequest, ListNotificationsResponse, Notification,
    NotificationKind,
};
use shop_testkit::inproc::RunningApp;
use shop_testkit::status::violated_fields;
use shop_testkit::{Nats, Postgres, eventually};
use std::time::Duration;
use tonic::transport::Channel;
use uuid::Uuid;

const MAX_DELIVER: i64 = 2;

struct TestApp {
    client: NotificationServiceClient<Channel>,
    db: sqlx::PgPool,
    events: Events,
    _app: RunningApp,
    _nats: Nats,
    _postgres: Postgres,
}

async fn spawn_app() -> TestApp {
    let postgres = Postgres::start().await.expect("postgres starts");
    let nats = Nats::start().await.expect("nats starts");
    let url = postgres.create_database("notifications").await.unwrap();
    let config: notifications::Config = shop_runtime::config::from_toml(&format!(
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
        "#,
        nats = nats.url(),
    ))
    .unwrap();
    let app = RunningApp::spawn(
        notifications::build(config)
            .await
            .expect("notifications builds"),
    );
    let client = NotificationServiceClient::connect(app.url()).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let events = Events::connect(
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
        events,
        _app: app,
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

fn lines() -> Vec<OrderLine> {
    vec![
        OrderLine {
            product_id: Uuid::now_v7().to_string(),
            quantity: 1,
            unit_price: eur(1200),
        },
        OrderLine {
            product_id: Uuid::now_v7().to_string(),
            quantity: 1,
            unit_price: eur(3000),
        },
    ]
}

fn confirmed(order_id: Uuid, user_id: Uuid) -> OrderConfirmed {
    OrderConfirmed {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        lines: lines(),
        total: eur(4200),
        payment_id: Uuid::now_v7().to_string(),
    }
}

fn cancelled(order_id: Uuid, user_id: Uuid) -> OrderCancelled {
    OrderCancelled {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        reason: CancellationReason::OutOfStock as i32,
        detail: "not enough units of the blue mug".into(),
        lines: lines(),
        total: eur(4200),
    }
}

fn registered(user_id: Uuid) -> UserRegistered {
    UserRegistered {
        user_id: user_id.to_string(),
        email: "ada@example.com".into(),
        display_name: "Ada Lovelace".into(),
    }
}

/// `event` as a consumer would receive it, for calling the handler directly.
fn received<E: DomainEvent>(aggregate_id: Uuid, event: &E) -> Received {
    let envelope = shop_events::envelope::wrap("test", &aggregate_id.to_string(), event, None);
    Received {
        event_id: envelope.event_id.parse().unwrap(),
        envelope,
        subject: E::SUBJECT.into(),
        stream_sequence: 1,
        delivered: 1,
    }
}

impl TestApp {
    async fn publish<E: DomainEvent>(&self, aggregate_id: Uuid, event: &E) -> Envelope {
        self.events
            .publish_now(&aggregate_id.to_string(), event, None)
            .await
            .unwrap()
    }

    async fn list(
        &mut self,
        user_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListNotificationsResponse, tonic::Status> {
        self.client
            .list_notifications(ListNotificationsRequest {
                page_size,
                page_token: page_token.into(),
                user_id: user_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Waits until `user_id` has `n` notifications, and returns them.
    async fn wait_for(&self, user_id: Uuid, n: usize) -> Vec<Notification> {
        eventually(Duration::from_secs(20), || {
            let mut client = self.client.clone();
            async move {
                let page = client
                    .list_notifications(ListNotificationsRequest {
                        page_size: 100,
                        page_token: String::new(),
                        user_id: user_id.to_string(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if page.notifications.len() == n {
                    Ok(page.notifications)
                } else {
                    Err(format!("{} notifications", page.notifications.len()))
                }
            }
        })
        .await
        .unwrap()
    }

    /// Waits until the consumer `consumer` has applied `n` events.
    async fn wait_applied(&self, consumer: &str, n: i64) {
        eventually(Duration::from_secs(20), || async {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(&self.db)
                .await
                .map_err(|e| e.to_string())?;
            if applied == n {
                Ok(())
            } else {
                Err(format!("{applied} applied"))
            }
        })
        .await
        .unwrap();
    }

    async fn notification_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Applies `event` through the handler in one transaction, as the
    /// consumer does, under a consumer name of its own each time: what is
    /// tested is the handler's own idempotency, not the inbox's.
    async fn apply(&self, event: &Received) {
        let consumer = format!("test-{}", uuid::Uuid::now_v7());
        let spec = notifications::consumer_specs()
            .into_iter()
            .find(|spec| spec.handles(&event.envelope.event_type))
            .expect("notifications handles the event");
        shop_events::inbox::apply_as(&self.db, &consumer, &spec, event)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_confirming_and_cancelling_each_notify_the_user_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let (kept, dropped) = (Uuid::now_v7(), Uuid::now_v7());

    let welcome = app.publish(user, &registered(user)).await;
    app.wait_for(user, 1).await;
    let confirmation = app.publish(kept, &confirmed(kept, user)).await;
    app.wait_for(user, 2).await;
    let cancellation = app.publish(dropped, &cancelled(dropped, user)).await;
    let listed = app.wait_for(user, 3).await;

    // Newest first.
    let kinds: Vec<_> = listed.iter().map(|n| n.kind()).collect();
    assert_eq!(
        kinds,
        [
            NotificationKind::OrderCancelled,
            NotificationKind::OrderConfirmed,
            NotificationKind::Welcome
        ]
    );
    let [cancel, confirm, hello] = &listed[..] else {
        unreachable!()
    };
    assert_eq!(hello.source_event_id, welcome.event_id);
    assert_eq!(hello.order_id, "");
    assert_eq!(hello.subject, "Welcome to the shop, Ada Lovelace!");
    assert!(hello.body.contains("ada@example.com"), "{}", hello.body);

    let short = |id: Uuid| id.simple().to_string()[..8].to_string();
    assert_eq!(confirm.source_event_id, confirmation.event_id);
    assert_eq!(confirm.order_id, kept.to_string());
    assert_eq!(
        confirm.subject,
        format!("Your order {} is confirmed", short(kept))
    );
    assert!(
        confirm.body.starts_with(&format!(
            "Your order {} is confirmed: 2 items, 42.00 EUR.",
            short(kept)
        )),
        "{}",
        confirm.body
    );

    assert_eq!(cancel.source_event_id, cancellation.event_id);
    assert_eq!(cancel.order_id, dropped.to_string());
    assert!(
        cancel.body.contains(
            "(2 items, 42.00 EUR) was cancelled because some items are out of stock \
             (not enough units of the blue mug)."
        ),
        "{}",
        cancel.body
    );
    for n in &listed {
        assert_eq!(n.user_id, user.to_string());
        assert!(n.create_time.is_some());
        Uuid::parse_str(&n.notification_id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_confirmation_published_under_two_event_ids_notifies_once() {
    let app = spawn_app().await;
    let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
    let event = confirmed(order, user);

    let first = app.publish(order, &event).await;
    let second = app.publish(order, &event).await;
    assert_ne!(first.event_id, second.event_id);
    app.wait_applied("notifications-orders", 2).await;

    let listed = app.wait_for(user, 1).await;
    assert_eq!(listed[0].source_event_id, first.event_id);
    assert_eq!(app.notification_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_applied_twice_through_the_handler_changes_nothing() {
    let app = spawn_app().await;
    let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
    let event = received(order, &cancelled(order, user));
    let welcome = received(user, &registered(user));

    app.apply(&event).await;
    app.apply(&welcome).await;
    let before = app.wait_for(user, 2).await;
    app.apply(&event).await;
    app.apply(&welcome).await;

    assert_eq!(app.wait_for(user, 2).await, before);
    assert_eq!(app.notification_rows().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_a_users_notifications_newest_first_without_gaps_or_repeats() {
    let mut app = spawn_app().await;
    let (user, someone_else) = (Uuid::now_v7(), Uuid::now_v7());
    let mut orders = Vec::new();
    for _ in 0..25 {
        let order = Uuid::now_v7();
        app.apply(&received(order, &confirmed(order, user))).await;
        orders.push(order.to_string());
    }
    app.apply(&received(someone_else, &registered(someone_else)))
        .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = app.list(&user.to_string(), 10, &token).await.unwrap();
        sizes.push(page.notifications.len());
        seen.extend(page.notifications.into_iter().map(|n| n.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    assert_eq!(sizes, [10, 10, 5]);
    orders.reverse();
    assert_eq!(seen, orders, "every order once, newest first");
    let default_page = app.list(&user.to_string(), 0, "").await.unwrap();
    assert_eq!(default_page.notifications.len(), 20);
    let nobody = app.list(&Uuid::now_v7().to_string(), 0, "").await.unwrap();
    assert!(nobody.notifications.is_empty());
    assert!(nobody.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_each_field() {
    let mut app = spawn_app().await;
    let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..2 {
        let order = Uuid::now_v7();
        app.apply(&received(order, &confirmed(order, user))).await;
    }
    let token = app
        .list(&user.to_string(), 1, "")
        .await
        .unwrap()
        .next_page_token;
    assert!(!token.is_empty());

    let missing = app.list("", 0, "").await.unwrap_err();
    assert_eq!(violated_fields(&missing), ["user_id"]);
    let malformed = app.list("42", 101, "").await.unwrap_err();
    assert_eq!(violated_fields(&malformed), ["page_size", "user_id"]);
    let negative = app.list(&user.to_string(), -1, "").await.unwrap_err();
    assert_eq!(violated_fields(&negative), ["page_size"]);
    let forged = app
        .list(&user.to_string(), 0, "bm90IGEgdG9rZW4")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&forged), ["page_token"]);
    let mismatched = app.list(&other.to_string(), 0, &token).await.unwrap_err();
    assert_eq!(violated_fields(&mismatched), ["page_token"]);

    let dead = app
        .client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: -1,
            page_token: "%%%".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&dead), ["page_size", "page_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_handled_is_dead_lettered_and_listed() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7();
    let mut poison = confirmed(Uuid::now_v7(), user);
    poison.order_id = "not-an-order-id".into();

    let published = app.publish(Uuid::now_v7(), &poison).await;
    let order = Uuid::now_v7();
    app.publish(order, &cancelled(order, user)).await;

    // Later events flow past it.
    let listed = app.wait_for(user, 1).await;
    assert_eq!(listed[0].kind(), NotificationKind::OrderCancelled);
    let letters = eventually(Duration::from_secs(20), || {
        let mut client = app.client.clone();
        async move {
            let letters = client
                .list_dead_letters(ListDeadLettersRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if letters.dead_letters.len() == 1 {
                Ok(letters)
            } else {
                Err(format!("{} dead letters", letters.dead_letters.len()))
            }
        }
    })
    .await
    .unwrap();
    let letter = &letters.dead_letters[0];
    assert_eq!(letter.event_id, published.event_id);
    assert_eq!(letter.consumer, "notifications-orders");
    assert_eq!(letter.stream, "ORDERS");
    assert_eq!(letter.event_type, "shop.events.v1.OrderConfirmed");
    assert_eq!(letter.delivery_count, MAX_DELIVER);
    assert!(
        letter.last_error.contains("order_id"),
        "{}",
        letter.last_error
    );
    assert!(letters.next_page_token.is_empty());
    let first_page = app
        .client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.dead_letters.len(), 1);
    assert_eq!(app.notification_rows().await, 1);
}
