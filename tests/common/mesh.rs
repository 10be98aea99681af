//! Three catalog replicas (each with a live-reloaded config file) behind
//! orders, and a load of concurrent PlaceOrder calls: the mesh suites'
//! fixture.

use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{ClientCounters, GetPolicyRequest, GetStatsRequest};
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{NewOrderLine, PlaceOrderRequest};
use shop_testkit::eventually;
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

pub const REPLICAS: [&str; 3] = ["catalog", "catalog-2", "catalog-3"];

/// Three catalog replicas (each with a live-reloaded config file) and
/// orders balancing over them.
pub struct Mesh {
    pub stack: Stack,
    pub product_id: String,
    configs: BTreeMap<String, PathBuf>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(orders_env: Vec<(String, String)>) -> Mesh {
        Self::start_full(orders_env, vec![]).await
    }

    /// [`Mesh::start`] with `env` for every process.
    pub async fn start_with_env(env: Vec<(String, String)>) -> Mesh {
        Self::start_full(vec![], env).await
    }

    async fn start_full(orders_env: Vec<(String, String)>, env: Vec<(String, String)>) -> Mesh {
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
            env: [("RUST_LOG".to_string(), "info".to_string())]
                .into_iter()
                .chain(env)
                .collect(),
            ..StackOptions::default()
        })
        .await
        .unwrap();
        let product = CatalogServiceClient::new(stack.service("catalog").channel().await.unwrap())
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

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.stack.service("orders").channel().await.unwrap())
    }

    pub async fn admin(&self, instance: &str) -> MeshAdminServiceClient<Channel> {
        MeshAdminServiceClient::new(self.stack.service(instance).channel().await.unwrap())
    }

    /// orders' client counters for its catalog upstream, from MeshAdmin.
    pub async fn catalog_counters(&self) -> ClientCounters {
        let stats = self
            .admin("orders")
            .await
            .get_stats(GetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        stats
            .upstreams
            .into_iter()
            .find(|u| u.upstream == "catalog")
            .expect("catalog upstream stats")
            .counters
            .unwrap_or_default()
    }

    pub fn request(&self) -> PlaceOrderRequest {
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
    pub async fn set_server_policy(&self, replica: &str, mesh_toml: &str) {
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
pub struct Outcome {
    pub at: Duration,
    pub latency: Duration,
    pub code: Code,
}

/// `clients` concurrent callers placing orders for `duration` (or
/// `max_calls` calls each, whichever comes first).
pub async fn load(
    mesh: &Mesh,
    clients: usize,
    duration: Duration,
    max_calls: usize,
) -> Vec<Outcome> {
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

pub fn p99(outcomes: &[Outcome]) -> Duration {
    let mut l: Vec<_> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    l[(l.len() * 99 / 100).min(l.len() - 1)]
}
