//! The gateway's REST face against Envoy's: Envoy 1.40's
//! `grpc_json_transcoder` in front of the gateway's gRPC port, fed the
//! descriptors the face transcodes with, answers a fixed list of requests
//! (success and every error class: 400, 401, 404, 409, 429) with the same
//! HTTP status and the same JSON as the face does.
//!
//! Every request of the list is sent twice, through Envoy first (plaintext
//! HTTP/1.1 to its local listener; Envoy calls the gateway over HTTP/2 and
//! TLS as an end user, with no client certificate) and then to the
//! gateway's own REST face (HTTP/1.1 over TLS). "The same JSON" is the
//! same JSON value (`serde_json::Value`), not the same bytes: Envoy
//! escapes `<` as `\u003c` in strings, for one.
//!
//! Envoy (the benches' transcoder front, [`envoy_config`]) is configured to
//! the mapping `docs/http.md` documents:
//! lowerCamelCase names, every field without presence printed
//! (`always_print_primitive_fields`), enums by name, 64-bit integers as
//! strings (protobuf's JSON printer does that itself), gRPC errors as
//! `google.rpc.Status` JSON with their details (`convert_grpc_status`). It
//! answers only what it transcodes: an unknown path or query parameter is
//! its own refusal (`request_validation_options`), and its one route to
//! the gateway takes gRPC calls only, so no request reaches the gateway's
//! REST face through Envoy.
//!
//! The requests are made deterministic rather than their answers
//! normalised: reads of objects that no longer change, replays of settled
//! orders, errors about fixed ids, a log-in limit refilling once in ten
//! minutes. Where two answers must differ (two sign-ups of two emails, two
//! log-ins, the whole seconds of a limit's `retry in` when a second
//! boundary falls between two refusals), the case names the fields it
//! normalises and checks them first.
//!
//! Error bodies too: both print the `google.rpc.Status` with the mapping
//! of answers (`"details": []` when a status has none, a violation's
//! `"reason": ""`).
//!
//! Requests refused before any gRPC call (no operation at the path, a
//! query or body that does not transcode) are each face's own HTTP
//! handling, and differ: Envoy answers `text/plain` (or ignores what our
//! face refuses). Their statuses and the kind of body are pinned in
//! [`refusals`] as found, not claimed equal.

#[path = "http_envoy/case.rs"]
mod case;
mod common;
#[path = "http_envoy/front.rs"]
mod front;
#[path = "http_envoy/refused.rs"]
mod refused;

use case::{Case, Face, new_session, new_user, retry_seconds};
use front::envoy_in_front_of;
use refused::{Body, refusals};

use common::gateway::{Shop, order_when};
use http::Method;
use serde_json::json;
use shop_proto::shop::gateway::v1::{
    CancelOrderRequest, GetProductRequest, ListProductsRequest, PlaceOrderRequest,
};
use shop_proto::shop::orders::v1::{NewOrderLine, OrderStatus, SagaStepType};
use shop_testkit::rest::{Answer, Version};
use shop_testkit::{eventually, with_bearer};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn envoy_transcodes_as_the_gateway_does() {
    let started = Instant::now();
    // Log-in attempts refill one per 10 minutes per email: a slow run
    // does not refill the bucket the limit case empties.
    let shop = Shop::start(BTreeMap::from([(
        "gateway".to_string(),
        vec![(
            "SHOP_GATEWAY__LIMITS__LOGIN__PER_EMAIL__REFILL".to_string(),
            "10m".to_string(),
        )],
    )]))
    .await;
    let gateway = shop.stack.service("gateway");
    let direct = gateway.rest(Version::Http1).unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let lamp = shop.product(&format!("envoy lamp {tag}"), 1999, 50).await;
    let kettle = shop.product(&format!("envoy kettle {tag}"), 2500, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let (_envoy, envoy) =
        envoy_in_front_of(gateway, dir.path(), &format!("/api/products/{lamp}")).await;
    let mut grpc = shop.gateway().await;

    // Arrange: alice has one confirmed order, placed over gRPC with a key
    // the list replays; bob has none; carol places one through Envoy and
    // cancels it.
    let alice = shop.user("alice").await;
    let bob = shop.user("bob").await;
    let carol = shop.user("carol").await;
    let alice_key = uuid::Uuid::new_v4().to_string();
    let alice_order = grpc
        .place_order(with_bearer(
            &alice.token,
            PlaceOrderRequest {
                lines: vec![NewOrderLine {
                    product_id: lamp.clone(),
                    quantity: 2,
                }],
                payment_token: "tok_approve".into(),
                idempotency_key: alice_key.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id;
    let settled = shop.settled(&alice, &alice_order).await;
    assert_eq!(settled.status(), OrderStatus::Confirmed);

    // A first placement through Envoy, then the same request (the same
    // idempotencyKey in the body) to the gateway: the same order back.
    // Their JSON is compared in the list, once the order has settled:
    // while the saga runs, two answers may see two steps of its timeline.
    let carol_key = uuid::Uuid::new_v4().to_string();
    let carol_body = json!({
        "lines": [{"productId": kettle, "quantity": 1}],
        "paymentToken": "tok_approve",
        "idempotencyKey": carol_key
    });
    let carol_first = Case::new("PlaceOrder, first", Method::POST, "/api/orders", 200)
        .by(&carol)
        .body(carol_body.clone());
    let placed = carol_first.send(&envoy, Face::Envoy).await;
    assert_eq!(placed.status, 200, "{}", placed.text);
    assert_eq!(placed.json["order"]["status"], "ORDER_STATUS_PENDING");
    let replayed = carol_first.send(&direct, Face::Gateway).await;
    assert_eq!(replayed.status, 200, "{}", replayed.text);
    let carol_order = placed.json["order"]["orderId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(replayed.json["order"]["orderId"], carol_order.as_str());
    shop.settled(&carol, &carol_order).await;
    // Carol cancels it (over gRPC) and the saga refunds her: once the
    // refund is on its timeline the order no longer changes.
    grpc.cancel_order(with_bearer(
        &carol.token,
        CancelOrderRequest {
            order_id: carol_order.clone(),
            detail: "changed my mind".into(),
        },
    ))
    .await
    .unwrap();
    order_when(grpc.clone(), &carol, &carol_order, "refunded", |order| {
        order.status() == OrderStatus::Cancelled
            && order
                .timeline
                .iter()
                .any(|s| s.step() == SagaStepType::RefundPayment)
    })
    .await;
    // Inventory releases the kettle carol did not keep: once it is back,
    // no read of the list sees it move.
    eventually(Duration::from_secs(60), || {
        let mut grpc = grpc.clone();
        let product_id = kettle.clone();
        async move {
            let item = grpc
                .get_product(GetProductRequest { product_id })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .item
                .ok_or("no item")?;
            match item.available_quantity {
                Some(10) => Ok(()),
                other => Err(format!("{other:?} of 10 kettles available")),
            }
        }
    })
    .await
    .unwrap();
    // The second page of this run's two products.
    let next_page = grpc
        .list_products(ListProductsRequest {
            page_size: 1,
            name_contains: tag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!next_page.is_empty());

    // An email nobody has: its log-in limit is 5 attempts, then refusals.
    let wrong =
        json!({"email": format!("limited-{tag}@example.com"), "password": "wrong password!"});
    let unknown_id = uuid::Uuid::new_v4();
    let cases = vec![
        // 200: reads.
        Case::get("GetProduct", format!("/api/products/{lamp}"), 200),
        Case::get(
            "ListProducts, the query in lowerCamelCase",
            format!("/api/products?pageSize=5&nameContains=envoy%20lamp%20{tag}"),
            200,
        ),
        Case::get(
            "ListProducts, the query in proto names",
            format!("/api/products?page_size=2&category=test&name_contains={tag}"),
            200,
        ),
        Case::get(
            "ListProducts, the next page",
            format!("/api/products?pageSize=1&nameContains={tag}&pageToken={next_page}"),
            200,
        ),
        Case::get("GetOrder", format!("/api/orders/{alice_order}"), 200).by(&alice),
        Case::get(
            "GetOrder, cancelled and refunded",
            format!("/api/orders/{carol_order}"),
            200,
        )
        .by(&carol),
        Case::get(
            "ListOrders, an enum in the query",
            "/api/orders?status=ORDER_STATUS_CONFIRMED&pageSize=10",
            200,
        )
        .by(&alice),
        Case::get("ListOrders, none", "/api/orders", 200).by(&bob),
        Case::get(
            "GetOrderDetails",
            format!("/api/orders/{alice_order}/details"),
            200,
        )
        .by(&alice),
        Case::get(
            "GetOrderDetails, a refunded payment",
            format!("/api/orders/{carol_order}/details"),
            200,
        )
        .by(&carol),
        Case::get("GetAccount", "/api/users/me", 200).by(&alice),
        // 200: writes.
        {
            let mut case = Case::new("SignUp", Method::POST, "/api/users", 200).body(json!({
                "email": format!("envoy-{tag}@example.com"),
                "password": "correct horse battery",
                "displayName": "Envoy"
            }));
            case.gateway_body = Some(json!({
                "email": format!("direct-{tag}@example.com"),
                "password": "correct horse battery",
                "displayName": "Envoy"
            }));
            case.normalised(new_user)
        },
        Case::new("LogIn", Method::POST, "/api/sessions", 200)
            .body(json!({"email": bob.email, "password": "correct horse battery"}))
            .normalised(new_session),
        Case::new("PlaceOrder, replayed", Method::POST, "/api/orders", 200)
            .by(&alice)
            .body(json!({
                "lines": [{"productId": lamp, "quantity": 2}],
                "paymentToken": "tok_approve",
                "idempotencyKey": alice_key
            })),
        Case::new(
            "PlaceOrder, first placed through Envoy, replayed",
            Method::POST,
            "/api/orders",
            200,
        )
        .by(&carol)
        .body(carol_body),
        Case::new(
            "CancelOrder, already cancelled",
            Method::POST,
            format!("/api/orders/{carol_order}:cancel"),
            200,
        )
        .by(&carol)
        .body(json!({"detail": "again"})),
        // 400.
        Case::get(
            "GetProduct, a malformed UUID",
            "/api/products/not-a-uuid",
            400,
        ),
        Case::get(
            "ListProducts, a page size out of range",
            "/api/products?pageSize=1000",
            400,
        ),
        Case::new("SignUp, bad field values", Method::POST, "/api/users", 400)
            .body(json!({"email": "nope", "password": "short", "displayName": ""})),
        Case::new("PlaceOrder, no lines", Method::POST, "/api/orders", 400)
            .by(&alice)
            .body(json!({
                "paymentToken": "tok_approve",
                "idempotencyKey": uuid::Uuid::new_v4().to_string()
            })),
        Case::new(
            "CancelOrder, a detail too long",
            Method::POST,
            format!("/api/orders/{alice_order}:cancel"),
            400,
        )
        .by(&alice)
        .body(json!({"detail": "x".repeat(501)})),
        Case::new(
            "UpdateAccount, a new password without the current one",
            Method::PATCH,
            "/api/users/me",
            400,
        )
        .by(&alice)
        .body(json!({"newPassword": "another horse battery"})),
        // 401.
        Case::get("ListOrders, no token", "/api/orders", 401),
        Case::get("GetAccount, a bad token", "/api/users/me", 401).bearer("not-a-token"),
        Case::new(
            "LogIn, a wrong password (1, 2)",
            Method::POST,
            "/api/sessions",
            401,
        )
        .body(wrong.clone()),
        Case::new(
            "LogIn, a wrong password (3, 4)",
            Method::POST,
            "/api/sessions",
            401,
        )
        .body(wrong.clone()),
        // 404.
        Case::get(
            "GetProduct, unknown",
            format!("/api/products/{unknown_id}"),
            404,
        ),
        Case::get(
            "GetOrder, another user's",
            format!("/api/orders/{alice_order}"),
            404,
        )
        .by(&bob),
        Case::get(
            "GetOrderDetails, another user's",
            format!("/api/orders/{alice_order}/details"),
            404,
        )
        .by(&bob),
        Case::new(
            "CancelOrder, another user's",
            Method::POST,
            format!("/api/orders/{alice_order}:cancel"),
            404,
        )
        .by(&bob)
        .body(json!({})),
        // 409.
        Case::new("SignUp, an existing email", Method::POST, "/api/users", 409).body(json!({
            "email": alice.email, "password": "correct horse battery", "displayName": "Again"
        })),
        Case::new(
            "PlaceOrder, a used key with another body",
            Method::POST,
            "/api/orders",
            409,
        )
        .by(&alice)
        .body(json!({
            "lines": [{"productId": lamp, "quantity": 1}],
            "paymentToken": "tok_approve",
            "idempotencyKey": alice_key
        })),
    ];
    // 429: the fifth attempt (sent to the gateway alone, not compared)
    // takes the email's last token; the sixth and seventh, one through
    // each face, are refused by the same bucket.
    let limited = Case::new(
        "LogIn, past the limit of its email",
        Method::POST,
        "/api/sessions",
        429,
    )
    .body(wrong)
    .normalised(retry_seconds);

    let mut compared = 0;
    let mut identical = 0;
    let mut differences = Vec::new();
    let mut compare = |case: &Case, e: &Answer, g: &Answer| {
        compared += 1;
        let line = format!(
            "{} {}: envoy {} {} | gateway {} {}",
            case.method, case.path, e.status, e.text, g.status, g.text
        );
        assert_eq!(e.status, case.status, "{}: {line}", case.name);
        assert_eq!(g.status, case.status, "{}: {line}", case.name);
        for answer in [e, g] {
            assert_eq!(
                answer.header("content-type"),
                "application/json",
                "{}: {line}",
                case.name
            );
        }
        let (mut e, mut g) = (e.json.clone(), g.json.clone());
        assert!(
            e.is_object() && g.is_object(),
            "{}: JSON both ways: {line}",
            case.name
        );
        if let Some(normalise) = case.normalise {
            normalise(&mut e, &mut g);
        }
        if e == g {
            identical += 1;
        } else {
            differences.push(format!("{}: {line}", case.name));
        }
    };
    for case in &cases {
        let e = case.send(&envoy, Face::Envoy).await;
        let g = case.send(&direct, Face::Gateway).await;
        compare(case, &e, &g);
        // Envoy passes the challenge of the gRPC answer's headers on.
        assert_eq!(e.header("www-authenticate"), g.header("www-authenticate"));
    }
    let fifth = limited.send(&direct, Face::Gateway).await;
    assert_eq!(
        fifth.status, 401,
        "the fifth attempt is let through: {}",
        fifth.text
    );
    let e = limited.send(&envoy, Face::Envoy).await;
    let g = limited.send(&direct, Face::Gateway).await;
    compare(&limited, &e, &g);
    // Retry-After is the face's own, from the RetryInfo: not in Envoy's.
    let delay = g.json["details"][0]["retryDelay"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(format!("{}s", g.header("retry-after")), delay, "{}", g.text);
    assert_eq!(e.header("retry-after"), "", "{:?}", e.headers);
    assert!(compared >= 20, "{compared} requests compared");
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ:\n{}",
        differences.len(),
        differences.join("\n")
    );

    // Refused before any gRPC call: each face's own HTTP handling.
    for refusal in refusals(&alice) {
        let case = &refusal.case;
        let e = case.send(&envoy, Face::Envoy).await;
        let g = case.send(&direct, Face::Gateway).await;
        let line = format!(
            "{} {}: envoy {} {} | gateway {} {}",
            case.method, case.path, e.status, e.text, g.status, g.text
        );
        assert_eq!(
            (e.status.as_u16(), Body::of(&e)),
            refusal.envoy,
            "{}: {line}",
            case.name
        );
        assert_eq!(
            (g.status.as_u16(), Body::of(&g)),
            refusal.gateway,
            "{}: {line}",
            case.name
        );
    }

    assert_eq!(identical, compared);
    eprintln!(
        "{compared} requests compared in {:?}: {identical} identical",
        started.elapsed()
    );
}
