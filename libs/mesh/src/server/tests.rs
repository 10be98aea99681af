use super::*;
use crate::context::incoming_deadline;
use crate::status::header_code;
use crate::status::{GRPC_TIMEOUT, PUSHBACK};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_test::mock;

fn request(path: &str, timeout: Option<&'static str>) -> crate::Request {
    let mut builder = http::Request::builder().uri(path);
    if let Some(t) = timeout {
        builder = builder.header(GRPC_TIMEOUT, t);
    }
    builder.body(crate::Body::empty()).unwrap()
}

fn policy(max_concurrency: usize) -> watch::Receiver<Arc<ServerPolicy>> {
    let (_tx, rx) = watch::channel(Arc::new(ServerPolicy {
        max_concurrency,
        shed_pushback: Duration::from_millis(250),
        ..ServerPolicy::default()
    }));
    rx
}

const PATH: &str = "/shop.catalog.v1.CatalogService/GetProduct";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

#[tokio::test(start_paused = true)]
async fn a_slow_call_answers_deadline_exceeded_at_its_deadline() {
    let stats = Arc::new(MeshStats::default());
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let slow = tower::service_fn(move |_req: crate::Request| {
        let seen = seen2.clone();
        async move {
            *seen.lock().unwrap() = Some(incoming_deadline());
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
        }
    });
    let svc = ServerLayer::new(policy(8), stats.clone()).layer(slow);

    let start = Instant::now();
    let rsp = svc.oneshot(request(PATH, Some("300m"))).await.unwrap();

    assert_eq!(header_code(&rsp), Some(tonic::Code::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Some(start + Duration::from_millis(300))),
        "the handler sees the incoming deadline"
    );
    assert_eq!(stats::read(&stats.server.deadline_exceeded), 1);
    assert_eq!(stats.server.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn without_grpc_timeout_there_is_no_deadline() {
    let stats = Arc::new(MeshStats::default());
    let svc = ServerLayer::new(policy(8), stats.clone()).layer(tower::service_fn(
        |_req: crate::Request| async {
            assert_eq!(incoming_deadline(), None);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
        },
    ));
    let rsp = svc.oneshot(request(PATH, None)).await.unwrap();
    assert_eq!(header_code(&rsp), None);
    assert_eq!(stats::read(&stats.server.requests), 1);
    assert_eq!(stats::read(&stats.server.deadline_exceeded), 0);
}

#[tokio::test(start_paused = true)]
async fn beyond_the_limit_calls_are_shed_with_pushback_until_one_finishes() {
    let stats = Arc::new(MeshStats::default());
    let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
    let svc = ServerLayer::new(policy(2), stats.clone()).layer(inner);
    let call = |path: &'static str| {
        let svc = svc.clone();
        tokio::spawn(svc.oneshot(request(path, None)))
    };

    let first = call(PATH);
    let (_, first_send) = handle.next_request().await.unwrap();
    let second = call(PATH);
    let (_, _second_send) = handle.next_request().await.unwrap();

    let start = Instant::now();
    let shed = call(PATH).await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "shed at once");
    assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));
    assert_eq!(shed.headers()[PUSHBACK], "250");
    assert_eq!(stats::read(&stats.server.shed), 1);
    assert_eq!(stats.server.in_flight.load(Ordering::Relaxed), 2);

    first_send.send_response(http::Response::new(crate::Body::empty()));
    let ok = first.await.unwrap().unwrap();
    assert_eq!(header_code(&ok), None);

    let third = call(PATH);
    let (_, third_send) = handle
        .next_request()
        .await
        .expect("a freed slot serves a new call");
    third_send.send_response(http::Response::new(crate::Body::empty()));
    assert_eq!(header_code(&third.await.unwrap().unwrap()), None);
    assert_eq!(stats::read(&stats.server.shed), 1);
    drop(second);
}

#[tokio::test(start_paused = true)]
async fn with_adaptive_concurrency_queueing_lowers_the_limit_and_the_excess_is_shed() {
    use std::sync::atomic::AtomicU64;
    let stats = Arc::new(MeshStats::default());
    let (_tx, policy) = watch::channel(Arc::new(ServerPolicy {
        max_concurrency: 256,
        adaptive_concurrency: crate::adaptive::AdaptivePolicy {
            enabled: true,
            min_limit: 4,
            initial_limit: 32,
            ..Default::default()
        },
        ..ServerPolicy::default()
    }));
    // A handler whose latency the test sets, in ms.
    let latency = Arc::new(AtomicU64::new(10));
    let set = latency.clone();
    let svc = ServerLayer::new(policy, stats.clone()).layer(tower::service_fn(
        move |_req: crate::Request| {
            let ms = latency.load(Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
            }
        },
    ));
    // `waves` rounds of `calls` calls at once; how many were shed.
    let run = |waves: usize, calls: usize| {
        let svc = svc.clone();
        async move {
            let mut shed = 0;
            for _ in 0..waves {
                let answers = futures::future::join_all(
                    (0..calls).map(|_| svc.clone().oneshot(request(PATH, None))),
                )
                .await;
                shed += answers
                    .into_iter()
                    .filter(|a| {
                        header_code(a.as_ref().unwrap()) == Some(tonic::Code::ResourceExhausted)
                    })
                    .count();
            }
            shed
        }
    };
    // Steady: 16 at once, 10 ms each, for 5 s: nothing shed.
    assert_eq!(run(500, 16).await, 0);
    assert!(stats::read(&stats.server.concurrency_limit) >= 32);
    // Calls queue somewhere below: 8 times slower. The limit falls and
    // what exceeds it is shed at once.
    set.store(80, Ordering::Relaxed);
    let shed = run(80, 32).await;
    let limit = stats::read(&stats.server.concurrency_limit);
    assert!(limit < 16, "the limit is still {limit}");
    assert!(shed > 0);
    assert_eq!(stats::read(&stats.server.shed) as usize, shed);
}

#[tokio::test(start_paused = true)]
async fn health_checks_are_never_shed() {
    let stats = Arc::new(MeshStats::default());
    let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
    let svc = ServerLayer::new(policy(1), stats.clone()).layer(inner);
    let call = |path: &'static str| {
        let svc = svc.clone();
        tokio::spawn(svc.oneshot(request(path, None)))
    };

    let _busy = call(PATH);
    let (_, _busy_send) = handle.next_request().await.unwrap();
    let shed = call(PATH).await.unwrap().unwrap();
    assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));

    for _ in 0..3 {
        let health = call(HEALTH);
        let (req, send) = handle
            .next_request()
            .await
            .expect("health reaches the service");
        assert_eq!(req.uri().path(), HEALTH);
        send.send_response(http::Response::new(crate::Body::empty()));
        assert_eq!(header_code(&health.await.unwrap().unwrap()), None);
    }
    assert_eq!(stats::read(&stats.server.shed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_limit_applies_to_the_next_request() {
    let stats = Arc::new(MeshStats::default());
    let (tx, rx) = watch::channel(Arc::new(ServerPolicy {
        max_concurrency: 1,
        ..ServerPolicy::default()
    }));
    let (inner, mut handle) = mock::pair::<crate::Request, crate::Response>();
    let svc = ServerLayer::new(rx, stats.clone()).layer(inner);
    let call = || tokio::spawn(svc.clone().oneshot(request(PATH, None)));

    let _busy = call();
    let _held = handle.next_request().await.unwrap();
    let shed = call().await.unwrap().unwrap();
    assert_eq!(header_code(&shed), Some(tonic::Code::ResourceExhausted));

    tx.send(Arc::new(ServerPolicy {
        max_concurrency: 3,
        ..ServerPolicy::default()
    }))
    .unwrap();
    let _a = call();
    let _b = call();
    assert!(handle.next_request().await.is_some());
    assert!(handle.next_request().await.is_some());
    assert_eq!(stats::read(&stats.server.shed), 1);
}

#[tokio::test(start_paused = true)]
async fn server_faults_abort_calls_but_not_health_checks() {
    let stats = Arc::new(MeshStats::default());
    let (_tx, rx) = watch::channel(Arc::new(ServerPolicy {
        fault: crate::policy::FaultPolicy {
            abort_percent: 100.0,
            ..Default::default()
        },
        ..ServerPolicy::default()
    }));
    let ok = tower::service_fn(|_req: crate::Request| async {
        Ok::<_, crate::BoxError>(http::Response::new(crate::Body::empty()))
    });
    let svc = ServerLayer::new(rx, stats.clone()).layer(ok);
    let rsp = svc.clone().oneshot(request(PATH, None)).await.unwrap();
    assert_eq!(header_code(&rsp), Some(tonic::Code::Unavailable));
    let rsp = svc.oneshot(request(HEALTH, None)).await.unwrap();
    assert_eq!(header_code(&rsp), None);
    assert_eq!(stats::read(&stats.server.faults_aborted), 1);
}

#[tokio::test]
async fn a_real_tonic_server_sheds_calls_but_answers_mesh_admin() {
    use shop_proto::shop::catalog::v1 as catalog;
    use shop_proto::shop::mesh::v1 as pb;
    let stats = Arc::new(MeshStats::default());
    let admin = Arc::new(crate::admin::MeshAdmin::new(stats.clone(), policy(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServerLayer::new(policy(0), stats.clone()))
            .add_service(pb::mesh_admin_service_server::MeshAdminServiceServer::from_arc(admin))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    stopped.await.ok();
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let err = catalog::catalog_service_client::CatalogServiceClient::new(channel.clone())
        .get_product(catalog::GetProductRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(err.metadata().get(PUSHBACK.as_str()).unwrap(), "250");

    let mut request = tonic::Request::new(pb::GetStatsRequest {});
    request.set_timeout(Duration::from_secs(5));
    let counters = pb::mesh_admin_service_client::MeshAdminServiceClient::new(channel)
        .get_stats(request)
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    assert_eq!(
        (counters.requests, counters.in_flight, counters.shed),
        (2, 1, 1)
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
