//! When retries go out: backoff, pushback, deadlines, per-try timeouts.

use super::*;

// --- when retries go out ---

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially_with_full_jitter() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let mut policy = policy();
    policy.retry.max_attempts = 6;
    policy.retry.backoff = BackoffPolicy {
        base: Duration::from_millis(10),
        max: Duration::from_millis(1000),
    };
    let (svc, _) = retry(upstream.clone(), policy);
    let calls = 200;

    for _ in 0..calls {
        svc.clone()
            .oneshot(request(GET_PRODUCT, "x"))
            .await
            .unwrap();
    }

    let seen = upstream.seen();
    assert_eq!(seen.len(), calls * 6);
    let mut delays = vec![Vec::new(); 5];
    for call in seen.chunks(6) {
        for n in 0..5 {
            delays[n].push(call[n + 1].at - call[n].at);
        }
    }
    let mut means = Vec::new();
    for (n, delays) in delays.iter().enumerate() {
        let cap = Duration::from_millis(10) * 2u32.pow(n as u32);
        // (The timer wheel rounds sleeps up to the millisecond.)
        let slack = Duration::from_millis(1);
        assert!(
            delays.iter().all(|d| *d <= cap + slack),
            "retry {} within {cap:?}",
            n + 1
        );
        let distinct = delays.iter().collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() >= 5, "jittered: {distinct:?}");
        let mean = delays.iter().sum::<Duration>() / calls as u32;
        // Full jitter: the mean is half the cap, give or take.
        assert!(
            mean > cap * 4 / 10 && mean < cap * 6 / 10,
            "{mean:?} for {cap:?}"
        );
        means.push(mean);
    }
    assert!(means.windows(2).all(|m| m[0] < m[1]), "growing: {means:?}");
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped_at_max() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let mut policy = policy();
    policy.retry.max_attempts = 10;
    policy.retry.backoff = BackoffPolicy {
        base: Duration::from_millis(10),
        max: Duration::from_millis(30),
    };
    let (svc, _) = retry(upstream.clone(), policy);

    svc.oneshot(request(GET_PRODUCT, "x")).await.unwrap();

    let seen = upstream.seen();
    let cap = Duration::from_millis(30 + 1);
    assert!(seen.windows(2).all(|w| w[1].at - w[0].at <= cap));
}

#[tokio::test(start_paused = true)]
async fn pushback_sets_the_delay_of_the_retry() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::FailWithPushback(Code::Unavailable, "500"),
        _ => Answer::Ok,
    });
    let (svc, _) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), None);
    let seen = upstream.seen();
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn negative_pushback_stops_retrying() {
    let upstream = Upstream::new(|_| Answer::FailWithPushback(Code::Unavailable, "-1"));
    let (svc, _) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_past_the_deadline() {
    // Slow and failing: 100 ms per attempt, then up to 50 ms of backoff.
    let upstream = Upstream::new(|_| {
        Answer::After(
            Duration::from_millis(100),
            Box::new(Answer::Fail(Code::Unavailable)),
        )
    });
    let mut policy = policy();
    policy.retry.max_attempts = 100;
    policy.retry.backoff = BackoffPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_millis(50),
    };
    let (svc, _) = retry(upstream.clone(), policy);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(1);

    let answer = svc
        .oneshot(with_deadline(
            request(GET_PRODUCT, "x"),
            Duration::from_secs(1),
        ))
        .await;

    let seen = upstream.seen();
    assert!(seen.iter().all(|s| s.at < deadline));
    assert!((7..=10).contains(&seen.len()), "{} attempts", seen.len());
    assert!(Instant::now() <= deadline);
    assert!(matches!(
        code(&answer),
        Some(Code::Unavailable | Code::DeadlineExceeded)
    ));
    // Each attempt is told how long it has left.
    assert!(seen.iter().all(|s| s.at + s.timeout.unwrap() <= deadline));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_the_deadline_answers_deadline_exceeded() {
    let upstream = Upstream::new(|_| Answer::Hang);
    let (svc, stats) = retry(upstream.clone(), policy());
    let start = Instant::now();

    let answer = svc
        .oneshot(with_deadline(
            request(GET_PRODUCT, "x"),
            Duration::from_millis(300),
        ))
        .await;

    assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(read(&stats.counters.deadline_exceeded), 1);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_cuts_a_hung_attempt_and_the_retry_succeeds() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::Hang,
        _ => Answer::Ok,
    });
    let mut policy = policy();
    policy.retry.per_try_timeout = Some(Duration::from_millis(100));
    let (svc, stats) = retry(upstream.clone(), policy);
    let start = Instant::now();

    let answer = svc
        .oneshot(with_deadline(
            request(GET_PRODUCT, "x"),
            Duration::from_secs(2),
        ))
        .await;

    assert_eq!(code(&answer), None);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].timeout, Some(Duration::from_millis(100)));
    let waited = seen[1].at - start;
    assert!(waited >= Duration::from_millis(100) && waited <= Duration::from_millis(120));
    assert_eq!(read(&stats.counters.retries), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_larger_than_the_buffer_is_sent_once() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let mut policy = policy();
    policy.retry.max_buffered_bytes = 4;
    let (svc, stats) = retry(upstream.clone(), policy);

    let answer = svc.oneshot(request(GET_PRODUCT, "ten bytes!")).await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "ten bytes!");
    assert_eq!(read(&stats.counters.attempts), 1);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn under_the_deadline_layer_a_timed_out_call_is_counted_once() {
    let upstream = Upstream::new(|_| Answer::Hang);
    let mut policy = policy();
    policy.timeout = Duration::from_millis(300);
    let stats = MeshStats::default().upstream("catalog");
    let rx = watch::channel(Arc::new(policy)).1;
    let svc = crate::deadline::Deadline::new(
        Retry::new(upstream.clone(), rx.clone(), stats.clone()),
        rx,
        stats.clone(),
    );
    let start = Instant::now();

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), Some(Code::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(read(&stats.counters.calls), 1);
    assert_eq!(read(&stats.counters.deadline_exceeded), 1);
    assert_eq!(read(&stats.counters.failures), 1);
}
