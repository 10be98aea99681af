//! Where retries go: endpoints a call has not tried.

use super::*;

fn with_tried(tried: &Tried) -> Request {
    let mut request = request();
    request.extensions_mut().insert(tried.clone());
    request
}

#[tokio::test(start_paused = true)]
async fn a_call_goes_to_an_endpoint_it_has_not_tried_and_records_it() {
    let (policy, stats) = setup(|_| {});
    let discover = discovery::static_list(
        ["http://a:1", "http://b:1", "http://c:1"].map(String::from),
        |a: &str| endpoint(a, Duration::from_millis(1), false),
    );
    let b = Balancer::new(discover, policy, stats);
    tally(&b, 10).await; // every endpoint discovered
    for _ in 0..100 {
        let tried = Tried::default();
        let first = b.clone().oneshot(with_tried(&tried)).await.unwrap();
        let second = b.clone().oneshot(with_tried(&tried)).await.unwrap();
        let third = b.clone().oneshot(with_tried(&tried)).await.unwrap();
        let served: BTreeSet<String> = [&first, &second, &third].map(served_by).into();
        assert_eq!(served.len(), 3, "three attempts, three endpoints");
        let recorded = tried.addresses();
        assert_eq!(
            recorded.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            [&first, &second, &third].map(served_by),
        );
    }
}

#[tokio::test(start_paused = true)]
async fn with_every_ready_endpoint_tried_a_tried_one_is_picked() {
    let (policy, stats) = setup(|_| {});
    let discover =
        discovery::static_list(["http://a:1", "http://b:1"].map(String::from), |a: &str| {
            endpoint(a, Duration::from_millis(1), false)
        });
    let b = Balancer::new(discover, policy, stats);
    tally(&b, 10).await;
    let tried = Tried::default();
    for _ in 0..4 {
        b.clone().oneshot(with_tried(&tried)).await.unwrap();
    }
    assert_eq!(tried.addresses().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_retry_through_the_balancer_avoids_the_endpoint_that_failed() {
    // One endpoint of two always fails at once (so its latency estimate
    // is the lower one) and is never ejected: every call still succeeds,
    // its one retry going to the other.
    let (policy, stats) = setup(|p| {
        p.outlier.consecutive_failures = 0;
        p.retry.max_attempts = 2;
        p.retry.budget.ratio = 1.0;
        p.retry.budget.min_per_second = 100_000;
    });
    let discover = discovery::static_list(
        ["http://good:1", "http://bad:1"].map(String::from),
        |a: &str| {
            let bad = a.contains("bad");
            endpoint(a, Duration::from_millis(if bad { 0 } else { 5 }), bad)
        },
    );
    let balancer = Balancer::new(discover, policy.clone(), stats.clone());
    let layer = crate::retry::RetryLayer::new(policy, stats.clone());
    let client = tower::Layer::layer(&layer, balancer);
    for _ in 0..200 {
        let request = http::Request::builder()
            .uri("/shop.catalog.v1.CatalogService/GetProduct")
            .body(crate::Body::empty())
            .unwrap();
        let rsp = client.clone().oneshot(request).await.unwrap();
        assert_eq!(served_by(&rsp), "http://good:1");
    }
    let attempts = stats.counters.attempts.load(Ordering::Relaxed);
    assert!(attempts > 300, "most first attempts failed: {attempts}");
}
