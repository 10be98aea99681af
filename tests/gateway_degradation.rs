//! Aggregation with graceful degradation, with real processes killed and
//! slowed: optional parts go missing with their reason, the essential one
//! (the order) fails the call.

mod common;

use common::gateway::Shop;
use shop_proto::shop::gateway::v1::*;
use shop_proto::shop::orders::v1::OrderStatus;
use shop_testkit::with_bearer;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

fn parts(missing: &[MissingPart]) -> Vec<(Part, Code)> {
    missing
        .iter()
        .map(|m| (m.part(), Code::from_i32(m.code)))
        .collect()
}

#[tokio::test]
async fn answers_degrade_without_inventory_and_fail_without_orders() {
    let mut shop = Shop::start(BTreeMap::new()).await;
    let ada = shop.user("ada").await;
    let mut products = Vec::new();
    for i in 0..6 {
        products.push(
            shop.product(&format!("Degradable {i}"), 1000 + i, 10 + i)
                .await,
        );
    }
    let order = shop.order(&ada, &products[0], "tok_approve").await;
    assert_eq!(
        shop.settled(&ada, &order.order_id).await.status(),
        OrderStatus::Confirmed
    );
    let mut gateway = shop.gateway().await;

    // Everything up: a page of products with availability, from one batch
    // call to inventory for the whole page.
    let before = shop.calls_to("inventory").await;
    let page = gateway
        .list_products(ListProductsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        shop.calls_to("inventory").await - before,
        1,
        "one call per page"
    );
    assert_eq!(page.items.len(), 6);
    assert!(page.missing.is_empty());
    for item in &page.items {
        let product = item.product.as_ref().unwrap();
        let i = products
            .iter()
            .position(|p| *p == product.product_id)
            .unwrap() as i64;
        let expected = if i == 0 { 9 } else { 10 + i };
        assert_eq!(item.available_quantity, Some(expected), "{}", product.name);
    }
    let details = gateway
        .get_order_details(with_bearer(
            &ada.token,
            GetOrderDetailsRequest {
                order_id: order.order_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(details.missing.is_empty(), "{:?}", details.missing);
    assert_eq!(details.user.unwrap().user_id, ada.user_id);
    assert_eq!(details.lines.len(), 1);
    assert_eq!(
        details.lines[0].product.as_ref().unwrap().product_id,
        products[0]
    );
    assert_eq!(details.lines[0].available_quantity, Some(9));
    assert_eq!(details.payments.len(), 1);

    // Inventory killed: still OK, availability absent and named missing.
    shop.stack.service_mut("inventory").kill().unwrap();
    let page = gateway
        .list_products(ListProductsRequest::default())
        .await
        .expect("browsing survives inventory")
        .into_inner();
    assert_eq!(page.items.len(), 6);
    assert!(page.items.iter().all(|i| i.available_quantity.is_none()));
    assert_eq!(parts(&page.missing), [(Part::Stock, Code::Unavailable)]);
    let product = gateway
        .get_product(GetProductRequest {
            product_id: products[1].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(product.item.unwrap().available_quantity, None);
    assert_eq!(parts(&product.missing), [(Part::Stock, Code::Unavailable)]);
    let details = gateway
        .get_order_details(with_bearer(
            &ada.token,
            GetOrderDetailsRequest {
                order_id: order.order_id.clone(),
            },
        ))
        .await
        .expect("details survive inventory")
        .into_inner();
    assert_eq!(parts(&details.missing), [(Part::Stock, Code::Unavailable)]);
    assert_eq!(details.lines[0].available_quantity, None);
    assert!(details.lines[0].product.is_some());
    assert!(details.user.is_some());
    assert_eq!(details.payments.len(), 1);

    // Orders down: the essential part is gone, the call fails, and fast
    // (connection refused, not a wait for the 3 s timeout).
    shop.stack.service_mut("orders").kill().unwrap();
    let started = Instant::now();
    let status = gateway
        .get_order_details(with_bearer(
            &ada.token,
            GetOrderDetailsRequest {
                order_id: order.order_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn late_payments_are_left_out_within_the_callers_deadline() {
    // Every PaymentService call waits 5 s (server-side fault injection);
    // the saga does not use them, so orders still settle. The caller gives
    // 2 s: the gateway's share for payments ends well before, and the
    // margin is wide enough for a loaded machine.
    let slow = BTreeMap::from([(
        "payments".to_string(),
        vec![
            (
                "SHOP_PAYMENTS__SERVER__MESH__FAULT__DELAY_PERCENT".to_string(),
                "100".to_string(),
            ),
            (
                "SHOP_PAYMENTS__SERVER__MESH__FAULT__DELAY".to_string(),
                "5s".to_string(),
            ),
        ],
    )]);
    let shop = Shop::start(slow).await;
    let ada = shop.user("ada").await;
    let book = shop.product("A slow book", 2500, 5).await;
    let order = shop.order(&ada, &book, "tok_approve").await;
    assert_eq!(
        shop.settled(&ada, &order.order_id).await.status(),
        OrderStatus::Confirmed
    );
    let mut gateway = shop.gateway().await;

    let mut request = with_bearer(
        &ada.token,
        GetOrderDetailsRequest {
            order_id: order.order_id.clone(),
        },
    );
    let deadline = Duration::from_secs(2);
    request.set_timeout(deadline);
    let started = Instant::now();
    let details = gateway
        .get_order_details(request)
        .await
        .expect("OK within the deadline")
        .into_inner();
    let took = started.elapsed();
    assert!(took < deadline, "answered after {took:?}");
    assert_eq!(
        parts(&details.missing),
        [(Part::Payments, Code::DeadlineExceeded)]
    );
    assert!(details.payments.is_empty());
    assert!(details.user.is_some());
    assert!(details.lines[0].product.is_some());
    assert_eq!(details.lines[0].available_quantity, Some(4));
}
