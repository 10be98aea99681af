//! The payments consumers driven by real events: StockReserved and
//! OrderCancelled published to a real nats-server (as inventory and orders
//! would), effects observed through the gRPC API and the outbox.

mod common;

use common::{
    MAX_DELIVER, SLOW_DELAY, TestApp, WITHIN, order_cancelled, spawn_app, stock_reserved,
};
use shop_proto::shop::common::v1::PaymentDeclineReason;
use shop_proto::shop::events::v1::{StockRejected, StockReserved};
use shop_proto::shop::payments::v1::{ListDeadLettersRequest, PaymentStatus};
use shop_testkit::eventually;
use std::time::Instant;

const CAPTURED: &str = "shop.events.v1.PaymentCaptured";
const DECLINED: &str = "shop.events.v1.PaymentDeclined";
const REFUNDED: &str = "shop.events.v1.PaymentRefunded";

/// Captured minus refunded, over every payment: what the customers paid.
async fn net_charged(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT ((SELECT COALESCE(sum(amount_minor), 0) FROM payments
                   WHERE status IN ('captured', 'refunded'))
               - (SELECT COALESCE(sum(amount_minor), 0) FROM refunds))::bigint",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approving_token_is_captured_and_announced_once() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 2599);

    app.publish(&reserved.order_id, &reserved).await;
    let payment = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;
    app.outbox_drained().await;

    assert_eq!(payment.amount, reserved.total);
    assert_eq!(payment.attempt_count, 1);
    assert_eq!(payment.decline_reason, 0);
    assert!(payment.decline_detail.is_empty());
    assert_eq!(app.outbox_count(CAPTURED).await, 1);
    assert_eq!(app.outbox_count(DECLINED).await, 0);
    assert_eq!(
        app.upstream.stream_message_count("PAYMENTS").await.unwrap(),
        1
    );
    assert_eq!(net_charged(&app).await, 2599);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sealed_for_another_order_is_declined_and_a_clear_one_from_before_seals_is_charged()
{
    let app = spawn_app().await;
    // A seal lifted from another order's event: it does not open here.
    let mut lifted = stock_reserved("tok_approve", 1000);
    lifted.sealed_payment_token = stock_reserved("tok_approve", 1000).sealed_payment_token;
    // An event published before tokens were sealed.
    let mut legacy = stock_reserved("", 700);
    legacy.sealed_payment_token.clear();
    legacy.payment_token = "tok_approve".into();

    app.publish(&lifted.order_id, &lifted).await;
    app.publish(&legacy.order_id, &legacy).await;
    let refused = app
        .payment_in(&lifted.order_id, PaymentStatus::Declined)
        .await;
    assert_eq!(
        refused.decline_reason,
        PaymentDeclineReason::InvalidToken as i32
    );
    app.payment_in(&legacy.order_id, PaymentStatus::Captured)
        .await;
    assert_eq!(net_charged(&app).await, 700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declining_and_unknown_tokens_are_declined_with_their_reasons() {
    let app = spawn_app().await;
    let declined = stock_reserved("tok_decline", 1000);
    let unknown = stock_reserved("tok_stolen_card", 1000);

    app.publish(&declined.order_id, &declined).await;
    app.publish(&unknown.order_id, &unknown).await;
    let card_declined = app
        .payment_in(&declined.order_id, PaymentStatus::Declined)
        .await;
    let invalid_token = app
        .payment_in(&unknown.order_id, PaymentStatus::Declined)
        .await;

    assert_eq!(
        card_declined.decline_reason,
        PaymentDeclineReason::CardDeclined as i32
    );
    assert!(!card_declined.decline_detail.is_empty());
    assert_eq!(
        invalid_token.decline_reason,
        PaymentDeclineReason::InvalidToken as i32
    );
    assert_eq!(app.outbox_count(DECLINED).await, 2);
    assert_eq!(app.outbox_count(CAPTURED).await, 0);
    assert_eq!(net_charged(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transiently_failing_processor_is_retried_until_captured_with_one_payment() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_fail_transient", 700);

    app.publish(&reserved.order_id, &reserved).await;
    let payment = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;

    assert_eq!(
        payment.attempt_count, 3,
        "two transient failures, then capture"
    );
    assert_eq!(app.payments_of(&reserved.order_id).await.len(), 1);
    assert_eq!(app.outbox_count(CAPTURED).await, 1);
    let dead_letters = app
        .client
        .clone()
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_approval_is_captured_after_the_configured_delay() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve_slow", 1234);

    let published = Instant::now();
    app.publish(&reserved.order_id, &reserved).await;
    let payment = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;

    assert!(
        published.elapsed() >= SLOW_DELAY,
        "captured after {:?}",
        published.elapsed()
    );
    assert_eq!(payment.attempt_count, 1);
    assert_eq!(app.outbox_count(CAPTURED).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_reserved_published_twice_charges_the_order_once() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 5000);

    // Two publishes, two different event ids: the inbox cannot tell them
    // apart, only the one-payment-per-order rule can.
    app.publish(&reserved.order_id, &reserved).await;
    app.publish(&reserved.order_id, &reserved).await;
    app.applied("payments-inventory", 2).await;

    assert_eq!(app.payments_of(&reserved.order_id).await.len(), 1);
    assert_eq!(app.outbox_count(CAPTURED).await, 1);
    assert_eq!(net_charged(&app).await, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_after_capture_is_refunded_once_even_if_cancelled_twice() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 3100);
    app.publish(&reserved.order_id, &reserved).await;
    let captured = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;

    let cancelled = order_cancelled(&reserved);
    app.publish(&reserved.order_id, &cancelled).await;
    app.publish(&reserved.order_id, &cancelled).await;
    let refunded = app
        .payment_in(&reserved.order_id, PaymentStatus::Refunded)
        .await;
    app.applied("payments-orders", 2).await;
    let after_both = app.payments_of(&reserved.order_id).await;

    assert_eq!(refunded.payment_id, captured.payment_id);
    assert_eq!(after_both.len(), 1);
    let payment = &after_both[0];
    assert_eq!(payment.refunds.len(), 1, "refunded once");
    assert_eq!(payment.refunded_amount, reserved.total);
    assert_eq!(payment.refunds[0].amount, reserved.total);
    assert_eq!(
        payment.refunds[0].reason,
        "order cancelled: user requested (changed my mind)"
    );
    assert_eq!(app.outbox_count(REFUNDED).await, 1);
    assert_eq!(net_charged(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_before_its_stock_is_reserved_is_never_charged() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 900);

    app.publish(&reserved.order_id, &order_cancelled(&reserved))
        .await;
    app.applied("payments-orders", 1).await;
    app.publish(&reserved.order_id, &reserved).await;
    app.applied("payments-inventory", 1).await;

    assert!(app.payments_of(&reserved.order_id).await.is_empty());
    assert_eq!(app.outbox_count(CAPTURED).await, 0);
    assert_eq!(app.outbox_count(REFUNDED).await, 0);
    assert_eq!(net_charged(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_declined_order_refunds_nothing() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_decline", 800);
    app.publish(&reserved.order_id, &reserved).await;
    app.payment_in(&reserved.order_id, PaymentStatus::Declined)
        .await;

    app.publish(&reserved.order_id, &order_cancelled(&reserved))
        .await;
    app.applied("payments-orders", 1).await;

    let payments = app.payments_of(&reserved.order_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, PaymentStatus::Declined as i32);
    assert!(payments[0].refunds.is_empty());
    assert_eq!(app.outbox_count(REFUNDED).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_racing_captures_always_end_refunded_or_uncharged() {
    let app = spawn_app().await;
    // Captured well before their cancellation.
    let early: Vec<_> = (1..=4)
        .map(|i| stock_reserved("tok_approve", 100 * i))
        .collect();
    // Slow approvals still in flight (or not yet started) when their
    // cancellation arrives: the capture lands after the cancellation, or the
    // cancellation is seen first and nothing is charged.
    let racing: Vec<_> = (1..=6)
        .map(|i| stock_reserved("tok_approve_slow", 1000 * i))
        .collect();
    for reserved in &early {
        app.publish(&reserved.order_id, reserved).await;
    }
    for reserved in &early {
        app.payment_in(&reserved.order_id, PaymentStatus::Captured)
            .await;
    }

    for reserved in &racing {
        app.publish(&reserved.order_id, reserved).await;
    }
    for reserved in early.iter().chain(&racing) {
        app.publish(&reserved.order_id, &order_cancelled(reserved))
            .await;
    }
    let all = (early.len() + racing.len()) as i64;
    app.applied("payments-inventory", all).await;
    app.applied("payments-orders", all).await;

    for reserved in &early {
        let refunded = app.payments_of(&reserved.order_id).await;
        assert_eq!(refunded.len(), 1);
        assert_eq!(refunded[0].status, PaymentStatus::Refunded as i32);
        assert_eq!(refunded[0].refunds.len(), 1);
    }
    for reserved in &racing {
        match app.payments_of(&reserved.order_id).await.as_slice() {
            [] => {}
            [p] => {
                assert_eq!(p.status, PaymentStatus::Refunded as i32, "{p:?}");
                assert_eq!(p.refunds.len(), 1);
            }
            more => panic!("charged more than once: {more:?}"),
        }
    }
    assert_eq!(net_charged(&app).await, 0, "money conserved");
    assert_eq!(
        app.outbox_count(CAPTURED).await,
        app.outbox_count(REFUNDED).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_stock_reserved_is_dead_lettered_and_later_orders_are_still_charged() {
    let app = spawn_app().await;
    let poison = StockReserved {
        order_id: "not-a-uuid".into(),
        ..stock_reserved("tok_approve", 100)
    };
    let good = stock_reserved("tok_approve", 100);

    app.publish("not-a-uuid", &poison).await;
    app.publish(&good.order_id, &good).await;
    // Not a subject payments consumes: ignored by the filter.
    app.publish(&good.order_id, &StockRejected::default()).await;
    app.payment_in(&good.order_id, PaymentStatus::Captured)
        .await;
    let dead_letters = eventually(WITHIN, || async {
        let letters = app
            .client
            .clone()
            .list_dead_letters(ListDeadLettersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if letters.len() == 1 {
            Ok(letters)
        } else {
            Err(format!("{letters:?}"))
        }
    })
    .await
    .unwrap();

    let letter = &dead_letters[0];
    assert_eq!(letter.consumer, "payments-inventory");
    assert_eq!(letter.event_type, "shop.events.v1.StockReserved");
    assert_eq!(letter.delivery_count, MAX_DELIVER);
    assert!(
        letter.last_error.contains("order_id"),
        "{}",
        letter.last_error
    );
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(payments, 1);
}
