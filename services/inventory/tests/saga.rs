//! Inventory's part of the order saga through a real nats-server: the test
//! publishes the orders service's events, inventory reacts, and an observer
//! consumer records what inventory publishes.

mod common;

use common::{
    MAX_DELIVER, TestApp, WITHIN, order_cancelled, order_confirmed, order_placed, spawn_app,
    spawn_replicas,
};
use shop_events::Received;
use shop_proto::shop::common::v1::StockRejectionReason;
use shop_proto::shop::events::v1::{OrderPlaced, StockRejected, StockReleased, StockReserved};
use shop_proto::shop::inventory::v1::{ListDeadLettersRequest, ReservationStatus};
use shop_testkit::eventually;
use std::collections::HashMap;
use uuid::Uuid;

/// `(product, quantity)` pairs of a reservation's lines.
fn held(r: &shop_proto::shop::inventory::v1::Reservation) -> Vec<(String, i64)> {
    r.lines
        .iter()
        .map(|l| (l.product_id.clone(), l.quantity))
        .collect()
}

/// Per product: what was stocked = available + reserved + sold, none negative.
async fn assert_conserved(app: &mut TestApp, product: Uuid, stocked: i64) {
    let (available, reserved, sold) = app.levels(product).await;
    assert!(available >= 0 && reserved >= 0 && sold >= 0);
    assert_eq!(available + reserved + sold, stocked, "product {product}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_lines_are_all_available_is_reserved_and_stock_reserved_is_published() {
    let mut app = spawn_app().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(a, 5).await;
    app.set_stock(b, 2).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    // Product a appears twice: the lines are merged.
    let placed = order_placed(order, user, &[(a, 2), (b, 2), (a, 1)]);
    app.publish(order, &placed).await;

    let reservation = app.wait_for(order, ReservationStatus::Reserved).await;
    let mut expected = vec![(a.to_string(), 3), (b.to_string(), 2)];
    expected.sort();
    assert_eq!(held(&reservation), expected);
    assert_eq!(reservation.rejection_reason, 0);
    assert_eq!(app.levels(a).await, (2, 3, 0));
    assert_eq!(app.levels(b).await, (0, 2, 0));
    let reserved = app
        .wait_published::<StockReserved>(1, |e| e.order_id == order.to_string())
        .await;
    let reserved = &reserved[0];
    assert_eq!(reserved.user_id, user.to_string());
    assert_eq!(reserved.sealed_payment_token, placed.sealed_payment_token);
    assert!(reserved.payment_token.is_empty());
    assert_eq!(reserved.total, placed.total);
    let lines: Vec<_> = reserved
        .lines
        .iter()
        .map(|l| (l.product_id.clone(), l.quantity))
        .collect();
    assert_eq!(lines, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_one_short_line_reserves_nothing_and_reports_the_shortfall() {
    let mut app = spawn_app().await;
    let (plenty, scarce) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(plenty, 10).await;
    app.set_stock(scarce, 1).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    app.publish(
        order,
        &order_placed(order, user, &[(plenty, 4), (scarce, 2)]),
    )
    .await;

    let reservation = app.wait_for(order, ReservationStatus::Rejected).await;
    assert_eq!(
        reservation.rejection_reason,
        StockRejectionReason::InsufficientStock as i32
    );
    assert!(
        reservation
            .rejection_detail
            .contains("2 requested, 1 available"),
        "{}",
        reservation.rejection_detail
    );
    assert_eq!(held(&reservation).len(), 2, "the lines as requested");
    assert_eq!(app.levels(plenty).await, (10, 0, 0), "nothing reserved");
    assert_eq!(app.levels(scarce).await, (1, 0, 0), "nothing reserved");
    let rejected = app
        .wait_published::<StockRejected>(1, |e| e.order_id == order.to_string())
        .await;
    assert_eq!(rejected[0].user_id, user.to_string());
    assert_eq!(
        rejected[0].reason,
        StockRejectionReason::InsufficientStock as i32
    );
    let shortfalls: Vec<_> = rejected[0]
        .shortfalls
        .iter()
        .map(|s| {
            (
                s.product_id.clone(),
                s.requested_quantity,
                s.available_quantity,
            )
        })
        .collect();
    assert_eq!(shortfalls, [(scarce.to_string(), 2, 1)]);
    assert!(app.published::<StockReserved>().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_a_product_never_stocked_is_rejected_as_unknown_product() {
    let mut app = spawn_app().await;
    let (known, unknown) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(known, 10).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());

    app.publish(
        order,
        &order_placed(order, user, &[(known, 1), (unknown, 1)]),
    )
    .await;

    let reservation = app.wait_for(order, ReservationStatus::Rejected).await;
    assert_eq!(
        reservation.rejection_reason,
        StockRejectionReason::UnknownProduct as i32
    );
    let rejected = app
        .wait_published::<StockRejected>(1, |e| e.order_id == order.to_string())
        .await;
    assert_eq!(
        rejected[0].reason,
        StockRejectionReason::UnknownProduct as i32
    );
    assert_eq!(rejected[0].shortfalls.len(), 1);
    assert_eq!(rejected[0].shortfalls[0].product_id, unknown.to_string());
    assert_eq!(rejected[0].shortfalls[0].available_quantity, 0);
    assert_eq!(app.levels(known).await, (10, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_moves_its_stock_from_reserved_to_sold() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [(product, 3)];

    app.publish(order, &order_placed(order, user, &lines)).await;
    app.wait_for(order, ReservationStatus::Reserved).await;
    app.publish(order, &order_confirmed(order, user, &lines))
        .await;

    let committed = app.wait_for(order, ReservationStatus::Committed).await;
    assert_eq!(held(&committed), [(product.to_string(), 3)]);
    assert_eq!(app.levels(product).await, (2, 0, 3));
    assert_conserved(&mut app, product, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_returns_its_reserved_stock_to_available() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [(product, 3)];

    app.publish(order, &order_placed(order, user, &lines)).await;
    app.wait_for(order, ReservationStatus::Reserved).await;
    app.publish(order, &order_cancelled(order, user, &lines))
        .await;

    app.wait_for(order, ReservationStatus::Released).await;
    assert_eq!(app.levels(product).await, (5, 0, 0));
    let released = app
        .wait_published::<StockReleased>(1, |e| e.order_id == order.to_string())
        .await;
    assert!(!released[0].was_committed);
    assert_eq!(released[0].user_id, user.to_string());
    assert_eq!(released[0].lines.len(), 1);
    assert_eq!(released[0].lines[0].quantity, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_confirmed_order_returns_its_sold_stock_to_available() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [(product, 3)];

    app.publish(order, &order_placed(order, user, &lines)).await;
    app.wait_for(order, ReservationStatus::Reserved).await;
    app.publish(order, &order_confirmed(order, user, &lines))
        .await;
    app.wait_for(order, ReservationStatus::Committed).await;
    app.publish(order, &order_cancelled(order, user, &lines))
        .await;

    app.wait_for(order, ReservationStatus::Released).await;
    assert_eq!(app.levels(product).await, (5, 0, 0));
    let released = app
        .wait_published::<StockReleased>(1, |e| e.order_id == order.to_string())
        .await;
    assert!(released[0].was_committed);
    // A confirmation arriving after the cancellation changes nothing.
    let late = app
        .publish(order, &order_confirmed(order, user, &lines))
        .await;
    app.wait_handled(&late).await;
    assert_eq!(app.levels(product).await, (5, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_that_overtakes_its_order_leaves_a_tombstone_and_the_late_order_reserves_nothing()
 {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [(product, 2)];

    app.publish(order, &order_cancelled(order, user, &lines))
        .await;
    let tombstone = app.wait_for(order, ReservationStatus::Released).await;
    assert!(tombstone.lines.is_empty());
    let late = app.publish(order, &order_placed(order, user, &lines)).await;
    app.wait_handled(&late).await;

    let after = app.reservation(order).await.unwrap();
    assert_eq!(after.status, ReservationStatus::Released as i32);
    assert!(after.lines.is_empty());
    assert_eq!(app.levels(product).await, (5, 0, 0));
    // Let the relay run, then check inventory said nothing about the order.
    let control = Uuid::now_v7();
    app.publish(control, &order_placed(control, user, &[(product, 1)]))
        .await;
    app.wait_published::<StockReserved>(1, |_| true).await;
    assert_eq!(app.published_types(), ["shop.events.v1.StockReserved"]);
}

/// Runs the handler directly on `event`, in a transaction of its own, as
/// if the inbox had let a duplicate through.
async fn apply_directly<E: shop_events::DomainEvent>(app: &TestApp, order: Uuid, event: &E) {
    let envelope = shop_events::envelope::wrap("orders", &order.to_string(), event, None);
    let received = Received {
        event_id: envelope.event_id.parse().unwrap(),
        envelope,
        subject: E::SUBJECT.into(),
        stream_sequence: 1,
        delivered: 1,
    };
    // A consumer name of its own: the inbox lets it through.
    let consumer = format!("test-{}", Uuid::now_v7());
    shop_events::inbox::apply_as(&app.db, &consumer, &inventory::consumer_spec(), &received)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_applied_twice_changes_stock_once_and_publishes_once() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (order, user) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [(product, 2)];

    let placed = order_placed(order, user, &lines);
    apply_directly(&app, order, &placed).await;
    apply_directly(&app, order, &placed).await;
    assert_eq!(app.levels(product).await, (3, 2, 0));

    let confirmed = order_confirmed(order, user, &lines);
    apply_directly(&app, order, &confirmed).await;
    apply_directly(&app, order, &confirmed).await;
    assert_eq!(app.levels(product).await, (3, 0, 2));

    let cancelled = order_cancelled(order, user, &lines);
    apply_directly(&app, order, &cancelled).await;
    apply_directly(&app, order, &cancelled).await;
    assert_eq!(app.levels(product).await, (5, 0, 0));

    // Replaying the whole history changes nothing either.
    apply_directly(&app, order, &placed).await;
    apply_directly(&app, order, &confirmed).await;
    apply_directly(&app, order, &cancelled).await;
    assert_eq!(app.levels(product).await, (5, 0, 0));
    let reservation = app.reservation(order).await.unwrap();
    assert_eq!(reservation.status, ReservationStatus::Released as i32);

    app.wait_published::<StockReleased>(1, |_| true).await;
    app.wait_published::<StockReserved>(1, |_| true).await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(outbox, 2, "one StockReserved, one StockReleased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_orders_for_ten_units_through_two_replicas_reserve_exactly_ten() {
    let mut app = spawn_replicas(2).await;
    assert_eq!(app.replicas(), 2);
    let product = Uuid::now_v7();
    app.set_stock(product, 10).await;
    let user = Uuid::now_v7();
    let orders: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();

    let publishes = orders.iter().map(|&order| {
        let events = app.orders.clone();
        tokio::spawn(async move {
            events
                .publish_now(
                    &order.to_string(),
                    &order_placed(order, user, &[(product, 1)]),
                    None,
                )
                .await
                .unwrap();
        })
    });
    for p in publishes.collect::<Vec<_>>() {
        p.await.unwrap();
    }

    let db = app.db.clone();
    let counts = eventually(WITHIN, || {
        let db = db.clone();
        async move {
            let (available, reserved): (i64, i64) =
                sqlx::query_as("SELECT available, reserved FROM stock WHERE product_id = $1")
                    .bind(product)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert!(available >= 0 && reserved >= 0, "never negative");
            assert_eq!(available + reserved, 10, "conserved at every moment");
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM reservations GROUP BY status ORDER BY status",
            )
            .fetch_all(&db)
            .await
            .unwrap();
            let counts: HashMap<String, i64> = rows.into_iter().collect();
            if counts.values().sum::<i64>() == 30 {
                Ok(counts)
            } else {
                Err(format!("{counts:?}"))
            }
        }
    })
    .await
    .unwrap();

    assert_eq!(counts.get("reserved"), Some(&10));
    assert_eq!(counts.get("rejected"), Some(&20));
    assert_eq!(app.levels(product).await, (0, 10, 0));
    app.wait_published::<StockReserved>(10, |_| true).await;
    let rejected = app.wait_published::<StockRejected>(20, |_| true).await;
    assert!(
        rejected
            .iter()
            .all(|r| r.reason == StockRejectionReason::InsufficientStock as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_handlers_racing_in_parallel_transactions_reserve_exactly_ten() {
    let mut app = spawn_app().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(a, 10).await;
    app.set_stock(b, 100).await;
    let user = Uuid::now_v7();

    // Each order wants one of each product; half list them the other way
    // round, which must not deadlock.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let db = app.db.clone();
            tokio::spawn(async move {
                let order = Uuid::now_v7();
                let lines = if i % 2 == 0 {
                    [(a, 1), (b, 1)]
                } else {
                    [(b, 1), (a, 1)]
                };
                let placed: OrderPlaced = order_placed(order, user, &lines);
                let envelope =
                    shop_events::envelope::wrap("orders", &order.to_string(), &placed, None);
                let received = Received {
                    event_id: envelope.event_id.parse().unwrap(),
                    envelope,
                    subject: "shop.orders.order_placed".into(),
                    stream_sequence: 1,
                    delivered: 1,
                };
                shop_events::inbox::apply_as(
                    &db,
                    "test-direct",
                    &inventory::consumer_spec(),
                    &received,
                )
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM reservations GROUP BY status")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let counts: HashMap<String, i64> = rows.into_iter().collect();
    assert_eq!(counts.get("reserved"), Some(&10));
    assert_eq!(counts.get("rejected"), Some(&20));
    assert_eq!(app.levels(a).await, (0, 10, 0));
    assert_eq!(app.levels(b).await, (90, 10, 0), "all or nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_order_placed_is_dead_lettered_and_others_flow_past_it() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 5).await;
    let (bad, good, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    let mut malformed = order_placed(bad, user, &[(product, 1)]);
    malformed.lines[0].quantity = 0;
    app.publish(bad, &malformed).await;
    app.publish(good, &order_placed(good, user, &[(product, 1)]))
        .await;

    app.wait_for(good, ReservationStatus::Reserved).await;
    let client = app.client.clone();
    let letters = eventually(WITHIN, || {
        let mut client = client.clone();
        async move {
            let page = client
                .list_dead_letters(ListDeadLettersRequest::default())
                .await
                .unwrap()
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
    assert_eq!(letters[0].consumer, "inventory-orders");
    assert_eq!(letters[0].stream, "ORDERS");
    assert_eq!(letters[0].event_type, "shop.events.v1.OrderPlaced");
    assert_eq!(letters[0].delivery_count, MAX_DELIVER);
    assert!(
        letters[0].last_error.contains("quantity 0"),
        "{}",
        letters[0].last_error
    );
    assert!(app.reservation(bad).await.is_none(), "nothing recorded");
    assert_eq!(app.levels(product).await, (4, 1, 0));
}
