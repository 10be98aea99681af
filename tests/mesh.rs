//! The mesh end to end: three real catalog replicas behind a real orders
//! service, faults made for real (`kill -9`, live policy reloads that make
//! a replica slow or failing), load from concurrent clients calling
//! PlaceOrder, which reads prices from the catalog through the mesh.

use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{GetPolicyRequest, GetStatsRequest};
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{NewOrderLine, PlaceOrderRequest};
use shop_testkit::stack::{Stack, StackOptions};
use shop_testkit::{eventually, tools};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const REPLICAS: [&str; 3] = ["catalog", "catalog-2", "catalog-3"];

/// Three catalog replicas (each with a live-reloaded config file) and
/// orders balancing over them.
struct Mesh {
    stack: Stack,
    product_id: String,
    configs: BTreeMap<String, PathBuf>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(orders_env: Vec<(String, String)>) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let mut configs = BTreeMap::new();
        let mut instance_env = BTreeMap::new();
        for replica in REPLICAS {
            let path = dir.path().join(format!("{replica}.toml"));
            std::fs::write(&path, "[server.mesh]\n").unwrap();
            instance_env.insert(
                replica.to_string(),
                vec![("SHOP_CONFIG".to_string(), path.display().to_string())],
            );
            configs.insert(replica.to_string(), path);
        }
        let stack = Stack::start_with(StackOptions {
            services: vec!["catalog".into(), "orders".into()],
            replicas: BTreeMap::from([("catalog".to_string(), 3)]),
            instance_env,
            service_env: BTreeMap::from([("orders".to_string(), orders_env)]),
            env: vec![("RUST_LOG".into(), "info".into())],
            ..StackOptions::default()
        })
        .await
        .unwrap();
        let product = CatalogServiceClient::connect(stack.service("catalog").url())
            .await
            .unwrap()
            .create_product(CreateProductRequest {
                sku: "MESH-1".into(),
                name: "Mesh test product".into(),
                description: String::new(),
                category: "test".into(),
                price: Some(Money {
                    amount_minor: 1000,
                    currency_code: "EUR".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        Mesh {
            stack,
            product_id: product.product_id,
            configs,
            _dir: dir,
        }
    }

    async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::connect(self.stack.service("orders").url())
            .await
            .unwrap()
    }

    async fn admin(&self, instance: &str) -> MeshAdminServiceClient<Channel> {
        MeshAdminServiceClient::connect(self.stack.service(instance).url())
            .await
            .unwrap()
    }

    fn request(&self) -> PlaceOrderRequest {
        PlaceOrderRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
            lines: vec![NewOrderLine {
                product_id: self.product_id.clone(),
                quantity: 1,
            }],
            payment_token: "tok_approve".into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Rewrites a replica's config file with `mesh_toml` under
    /// `[server.mesh]` and waits until the replica runs the new policy.
    async fn set_server_policy(&self, replica: &str, mesh_toml: &str) {
        let mut admin = self.admin(replica).await;
        let before = admin
            .get_policy(GetPolicyRequest::default())
            .await
            .unwrap()
            .into_inner()
            .generation;
        std::fs::write(
            &self.configs[replica],
            format!("[server.mesh]\n{mesh_toml}\n"),
        )
        .unwrap();
        eventually(Duration::from_secs(10), || {
            let mut admin = admin.clone();
            async move {
                let generation = admin
                    .get_policy(GetPolicyRequest::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .generation;
                if generation > before {
                    Ok(())
                } else {
                    Err("not reloaded yet".to_string())
                }
            }
        })
        .await
        .unwrap();
    }
}

/// The outcome of one call: when it started (since the load began), how
/// long it took, and its code.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Duration,
    latency: Duration,
    code: Code,
}

/// `clients` concurrent callers placing orders for `duration` (or
/// `max_calls` calls each, whichever comes first).
async fn load(mesh: &Mesh, clients: usize, duration: Duration, max_calls: usize) -> Vec<Outcome> {
    let start = Instant::now();
    let orders = mesh.orders().await;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut orders = orders.clone();
            let requests: Vec<_> = (0..max_calls).map(|_| mesh.request()).collect();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for request in requests {
                    if start.elapsed() >= duration {
                        break;
                    }
                    let t = Instant::now();
                    let code = match orders.place_order(request).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    outcomes.push(Outcome {
                        at: t - start,
                        latency: t.elapsed(),
                        code,
                    });
                }
                outcomes
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|o| o.at);
    all
}

fn p99(outcomes: &[Outcome]) -> Duration {
    let mut l: Vec<_> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    l[(l.len() * 99 / 100).min(l.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_error_after_the_first_second() {
    let mesh = Mesh::start(vec![]).await;

    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // kill -9; the process is reaped when the stack is dropped.
        mesh.stack
            .service("catalog-2")
            .signal(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
    };
    let (outcomes, _) = tokio::join!(load(&mesh, 4, Duration::from_secs(7), 10_000), killer);

    let killed_at = Duration::from_secs(2);
    let before: Vec<_> = outcomes.iter().filter(|o| o.at < killed_at).collect();
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.at >= killed_at + Duration::from_secs(1))
        .collect();
    assert!(before.iter().all(|o| o.code == Code::Ok), "{before:?}");
    assert!(
        after.len() > 50,
        "steady load after the kill: {}",
        after.len()
    );
    let errors: Vec<_> = after.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(
        errors.is_empty(),
        "errors after the first second: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_everything_is_ejected_and_almost_every_call_succeeds() {
    let mesh = Mesh::start(vec![]).await;
    mesh.set_server_policy(
        "catalog-3",
        "[server.mesh.fault]\nabort_percent = 100.0\nabort_code = \"unavailable\"",
    )
    .await;

    let outcomes = load(&mesh, 4, Duration::from_secs(60), 300).await;

    let ok = outcomes.iter().filter(|o| o.code == Code::Ok).count();
    assert_eq!(outcomes.len(), 1200);
    assert!(
        ok * 1000 >= outcomes.len() * 999,
        "{ok} of {} succeeded",
        outcomes.len()
    );

    // MeshAdmin, through the real grpcurl, shows the replica ejected and why.
    let catalog3 = mesh.stack.service("catalog-3").url();
    let out = std::process::Command::new(tools::find("grpcurl").unwrap())
        .args([
            "-plaintext",
            "-d",
            r#"{"upstream":"catalog"}"#,
            &mesh.stack.service("orders").addr().to_string(),
            "shop.mesh.v1.MeshAdminService/ListEndpoints",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ejected = listing
        .split("\"address\"")
        .find(|chunk| chunk.contains(&catalog3))
        .unwrap_or_default();
    assert!(ejected.contains("ENDPOINT_STATE_EJECTED"), "{listing}");
    assert!(ejected.contains("EJECTION_REASON_"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_barely_moves_the_callers_p99() {
    let mesh = Mesh::start(vec![]).await;
    let _ = load(&mesh, 2, Duration::from_secs(30), 50).await;
    let healthy = load(&mesh, 4, Duration::from_secs(60), 150).await;
    assert!(healthy.iter().all(|o| o.code == Code::Ok));

    mesh.set_server_policy(
        "catalog-3",
        "[server.mesh.fault]\ndelay_percent = 100.0\ndelay = \"200ms\"",
    )
    .await;
    let _ = load(&mesh, 2, Duration::from_secs(30), 50).await;
    let slowed = load(&mesh, 4, Duration::from_secs(60), 150).await;

    assert!(slowed.iter().all(|o| o.code == Code::Ok));
    let (healthy_p99, slowed_p99) = (p99(&healthy), p99(&slowed));
    assert!(
        slowed_p99.as_secs_f64() <= 1.5 * healthy_p99.as_secs_f64(),
        "p99 {slowed_p99:?} with a slow replica vs {healthy_p99:?} healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_failing_make_calls_fail_fast_within_the_retry_budget() {
    let mesh = Mesh::start(vec![]).await;
    for replica in REPLICAS {
        mesh.set_server_policy(
            replica,
            "[server.mesh.fault]\nabort_percent = 100.0\nabort_code = \"unavailable\"",
        )
        .await;
    }

    let started = Instant::now();
    let outcomes = load(&mesh, 4, Duration::from_secs(60), 50).await;
    let elapsed = started.elapsed();
    assert!(
        outcomes.iter().all(|o| o.code == Code::Unavailable),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| o.latency < Duration::from_secs(1)),
        "fail fast: {:?}",
        outcomes.iter().map(|o| o.latency).max()
    );
    let stats = mesh
        .admin("orders")
        .await
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let catalog = stats
        .upstreams
        .iter()
        .find(|u| u.upstream == "catalog")
        .expect("catalog upstream stats");
    let counters = catalog.counters.unwrap_or_default();
    let allowed = counters.calls as f64 * 0.2 + 10.0 * (elapsed.as_secs_f64() + 10.0);
    assert!(
        (counters.retries as f64) <= allowed,
        "{} retries for {} calls in {elapsed:?}",
        counters.retries,
        counters.calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_given_at_the_edge_is_honoured_across_every_hop() {
    let mesh = Mesh::start(vec![]).await;
    for replica in REPLICAS {
        mesh.set_server_policy(
            replica,
            "[server.mesh.fault]\ndelay_percent = 100.0\ndelay = \"3s\"",
        )
        .await;
    }

    // The deadline as the edge client sends it (`grpc-timeout`).
    let mut request = tonic::Request::new(mesh.request());
    request
        .metadata_mut()
        .insert("grpc-timeout", "1000m".parse().unwrap());
    let t = Instant::now();
    let err = mesh.orders().await.place_order(request).await.unwrap_err();

    // tonic's channel enforces the same grpc-timeout on the client side, so
    // the caller sees its own timer (CANCELLED "Timeout expired") or the
    // server's DEADLINE_EXCEEDED, whichever lands first.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // The replicas orders called gave up too: each attempt carried what was
    // left of the edge's deadline (or less, the per-try timeout).
    eventually(Duration::from_secs(10), || async {
        let mut seen = 0;
        for replica in REPLICAS {
            seen += mesh
                .admin(replica)
                .await
                .get_stats(GetStatsRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .server
                .map_or(0, |s| s.deadline_exceeded);
        }
        if seen > 0 {
            Ok(())
        } else {
            Err("no replica saw the deadline pass".to_string())
        }
    })
    .await
    .unwrap();
}
