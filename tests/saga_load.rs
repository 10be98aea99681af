//! The saga under contention, under crashes, with a poison event, and the
//! analytics replay: real processes, real faults (`kill -9`), and the same
//! exact invariants afterwards.

mod common;

use common::Saga;
use rand::Rng as _;
use shop_proto::shop::analytics::v1::GetSalesReportRequest;
use shop_proto::shop::common::v1::DeadLetterStatus;
use shop_proto::shop::events::v1::{
    ListConsumersRequest, ListDeadLettersRequest, ReplayDeadLetterRequest,
};
use shop_proto::shop::events::v1::{OrderLine, OrderPlaced};
use shop_proto::shop::orders::v1::CancelOrderRequest;
use shop_proto::shop::orders::v1::PlaceOrderRequest;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::payments::v1::{ListPaymentsRequest, PaymentStatus};
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
                        // Every database connection busy: orders says so,
                        // with a pushback, instead of failing UNAVAILABLE.
                        | tonic::Code::ResourceExhausted
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
    // Two replicas of inventory and of payments share each durable
    // consumer: concurrency across processes as well as within them.
    let mut saga = Saga::start_replicated(
        BTreeMap::new(),
        BTreeMap::from([("inventory".to_string(), 2), ("payments".to_string(), 2)]),
    )
    .await;
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
    saga.all_published_once(Duration::from_secs(30)).await;

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
    saga.all_published_once(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_card_in_eight_holds_up_no_other_order() {
    // A saga that stalls behind slow cards would cancel orders at this
    // timeout: 20 slow charges of 1.5 s one after another take 30 s.
    let mut saga = Saga::start(BTreeMap::from([
        (
            "payments".to_string(),
            vec![(
                "SHOP_PAYMENTS__PROCESSOR__SLOW_DELAY".to_string(),
                "1500ms".to_string(),
            )],
        ),
        (
            "orders".to_string(),
            vec![("SHOP_ORDERS__SAGA__TIMEOUT".to_string(), "15s".to_string())],
        ),
    ]))
    .await;
    let product = saga.product(1000, 100_000).await;
    let client = saga.orders().await;
    let requests: Vec<Vec<(PlaceOrderRequest, bool)>> = (0..32)
        .map(|c| {
            (0..5)
                .map(|i| {
                    let slow = (c * 5 + i) % 8 == 7;
                    let token = if slow {
                        "tok_approve_slow"
                    } else {
                        "tok_approve"
                    };
                    (saga.order_request(&[(&product, 1)], token), slow)
                })
                .collect()
        })
        .collect();
    let placed = futures::future::join_all(requests.into_iter().map(|batch| {
        let mut client = client.clone();
        async move {
            let mut ids = Vec::new();
            for (request, slow) in batch {
                ids.push((place_with_retries(&mut client, request).await, slow));
            }
            ids
        }
    }))
    .await;
    let placed: Vec<(String, bool)> = placed.into_iter().flatten().collect();
    assert_eq!(placed.len(), 160);
    assert_eq!(placed.iter().filter(|(_, slow)| *slow).count(), 20);
    saga.placed = placed.iter().map(|(id, _)| id.clone()).collect();
    // Every order ends as its card decides: approved, slowly or not.
    for (id, slow) in &placed {
        let order = saga.terminal(id, Duration::from_secs(60)).await;
        assert_eq!(
            order.status(),
            shop_proto::shop::orders::v1::OrderStatus::Confirmed,
            "order {id} (slow card: {slow}): {:?}",
            order.timeline
        );
    }
    saga.check_invariants(Duration::from_secs(30)).await;
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
                sealed_payment_token: Vec::new(),
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
    let mut inventory = saga.events_admin("inventory").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_refund_is_counted_apart_and_its_replay_refunds_once() {
    let mut saga = Saga::start(BTreeMap::from([(
        "payments".to_string(),
        vec![(
            "SHOP_PAYMENTS__EVENTS__CONSUMER__MAX_DELIVER".to_string(),
            "3".to_string(),
        )],
    )]))
    .await;
    let product = saga.product(1000, 5).await;
    let order_id = saga.place(&[(&product, 2)], "tok_approve").await;
    assert_eq!(
        saga.terminal(&order_id, Duration::from_secs(30))
            .await
            .status(),
        shop_proto::shop::orders::v1::OrderStatus::Confirmed
    );

    // Payments' database refuses refunds for a while.
    let refused = saga.refuse_refunds().await;
    saga.orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: order_id.clone(),
            detail: String::new(),
        })
        .await
        .unwrap();

    let mut admin = saga.events_admin("payments").await;
    let letter = saga.dead_letter("payments").await;
    assert!(letter.compensation);
    assert_eq!(letter.consumer, "payments-orders");
    assert_eq!(letter.status(), DeadLetterStatus::Pending);
    // The dead letter is committed before the consumer counts and logs it.
    let payments = saga.stack.service("payments");
    let refunds = eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let consumers = admin
                .list_consumers(ListConsumersRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .consumers;
            let refunds = consumers
                .into_iter()
                .find(|c| c.name == "payments-orders")
                .ok_or("no consumer payments-orders")?;
            let logged = payments.log().contains("a compensation was dead-lettered");
            if refunds.compensations_dead_lettered == 1 && logged {
                Ok(refunds)
            } else {
                Err(format!("logged: {logged}, {refunds:?}"))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(refunds.dead_letters_pending, 1, "{refunds:?}");
    // The money is still held on our books.
    assert_eq!(
        payment_status(&saga, &order_id).await,
        PaymentStatus::Captured
    );

    // Fixed, and replayed twice: refunded once.
    let mut db = refused.allow().await;
    for _ in 0..2 {
        let replayed = admin
            .replay_dead_letter(ReplayDeadLetterRequest {
                dead_letter_id: letter.dead_letter_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letter
            .unwrap();
        assert_eq!(replayed.status(), DeadLetterStatus::Replayed);
        assert!(
            replayed.resolved_by.ends_with("/sa/operator"),
            "{replayed:?}"
        );
    }
    assert_eq!(
        payment_status(&saga, &order_id).await,
        PaymentStatus::Refunded
    );
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(refunds, 1);
    saga.check_invariants(Duration::from_secs(30)).await;
}

/// The status of the one payment of `order_id`.
async fn payment_status(saga: &Saga, order_id: &str) -> PaymentStatus {
    saga.payments()
        .await
        .list_payments(ListPaymentsRequest {
            order_id: order_id.to_string(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payments[0]
        .status()
}
