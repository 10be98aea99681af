//! Feature flags in the running shop, through its public API: the kill
//! switch of the gateway's inventory fan-out flipped by a file edit under
//! load, the minimum-order-value rollout at 0%, 20% and 100% of users, a
//! refused file that leaves the flags in force, and FlagsAdmin explaining
//! both flags.

mod common;
use common::gateway::{EndUser, Shop, try_place_order};
use shop_proto::shop::flags::v1::flags_admin_service_client::FlagsAdminServiceClient;
use shop_proto::shop::flags::v1::{EvaluateFlagRequest, EvaluateFlagResponse, ListFlagsRequest};
use shop_proto::shop::gateway::v1::{ListProductsRequest, ListProductsResponse, Part};
use shop_proto::shop::orders::v1::OrderStatus;
use shop_testkit::eventually;
use shop_testkit::identities::Identities;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const KILL_SWITCH: &str = "gateway.product-availability";
const ROLLOUT: &str = "orders.minimum-order-value";

/// Rewrites the flags file as a ConfigMap update does: a new file renamed
/// over the old one.
fn rewrite(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut flags: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut flags);
    write(path, &serde_json::to_string_pretty(&flags).unwrap());
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn availability(on: bool) -> impl FnOnce(&mut serde_json::Value) {
    move |f| f["flags"][KILL_SWITCH]["defaultVariant"] = (if on { "on" } else { "off" }).into()
}

fn rollout(percent: u64) -> impl FnOnce(&mut serde_json::Value) {
    move |f| {
        f["flags"][ROLLOUT]["targeting"] = serde_json::json!({
            "fractional": [["ten-euros", percent], ["none", 100 - percent]]
        })
    }
}

async fn admin(shop: &Shop, service: &str) -> FlagsAdminServiceClient<Channel> {
    FlagsAdminServiceClient::new(shop.stack.service(service).channel().await.unwrap())
}

async fn explain(
    admin: &mut FlagsAdminServiceClient<Channel>,
    key: &str,
    user: &str,
) -> EvaluateFlagResponse {
    admin
        .evaluate_flag(EvaluateFlagRequest {
            key: key.into(),
            targeting_key: user.into(),
            attributes: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the gateway's evaluation of the kill switch satisfies `done`.
async fn kill_switch_until(
    admin: &FlagsAdminServiceClient<Channel>,
    done: impl Fn(&EvaluateFlagResponse) -> bool,
) {
    let done = &done;
    eventually(Duration::from_secs(10), || {
        let mut a = admin.clone();
        async move {
            let e = explain(&mut a, KILL_SWITCH, "").await;
            if done(&e) {
                Ok(())
            } else {
                Err(format!("{e:?}"))
            }
        }
    })
    .await
    .unwrap();
}

/// What one ListProducts answered: availability there, switched off, or
/// missing for another reason (inventory late on a loaded machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Available,
    SwitchedOff,
    Degraded,
}

#[tokio::test]
async fn the_kill_switch_sheds_the_inventory_fan_out_within_the_watch_interval_and_no_call_fails() {
    let shop = Shop::start(BTreeMap::new()).await;
    shop.product("Lamp", 1500, 10).await;
    let flags = shop.stack.flags_file().to_path_buf();
    let gateway = shop.gateway().await;

    // Steady load: four clients, each asking for a page in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut gateway = gateway.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<(Instant, Result<Seen, String>)> = Vec::new();
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                // When the call started: what it saw was in force by then.
                let started = Instant::now();
                let answer = gateway
                    .list_products(ListProductsRequest {
                        page_size: 5,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        let stock_missing: Vec<_> = r
                            .missing
                            .iter()
                            .filter(|m| m.part() == Part::Stock)
                            .collect();
                        assert_eq!(
                            !stock_missing.is_empty(),
                            r.items.iter().all(|i| i.available_quantity.is_none()),
                            "availability is absent exactly when the answer says so: {r:?}"
                        );
                        match stock_missing.first() {
                            None => Seen::Available,
                            Some(m)
                                if m.code == Code::Unavailable as i32
                                    && m.message.contains("switched off") =>
                            {
                                Seen::SwitchedOff
                            }
                            Some(_) => Seen::Degraded,
                        }
                    })
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                seen.push((started, answer));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    rewrite(&flags, availability(false));
    let flipped = Instant::now();
    // Off: ListProducts stops calling inventory.
    let off_seen = eventually(Duration::from_secs(10), || async {
        let before = shop.calls_to("inventory").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = shop.calls_to("inventory").await;
        if after == before {
            Ok(())
        } else {
            Err(format!("{} inventory calls", after - before))
        }
    })
    .await;
    assert!(off_seen.is_ok(), "{off_seen:?}");
    rewrite(&flags, availability(true));
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    answers.sort_by_key(|(at, _)| *at);
    let failed: Vec<_> = answers.iter().filter(|(_, a)| a.is_err()).collect();
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    let first_off = answers
        .iter()
        .find(|(_, a)| *a == Ok(Seen::SwitchedOff))
        .map(|(at, _)| *at)
        .expect("the switch took effect");
    let took = first_off - flipped;
    // The watch interval is 1 s (the default); the slack is for a loaded
    // machine's scheduling, not for the watch.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        answers
            .iter()
            .all(|(at, a)| *at > flipped || *a != Ok(Seen::SwitchedOff)),
        "off before the flip"
    );
    let back = answers
        .iter()
        .find(|(at, a)| *at > restored && *a == Ok(Seen::Available))
        .map(|(at, _)| *at - restored)
        .expect("back on");
    assert!(back < Duration::from_secs(2), "back on after {back:?}");
    let tail = answers
        .iter()
        .filter(|(at, _)| *at > restored + Duration::from_secs(2));
    assert!(tail.clone().count() > 0 && tail.clone().all(|(_, a)| *a != Ok(Seen::SwitchedOff)));
    let degraded = answers
        .iter()
        .filter(|(_, a)| *a == Ok(Seen::Degraded))
        .count();
    println!(
        "{} calls, none failed ({degraded} without stock for another reason); off after {took:?}, on again after {back:?}",
        answers.len()
    );

    // FlagsAdmin counted the gateway's evaluations by variant, asked as a
    // boolean.
    let list = admin(&shop, "gateway")
        .await
        .list_flags(ListFlagsRequest {})
        .await
        .unwrap()
        .into_inner();
    let kill = list.flags.iter().find(|f| f.key == KILL_SWITCH).unwrap();
    assert!(
        kill.evaluations["on"] > 0 && kill.evaluations["off"] > 0,
        "{kill:?}"
    );
    assert_eq!(kill.asked_as, "bool", "{kill:?}");
    assert_eq!(list.sources.len(), 1);
    assert!(
        list.sources[0].last_error.is_empty(),
        "{:?}",
        list.sources[0]
    );
}

/// The first page of products, as an end user sees it.
async fn first_page(shop: &Shop) -> ListProductsResponse {
    shop.gateway()
        .await
        .list_products(ListProductsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// `user` places an order of one `product` through the gateway: the
/// order's status, or the refusal's code and message.
async fn try_order(
    shop: &Shop,
    user: &EndUser,
    product: &str,
) -> Result<OrderStatus, (Code, String, Option<String>)> {
    try_place_order(shop.gateway().await, user, product, "tok_approve")
        .await
        .map(|order| order.status())
        .map_err(|s| {
            let violation = s
                .get_details_precondition_failure()
                .and_then(|p| p.violations.first().map(|v| v.r#type.clone()));
            (s.code(), s.message().to_string(), violation)
        })
}

/// Waits until orders has the rollout at `percent` (its evaluation of a
/// marker user changes with the file, so ask ListFlags for the rule).
async fn rolled_out(shop: &Shop, percent: u64) {
    let want = format!("[\"ten-euros\",{percent}]");
    eventually(Duration::from_secs(10), || async {
        let list = admin(shop, "orders")
            .await
            .list_flags(ListFlagsRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let flag = list
            .flags
            .iter()
            .find(|f| f.key == ROLLOUT)
            .ok_or("no flag")?;
        if flag.targeting.contains(&want) {
            Ok(())
        } else {
            Err(flag.targeting.clone())
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_minimum_order_value_rolls_out_by_user_sticky_and_as_explained() {
    let shop = Shop::start(BTreeMap::new()).await;
    let flags = shop.stack.flags_file().to_path_buf();
    // 5.00 EUR: under the rollout's minimum of 10.00.
    let small = shop.product("Pencil", 500, 1_000).await;
    let mut users = Vec::new();
    for i in 0..40 {
        users.push(shop.user(&format!("buyer{i}")).await);
    }
    let mut orders = admin(&shop, "orders").await;

    // 0% (as shipped): nobody gets it.
    for u in &users {
        assert_eq!(try_order(&shop, u, &small).await, Ok(OrderStatus::Pending));
        let e = explain(&mut orders, ROLLOUT, &u.user_id).await;
        assert_eq!(
            (e.variant.as_str(), e.reason.as_str()),
            ("none", "TARGETING_MATCH"),
            "{e:?}"
        );
    }

    // 20%: 2,000 distinct users, between 15% and 25% in the rollout, each
    // with the same answer every time.
    rewrite(&flags, rollout(20));
    rolled_out(&shop, 20).await;
    let mut inside = 0;
    for i in 0..2_000 {
        let id = uuid::Uuid::new_v4().to_string();
        let first = explain(&mut orders, ROLLOUT, &id).await;
        if first.variant == "ten-euros" {
            inside += 1;
        }
        if i % 10 == 0 {
            for _ in 0..3 {
                assert_eq!(
                    explain(&mut orders, ROLLOUT, &id).await.variant,
                    first.variant,
                    "{id}"
                );
            }
        }
    }
    println!("20% rollout: {inside} of 2000 users");
    assert!((300..=500).contains(&inside), "{inside} of 2000");

    // Through the public API, every user sees what FlagsAdmin explains,
    // again and again.
    let mut refused = 0;
    for u in &users {
        let e = explain(&mut orders, ROLLOUT, &u.user_id).await;
        for _ in 0..2 {
            let answer = try_order(&shop, u, &small).await;
            if e.variant == "ten-euros" {
                let (code, message, violation) = answer.expect_err("in the rollout: refused");
                assert_eq!(code, Code::FailedPrecondition, "{message}");
                assert!(message.contains("minimum order value is 1000"), "{message}");
                assert_eq!(violation.as_deref(), Some("MINIMUM_ORDER_VALUE"));
            } else {
                assert_eq!(answer, Ok(OrderStatus::Pending), "{}", u.user_id);
            }
        }
        refused += usize::from(e.variant == "ten-euros");
    }
    println!("20% rollout: {refused} of {} shoppers refused", users.len());
    // 40 users at 20%: none in the rollout is a chance of 0.8^40 (0.01%).
    assert!(refused > 0 && refused < users.len(), "{refused}");
    // An order above the minimum is accepted for everyone.
    let big = shop.product("Chair", 2_500, 1_000).await;
    for u in &users {
        assert_eq!(try_order(&shop, u, &big).await, Ok(OrderStatus::Pending));
    }

    // 100%: everyone.
    rewrite(&flags, rollout(100));
    rolled_out(&shop, 100).await;
    for u in &users {
        let (code, _, _) = try_order(&shop, u, &small).await.unwrap_err();
        assert_eq!(code, Code::FailedPrecondition);
    }
}

#[tokio::test]
async fn a_refused_file_keeps_the_flags_in_force_and_says_why() {
    let shop = Shop::start(BTreeMap::new()).await;
    shop.product("Lamp", 1500, 10).await;
    let flags = shop.stack.flags_file().to_path_buf();
    let good = std::fs::read_to_string(&flags).unwrap();
    let mut gateway_admin = admin(&shop, "gateway").await;
    rewrite(&flags, availability(false));
    kill_switch_until(&gateway_admin, |e| e.variant == "off").await;

    for (bad, names) in [
        (
            good.replacen("\"flags\"", "\"flags\" :: ", 1),
            "not valid JSON",
        ),
        (
            good.replace("\"fractional\"", "\"fractionall\""),
            "flag \"orders.minimum-order-value\": targeting: unknown operator \"fractionall\"",
        ),
        (
            good.replace("\"defaultVariant\": \"on\"", "\"defaultVariant\": \"yes\""),
            "flag \"gateway.product-availability\": defaultVariant \"yes\" is not one of its variants",
        ),
    ] {
        write(&flags, &bad);
        let error = eventually(Duration::from_secs(10), || {
            let mut a = gateway_admin.clone();
            async move {
                let list = a
                    .list_flags(ListFlagsRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let error = list.sources[0].last_error.clone();
                if error.contains(names) {
                    Ok(error)
                } else {
                    Err(error)
                }
            }
        })
        .await
        .unwrap();
        println!("refused: {error}");
        // The definitions in force are the last good ones: off.
        let e = explain(&mut gateway_admin, KILL_SWITCH, "").await;
        assert_eq!(e.variant, "off", "{e:?}");
        let page = first_page(&shop).await;
        assert!(
            page.missing
                .iter()
                .any(|m| m.message.contains("switched off")),
            "{page:?}"
        );
    }

    // Missing and disabled flags are answers, not errors.
    let e = explain(&mut gateway_admin, "no.such-flag", "u").await;
    assert_eq!(
        (e.reason.as_str(), e.error_code.as_str()),
        ("ERROR", "FLAG_NOT_FOUND")
    );
    let status = gateway_admin
        .evaluate_flag(EvaluateFlagRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    write(
        &flags,
        &good.replace("\"state\": \"ENABLED\"", "\"state\": \"DISABLED\""),
    );
    kill_switch_until(&gateway_admin, |e| e.reason == "DISABLED").await;
    // Disabled: the code's default (availability on).
    let page = first_page(&shop).await;
    assert!(page.missing.is_empty(), "{page:?}");
}

#[tokio::test]
async fn flags_admin_is_the_operators_only() {
    let shop = Shop::start(BTreeMap::new()).await;
    // The gateway's port takes callers without certificates (end users):
    // FlagsAdmin there is still refused to them.
    let status = FlagsAdminServiceClient::new(
        shop.stack
            .service("gateway")
            .public_channel()
            .await
            .unwrap(),
    )
    .list_flags(ListFlagsRequest {})
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Another workload with a valid identity: the gateway calls orders, but
    // not orders' FlagsAdmin, neither to read the flags nor to evaluate one.
    let orders = shop.stack.service("orders");
    let as_gateway = orders
        .channel_as(&Identities::dir_in(shop.stack.dir(), "gateway"))
        .await
        .unwrap();
    let mut admin_as_gateway = FlagsAdminServiceClient::new(as_gateway);
    let list = admin_as_gateway
        .list_flags(ListFlagsRequest {})
        .await
        .unwrap_err();
    let evaluate = admin_as_gateway
        .evaluate_flag(EvaluateFlagRequest {
            key: ROLLOUT.to_string(),
            targeting_key: "someone".to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    for status in [list, evaluate] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("sa/gateway may not call"),
            "{status:?}"
        );
    }

    // The operator may.
    let flags = admin(&shop, "orders")
        .await
        .list_flags(ListFlagsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        flags.flags.iter().any(|flag| flag.key == ROLLOUT),
        "{flags:?}"
    );
}
