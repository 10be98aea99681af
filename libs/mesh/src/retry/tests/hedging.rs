//! Hedging.

use super::*;

// --- hedging ---

fn hedged(max_hedges: u32) -> UpstreamPolicy {
    let mut policy = policy();
    policy.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_hedges,
    });
    policy
}

fn attempt_of(answer: &Result<Response, BoxError>) -> usize {
    let header = answer.as_ref().unwrap().headers().get("x-attempt").unwrap();
    header.to_str().unwrap().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_read_is_hedged_and_the_first_answer_wins() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::After(Duration::from_secs(1), Box::new(Answer::Ok)),
        _ => Answer::After(Duration::from_millis(10), Box::new(Answer::Ok)),
    });
    let (svc, stats) = retry(upstream.clone(), hedged(1));
    let start = Instant::now();

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(attempt_of(&answer), 1, "the hedge answered first");
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(50));
    assert_eq!(seen[1].body, "x");
    assert_eq!(read(&stats.counters.hedges), 1);
    assert_eq!(read(&stats.counters.attempts), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fast_read_is_not_hedged() {
    let upstream =
        Upstream::new(|_| Answer::After(Duration::from_millis(10), Box::new(Answer::Ok)));
    let (svc, stats) = retry(upstream.clone(), hedged(2));

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(attempt_of(&answer), 0);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(read(&stats.counters.hedges), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_sends_the_next_at_once() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::Fail(Code::Unavailable),
        _ => Answer::Ok,
    });
    let (svc, stats) = retry(upstream.clone(), hedged(2));
    let start = Instant::now();

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(attempt_of(&answer), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(read(&stats.counters.hedges), 1);
}

#[tokio::test(start_paused = true)]
async fn hedges_stop_at_max_hedges_and_the_last_failure_is_returned() {
    let upstream = Upstream::new(|_| {
        Answer::After(
            Duration::from_millis(200),
            Box::new(Answer::Fail(Code::Unavailable)),
        )
    });
    let (svc, stats) = retry(upstream.clone(), hedged(2));

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 3);
    assert_eq!(read(&stats.counters.hedges), 2);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_waits_past_the_deadline() {
    let upstream = Upstream::new(|_| Answer::FailWithPushback(Code::Unavailable, "500"));
    let (svc, _) = retry(upstream.clone(), hedged(3));
    let start = Instant::now();

    let answer = svc
        .oneshot(with_deadline(
            request(GET_PRODUCT, "x"),
            Duration::from_millis(800),
        ))
        .await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    assert_eq!(
        upstream.seen().len(),
        2,
        "at 0 and 500 ms; 1000 ms is too late"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_write_is_retried_but_not_hedged() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::After(
            Duration::from_millis(100),
            Box::new(Answer::Fail(Code::Unavailable)),
        ),
        _ => Answer::Ok,
    });
    let (svc, stats) = retry(upstream.clone(), hedged(1));

    let answer = svc
        .oneshot(request(
            "/shop.catalog.v1.CatalogService/UpdateProduct",
            "x",
        ))
        .await;

    assert_eq!(code(&answer), None);
    assert_eq!(upstream.seen().len(), 2);
    assert_eq!(read(&stats.counters.hedges), 0);
    assert_eq!(read(&stats.counters.retries), 1);
}
