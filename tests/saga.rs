//! The order saga end to end: real Postgres, real nats-server with
//! JetStream, real service processes (catalog, inventory, payments, orders,
//! analytics, notifications). Every path ends CONFIRMED or CANCELLED with
//! stock and money accounted for exactly.

mod common;

use common::Saga;
use shop_proto::shop::common::v1::CancellationReason;
use shop_proto::shop::orders::v1::{CancelOrderRequest, OrderStatus, SagaStepStatus, SagaStepType};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(30);

fn steps(order: &shop_proto::shop::orders::v1::Order) -> Vec<(SagaStepType, SagaStepStatus)> {
    order
        .timeline
        .iter()
        .map(|s| (s.step(), s.status()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_path_ends_terminal_with_stock_and_money_accounted_for() {
    let mut saga = Saga::start(BTreeMap::from([(
        "payments".to_string(),
        vec![(
            "SHOP_PAYMENTS__PROCESSOR__SLOW_DELAY".to_string(),
            "1500ms".to_string(),
        )],
    )]))
    .await;
    let book = saga.product(2500, 10).await;
    let mug = saga.product(1200, 10).await;
    let rare = saga.product(99_00, 1).await;

    // Confirmed: stock committed, payment captured.
    let confirmed = saga.place(&[(&book, 2), (&mug, 1)], "tok_approve").await;
    // Out of stock: nothing reserved, nothing charged.
    let out_of_stock = saga.place(&[(&mug, 1), (&rare, 2)], "tok_approve").await;
    // Payment declined: the reserved stock is released.
    let declined = saga.place(&[(&book, 1)], "tok_decline").await;
    // A processor failing transiently: retried until it captures.
    let transient = saga.place(&[(&mug, 1)], "tok_fail_transient").await;
    // Half the total captured: never confirmed, the capture refunded.
    let partial = saga.place(&[(&book, 1)], "tok_approve_partial").await;

    let order = saga.terminal(&confirmed, SETTLE).await;
    assert_eq!(order.status(), OrderStatus::Confirmed);
    assert_eq!(order.total.as_ref().unwrap().amount_minor, 2 * 2500 + 1200);
    assert_eq!(
        steps(&order),
        [
            (SagaStepType::PlaceOrder, SagaStepStatus::Succeeded),
            (SagaStepType::ReserveStock, SagaStepStatus::Succeeded),
            (SagaStepType::CapturePayment, SagaStepStatus::Succeeded),
            (SagaStepType::ConfirmOrder, SagaStepStatus::Succeeded),
        ]
    );

    let order = saga.terminal(&out_of_stock, SETTLE).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.cancellation_reason(), CancellationReason::OutOfStock);
    assert_eq!(
        steps(&order)[1],
        (SagaStepType::ReserveStock, SagaStepStatus::Failed)
    );

    let order = saga.terminal(&declined, SETTLE).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancellation_reason(),
        CancellationReason::PaymentDeclined
    );

    let order = saga.terminal(&partial, SETTLE).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancellation_reason(),
        CancellationReason::PaymentMismatch
    );
    assert!(
        order
            .cancellation_detail
            .contains("captured 1250 EUR, the order totals 2500 EUR"),
        "{:?}",
        order.cancellation_detail
    );

    let order = saga.terminal(&transient, SETTLE).await;
    assert_eq!(
        order.status(),
        OrderStatus::Confirmed,
        "{:?}",
        order.timeline
    );

    // Cancelled by the user while the (slow) payment is in flight.
    let early = saga.place(&[(&book, 1)], "tok_approve_slow").await;
    let cancelled = saga
        .orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: early.clone(),
            detail: "changed my mind".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(
        cancelled.cancellation_reason(),
        CancellationReason::UserRequested
    );

    // Cancelled by the user after confirmation: stock back, payment refunded.
    let late = saga.place(&[(&mug, 2)], "tok_approve").await;
    assert_eq!(
        saga.terminal(&late, SETTLE).await.status(),
        OrderStatus::Confirmed
    );
    let again = saga
        .orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: late.clone(),
            detail: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(again.status(), OrderStatus::Cancelled);

    saga.check_invariants(SETTLE).await;
    // The refund of the late cancellation shows on its timeline once orders
    // has consumed PaymentRefunded (after the refund the invariants see).
    shop_testkit::eventually(SETTLE, || async {
        let timeline = saga.order(&late).await.timeline;
        if timeline
            .iter()
            .any(|s| s.step() == SagaStepType::RefundPayment)
        {
            Ok(())
        } else {
            Err(format!("{timeline:?}"))
        }
    })
    .await
    .unwrap();
    saga.all_published_once(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_that_makes_no_progress_is_cancelled_and_compensated() {
    // The processor takes longer than the saga may wait.
    let mut saga = Saga::start(BTreeMap::from([
        (
            "orders".to_string(),
            vec![
                ("SHOP_ORDERS__SAGA__TIMEOUT".to_string(), "2s".to_string()),
                (
                    "SHOP_ORDERS__SAGA__SWEEP_INTERVAL".to_string(),
                    "200ms".to_string(),
                ),
            ],
        ),
        (
            "payments".to_string(),
            vec![(
                "SHOP_PAYMENTS__PROCESSOR__SLOW_DELAY".to_string(),
                "4s".to_string(),
            )],
        ),
    ]))
    .await;
    let product = saga.product(1000, 5).await;

    let order_id = saga.place(&[(&product, 2)], "tok_approve_slow").await;

    let order = saga.terminal(&order_id, SETTLE).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.cancellation_reason(), CancellationReason::SagaTimeout);
    // The slow charge was still at the processor when the order was
    // cancelled: the cancellation voided the order's idempotency key there,
    // so the charge, when it completed, captured nothing. The stock comes
    // back and no money moved.
    let ledger = sqlx::PgPool::connect(&saga.stack.postgres.url("shop_payments"))
        .await
        .unwrap();
    shop_testkit::eventually(SETTLE, || {
        let ledger = ledger.clone();
        let order_id = order_id.clone();
        async move {
            let row: Option<(String, i32)> = sqlx::query_as(
                "SELECT outcome, requests FROM processor_ledger WHERE idempotency_key = $1::uuid",
            )
            .bind(&order_id)
            .fetch_optional(&ledger)
            .await
            .map_err(|e| e.to_string())?;
            match row {
                Some((outcome, 1)) if outcome == "voided" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();
    let order = saga.order(&order_id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled, "still cancelled");
    assert!(
        !order
            .timeline
            .iter()
            .any(|s| s.step() == SagaStepType::CapturePayment),
        "{:?}",
        order.timeline
    );
    saga.check_invariants(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_get_precise_statuses_and_nothing_is_written() {
    let mut saga = Saga::start(BTreeMap::new()).await;
    let product = saga.product(1000, 5).await;
    let mut orders = saga.orders().await;
    let unknown = uuid::Uuid::new_v4().to_string();

    let cases = [
        (saga.order_request(&[], "tok_approve"), "lines"),
        (
            saga.order_request(&[(&product, 0)], "tok_approve"),
            "lines[0].quantity",
        ),
        (
            saga.order_request(&[(&product, -3)], "tok_approve"),
            "lines[0].quantity",
        ),
        (
            saga.order_request(&[(&unknown, 1)], "tok_approve"),
            "lines[0].product_id",
        ),
        (
            saga.order_request(&[("not-a-uuid", 1)], "tok_approve"),
            "lines[0].product_id",
        ),
        (saga.order_request(&[(&product, 1)], ""), "payment_token"),
        (
            {
                let mut r = saga.order_request(&[(&product, 1)], "tok_approve");
                r.idempotency_key = "retry-1".into();
                r
            },
            "idempotency_key",
        ),
    ];
    for (request, field) in cases {
        let err = orders.place_order(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = orders
        .get_order(shop_proto::shop::orders::v1::GetOrderRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = orders
        .cancel_order(CancelOrderRequest {
            order_id: "42".into(),
            detail: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The same key and body is the same order; another body is refused.
    let request = saga.order_request(&[(&product, 1)], "tok_approve");
    let first = orders
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let second = orders
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(first.order_id, second.order_id);
    let mut different = request.clone();
    different.lines[0].quantity = 2;
    let err = orders.place_order(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    saga.placed.push(first.order_id.clone());

    // Nothing but that one order was written.
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&saga.stack.postgres.url("shop_orders"))
        .await
        .unwrap();
    let orders_written: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(orders_written, 1);
    saga.check_invariants(SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_killed_between_the_processors_capture_and_its_own_commit_charges_once() {
    let mut saga = Saga::start(BTreeMap::new()).await;
    let book = saga.product(2500, 10).await;

    // Payments again, as the build with fail points, set to abort right
    // after the processor answered and before anything of payments' own is
    // committed.
    let payments = saga.stack.service_mut("payments");
    payments.stop(Duration::from_secs(15)).await.unwrap();
    payments.use_binary("payments-failpoints").unwrap();
    payments.set_env(
        "FAILPOINTS",
        Some("payments::charge::after-processor=return"),
    );
    payments.restart().await.unwrap();

    let order = saga.place(&[(&book, 2)], "tok_approve").await;
    let status = saga
        .stack
        .service_mut("payments")
        .exited(SETTLE)
        .await
        .expect("payments dies at the fail point");
    assert!(!status.success(), "{status}");
    // The processor took the money; payments recorded nothing.
    assert_eq!(saga.processor_holds().await.unwrap(), 5000);
    let payments_rows: i64 = {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&saga.stack.postgres.url("shop_payments"))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT count(*) FROM payments")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(payments_rows, 0);

    // Back without the fail point: JetStream redelivers the StockReserved,
    // the processor answers the original charge, and the order confirms.
    let payments = saga.stack.service_mut("payments");
    payments.set_env("FAILPOINTS", None);
    payments.restart().await.unwrap();
    assert_eq!(
        saga.terminal(&order, SETTLE).await.status(),
        OrderStatus::Confirmed
    );
    saga.check_invariants(SETTLE).await;
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&saga.stack.postgres.url("shop_payments"))
        .await
        .unwrap();
    let (rows, requests): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(requests), 0)::bigint FROM processor_ledger
         WHERE idempotency_key = $1::uuid",
    )
    .bind(&order)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // One charge, asked for twice: the repeat got the original back.
    assert_eq!((rows, requests), (1, 2));
}
