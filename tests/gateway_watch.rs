//! WatchOrder at the gateway (the storefront's order page follows the saga
//! with it over gRPC-Web): the caller's own order, each change once, until
//! it settles; the stream ends by itself; watches are bounded in number.

mod common;

use common::gateway::Shop;
use shop_proto::shop::gateway::v1::WatchOrderRequest;
use shop_proto::shop::orders::v1::{Order, OrderStatus};
use shop_testkit::with_bearer;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt as _;

fn watch(order: &Order) -> WatchOrderRequest {
    WatchOrderRequest {
        order_id: order.order_id.clone(),
    }
}

#[tokio::test]
async fn an_order_is_followed_until_it_settles_by_its_owner_within_bounds() {
    let shop = Shop::start(BTreeMap::from([
        (
            "gateway".to_string(),
            vec![
                ("SHOP_GATEWAY__WATCH__MAX_CONCURRENT".into(), "1".into()),
                ("SHOP_GATEWAY__WATCH__INTERVAL".into(), "100ms".into()),
            ],
        ),
        (
            "payments".to_string(),
            vec![(
                "SHOP_PAYMENTS__PROCESSOR__SLOW_DELAY".into(),
                "1500ms".into(),
            )],
        ),
    ]))
    .await;
    let product = shop.product("Slow mug", 900, 10).await;
    let ada = shop.user("ada").await;
    let eve = shop.user("eve").await;
    let order = shop.order(&ada, &product, "tok_approve_slow").await;
    let mut gateway = shop.gateway().await;

    // Only its owner may follow it.
    let theirs = gateway
        .watch_order(with_bearer(&eve.token, watch(&order)))
        .await
        .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound, "{theirs:?}");
    let anonymous = gateway.watch_order(watch(&order)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let mut stream = gateway
        .watch_order(with_bearer(&ada.token, watch(&order)))
        .await
        .unwrap()
        .into_inner();
    // Its one permit is taken: another watch is refused, with a delay.
    let busy = gateway
        .watch_order(with_bearer(&ada.token, watch(&order)))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::ResourceExhausted);
    assert!(busy.get_details_retry_info().is_some(), "{busy:?}");

    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the stream ends by itself once the order settles")
        .unwrap()
    {
        seen.push(message.order.unwrap());
    }
    let statuses: Vec<OrderStatus> = seen.iter().map(Order::status).collect();
    assert_eq!(
        statuses.first(),
        Some(&OrderStatus::Pending),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&OrderStatus::Confirmed),
        "{statuses:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "each change is sent once"
    );
    assert!(
        seen.windows(2)
            .all(|w| w[0].timeline.len() <= w[1].timeline.len()),
        "the timeline only grows"
    );

    // The permit came back when the stream ended; a settled order is sent
    // once and the stream ends.
    let mut again = gateway
        .watch_order(with_bearer(&ada.token, watch(&order)))
        .await
        .unwrap()
        .into_inner();
    let only = again.message().await.unwrap().unwrap().order.unwrap();
    assert_eq!(only.status(), OrderStatus::Confirmed);
    assert!(again.message().await.unwrap().is_none());
}
