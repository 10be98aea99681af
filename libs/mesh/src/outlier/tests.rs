//! The outlier detector's tests.

use super::*;
use crate::Response;
use crate::policy::{OutlierPolicy, UpstreamPolicy};
use crate::stats::{EjectionReason, EndpointState, UpstreamStats};
use futures::FutureExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;
use tower::ServiceExt;

/// The default policy (every key has a default but `endpoints`).
pub(crate) fn policy() -> UpstreamPolicy {
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    let empty = std::collections::BTreeMap::<String, String>::new();
    let d: serde::de::value::MapDeserializer<'_, _, serde::de::value::Error> =
        empty.into_deserializer();
    UpstreamPolicy::deserialize(d).expect("every key has a default")
}

fn outlier_policy(f: impl FnOnce(&mut OutlierPolicy)) -> watch::Receiver<Arc<UpstreamPolicy>> {
    let mut p = policy();
    p.outlier = OutlierPolicy {
        consecutive_failures: 3,
        failure_rate: None,
        failure_rate_min_requests: 10,
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(30),
        max_ejected_percent: 100,
    };
    f(&mut p.outlier);
    watch::channel(Arc::new(p)).1
}

/// An endpoint answering OK, or UNAVAILABLE while `failing` is set.
fn endpoint(
    failing: &Arc<AtomicBool>,
) -> impl Service<(), Response = Response, Error = std::convert::Infallible, Future: Send> + Clone + use<>
{
    let failing = failing.clone();
    tower::service_fn(move |()| {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            Ok(if failing {
                crate::status::response(tonic::Status::unavailable("down"))
            } else {
                Response::new(crate::Body::empty())
            })
        }
    })
}

fn is_ready<S: Service<()>>(svc: &mut S) -> bool {
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .now_or_never()
        .is_some()
}

async fn calls<S>(svc: &mut S, n: usize)
where
    S: Service<(), Response = Response, Error = std::convert::Infallible>,
{
    for _ in 0..n {
        svc.ready().await.unwrap();
        svc.call(()).await.unwrap();
    }
}

fn pool(policy: watch::Receiver<Arc<UpstreamPolicy>>) -> (Arc<EjectionPool>, Arc<UpstreamStats>) {
    let stats = crate::stats::MeshStats::default().upstream("catalog");
    (EjectionPool::new(policy, stats.clone()), stats)
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_is_ejected_after_consecutive_failures_and_readmitted_after_the_ejection_time()
{
    let (pool, stats) = pool(outlier_policy(|_| {}));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);

    calls(&mut a, 2).await;
    assert!(is_ready(&mut a), "two failures are not three");
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a), "ejected");
    assert_eq!(pool.ejected(), 1);
    assert_eq!(stats::read(&stats.counters.ejections), 1);
    let ep = stats.endpoint("http://a:1");
    assert_eq!(stats::read(&ep.requests), 3);
    assert_eq!(stats::read(&ep.failures), 3);
    match ep.state() {
        EndpointState::Ejected {
            reason,
            count,
            since,
            until,
        } => {
            assert_eq!(reason, EjectionReason::ConsecutiveFailures);
            assert_eq!(count, 1);
            assert_eq!(until.duration_since(since).unwrap(), Duration::from_secs(1));
        }
        s => panic!("{s:?}"),
    }

    let t0 = Instant::now();
    a.ready().await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "readmitted at the end of its ejection"
    );
    assert_eq!(ep.state(), EndpointState::Healthy);
    assert_eq!(pool.ejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn attempts_cut_by_their_per_try_timeout_count_and_abandoned_ones_do_not() {
    let (pool, stats) = pool(outlier_policy(|_| {}));
    // An endpoint that never answers (a frozen peer).
    let hung = tower::service_fn(|_: http::Request<()>| {
        std::future::pending::<Result<Response, std::convert::Infallible>>()
    });
    let mut a = Outlier::new(hung, "http://a:1", &pool);
    let _b = Outlier::new(hung, "http://b:1", &pool);
    let ready = |a: &mut Outlier<_>| {
        std::future::poll_fn(|cx| Service::<http::Request<()>>::poll_ready(a, cx))
            .now_or_never()
            .is_some()
    };
    let attempt = |per_try: Option<Duration>| {
        let mut request = http::Request::new(());
        if let Some(t) = per_try {
            request
                .extensions_mut()
                .insert(AttemptDeadline(Instant::now() + t));
        }
        request
    };
    let give_up_after = |a: &mut Outlier<_>, request, after| {
        let call = a.call(request);
        async move {
            assert!(tokio::time::timeout(after, call).await.is_err());
        }
    };
    let ms = Duration::from_millis;
    let ep = stats.endpoint("http://a:1");

    // Dropped before its per-try deadline (a hedge that lost), or
    // bounded by the caller's deadline only: no outcome.
    for _ in 0..3 {
        give_up_after(&mut a, attempt(Some(ms(100))), ms(50)).await;
        give_up_after(&mut a, attempt(None), ms(200)).await;
    }
    assert!(ready(&mut a));
    assert_eq!(stats::read(&ep.failures), 0);

    // Cut at its per-try deadline: a failure of this endpoint.
    for _ in 0..3 {
        give_up_after(&mut a, attempt(Some(ms(100))), ms(100)).await;
    }
    assert_eq!(stats::read(&ep.failures), 3);
    assert!(!ready(&mut a), "ejected after three timed-out attempts");
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_count() {
    let (pool, _) = pool(outlier_policy(|_| {}));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
    calls(&mut a, 2).await;
    failing.store(false, Ordering::SeqCst);
    calls(&mut a, 1).await;
    failing.store(true, Ordering::SeqCst);
    calls(&mut a, 2).await;
    assert!(is_ready(&mut a));
}

#[tokio::test(start_paused = true)]
async fn the_second_ejection_lasts_twice_the_first() {
    let (pool, stats) = pool(outlier_policy(|_| {}));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);

    let mut ejections = vec![];
    for _ in 0..3 {
        calls(&mut a, 3).await;
        assert!(!is_ready(&mut a));
        let t0 = Instant::now();
        a.ready().await.unwrap();
        ejections.push(t0.elapsed());
    }
    assert_eq!(
        ejections,
        [1, 2, 3].map(Duration::from_secs),
        "the n-th ejection lasts n times the base"
    );
    assert_eq!(stats::read(&stats.counters.ejections), 3);
}

/// Fails `a` three times and waits for its readmission: how long it took.
async fn eject_and_wait<S>(a: &mut S) -> Duration
where
    S: Service<(), Response = Response, Error = std::convert::Infallible>,
{
    calls(a, 3).await;
    let t0 = Instant::now();
    a.ready().await.unwrap();
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped_and_decays_while_in_the_pool() {
    let (pool, _) = pool(outlier_policy(|o| {
        o.max_ejection = Duration::from_millis(2500)
    }));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
    assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(1));
    assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(2));
    assert_eq!(
        eject_and_wait(&mut a).await,
        Duration::from_millis(2500),
        "max_ejection"
    );
    // Two intervals in the pool take the multiplier from 3 to 1.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(eject_and_wait(&mut a).await, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_ejected_share_never_exceeds_its_cap() {
    let (pool, stats) = pool(outlier_policy(|o| o.max_ejected_percent = 34));
    let failing = Arc::new(AtomicBool::new(true));
    let mut all: Vec<_> = ["http://a:1", "http://b:1", "http://c:1"]
        .into_iter()
        .map(|a| Outlier::new(endpoint(&failing), a, &pool))
        .collect();
    for _ in 0..5 {
        for svc in all.iter_mut() {
            if is_ready(svc) {
                calls(svc, 3).await;
            }
        }
        assert_eq!(pool.ejected(), 1, "3 endpoints at 34%: one out at most");
    }
    let ready = all
        .iter_mut()
        .filter_map(|s| is_ready(s).then_some(()))
        .count();
    assert_eq!(ready, 2);
    assert_eq!(stats::read(&stats.counters.ejections), 1);

    // Once the first is readmitted, another one may go (at its next
    // failure: its counts kept going).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready: Vec<usize> = (0..3).filter(|&i| is_ready(&mut all[i])).collect();
    assert_eq!(ready.len(), 3);
    assert_eq!(pool.ejected(), 0);
    calls(&mut all[1], 1).await;
    assert_eq!(pool.ejected(), 1);
}

#[test]
fn the_cap_rounds_down_but_lets_one_go_among_several() {
    assert_eq!(EjectionPool::max_ejected(3, 34), 1);
    assert_eq!(EjectionPool::max_ejected(3, 50), 1);
    assert_eq!(EjectionPool::max_ejected(4, 50), 2);
    assert_eq!(EjectionPool::max_ejected(2, 10), 1);
    assert_eq!(EjectionPool::max_ejected(1, 50), 0, "a sole endpoint stays");
    assert_eq!(EjectionPool::max_ejected(1, 100), 1);
    assert_eq!(EjectionPool::max_ejected(5, 0), 0, "0% disables ejection");
    assert_eq!(EjectionPool::max_ejected(0, 50), 0);
}

#[tokio::test(start_paused = true)]
async fn a_high_failure_rate_ejects_without_consecutive_failures() {
    let (pool, stats) = pool(outlier_policy(|o| {
        o.consecutive_failures = 0;
        o.failure_rate = Some(0.5);
        o.failure_rate_min_requests = 10;
    }));
    let failing = Arc::new(AtomicBool::new(false));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
    // Alternate: never two failures in a row, half of them failures.
    for i in 0..9 {
        failing.store(i % 2 == 0, Ordering::SeqCst);
        calls(&mut a, 1).await;
        assert!(is_ready(&mut a), "not judged before 10 calls");
    }
    failing.store(false, Ordering::SeqCst);
    calls(&mut a, 1).await;
    assert!(is_ready(&mut a), "4 of 10 is below 50%");
    failing.store(true, Ordering::SeqCst);
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a), "6 of 11");
    match stats.endpoint("http://a:1").state() {
        EndpointState::Ejected { reason, .. } => {
            assert_eq!(reason, EjectionReason::FailureRate)
        }
        s => panic!("{s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_window_starts_afresh_each_interval() {
    let (pool, _) = pool(outlier_policy(|o| {
        o.consecutive_failures = 0;
        o.failure_rate = Some(0.5);
        o.failure_rate_min_requests = 4;
    }));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let _b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
    calls(&mut a, 3).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    calls(&mut a, 3).await;
    assert!(is_ready(&mut a), "3 calls per window, 4 needed");
    calls(&mut a, 1).await;
    assert!(!is_ready(&mut a));
}

#[tokio::test(start_paused = true)]
async fn answers_about_the_request_are_not_failures() {
    let (pool, stats) = pool(outlier_policy(|_| {}));
    let svc = tower::service_fn(|()| async {
        Ok::<_, std::convert::Infallible>(crate::status::response(tonic::Status::not_found(
            "no such product",
        )))
    });
    let mut a = Outlier::new(svc, "http://a:1", &pool);
    let _b = Outlier::new(svc, "http://b:1", &pool);
    calls(&mut a, 10).await;
    assert!(is_ready(&mut a));
    assert_eq!(stats::read(&stats.endpoint("http://a:1").failures), 0);
}

#[tokio::test(start_paused = true)]
async fn errors_eject_as_connect_failures() {
    let (pool, stats) = pool(outlier_policy(|_| {}));
    let svc = tower::service_fn(|()| async { Err::<Response, _>("connection refused") });
    let mut a = Outlier::new(svc, "http://a:1", &pool);
    let _b = Outlier::new(svc, "http://b:1", &pool);
    for _ in 0..3 {
        a.ready().await.unwrap();
        assert!(a.call(()).await.is_err(), "the error is passed on");
    }
    assert!(!is_ready(&mut a));
    match stats.endpoint("http://a:1").state() {
        EndpointState::Ejected { reason, .. } => {
            assert_eq!(reason, EjectionReason::ConnectFailure)
        }
        s => panic!("{s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_poll_ready_is_held_back_and_counted_not_passed_on() {
    let (pool, stats) = pool(outlier_policy(|o| o.consecutive_failures = 2));
    let (mock, mut handle) = tower_test::mock::pair::<(), Response>();
    let mut a = Outlier::new(mock, "http://a:1", &pool);
    let _b = Outlier::new(
        endpoint(&Arc::new(AtomicBool::new(false))),
        "http://b:1",
        &pool,
    );

    handle.send_error("connection refused");
    assert!(!is_ready(&mut a), "not ready rather than failed");
    let t0 = Instant::now();
    a.ready().await.unwrap();
    assert_eq!(
        t0.elapsed(),
        NOT_READY_BACKOFF,
        "asked again after the backoff"
    );
    assert_eq!(
        stats::read(&stats.counters.ejections),
        0,
        "one failure so far"
    );

    handle.send_error("connection refused");
    assert!(!is_ready(&mut a));
    assert_eq!(
        stats::read(&stats.counters.ejections),
        1,
        "the second one ejects"
    );
    match stats.endpoint("http://a:1").state() {
        EndpointState::Ejected { reason, .. } => {
            assert_eq!(reason, EjectionReason::ConnectFailure)
        }
        s => panic!("{s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_removed_endpoint_leaves_the_pool_when_its_last_call_is_done() {
    let (pool, _) = pool(outlier_policy(|_| {}));
    let failing = Arc::new(AtomicBool::new(true));
    let mut a = Outlier::new(endpoint(&failing), "http://a:1", &pool);
    let b = Outlier::new(endpoint(&failing), "http://b:1", &pool);
    assert_eq!(pool.members(), 2);
    calls(&mut a, 2).await;
    a.ready().await.unwrap();
    let in_flight = a.call(());
    drop(a);
    assert_eq!(pool.members(), 2, "its call still holds it");
    in_flight.await.unwrap();
    assert_eq!(pool.members(), 1);
    assert_eq!(pool.ejected(), 0, "its ejection slot went with it");
    drop(b);
    assert_eq!(pool.members(), 0);
}
