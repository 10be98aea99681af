//! The storefront in headless Chromium (Debian's chromium and
//! chromium-driver, driven over WebDriver by web/test/storefront.mjs)
//! against a fresh stack behind the gateway, which serves the page built by
//! `just web`:
//!
//! - what the gateway serves: the page with a same-origin
//!   Content-Security-Policy, a bundle under 150 kB gzipped naming no other
//!   host;
//! - a shopper's journey: sign up, log in, two products into the cart, an
//!   order with `tok_approve` followed to CONFIRMED on its page, one with
//!   `tok_decline` to CANCELLED with the reason shown, the first cancelled
//!   by the shopper from its page; each checked again
//!   here against orders itself; accessibility (axe-core), same-origin
//!   requests and a quiet console on every page;
//! - inventory stopped (its process killed): the catalog still shows,
//!   availability marked unknown, no error.
//!
//! Screenshots of every page land in target/screenshots/storefront.

mod common;

use common::gateway::Shop;
use common::rest::get;
use serde_json::Value;
use shop_proto::shop::common::v1::CancellationReason;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{
    GetOrderRequest, Order, OrderStatus, SagaStepStatus, SagaStepType,
};
use shop_testkit::rest::Version;
use shop_testkit::stack::STOREFRONT_DIR;
use shop_testkit::tools::repo_root;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// Largest storefront bundle (page, script and styles), gzipped.
const MAX_GZIPPED: usize = 150 * 1024;
/// Longest a phase of the browser script may take (it bounds itself too).
const PHASE_LIMIT: Duration = Duration::from_secs(240);

/// Runs one phase of web/test/storefront.mjs.
async fn browser(url: &str, phase: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--url", url, "--phase", phase];
    args.extend(["--shots", "target/screenshots/storefront"]);
    args.extend(extra);
    common::browser::run("storefront.mjs", &args, PHASE_LIMIT).await
}

/// The bundle's gzipped size, and any absolute URL in it.
fn bundle(dir: &Path) -> (usize, Vec<String>) {
    let mut gzipped = 0;
    let mut urls = Vec::new();
    for name in ["index.html", "app.js", "style.css"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let mut gzip = std::process::Command::new("gzip")
            .args(["-9", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        gzip.stdin.take().unwrap().write_all(&bytes).unwrap();
        gzipped += gzip.wait_with_output().unwrap().stdout.len();
        let text = String::from_utf8_lossy(&bytes);
        for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
            for (at, _) in text.match_indices(scheme) {
                urls.push(format!("{name}: {}", &text[at..(at + 60).min(text.len())]));
            }
        }
    }
    (gzipped, urls)
}

async fn order(shop: &Shop, order_id: &str) -> Order {
    OrderServiceClient::new(shop.stack.service("orders").channel().await.unwrap())
        .get_order(GetOrderRequest {
            order_id: order_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
}

#[tokio::test]
async fn a_shopper_buys_in_the_browser_and_the_catalog_outlives_inventory() {
    let site = repo_root().join(STOREFRONT_DIR);
    assert!(
        site.join("index.html").is_file(),
        "{} is missing: run `just web` first",
        site.display()
    );
    let (gzipped, urls) = bundle(&site);
    assert!(
        gzipped < MAX_GZIPPED,
        "the bundle is {gzipped} bytes gzipped"
    );
    assert!(urls.is_empty(), "the bundle names other hosts: {urls:?}");

    let mut shop = Shop::start(BTreeMap::new()).await;
    let mug = shop.product("Blue enamel mug", 1250, 10).await;
    let teapot = shop.product("Green teapot", 3400, 5).await;
    let gateway = shop.stack.service("gateway");
    let rest = gateway.rest(Version::Http2).unwrap();
    for path in ["/", "/app.js", "/style.css"] {
        let page = get(&rest, path, None).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-security-policy"),
            shop_http::site::CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(
            page.bytes,
            std::fs::read(site.join(match path {
                "/" => "index.html",
                other => &other[1..],
            }))
            .unwrap()
        );
    }
    // Scripts and fetches from the page's own origin only, nothing else.
    let directive = |name: &str| {
        shop_http::site::CONTENT_SECURITY_POLICY
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with(name))
            .unwrap()
    };
    assert_eq!(directive("default-src"), "default-src 'none'");
    assert_eq!(directive("script-src"), "script-src 'self'");
    assert_eq!(directive("connect-src"), "connect-src 'self'");
    assert_eq!(directive("frame-ancestors"), "frame-ancestors 'none'");

    let url = format!("https://{}", gateway.addr());
    let journey = browser(&url, "journey", &["--products", &format!("{mug},{teapot}")]).await;
    // Confirmed, then cancelled by the shopper from its page.
    let confirmed = order(&shop, journey["confirmed"].as_str().unwrap()).await;
    assert!(
        confirmed
            .timeline
            .iter()
            .any(|step| step.step() == SagaStepType::ConfirmOrder
                && step.status() == SagaStepStatus::Succeeded),
        "{:?}",
        confirmed.timeline
    );
    assert_eq!(confirmed.status(), OrderStatus::Cancelled);
    assert_eq!(
        confirmed.cancellation_reason(),
        CancellationReason::UserRequested
    );
    assert_eq!(confirmed.lines.len(), 2, "both products were ordered");
    let cancelled = order(&shop, journey["cancelled"].as_str().unwrap()).await;
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(
        cancelled.cancellation_reason(),
        CancellationReason::PaymentDeclined
    );
    assert_eq!(
        journey["pages"].as_array().map(Vec::len),
        Some(7),
        "axe checked every page: {journey}"
    );

    shop.stack.service_mut("inventory").kill().unwrap();
    let degraded = browser(&url, "degraded", &[]).await;
    assert_eq!(degraded["stock"], 2, "{degraded}");
}
