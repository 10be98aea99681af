//! Which calls are retried.

use super::*;

// --- which calls are retried ---

#[tokio::test(start_paused = true)]
async fn a_read_failing_unavailable_once_is_retried_with_the_same_body() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::Fail(Code::Unavailable),
        _ => Answer::Ok,
    });
    let (svc, stats) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "product 42")).await;

    assert_eq!(code(&answer), None, "a success");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, "product 42");
    assert_eq!(seen[1].body, "product 42");
    assert_eq!(read(&stats.counters.attempts), 2);
    assert_eq!(read(&stats.counters.retries), 1);
    assert_eq!(read(&stats.counters.failures), 0);
}

#[tokio::test(start_paused = true)]
async fn a_method_the_contract_does_not_mark_safe_is_not_retried() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let (svc, stats) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(CREATE_PRODUCT, "new product")).await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].body, "new product");
    assert_eq!(read(&stats.counters.attempts), 1);
    assert_eq!(read(&stats.counters.retries), 0);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn codes_outside_retry_on_are_not_retried() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Internal));
    let (svc, stats) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "")).await;

    assert_eq!(code(&answer), Some(Code::Internal));
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transport_error_is_retried_as_unavailable() {
    let upstream = Upstream::new(|n| match n {
        0 => Answer::TransportError,
        _ => Answer::Ok,
    });
    let (svc, _) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), None);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_max_attempts_and_the_last_failure_is_returned() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Unavailable));
    let (svc, stats) = retry(upstream.clone(), policy());

    let answer = svc.oneshot(request(GET_PRODUCT, "x")).await;

    assert_eq!(code(&answer), Some(Code::Unavailable));
    assert_eq!(upstream.seen().len(), 3);
    assert_eq!(read(&stats.counters.retries), 2);
    assert_eq!(read(&stats.counters.failures), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_policy_applies_to_the_next_call() {
    let upstream = Upstream::new(|_| Answer::Fail(Code::Internal));
    let stats = MeshStats::default().upstream("catalog");
    let (tx, rx) = watch::channel(Arc::new(policy()));
    let svc = Retry::new(upstream.clone(), rx, stats);

    svc.clone().oneshot(request(GET_PRODUCT, "")).await.unwrap();
    assert_eq!(upstream.seen().len(), 1, "internal is not retried");

    let mut changed = policy();
    changed.retry.on.push(GrpcCode(Code::Internal));
    tx.send(Arc::new(changed)).unwrap();
    svc.oneshot(request(GET_PRODUCT, "")).await.unwrap();
    assert_eq!(upstream.seen().len(), 4, "now it is, up to max_attempts");
}
