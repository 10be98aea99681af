//! The inventory API against a real Postgres (and the nats-server the
//! service needs to start): a fresh cluster and database per test, the
//! service served in process on port 0.

mod common;

use common::spawn_app;
use shop_proto::shop::inventory::v1::{
    AdjustStockRequest, BatchGetStockRequest, GetReservationRequest, GetStockRequest,
    ListDeadLettersRequest, SetStockRequest, StockLevel,
};
use shop_testkit::status::violated_fields;
use tonic::Code;
use uuid::Uuid;

fn adjust(product: Uuid, delta: i64, key: Uuid, reason: &str) -> AdjustStockRequest {
    AdjustStockRequest {
        product_id: product.to_string(),
        delta,
        idempotency_key: key.to_string(),
        reason: reason.into(),
    }
}

fn levels(s: &StockLevel) -> (i64, i64, i64) {
    (s.available, s.reserved, s.sold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stock_creates_the_record_then_overwrites_available_and_reads_return_it() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();

    let created = app.set_stock(product, 7).await;
    let read = app.stock(product).await;
    let overwritten = app.set_stock(product, 3).await;

    assert_eq!(created.product_id, product.to_string());
    assert_eq!(levels(&created), (7, 0, 0));
    assert_eq!(read, created);
    assert_eq!(levels(&overwritten), (3, 0, 0));
    assert!(overwritten.update_time.is_some());
    let zero = app.set_stock(product, 0).await;
    assert_eq!(levels(&zero), (0, 0, 0), "zero is a valid quantity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_stock_answers_each_id_once_and_reports_those_never_stocked() {
    let mut app = spawn_app().await;
    let (a, b, missing) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(a, 1).await;
    app.set_stock(b, 2).await;

    let batch = app
        .client
        .batch_get_stock(BatchGetStockRequest {
            product_ids: [b, missing, a, b].map(|id| id.to_string()).to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let empty = app
        .client
        .batch_get_stock(BatchGetStockRequest::default())
        .await
        .unwrap()
        .into_inner();

    let found: Vec<_> = batch
        .stocks
        .iter()
        .map(|s| (s.product_id.clone(), s.available))
        .collect();
    assert_eq!(found, [(b.to_string(), 2), (a.to_string(), 1)]);
    assert_eq!(batch.not_found_product_ids, [missing.to_string()]);
    assert!(empty.stocks.is_empty() && empty.not_found_product_ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjust_stock_applies_a_key_once_and_a_repeat_returns_the_first_result() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 10).await;
    let key = Uuid::now_v7();

    let first = app
        .client
        .adjust_stock(adjust(product, 5, key, "delivery"))
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();
    let second = app
        .client
        .adjust_stock(adjust(product, -2, Uuid::now_v7(), "breakage"))
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();
    let repeat = app
        .client
        .adjust_stock(adjust(product, 5, key, "delivery"))
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();

    assert_eq!(first.available, 15);
    assert_eq!(second.available, 13);
    assert_eq!(repeat, first, "the first result, not the current stock");
    assert_eq!(app.stock(product).await.available, 13, "applied once");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_adjustments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adjustments_with_one_key_apply_once() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 0).await;
    let key = Uuid::now_v7();

    let calls = (0..8).map(|_| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .adjust_stock(adjust(product, 4, key, "delivery"))
                .await
                .map(|r| r.into_inner().stock.unwrap().available)
        })
    });
    let results: Vec<_> = futures_results(calls).await;

    assert!(
        results.iter().all(|r| r.as_ref().ok() == Some(&4)),
        "{results:?}"
    );
    assert_eq!(app.stock(product).await.available, 4);
}

async fn futures_results<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Result<T, tonic::Status>>>,
) -> Vec<Result<T, Code>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap().map_err(|s| s.code()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_with_another_body_is_already_exists_and_changes_nothing() {
    let mut app = spawn_app().await;
    let (product, other) = (Uuid::now_v7(), Uuid::now_v7());
    app.set_stock(product, 10).await;
    app.set_stock(other, 10).await;
    let key = Uuid::now_v7();
    app.client
        .adjust_stock(adjust(product, 5, key, "delivery"))
        .await
        .unwrap();

    for reused in [
        adjust(product, 6, key, "delivery"),
        adjust(product, 5, key, "another reason"),
        adjust(other, 5, key, "delivery"),
    ] {
        let err = app.client.adjust_stock(reused.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{reused:?}");
    }
    assert_eq!(app.stock(product).await.available, 15);
    assert_eq!(app.stock(other).await.available, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_below_zero_is_failed_precondition_and_leaves_the_key_unused() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 3).await;
    let key = Uuid::now_v7();

    let err = app
        .client
        .adjust_stock(adjust(product, -4, key, "breakage"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(app.stock(product).await.available, 3, "nothing changed");

    // Nothing was recorded under the key: once stock arrives it applies.
    app.set_stock(product, 4).await;
    let applied = app
        .client
        .adjust_stock(adjust(product, -4, key, "breakage"))
        .await
        .unwrap()
        .into_inner()
        .stock
        .unwrap();
    assert_eq!(applied.available, 0);
    let overflow = app
        .client
        .adjust_stock(adjust(product, i64::MAX, Uuid::now_v7(), ""))
        .await
        .unwrap();
    assert_eq!(overflow.into_inner().stock.unwrap().available, i64::MAX);
    let err = app
        .client
        .adjust_stock(adjust(product, 1, Uuid::now_v7(), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_products_and_orders_are_not_found() {
    let mut app = spawn_app().await;
    let unknown = Uuid::now_v7();

    let get = app
        .client
        .get_stock(GetStockRequest {
            product_id: unknown.to_string(),
        })
        .await
        .unwrap_err();
    let adjusted = app
        .client
        .adjust_stock(adjust(unknown, 1, Uuid::now_v7(), ""))
        .await
        .unwrap_err();
    let reservation = app
        .client
        .get_reservation(GetReservationRequest {
            order_id: unknown.to_string(),
        })
        .await
        .unwrap_err();

    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(adjusted.code(), Code::NotFound);
    assert_eq!(reservation.code(), Code::NotFound);
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM stock) + (SELECT count(*) FROM stock_adjustments)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_field_by_field_on_every_call_and_nothing_is_written() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7().to_string();

    for bad in ["", "42", "not-a-uuid"] {
        let err = app
            .client
            .get_stock(GetStockRequest {
                product_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["product_id"]);
        let err = app
            .client
            .get_reservation(GetReservationRequest {
                order_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["order_id"]);
    }

    let err = app
        .client
        .batch_get_stock(BatchGetStockRequest {
            product_ids: vec![product.clone(), "nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["product_ids[1]"]);
    let err = app
        .client
        .batch_get_stock(BatchGetStockRequest {
            product_ids: vec![product.clone(); 101],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["product_ids"]);

    let err = app
        .client
        .set_stock(SetStockRequest {
            product_id: "x".into(),
            available: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["product_id", "available"]);

    let err = app
        .client
        .adjust_stock(AdjustStockRequest {
            product_id: "x".into(),
            delta: 0,
            idempotency_key: "not-a-key".into(),
            reason: "r".repeat(501),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["product_id", "delta", "idempotency_key", "reason"]
    );
    let err = app
        .client
        .adjust_stock(AdjustStockRequest {
            product_id: product.clone(),
            delta: 1,
            idempotency_key: String::new(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["idempotency_key"]);

    for page_size in [-1, 101] {
        let err = app
            .client
            .list_dead_letters(ListDeadLettersRequest {
                page_size,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["page_size"]);
    }
    let err = app
        .client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: 0,
            page_token: "forged!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);

    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM stock) + (SELECT count(*) FROM stock_adjustments)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_negative_quantities_whatever_the_code_does() {
    let mut app = spawn_app().await;
    let product = Uuid::now_v7();
    app.set_stock(product, 1).await;

    for column in ["available", "reserved", "sold"] {
        let sql = match column {
            "available" => "UPDATE stock SET available = available - 2 WHERE product_id = $1",
            "reserved" => "UPDATE stock SET reserved = reserved - 1 WHERE product_id = $1",
            _ => "UPDATE stock SET sold = sold - 1 WHERE product_id = $1",
        };
        let err = sqlx::query(sql)
            .bind(product)
            .execute(&app.db)
            .await
            .unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("23514"), "{column}: check_violation");
    }
    let err = sqlx::query(
        "INSERT INTO reservations (order_id, user_id, status) VALUES ($1, $1, 'pending')",
    )
    .bind(Uuid::now_v7())
    .execute(&app.db)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23514")
    );
    assert_eq!(levels(&app.stock(product).await), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_dead_letters_is_empty_when_nothing_failed() {
    let mut app = spawn_app().await;
    let page = app
        .client
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.dead_letters.is_empty());
    assert!(page.next_page_token.is_empty());
}
