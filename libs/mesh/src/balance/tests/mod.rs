//! The balancer's tests.

use super::*;
use crate::discovery;
use crate::outlier::tests::policy;
use crate::policy::UpstreamPolicy;
use crate::stats::UpstreamStats;
use crate::stats::{EndpointState, MeshStats};
use crate::{BoxError, Request, Response};
use futures::channel::mpsc;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;
use tower::ServiceExt;
use tower::discover::Change;

fn request() -> Request {
    http::Request::new(crate::Body::empty())
}

/// An endpoint that answers after `delay`, UNAVAILABLE if `failing`,
/// naming itself in an `endpoint` header.
fn endpoint(
    address: &str,
    delay: Duration,
    failing: bool,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + use<> {
    let address = address.to_string();
    tower::service_fn(move |_: Request| {
        let address = address.clone();
        async move {
            tokio::time::sleep(delay).await;
            let mut rsp = if failing {
                crate::status::response(tonic::Status::unavailable("down"))
            } else {
                Response::new(crate::Body::empty())
            };
            rsp.headers_mut()
                .insert("endpoint", address.parse().unwrap());
            Ok(rsp)
        }
    })
}

fn served_by(rsp: &Response) -> String {
    rsp.headers()
        .get("endpoint")
        .map_or("balancer", |v| v.to_str().unwrap())
        .to_string()
}

fn setup(
    f: impl FnOnce(&mut UpstreamPolicy),
) -> (watch::Receiver<Arc<UpstreamPolicy>>, Arc<UpstreamStats>) {
    let mut p = policy();
    f(&mut p);
    let stats = MeshStats::default().upstream("catalog");
    (watch::channel(Arc::new(p)).1, stats)
}

async fn tally<S>(b: &S, calls: usize) -> BTreeMap<String, usize>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone,
{
    let mut seen = BTreeMap::new();
    for _ in 0..calls {
        let rsp = b.clone().oneshot(request()).await.unwrap();
        *seen.entry(served_by(&rsp)).or_default() += 1;
    }
    seen
}

#[test]
fn a_balancer_can_be_shared_between_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Balancer<tonic::transport::Channel>>();
}

#[tokio::test(start_paused = true)]
async fn a_new_ewma_decay_applies_to_the_estimates_already_made() {
    let stats = MeshStats::default().upstream("catalog");
    let track = Track::new((), stats.endpoint("http://a:1"), Duration::from_secs(10));
    let later = Instant::now() + Duration::from_secs(1);
    let rtt = DEFAULT_RTT.as_nanos() as f64;
    // Ten seconds of decay: a second later it kept e^-0.1 of itself.
    assert!((track.load(later) / rtt - (-0.1f64).exp()).abs() < 1e-6);
    // A tenth of a second: the same second leaves nearly nothing.
    track.set_decay(Duration::from_millis(100));
    assert!(track.load(later) / rtt < 1e-4);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_the_faster_endpoint() {
    let (policy, stats) = setup(|_| {});
    let discover = discovery::static_list(
        ["http://fast:1", "http://slow:1"].map(String::from),
        |a: &str| {
            let delay = if a.contains("fast") { 1 } else { 50 };
            endpoint(a, Duration::from_millis(delay), false)
        },
    );
    let b = Balancer::new(discover, policy, stats.clone());
    tally(&b, 20).await; // warm-up

    let seen = tally(&b, 1000).await;
    let fast = seen.get("http://fast:1").copied().unwrap_or(0);
    assert!(fast > 800, "{seen:?}");

    let ewma = |a: &str| stats.endpoint(a).ewma_micros.load(Ordering::Relaxed);
    assert!(
        (1_000..2_000).contains(&ewma("http://fast:1")),
        "{}",
        ewma("http://fast:1")
    );
    assert!(ewma("http://slow:1") >= 40_000, "{}", ewma("http://slow:1"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_then_readmitted() {
    let (policy, stats) = setup(|p| {
        p.outlier.consecutive_failures = 3;
        p.outlier.base_ejection = Duration::from_secs(10);
    });
    let discover = discovery::static_list(
        ["http://good:1", "http://bad:1"].map(String::from),
        |a: &str| {
            let bad = a.contains("bad");
            endpoint(a, Duration::from_millis(if bad { 0 } else { 5 }), bad)
        },
    );
    let b = Balancer::new(discover, policy, stats.clone());

    let seen = tally(&b, 200).await;
    assert!(
        seen.get("http://bad:1").copied().unwrap_or(0) <= 3,
        "{seen:?}"
    );
    assert!(matches!(
        stats.endpoint("http://bad:1").state(),
        EndpointState::Ejected { .. }
    ));
    assert_eq!(crate::stats::read(&stats.counters.ejections), 1);

    tokio::time::sleep(Duration::from_secs(10)).await;
    let seen = tally(&b, 200).await;
    assert!(
        seen.contains_key("http://bad:1"),
        "readmitted and tried: {seen:?}"
    );
    assert_eq!(
        crate::stats::read(&stats.counters.ejections),
        2,
        "and ejected again"
    );
}

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_ejected_calls_fail_fast_with_unavailable() {
    let (policy, stats) = setup(|p| {
        p.outlier.consecutive_failures = 1;
        p.outlier.max_ejected_percent = 100;
        p.connect_timeout = Duration::from_millis(200);
    });
    let discover =
        discovery::static_list(["http://a:1", "http://b:1"].map(String::from), |a: &str| {
            endpoint(a, Duration::from_millis(1), true)
        });
    let b = Balancer::new(discover, policy, stats.clone());
    let seen = tally(&b, 2).await;
    assert_eq!(seen.values().sum::<usize>(), 2);
    assert!(!seen.contains_key("balancer"), "{seen:?}");
    assert_eq!(crate::stats::read(&stats.counters.ejections), 2);

    let t0 = Instant::now();
    let rsp = b.clone().oneshot(request()).await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(200),
        "waited connect_timeout once"
    );
    assert_eq!(served_by(&rsp), "balancer");
    assert_eq!(
        crate::status::header_code(&rsp),
        Some(tonic::Code::Unavailable)
    );

    let t0 = Instant::now();
    let rsp = b.clone().oneshot(request()).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "then at once");
    assert_eq!(
        crate::status::header_code(&rsp),
        Some(tonic::Code::Unavailable)
    );
}

#[tokio::test(start_paused = true)]
async fn calls_wait_for_a_first_endpoint_then_recover_from_failing_fast() {
    let (policy, stats) = setup(|p| p.connect_timeout = Duration::from_millis(200));
    let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
    let b = Balancer::new(rx, policy, stats);

    let rsp = b.clone().oneshot(request()).await.unwrap();
    assert_eq!(
        crate::status::header_code(&rsp),
        Some(tonic::Code::Unavailable)
    );

    let a = endpoint("http://a:1", Duration::from_millis(1), false);
    tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), a)))
        .unwrap();
    let rsp = b.clone().oneshot(request()).await.unwrap();
    assert_eq!(served_by(&rsp), "http://a:1");
}

#[tokio::test(start_paused = true)]
async fn every_caller_waiting_for_an_endpoint_is_woken_when_one_appears() {
    let (policy, stats) = setup(|p| p.connect_timeout = Duration::from_secs(5));
    let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
    let b = Balancer::new(rx, policy, stats);
    let waiting: Vec<_> = (0..50)
        .map(|_| tokio::spawn(b.clone().oneshot(request())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "nothing to call yet"
    );

    // Readiness comes from another task, as a real connection's would.
    let a = endpoint("http://a:1", Duration::from_millis(1), false);
    tokio::spawn(async move {
        tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), a)))
            .unwrap();
        std::future::pending::<()>().await
    });
    for call in waiting {
        let rsp = tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .expect("woken well before the connect timeout")
            .unwrap()
            .unwrap();
        assert_eq!(served_by(&rsp), "http://a:1");
    }
}

#[tokio::test(start_paused = true)]
async fn removing_an_endpoint_does_not_break_its_calls_in_flight() {
    let (policy, stats) = setup(|_| {});
    let (tx, rx) = mpsc::unbounded::<Result<Change<String, _>, Infallible>>();
    let slow = endpoint("http://a:1", Duration::from_millis(100), false);
    tx.unbounded_send(Ok(Change::Insert("http://a:1".into(), slow)))
        .unwrap();
    let b = Balancer::new(rx, policy, stats.clone());

    let in_flight = tokio::spawn(b.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        stats
            .endpoint("http://a:1")
            .in_flight
            .load(Ordering::Relaxed),
        1
    );

    tx.unbounded_send(Ok(Change::Remove("http://a:1".into())))
        .unwrap();
    let other = endpoint("http://b:1", Duration::from_millis(1), false);
    tx.unbounded_send(Ok(Change::Insert("http://b:1".into(), other)))
        .unwrap();
    let rsp = b.clone().oneshot(request()).await.unwrap();
    assert_eq!(served_by(&rsp), "http://b:1");
    assert!(
        stats.endpoints().iter().all(|e| e.address != "http://a:1"),
        "a removed endpoint leaves the stats"
    );

    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(served_by(&rsp), "http://a:1");
    assert_eq!(crate::status::header_code(&rsp), None, "answered normally");
}

/// A gRPC server answering every call OK (trailers-only), naming
/// itself in an `endpoint` header.
#[derive(Clone)]
struct Named(String);

impl tonic::server::NamedService for Named {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<crate::Body>> for Named {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<crate::Body>) -> Self::Future {
        let mut rsp = crate::status::response(tonic::Status::ok(""));
        rsp.headers_mut()
            .insert("endpoint", self.0.parse().unwrap());
        futures::future::ready(Ok(rsp))
    }
}

/// Serves [`Named`] on `listener` until the sender is dropped or used.
fn serve(
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let address = discovery::address_of("http", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(Named(address))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    (stop, server)
}

/// Real calls through `b`: who answered (`error` for an error).
async fn real_calls<S>(b: &S, n: usize) -> BTreeMap<String, usize>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone,
{
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut req = request();
        *req.uri_mut() = "/test.Echo/Call".parse().unwrap();
        let who = match b.clone().oneshot(req).await {
            Ok(rsp) => served_by(&rsp),
            Err(_) => "error".to_string(),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_stopped_endpoint_is_ejected_and_readmitted_once_it_is_back() {
    let (policy, stats) = setup(|p| {
        p.outlier.consecutive_failures = 2;
        p.outlier.base_ejection = Duration::from_millis(300);
        p.connect_timeout = Duration::from_millis(100);
    });
    let listen = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (a, b) = (listen().await.unwrap(), listen().await.unwrap());
    let a_address = discovery::address_of("http", a.local_addr().unwrap());
    let b_socket = b.local_addr().unwrap();
    let b_address = discovery::address_of("http", b_socket);
    let (_stop_a, _) = serve(a);
    let (stop_b, b_server) = serve(b);
    let discover = discovery::static_list([a_address.clone(), b_address.clone()], |addr: &str| {
        crate::connection::Connection::new(addr, Duration::from_millis(100)).unwrap()
    });
    let balancer = Balancer::new(discover, policy, stats.clone());

    let seen = real_calls(&balancer, 40).await;
    assert!(
        seen.contains_key(&a_address) && seen.contains_key(&b_address),
        "{seen:?}"
    );

    stop_b.send(()).unwrap();
    b_server.await.unwrap();
    // The lost connection, then each refused reconnection (one per
    // not-ready backoff) counts against b; meanwhile calls go to a.
    let mut seen = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(2);
    while !matches!(
        stats.endpoint(&b_address).state(),
        EndpointState::Ejected { .. }
    ) && Instant::now() < until
    {
        for (k, v) in real_calls(&balancer, 10).await {
            *seen.entry(k).or_default() += v;
        }
    }
    assert!(seen.get("error").copied().unwrap_or(0) <= 2, "{seen:?}");
    assert!(!seen.contains_key(&b_address), "{seen:?}");
    match stats.endpoint(&b_address).state() {
        EndpointState::Ejected { reason, .. } => {
            assert_eq!(reason, crate::stats::EjectionReason::ConnectFailure)
        }
        s => panic!("{s:?}"),
    }

    let (_stop_b, _) = serve(tokio::net::TcpListener::bind(b_socket).await.unwrap());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let seen = real_calls(&balancer, 40).await;
    assert!(
        seen.contains_key(&b_address),
        "readmitted and reconnected: {seen:?}"
    );
    assert!(!seen.contains_key("error"), "{seen:?}");
    assert_eq!(stats.endpoint(&b_address).state(), EndpointState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn track_keeps_in_flight_and_latency() {
    let stats = MeshStats::default()
        .upstream("catalog")
        .endpoint("http://a:1");
    let mut t = Track::new(
        endpoint("http://a:1", Duration::from_millis(20), false),
        stats.clone(),
        Duration::from_secs(10),
    );
    t.ready().await.unwrap();
    let one = t.call(request());
    t.ready().await.unwrap();
    let two = t.call(request());
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 2);
    one.await.unwrap();
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 1);
    drop(two);
    assert_eq!(
        stats.in_flight.load(Ordering::Relaxed),
        0,
        "a dropped call is no longer in flight"
    );
    assert_eq!(stats.ewma_micros.load(Ordering::Relaxed), 20_000);
}

mod tried;
