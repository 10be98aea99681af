//! The retry budget.

use super::*;

// --- the budget ---

fn scarce_budget() -> UpstreamPolicy {
    let mut policy = policy();
    policy.retry.budget.ratio = 0.2;
    policy.retry.budget.min_per_second = 10;
    policy.retry.budget.ttl = Duration::from_secs(1);
    policy
}

#[tokio::test(start_paused = true)]
async fn a_burst_against_a_failing_upstream_stays_within_the_budget() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let (svc, stats) = retry(upstream.clone(), scarce_budget());
    let calls = 1000;

    let answers = futures::future::join_all(
        (0..calls).map(|_| svc.clone().oneshot(request(GET_PRODUCT, "x"))),
    )
    .await;

    assert!(answers.iter().all(|a| code(a) == Some(Code::Unavailable)));
    let attempts = upstream.seen().len() as f64;
    // calls * (1 + ratio) + floor * ttl
    let allowed = calls as f64 * 1.2 + 10.0;
    assert!(
        attempts <= allowed + 2.0,
        "{attempts} attempts, {allowed} allowed"
    );
    assert!(attempts >= allowed - 2.0, "the budget is used: {attempts}");
    assert!(read(&stats.counters.budget_exhausted) > 0);
    assert_eq!(read(&stats.counters.attempts) as f64, attempts);
    assert_eq!(read(&stats.counters.failures), calls);
}

#[tokio::test(start_paused = true)]
async fn steady_calls_against_a_failing_upstream_stay_within_the_budget() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let (svc, _) = retry(upstream.clone(), scarce_budget());
    let calls = 1000u32;
    let start = Instant::now();

    // One call every 2 ms for two seconds.
    let mut running = Vec::new();
    for _ in 0..calls {
        running.push(tokio::spawn(svc.clone().oneshot(request(GET_PRODUCT, "x"))));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for call in running {
        call.await.unwrap().unwrap();
    }

    let seconds = start.elapsed().as_secs_f64();
    let attempts = upstream.seen().len() as f64;
    // calls * (1 + ratio) + floor * (seconds + ttl): a withdrawal is
    // forgotten one ttl after it was made.
    let allowed = f64::from(calls) * 1.2 + 10.0 * (seconds + 1.0);
    assert!(
        attempts <= allowed + 5.0,
        "{attempts} attempts, {allowed} allowed"
    );
    assert!(
        attempts > f64::from(calls) * 1.1,
        "retries happen: {attempts}"
    );
}
