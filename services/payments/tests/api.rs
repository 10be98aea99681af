//! The payments API against a real Postgres and nats-server: lookups,
//! paging, and bad input on every RPC. Payments are made the way the service
//! makes them, from StockReserved events.

mod common;

use common::{WITHIN, spawn_app, stock_reserved};
use shop_proto::shop::payments::v1::{
    GetPaymentRequest, ListDeadLettersRequest, ListPaymentsRequest, ListPaymentsResponse,
    PaymentStatus,
};
use shop_testkit::eventually;
use shop_testkit::status::violated_fields;
use std::collections::HashSet;
use tonic::Code;

async fn list(
    app: &common::TestApp,
    req: ListPaymentsRequest,
) -> Result<ListPaymentsResponse, tonic::Status> {
    app.client
        .clone()
        .list_payments(req)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_read_by_id_and_unknown_or_malformed_ids_are_refused() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 4200);
    app.publish(&reserved.order_id, &reserved).await;
    let captured = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;

    let fetched = app
        .client
        .clone()
        .get_payment(GetPaymentRequest {
            payment_id: captured.payment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let unknown = app
        .client
        .clone()
        .get_payment(GetPaymentRequest {
            payment_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();

    assert_eq!(fetched, captured);
    assert_eq!(fetched.order_id, reserved.order_id);
    assert_eq!(fetched.user_id, reserved.user_id);
    assert_eq!(fetched.amount, reserved.total);
    assert_eq!(fetched.refunded_amount.unwrap().amount_minor, 0);
    assert!(fetched.refunds.is_empty());
    assert_eq!(unknown.code(), Code::NotFound);
    for bad_id in ["", "42", "not-a-uuid"] {
        let err = app
            .client
            .clone()
            .get_payment(GetPaymentRequest {
                payment_id: bad_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["payment_id"], "{bad_id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_walks_every_payment_oldest_first_and_filters_by_order() {
    let app = spawn_app().await;
    let mut orders = Vec::new();
    for i in 0..5 {
        let reserved = stock_reserved("tok_approve", 100 + i);
        app.publish(&reserved.order_id, &reserved).await;
        orders.push(reserved.order_id);
    }
    eventually(WITHIN, || async {
        let all = list(
            &app,
            ListPaymentsRequest {
                page_size: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        if all.payments.len() == 5 {
            Ok(())
        } else {
            Err(all.payments.len())
        }
    })
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &app,
            ListPaymentsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        assert!(page.payments.len() <= 2);
        seen.extend(page.payments.into_iter().map(|p| p.payment_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "the walk ends");
    }
    let one_order = list(
        &app,
        ListPaymentsRequest {
            order_id: orders[3].clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let default_page = list(&app, ListPaymentsRequest::default()).await.unwrap();

    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5, "no repeats");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "oldest first (UUIDv7 ids)");
    assert_eq!(one_order.payments.len(), 1);
    assert_eq!(one_order.payments[0].order_id, orders[3]);
    assert!(one_order.next_page_token.is_empty());
    assert_eq!(default_page.payments.len(), 5, "0 means the default of 20");
    assert!(default_page.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_page_sizes_filters_and_page_tokens_are_invalid_arguments() {
    let app = spawn_app().await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let reserved = stock_reserved("tok_decline", 500);
        app.publish(&reserved.order_id, &reserved).await;
        orders.push(reserved.order_id.clone());
    }
    for order in &orders {
        app.payment_in(order, PaymentStatus::Declined).await;
    }

    for page_size in [-1, 101] {
        let err = list(
            &app,
            ListPaymentsRequest {
                page_size,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&err), ["page_size"], "{page_size}");
    }
    let malformed_order = list(
        &app,
        ListPaymentsRequest {
            order_id: "order-1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let first = list(
        &app,
        ListPaymentsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!first.next_page_token.is_empty());
    let replayed_with_another_filter = list(
        &app,
        ListPaymentsRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            order_id: orders[0].clone(),
        },
    )
    .await
    .unwrap_err();
    let forged = list(
        &app,
        ListPaymentsRequest {
            page_token: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let everything_wrong = list(
        &app,
        ListPaymentsRequest {
            page_size: 1000,
            page_token: "%%%".into(),
            order_id: "nope".into(),
        },
    )
    .await
    .unwrap_err();
    let second = list(
        &app,
        ListPaymentsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert_eq!(violated_fields(&malformed_order), ["order_id"]);
    assert_eq!(
        violated_fields(&replayed_with_another_filter),
        ["page_token"]
    );
    assert_eq!(violated_fields(&forged), ["page_token"]);
    assert_eq!(
        violated_fields(&everything_wrong),
        ["page_size", "order_id", "page_token"]
    );
    assert_eq!(second.payments.len(), 1);
    assert_ne!(second.payments[0].payment_id, first.payments[0].payment_id);
    assert!(second.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_with_bounded_pages_and_refuse_forged_tokens() {
    let app = spawn_app().await;
    let mut client = app.client.clone();

    let empty = client
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let too_big = client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let negative = client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let forged = client
        .list_dead_letters(ListDeadLettersRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert!(empty.dead_letters.is_empty());
    assert!(empty.next_page_token.is_empty());
    assert_eq!(violated_fields(&too_big), ["page_size"]);
    assert_eq!(violated_fields(&negative), ["page_size"]);
    assert_eq!(violated_fields(&forged), ["page_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_second_payments_partial_refunds_and_empty_amounts() {
    let app = spawn_app().await;
    let reserved = stock_reserved("tok_approve", 1500);
    app.publish(&reserved.order_id, &reserved).await;
    let payment = app
        .payment_in(&reserved.order_id, PaymentStatus::Captured)
        .await;
    let order_id: uuid::Uuid = reserved.order_id.parse().unwrap();
    let payment_id: uuid::Uuid = payment.payment_id.parse().unwrap();
    let insert_payment = |order_id: uuid::Uuid, amount: i64, status: &'static str| {
        sqlx::query(
            "INSERT INTO payments (payment_id, order_id, user_id, amount_minor, currency, token,
                                   status, decline_reason)
             VALUES ($1, $2, $3, $4, 'EUR', 'tok_approve', $5, NULL)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(order_id)
        .bind(uuid::Uuid::now_v7())
        .bind(amount)
        .bind(status)
        .execute(&app.db)
    };
    let refund = |amount: i64| {
        sqlx::query(
            "INSERT INTO refunds (refund_id, payment_id, order_id, amount_minor, currency)
             VALUES ($1, $2, $3, $4, 'EUR')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(payment_id)
        .bind(order_id)
        .bind(amount)
        .execute(&app.db)
    };

    let second_payment = insert_payment(order_id, 1500, "captured").await;
    let zero_amount = insert_payment(uuid::Uuid::now_v7(), 0, "captured").await;
    let declined_without_reason = insert_payment(uuid::Uuid::now_v7(), 10, "declined").await;
    let pending = insert_payment(uuid::Uuid::now_v7(), 10, "pending").await;
    let partial_refund = refund(1000).await;
    let full_refund = refund(1500).await;
    let second_refund = refund(1500).await;

    assert!(second_payment.is_err(), "one payment per order");
    assert!(zero_amount.is_err(), "amounts are positive");
    assert!(declined_without_reason.is_err(), "declines carry a reason");
    assert!(pending.is_err(), "only captured, declined, refunded");
    assert!(partial_refund.is_err(), "refunds are for the full amount");
    assert!(full_refund.is_ok());
    assert!(second_refund.is_err(), "one refund per payment");
}
