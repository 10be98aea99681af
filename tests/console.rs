//! The operator console (`shop-console`) against a saga stack with two
//! catalog replicas, in headless Chromium (web/test/console.mjs):
//!
//! - who may use it: another Host (DNS rebinding), an action without the
//!   CSRF token, from another Origin or not as JSON, are all refused;
//! - a catalog replica killed under load shows as ejected, with the reason
//!   orders' mesh gives, within seconds;
//! - a refund dead-lettered (payments' database refused it three times)
//!   is replayed from the page, with a reason, once the cause is gone;
//! - what every panel shows is what the services' own admin APIs say
//!   (health, requests, upstream counters, endpoints, refused calls,
//!   consumers, dead letters, flags): nothing is zero by construction.

mod common;

use common::Saga;
use http::Method;
use serde_json::{Value, json};
use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::events::v1::{ListConsumersRequest, ListDeadLettersRequest};
use shop_proto::shop::flags::v1::ListFlagsRequest;
use shop_proto::shop::flags::v1::flags_admin_service_client::FlagsAdminServiceClient;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{
    EjectionReason, EndpointState, GetStatsRequest, ListEndpointsRequest,
};
use shop_proto::shop::orders::v1::{CancelOrderRequest, OrderStatus};
use shop_testkit::console::Console;
use shop_testkit::rest::{Rest, Version};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

fn number(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(-1),
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        _ => -1,
    }
}

/// The console refuses what does not come from its own page.
async fn refuses_strangers(console: &Console) {
    let addr = console.url().trim_start_matches("http://").parse().unwrap();
    let rest = Rest::plaintext(addr, Version::Http1);
    let host = format!("127.0.0.1:{}", console.url().rsplit(':').next().unwrap());
    let origin = format!("http://{host}");
    let ok = rest
        .send(
            Method::GET,
            "/api/session",
            &[("host", host.as_str())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text);
    let token = ok.json["csrfToken"].as_str().unwrap().to_string();
    let rebound = rest
        .send(
            Method::GET,
            "/api/overview",
            &[("host", "shop.evil.example")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(rebound.status, 403, "{}", rebound.text);
    let path = "/api/services/payments/dead-letters/00000000-0000-0000-0000-000000000000/discard";
    let body = json!({"reason": "not mine to discard"});
    for headers in [
        vec![("host", host.as_str()), ("origin", origin.as_str())],
        vec![
            ("host", host.as_str()),
            ("origin", "http://shop.evil.example"),
            ("x-csrf-token", token.as_str()),
        ],
        vec![
            ("host", host.as_str()),
            ("origin", origin.as_str()),
            ("x-csrf-token", token.as_str()),
            ("content-type", "text/plain"),
        ],
    ] {
        let refused = rest
            .send(Method::POST, path, &headers, Some(&body))
            .await
            .unwrap();
        assert_eq!(refused.status, 403, "{headers:?}: {}", refused.text);
    }
    // With all three, it reaches payments, which has no such letter.
    let missing = rest
        .send(
            Method::POST,
            path,
            &[
                ("host", host.as_str()),
                ("origin", origin.as_str()),
                ("x-csrf-token", token.as_str()),
            ],
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_what_the_admin_apis_say_and_replays_a_dead_letter() {
    let mut saga = Saga::start_replicated(
        BTreeMap::from([
            (
                "payments".to_string(),
                vec![(
                    "SHOP_PAYMENTS__EVENTS__CONSUMER__MAX_DELIVER".to_string(),
                    "3".to_string(),
                )],
            ),
            // An ejection outlasts the test (10 s by default), so the page
            // and the admin API read after it see the same state.
            (
                "orders".to_string(),
                vec![(
                    "SHOP_ORDERS__UPSTREAMS__CATALOG__OUTLIER__BASE_EJECTION".to_string(),
                    "120s".to_string(),
                )],
            ),
        ]),
        BTreeMap::from([("catalog".to_string(), 2)]),
    )
    .await;
    let console = Console::start(&saga.stack, "127.0.0.1:0".parse().unwrap()).unwrap();
    refuses_strangers(&console).await;

    // A call authorization refuses: an identity catalog does not know.
    let intruder = saga.stack.identities().mint("intruder").unwrap();
    let refused = CatalogServiceClient::new(
        saga.stack
            .service("catalog")
            .channel_as(&intruder)
            .await
            .unwrap(),
    )
    .create_product(CreateProductRequest::default())
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A confirmed order whose refund payments' database refuses.
    let product = saga.product(1000, 100).await;
    let order_id = saga.place(&[(&product, 1)], "tok_approve").await;
    assert_eq!(
        saga.terminal(&order_id, Duration::from_secs(30))
            .await
            .status(),
        OrderStatus::Confirmed
    );
    let refunds_refused = saga.refuse_refunds().await;
    saga.orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: order_id.clone(),
            detail: "the console test".into(),
        })
        .await
        .unwrap();
    let payments_events = saga.events_admin("payments").await;
    let letter = saga.dead_letter("payments").await;

    // A catalog replica killed while orders are placed: orders' mesh ejects it.
    let victim = saga.stack.service("catalog-2").addr();
    saga.stack.service_mut("catalog-2").kill().unwrap();
    let orders_mesh =
        MeshAdminServiceClient::new(saga.stack.service("orders").channel().await.unwrap());
    let mut ejected = None;
    let mut orders = saga.orders().await;
    for _ in 0..40 {
        // Some may fail while the replica is not yet ejected; the count is
        // what matters.
        let _ = orders
            .place_order(saga.order_request(&[(&product, 1)], "tok_approve"))
            .await;
        let endpoints = orders_mesh
            .clone()
            .list_endpoints(ListEndpointsRequest {
                upstream: "catalog".into(),
                ..ListEndpointsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .endpoints;
        ejected = endpoints.into_iter().find(|e| {
            e.address.ends_with(&format!(":{}", victim.port()))
                && e.state() == EndpointState::Ejected
        });
        if ejected.is_some() {
            break;
        }
    }
    let ejected = ejected.expect("orders ejected the killed replica within 40 orders");
    assert_ne!(ejected.ejection_reason(), EjectionReason::Unspecified);

    // The cause of the refund's failure is gone: the operator replays it.
    refunds_refused.allow().await;
    let reason = "refund trigger dropped";
    let seen = common::browser::run(
        "console.mjs",
        &[
            "--url",
            console.url(),
            "--caller",
            "orders",
            "--endpoint",
            &ejected.address,
            "--service",
            "payments",
            "--dead-letter",
            &letter.dead_letter_id,
            "--reason",
            reason,
            "--shots",
            "target/screenshots/console",
        ],
        Duration::from_secs(150),
    )
    .await;
    let panels = &seen["panels"];

    // The page showed what the admin APIs say (read after it: counters
    // only grow).
    let shown_endpoint = panels["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["caller"] == "orders" && e["address"] == ejected.address.as_str())
        .unwrap();
    assert_eq!(shown_endpoint["state"], "ENDPOINT_STATE_EJECTED");
    assert_eq!(
        shown_endpoint["reason"],
        ejected.ejection_reason().as_str_name()
    );
    assert!(number(&shown_endpoint["ejections"]) >= 1);

    for shown in panels["services"].as_array().unwrap() {
        let name = shown["service"].as_str().unwrap();
        if name == "catalog-2" {
            assert!(
                shown["health"].as_str().unwrap().starts_with("UNREACHABLE"),
                "{shown}"
            );
            continue;
        }
        assert_eq!(shown["health"], "SERVING", "{shown}");
        let stats = MeshAdminServiceClient::new(saga.stack.service(name).channel().await.unwrap())
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        let server = stats.server.unwrap();
        let requests = number(&shown["requests"]);
        assert!(
            requests > 0 && requests <= server.requests,
            "{name}: {requests} shown, {} now",
            server.requests
        );
        assert!(number(&shown["shed"]) <= server.shed);
        // The adaptive limit moves; shown on, it is on.
        let limit = number(&shown["limit"]);
        assert!(
            limit >= 0 && (limit == 0 || server.concurrency_limit > 0),
            "{name}"
        );
        if name == "catalog" {
            let denial = stats
                .denials
                .iter()
                .find(|d| d.method.ends_with("/CreateProduct"))
                .expect("catalog counted the refused call");
            let shown_denial = panels["denials"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["service"] == "catalog" && d["method"] == denial.method.as_str())
                .unwrap();
            assert_eq!(number(&shown_denial["count"]), denial.count);
        }
        if name == "orders" {
            let calls = stats
                .upstreams
                .iter()
                .find(|u| u.upstream == "catalog")
                .and_then(|u| u.counters)
                .unwrap();
            let shown_up = panels["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["caller"] == "orders" && u["upstream"] == "catalog")
                .unwrap();
            let shown_calls = number(&shown_up["calls"]);
            assert!(shown_calls > 0 && shown_calls <= calls.calls);
            assert!(number(&shown_up["retries"]) <= calls.retries);
            assert!(number(&shown_up["budget"]) >= 0, "{shown_up}");
        }
    }

    let consumers = payments_events
        .clone()
        .list_consumers(ListConsumersRequest {})
        .await
        .unwrap()
        .into_inner()
        .consumers;
    let refunds = consumers
        .iter()
        .find(|c| c.name == letter.consumer)
        .unwrap();
    let shown_consumer = panels["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "payments" && c["consumer"] == letter.consumer.as_str())
        .unwrap();
    assert_eq!(
        number(&shown_consumer["deadLettered"]),
        refunds.dead_lettered as i64
    );
    assert!(number(&shown_consumer["deadLettered"]) >= 1);
    assert!(number(&shown_consumer["applied"]) <= refunds.applied as i64);

    let letters = payments_events
        .clone()
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    let replayed = letters
        .iter()
        .find(|l| l.dead_letter_id == letter.dead_letter_id)
        .unwrap();
    assert_eq!(
        replayed.status().as_str_name(),
        "DEAD_LETTER_STATUS_REPLAYED"
    );
    assert!(
        seen["action"].as_str().unwrap().contains(reason),
        "{}",
        seen["action"]
    );

    let flags = FlagsAdminServiceClient::new(saga.stack.service("orders").channel().await.unwrap())
        .list_flags(ListFlagsRequest {})
        .await
        .unwrap()
        .into_inner()
        .flags;
    let shown_flags: Vec<&Value> = panels["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["service"] == "orders")
        .collect();
    assert_eq!(shown_flags.len(), flags.len());
    for flag in &flags {
        let shown = shown_flags
            .iter()
            .find(|f| f["flag"] == flag.key.as_str())
            .unwrap();
        for (variant, count) in shown["evaluations"].as_object().unwrap() {
            assert!(number(count) as u64 <= flag.evaluations[variant]);
        }
    }
    assert!(
        shown_flags
            .iter()
            .any(|f| !f["evaluations"].as_object().unwrap().is_empty()),
        "orders evaluated a flag for each order: {shown_flags:?}"
    );
}
