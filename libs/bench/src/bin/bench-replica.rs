//! `bench-replica`: one server replica of `just bench resilience`, serving
//! `shop.bench.v1.ReplicaService` (a NO_SIDE_EFFECTS read and an
//! IDEMPOTENT write de-duplicated by idempotency key, over an in-memory
//! map) and health on two ports of its own choosing or given:
//!
//! - `--bare PORT`: plain tonic, h2c, for the paths that bring their own
//!   data plane (the Envoy sidecar in front of it, or none);
//! - `--mesh PORT`: the mesh's server stack under mutual TLS with the
//!   identity in `--tls DIR`, callers authorized by SPIFFE ID
//!   (`--allow NAME`, a workload of the replica's own namespace), the
//!   concurrency limit adapting to latency
//!   (`shop_bench::resilience::paths::server_policy`).
//!
//! `--work-us N` makes every call burn N us of CPU, as a handler doing
//! real work would. Faults are the application's own, so that every path meets the same
//! one: lines on stdin set them (`delay <ms>`, `fail <percent>`, `ok`).
//! SIGTERM drains: both servers stop accepting, tell their clients with
//! GOAWAY and finish the calls in flight (5 s at most), then the process
//! exits. Prints `ready` once both ports listen.

use anyhow::Context as _;
use rand::Rng as _;
use shop_proto::shop::bench::v1::replica_service_server::{ReplicaService, ReplicaServiceServer};
use shop_proto::shop::bench::v1::{ReadRequest, ReadResponse, WriteRequest, WriteResponse};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The faults set from stdin.
#[derive(Debug, Default)]
struct Faults {
    delay_ms: AtomicU64,
    /// Calls failed with UNAVAILABLE, per million.
    fail_ppm: AtomicU32,
    /// CPU each call burns (`--work-us`): the work a real handler does, so
    /// that the replicas, not the load generator, bound what the run can
    /// serve.
    work: Duration,
}

impl Faults {
    /// Applies a line from stdin; false if it is not a command.
    fn apply(&self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<f64>)) {
            (Some("delay"), Some(Ok(ms))) => self.delay_ms.store(ms as u64, Ordering::Relaxed),
            (Some("fail"), Some(Ok(percent))) => self
                .fail_ppm
                .store((percent * 10_000.0) as u32, Ordering::Relaxed),
            (Some("ok"), None) => {
                self.delay_ms.store(0, Ordering::Relaxed);
                self.fail_ppm.store(0, Ordering::Relaxed);
            }
            _ => return false,
        }
        true
    }

    /// Does the call's work, waits out the delay, then fails the call or
    /// lets it through.
    async fn before_answering(&self) -> Result<(), Status> {
        let began = std::time::Instant::now();
        let mut x = 0u64;
        while began.elapsed() < self.work {
            for i in 0..64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = self.fail_ppm.load(Ordering::Relaxed);
        if fail > 0 && rand::rng().random_range(0..1_000_000) < fail {
            return Err(Status::unavailable("injected failure"));
        }
        Ok(())
    }
}

/// One replica's state.
#[derive(Debug)]
struct Replica {
    name: String,
    faults: Arc<Faults>,
    values: Mutex<HashMap<String, i64>>,
    /// Idempotency keys seen, with the value they answered.
    seen: Mutex<HashMap<String, i64>>,
}

#[tonic::async_trait]
impl ReplicaService for Replica {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.faults.before_answering().await?;
        let key = request.into_inner().key;
        let value = self
            .values
            .lock()
            .expect("not poisoned")
            .get(&key)
            .copied()
            .unwrap_or(0);
        Ok(Response::new(ReadResponse {
            value,
            replica: self.name.clone(),
        }))
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.faults.before_answering().await?;
        let write = request.into_inner();
        if write.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("idempotency_key: required"));
        }
        let mut seen = self.seen.lock().expect("not poisoned");
        if let Some(value) = seen.get(&write.idempotency_key) {
            return Ok(Response::new(WriteResponse {
                value: *value,
                replayed: true,
                replica: self.name.clone(),
            }));
        }
        let mut values = self.values.lock().expect("not poisoned");
        let value = values.entry(write.key).or_default();
        *value += write.amount;
        seen.insert(write.idempotency_key, *value);
        Ok(Response::new(WriteResponse {
            value: *value,
            replayed: false,
            replica: self.name.clone(),
        }))
    }
}

struct Args {
    name: String,
    bare: u16,
    mesh: u16,
    tls: std::path::PathBuf,
    allow: String,
    work_us: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        name: "replica".into(),
        bare: 0,
        mesh: 0,
        tls: std::path::PathBuf::new(),
        allow: "gateway".into(),
        work_us: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--name" => args.name = v()?,
            "--bare" => args.bare = v()?.parse()?,
            "--mesh" => args.mesh = v()?.parse()?,
            "--tls" => args.tls = v()?.into(),
            "--allow" => args.allow = v()?,
            "--work-us" => args.work_us = v()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(!args.tls.as_os_str().is_empty(), "--tls DIR is required");
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _meters = shop_bench::install_meter_provider();
    let faults = Arc::new(Faults {
        work: Duration::from_micros(args.work_us),
        ..Faults::default()
    });
    let replica = Replica {
        name: args.name.clone(),
        faults: faults.clone(),
        values: Mutex::default(),
        seen: Mutex::default(),
    };
    let bare = tokio::net::TcpListener::bind(("127.0.0.1", args.bare)).await?;
    let meshed = tokio::net::TcpListener::bind(("127.0.0.1", args.mesh)).await?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let service = ReplicaServiceServer::new(replica);
    let policy = shop_bench::resilience::paths::server_policy(&args.allow);
    let (_policy_tx, policy_rx) = tokio::sync::watch::channel(Arc::new(policy));
    let stats = Arc::new(shop_mesh::stats::MeshStats::default());
    let layer = shop_mesh::server::ServerLayer::new(policy_rx, stats);
    let identity = shop_identity::Identity::load(&args.tls, shop_identity::ClientAuth::Required)?;

    let stop = tokio_util::sync::CancellationToken::new();
    let a = tonic::transport::Server::builder()
        .add_service(health.clone())
        .add_service(service.clone())
        // Nagle off, as tonic's own `Server::serve` and the runtime's
        // listener have it: the bare path and the Envoy sidecars call here.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(bare).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    let b = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(
            shop_runtime::listener::incoming(
                meshed,
                Some(identity),
                shop_runtime::listener::ConnectionLimits::default(),
            ),
            stop.clone().cancelled_owned(),
        );
    println!("ready");

    // A thread of its own: tokio's stdin would hold the runtime open at
    // exit while the parent keeps the pipe.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if !faults.apply(&line) {
                eprintln!("bench-replica: not a command: {line}");
            }
        }
        // Stdin closed. A parent that is still there may yet SIGTERM us to
        // drain; one that is gone (killed before it could stop us: we were
        // re-parented) never will, so the replica does not outlive its run.
        while std::os::unix::process::parent_id() == parent {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("bench-replica: the run that started it is gone; exiting");
        std::process::exit(1);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let servers = async { tokio::try_join!(a, b) };
    tokio::pin!(servers);
    tokio::select! {
        result = &mut servers => { result?; }
        _ = term.recv() => {
            stop.cancel();
            // Drain: calls in flight finish, for 5 s at most.
            let _ = tokio::time::timeout(Duration::from_secs(5), servers).await;
        }
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_commands_are_parsed() {
        let faults = Faults::default();
        assert!(faults.apply("delay 200"));
        assert!(faults.apply("fail 20"));
        assert_eq!(faults.delay_ms.load(Ordering::Relaxed), 200);
        assert_eq!(faults.fail_ppm.load(Ordering::Relaxed), 200_000);
        assert!(faults.apply("ok"));
        assert_eq!(faults.fail_ppm.load(Ordering::Relaxed), 0);
        assert!(!faults.apply("explode"));
    }
}
