//! The saga under contention, under crashes, with a poison event, and the
//! analytics replay: real processes, real faults (`kill -9`), and the same
//! exact invariants afterwards.

mod common;

use common::Saga;
use rand::Rng as _;
use shop_proto::shop::analytics::v1::GetSalesReportRequest;
use shop_proto::shop::events::v1::{OrderLine, OrderPlaced};
use shop_proto::shop::inventory::v1::ListDeadLettersRequest;
use shop_proto::shop::orders::v1::PlaceOrderRequest;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_testkit::{ServiceProcess, eventually};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// Places `request`, retrying the very same request (same idempotency key)
/// while the orders service is unreachable or too slow to answer in time
/// (three stacks share two cores here): the key makes it safe.
async fn place_with_retries(
    client: &mut OrderServiceClient<Channel>,
    request: PlaceOrderRequest,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.place_order(request.clone()).await {
            Ok(response) => return response.into_inner().order.unwrap().order_id,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("PlaceOrder failed: {status:?}"),
        }
    }
}

fn random_order(saga: &Saga, products: &[String]) -> PlaceOrderRequest {
    let mut rng = rand::rng();
    let n = rng.random_range(1..=2);
    let mut picked: Vec<&String> = Vec::new();
    while picked.len() < n {
        let p = &products[rng.random_range(0..products.len())];
        if !picked.contains(&p) {
            picked.push(p);
        }
    }
    let lines: Vec<(&str, i64)> = picked
        .iter()
        .map(|p| (p.as_str(), rng.random_range(1..=3)))
        .collect();
    let token = match rng.random_range(0..100) {
        0..85 => "tok_approve",
        85..95 => "tok_decline",
        _ => "tok_fail_transient",
    };
    saga.order_request(&lines, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_orders_from_twenty_clients_compete_for_scarce_stock() {
    let mut saga = Saga::start(BTreeMap::new()).await;
    let products = vec![
        saga.product(1500, 40).await,
        saga.product(2500, 25).await,
        saga.product(9900, 10).await,
    ];

    let client = saga.orders().await;
    let requests: Vec<Vec<PlaceOrderRequest>> = (0..20)
        .map(|_| (0..10).map(|_| random_order(&saga, &products)).collect())
        .collect();
    let placed = futures::future::join_all(requests.into_iter().map(|batch| {
        let mut client = client.clone();
        async move {
            let mut ids = Vec::new();
            for request in batch {
                ids.push(place_with_retries(&mut client, request).await);
            }
            ids
        }
    }))
    .await;
    saga.placed = placed.into_iter().flatten().collect();
    assert_eq!(saga.placed.len(), 200);

    saga.check_invariants(Duration::from_secs(120)).await;
    saga.published_once("orders", "ORDERS").await.unwrap();
    saga.published_once("inventory", "INVENTORY").await.unwrap();
    saga.published_once("payments", "PAYMENTS").await.unwrap();

    // Replay: a second analytics, from an empty database, reading every
    // stream from the start, ends with the same report as the live one.
    let live = saga.analytics().await;
    let db = saga
        .stack
        .postgres
        .create_database("shop_analytics_rebuild")
        .await
        .unwrap();
    let mut env = common::fast_env();
    env.extend([
        ("DATABASE_URL".to_string(), db),
        ("NATS_URL".to_string(), saga.stack.nats.url()),
        (
            "SHOP_ANALYTICS__EVENTS__CONSUMER__DURABLE_PREFIX".to_string(),
            "rebuild".to_string(),
        ),
    ]);
    env.extend(saga.stack.nats_env("analytics"));
    env.extend(saga.stack.tls_env("analytics").unwrap());
    let rebuilt = ServiceProcess::start("analytics", env, saga.stack.dir(), None)
        .await
        .unwrap();
    let rebuilt_client =
        shop_proto::shop::analytics::v1::analytics_service_client::AnalyticsServiceClient::new(
            rebuilt.channel().await.unwrap(),
        );
    eventually(Duration::from_secs(60), || {
        let mut live = live.clone();
        let mut rebuilt = rebuilt_client.clone();
        async move {
            let a = live
                .get_sales_report(GetSalesReportRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let b = rebuilt
                .get_sales_report(GetSalesReportRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if a == b && a.applied_event_count > 0 {
                Ok(())
            } else {
                Err(format!("live {a:?}\nrebuilt {b:?}"))
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_of_every_service_and_of_nats_lose_nothing_and_charge_nothing_twice() {
    let mut saga = Saga::start(BTreeMap::new()).await;
    let products = vec![saga.product(1500, 30).await, saga.product(4200, 15).await];
    let client = saga.orders().await;

    // Four clients keep placing orders (bounded: 15 each, ~6 s) while the
    // services and NATS are killed and restarted one after another.
    let requests: Vec<Vec<PlaceOrderRequest>> = (0..4)
        .map(|_| (0..15).map(|_| random_order(&saga, &products)).collect())
        .collect();
    let load = tokio::spawn({
        let client = client.clone();
        async move {
            futures::future::join_all(requests.into_iter().map(|batch| {
                let mut client = client.clone();
                async move {
                    let mut ids = Vec::new();
                    for request in batch {
                        ids.push(place_with_retries(&mut client, request).await);
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    ids
                }
            }))
            .await
        }
    });

    for victim in ["inventory", "payments", "orders", "nats"] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        if victim == "nats" {
            saga.stack.nats.kill().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            saga.stack.nats.restart().await.unwrap();
        } else {
            let service = saga.stack.service_mut(victim);
            service.kill().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            service.restart().await.unwrap();
        }
    }

    let placed = load.await.unwrap();
    saga.placed = placed.into_iter().flatten().collect();
    assert_eq!(saga.placed.len(), 60);
    saga.check_invariants(Duration::from_secs(120)).await;
    for (service, stream) in [
        ("orders", "ORDERS"),
        ("inventory", "INVENTORY"),
        ("payments", "PAYMENTS"),
    ] {
        eventually(Duration::from_secs(30), || {
            saga.published_once(service, stream)
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_max_deliver_while_orders_keep_flowing() {
    let mut saga = Saga::start(BTreeMap::from([(
        "inventory".to_string(),
        vec![(
            "SHOP_INVENTORY__EVENTS__CONSUMER__MAX_DELIVER".to_string(),
            "3".to_string(),
        )],
    )]))
    .await;
    let product = saga.product(1000, 5).await;
    let settings = common::admin_events(&saga.stack);
    let events = shop_events::Events::connect("test", &settings)
        .await
        .unwrap();

    // An OrderPlaced inventory can never apply: its order id is no UUID.
    let poison = events
        .publish_now(
            "not-an-order",
            &OrderPlaced {
                order_id: "not-an-order".into(),
                user_id: saga.user_id.clone(),
                lines: vec![OrderLine {
                    product_id: product.clone(),
                    quantity: 1,
                    unit_price: None,
                }],
                total: None,
                payment_token: "tok_approve".into(),
            },
            None,
        )
        .await
        .unwrap();
    let order_id = saga.place(&[(&product, 1)], "tok_approve").await;

    let order = saga.terminal(&order_id, Duration::from_secs(30)).await;
    assert_eq!(
        order.status(),
        shop_proto::shop::orders::v1::OrderStatus::Confirmed
    );
    let mut inventory = saga.inventory().await;
    let letters = eventually(Duration::from_secs(30), || {
        let mut inventory = inventory.clone();
        async move {
            let letters = inventory
                .list_dead_letters(ListDeadLettersRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .dead_letters;
            if letters.is_empty() {
                Err("no dead letter yet".to_string())
            } else {
                Ok(letters)
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, poison.event_id);
    assert_eq!(letters[0].delivery_count, 3);
    let again = inventory
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(again.len(), 1, "dead-lettered once");
    saga.check_invariants(Duration::from_secs(30)).await;
}
