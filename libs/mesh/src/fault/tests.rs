use super::*;
use crate::policy::{GrpcCode, MethodPolicy};
use crate::status::header_code;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tower::{ServiceExt, service_fn};

const PATH: &str = "/shop.catalog.v1.CatalogService/GetProduct";

fn request() -> crate::Request {
    http::Request::builder()
        .uri(PATH)
        .body(crate::Body::empty())
        .unwrap()
}

/// An inner service that answers OK at once and counts its calls.
fn counting() -> (
    impl Service<crate::Request, Response = crate::Response, Error = crate::BoxError> + Clone,
    Arc<AtomicU64>,
) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let svc = service_fn(move |_req: crate::Request| {
        c.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty())) }
    });
    (svc, calls)
}

fn seeded<P>(layer: FaultLayer<P>) -> FaultLayer<P> {
    layer.with_rng(rand::rngs::StdRng::seed_from_u64(7))
}

#[tokio::test(start_paused = true)]
async fn abort_and_delay_percentages_hold_within_two_points() {
    let policy = FaultPolicy {
        delay_percent: 30.0,
        delay: Duration::from_millis(50),
        abort_percent: 10.0,
        abort_code: GrpcCode(tonic::Code::Unavailable),
    };
    let stats = Arc::new(MeshStats::default());
    let layer = seeded(FaultLayer::new(
        move |_: &str| policy,
        FaultCounters::Server(stats.clone()),
    ));
    let (inner, calls) = counting();
    let mut svc = layer.layer(inner);

    const N: u64 = 10_000;
    let (mut delayed, mut aborted) = (0u64, 0u64);
    for _ in 0..N {
        let start = Instant::now();
        let rsp = svc.ready().await.unwrap().call(request()).await.unwrap();
        if start.elapsed() >= Duration::from_millis(50) {
            delayed += 1;
        }
        if header_code(&rsp) == Some(tonic::Code::Unavailable) {
            aborted += 1;
        }
    }

    let pct = |n: u64| n as f64 * 100.0 / N as f64;
    assert!(
        (pct(delayed) - 30.0).abs() <= 2.0,
        "delayed {}%",
        pct(delayed)
    );
    assert!(
        (pct(aborted) - 10.0).abs() <= 2.0,
        "aborted {}%",
        pct(aborted)
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        N - aborted,
        "aborts skip the inner service"
    );
    assert_eq!(stats::read(&stats.server.faults_delayed), delayed);
    assert_eq!(stats::read(&stats.server.faults_aborted), aborted);
}

#[tokio::test(start_paused = true)]
async fn an_inactive_policy_passes_the_request_through_untouched() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<crate::Request, crate::Response, _>(
        FaultLayer::new(|_: &str| FaultPolicy::default(), FaultCounters::None),
    );
    assert!(svc.poll_ready().is_ready());
    let mut req = request();
    req.headers_mut()
        .insert("x-mark", http::HeaderValue::from_static("1"));
    let fut = svc.call(req);
    let (seen, send) = handle
        .next_request()
        .await
        .expect("the request reaches the inner service");
    assert_eq!(seen.uri().path(), PATH);
    assert_eq!(seen.headers()["x-mark"], "1");
    send.send_response(http::Response::new(crate::Body::empty()));
    let rsp = fut.await.unwrap();
    assert_eq!(header_code(&rsp), None);
}

#[tokio::test(start_paused = true)]
async fn an_inactive_policy_never_draws_from_the_rng() {
    /// Panics if asked for a number.
    struct Untouchable;
    impl RngCore for Untouchable {
        fn next_u32(&mut self) -> u32 {
            panic!("drew a random number for an inactive policy")
        }
        fn next_u64(&mut self) -> u64 {
            panic!("drew a random number for an inactive policy")
        }
        fn fill_bytes(&mut self, _: &mut [u8]) {
            panic!("drew a random number for an inactive policy")
        }
    }
    let layer = FaultLayer::new(|_: &str| FaultPolicy::default(), FaultCounters::None)
        .with_rng(Untouchable);
    let (inner, calls) = counting();
    let svc = layer.layer(inner);
    for _ in 0..10 {
        svc.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::Relaxed), 10);
}

#[tokio::test(start_paused = true)]
async fn a_delay_then_abort_never_reaches_the_inner_service() {
    let policy = FaultPolicy {
        delay_percent: 100.0,
        delay: Duration::from_millis(200),
        abort_percent: 100.0,
        abort_code: GrpcCode(tonic::Code::ResourceExhausted),
    };
    let layer = seeded(FaultLayer::new(move |_: &str| policy, FaultCounters::None));
    let (inner, calls) = counting();
    let start = Instant::now();
    let rsp = layer.layer(inner).oneshot(request()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(header_code(&rsp), Some(tonic::Code::ResourceExhausted));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn client_faults_follow_method_overrides_and_policy_changes() {
    let mut policy: UpstreamPolicy = toml_like_policy();
    policy.methods.insert(
        "GetProduct".into(),
        MethodPolicy {
            fault: Some(FaultPolicy {
                abort_percent: 100.0,
                ..FaultPolicy::default()
            }),
            ..MethodPolicy::default()
        },
    );
    let (tx, rx) = watch::channel(Arc::new(policy.clone()));
    let stats = Arc::new(MeshStats::default());
    let upstream = stats.upstream("catalog");
    let layer = seeded(FaultLayer::client(rx, upstream.clone()));
    let (inner, calls) = counting();
    let svc = layer.layer(inner);

    assert_eq!(
        ClientFaults::new(tx.subscribe()).fault(PATH),
        policy.effective(PATH).fault,
        "the same as the effective policy's"
    );
    let rsp = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(header_code(&rsp), Some(tonic::Code::Unavailable));
    assert_eq!(stats::read(&upstream.counters.faults_aborted), 1);

    policy.methods.clear();
    tx.send(Arc::new(policy)).unwrap();
    let rsp = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(header_code(&rsp), None);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn server_faults_use_the_method_entry_and_spare_health_checks() {
    let abort = FaultPolicy {
        abort_percent: 100.0,
        abort_code: GrpcCode(tonic::Code::Internal),
        ..FaultPolicy::default()
    };
    let policy = ServerPolicy {
        fault: abort,
        methods: [("ListProducts".to_string(), FaultPolicy::default())].into(),
        ..ServerPolicy::default()
    };
    let (_tx, rx) = watch::channel(Arc::new(policy));
    let mut source = ServerFaults::new(rx);
    assert_eq!(source.fault(PATH), abort);
    assert!(
        !source
            .fault("/shop.catalog.v1.CatalogService/ListProducts")
            .is_active()
    );
    assert!(!source.fault("/grpc.health.v1.Health/Check").is_active());
}

fn toml_like_policy() -> UpstreamPolicy {
    UpstreamPolicy {
        keepalive: crate::policy::KeepalivePolicy::default(),
        throttle: Default::default(),
        adaptive_concurrency: Default::default(),
        identity: None,
        endpoints: vec!["http://127.0.0.1:7102".into()],
        dns: None,
        dns_refresh: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        ewma_decay: Duration::from_secs(10),
        retry: Default::default(),
        hedge: None,
        outlier: Default::default(),
        subsets: vec![],
        fault: FaultPolicy::default(),
        methods: Default::default(),
    }
}
