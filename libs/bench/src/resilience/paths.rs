//! The three ways a caller reaches the replicas: the mesh client, the
//! Envoy sidecars (the client's outbound sidecar in front of each
//! replica's inbound sidecar, mTLS between them), and bare tonic channels
//! taken in turn with no resilience at all.

use crate::envoy::{Certs, Envoy, inbound, outbound};
use shop_identity::SpiffeId;
use shop_mesh::client::MeshChannel;
use shop_mesh::policy::{ServerPolicy, UpstreamPolicy};
use shop_proto::shop::bench::v1::replica_service_client::ReplicaServiceClient;
use shop_proto::shop::bench::v1::{ReadRequest, WriteRequest};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::Channel;

/// The replicas' contract.
pub const SERVICE: &str = "shop.bench.v1.ReplicaService";
/// The upstream's name in the mesh client (and its expected identity).
pub const UPSTREAM: &str = "replica";

/// How a path sends a call.
#[derive(Clone)]
pub enum Callers {
    /// The mesh client, to every replica's mesh port.
    Mesh(ReplicaServiceClient<MeshChannel>),
    /// Plain channels taken in turn (one: the outbound Envoy; several:
    /// the replicas' bare ports).
    Plain(Arc<(Vec<ReplicaServiceClient<Channel>>, AtomicUsize)>),
}

/// A call's outcome: OK or the gRPC code.
pub type Outcome = Result<(), tonic::Code>;

impl Callers {
    /// Reads one key, or writes one with a fresh idempotency key, within
    /// `deadline` (sent as `grpc-timeout` and kept here).
    pub async fn call(&self, write: bool, key: u32, deadline: Duration) -> Outcome {
        let key = format!("k{key}");
        let call = async {
            match self {
                Callers::Mesh(client) => one(client.clone(), write, key, deadline).await,
                Callers::Plain(plain) => {
                    let (clients, next) = &**plain;
                    let i = next.fetch_add(1, Ordering::Relaxed) % clients.len();
                    one(clients[i].clone(), write, key, deadline).await
                }
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(tonic::Code::DeadlineExceeded),
        }
    }
}

async fn one<T>(
    mut client: ReplicaServiceClient<T>,
    write: bool,
    key: String,
    deadline: Duration,
) -> Outcome
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let result = if write {
        let mut request = tonic::Request::new(WriteRequest {
            key,
            amount: 1,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        });
        request.set_timeout(deadline);
        client.write(request).await.map(drop)
    } else {
        let mut request = tonic::Request::new(ReadRequest { key });
        request.set_timeout(deadline);
        client.read(request).await.map(drop)
    };
    result.map_err(|s| s.code())
}

/// The mesh's policy for the replicas, which both data planes run.
pub fn upstream_policy(mesh_ports: &[u16]) -> UpstreamPolicy {
    let endpoints: Vec<String> = mesh_ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let mut policy = shop_mesh::client::bench_policy(&endpoints[0]);
    policy.endpoints = endpoints;
    policy.timeout = Duration::from_secs(1);
    // Eject on the failure rate too (Envoy: failure_percentage), not only
    // on five failures in a row, which a replica failing one call in five
    // reaches only every few seconds: 10% of at least 20 calls.
    policy.outlier.failure_rate = Some(0.1);
    policy.outlier.failure_rate_min_requests = 20;
    // The caller's own limit (mesh::concurrency): shrinks once calls take
    // twice their usual time and over 20 ms (2% of the deadline).
    policy.adaptive_concurrency.enabled = true;
    policy.adaptive_concurrency.latency_floor = Duration::from_millis(20);
    policy
}

/// The replicas' server policy, which the mesh path meets in each
/// replica's mesh server and the Envoy path in each replica's inbound
/// sidecar: only `allow` may call the contract, and the concurrency limit
/// adapts to latency, as every service runs it in `k8s/`.
pub fn server_policy(allow: &str) -> ServerPolicy {
    let mut policy = ServerPolicy {
        authorization: [(SERVICE.to_string(), vec![allow.to_string()])]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    policy.adaptive_concurrency.enabled = true;
    policy
}

/// The mesh path: one mesh client over every replica's mesh port.
pub fn mesh(
    policy: UpstreamPolicy,
    stats: Arc<shop_mesh::stats::MeshStats>,
    identity: shop_identity::Identity,
    server: SpiffeId,
) -> anyhow::Result<Callers> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
    std::mem::forget(tx);
    let options = shop_mesh::client::Options {
        trace: None,
        tls: Some(shop_mesh::connection::ClientTls {
            identity,
            expected: server,
        }),
    };
    let channel = MeshChannel::with_options(UPSTREAM, rx, stats, options)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Callers::Mesh(ReplicaServiceClient::new(channel)))
}

/// Plain channels to `ports` on loopback, taken in turn.
pub async fn plain(ports: &[u16]) -> anyhow::Result<Callers> {
    let mut clients = Vec::new();
    for port in ports {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        clients.push(ReplicaServiceClient::new(channel));
    }
    Ok(Callers::Plain(Arc::new((clients, AtomicUsize::new(0)))))
}

/// The Envoy sidecars of the Envoy path: one inbound per replica (mTLS in,
/// h2c to the replica's bare port, the server policy's authorization), one
/// outbound for the caller (h2c in, the upstream policy, mTLS out). The
/// outbound one is last; its port is returned.
pub fn sidecars(
    dir: &FsPath,
    policy: &UpstreamPolicy,
    server_policy: &ServerPolicy,
    bare_ports: &[u16],
    (client, server): (&Certs, &Certs),
    server_id: &SpiffeId,
    core: &str,
) -> anyhow::Result<(Vec<Envoy>, u16)> {
    let mut envoys = Vec::new();
    let mut inbound_ports = Vec::new();
    for (i, app) in bare_ports.iter().enumerate() {
        let listen = crate::free_port()?;
        let rendered = inbound::render(&inbound::Inbound {
            listen,
            app: *app,
            policy: server_policy,
            tls: Some((server, server_id)),
        });
        envoys.push(Envoy::start(
            dir,
            &format!("inbound-{i}"),
            &rendered.config,
            core,
        )?);
        inbound_ports.push(listen);
    }
    let listen = crate::free_port()?;
    let rendered = outbound::render(&outbound::Outbound {
        listen,
        service: SERVICE,
        policy,
        replicas: &inbound_ports,
        tls: Some((client, server_id)),
    });
    envoys.push(Envoy::start(dir, "outbound", &rendered.config, core)?);
    Ok((envoys, listen))
}
