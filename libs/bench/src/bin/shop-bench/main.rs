//! `shop-bench mesh`: one run comparing, on the same unary RPC
//! (`shop.mesh.v1.MeshAdminService/ListUpstreams`, NO_SIDE_EFFECTS in its
//! contract, so the mesh client's retry path is on it) of the same server
//! process,
//!
//! - (a) **bare**: plain tonic channels to the server's bare port;
//! - (b) **mesh**: the full mesh client stack (deadline, retry with budget,
//!   per-try timeout, split, p2c/peak-EWMA balance, outlier ejection, fault
//!   injection off) to the server's port behind the mesh server stack;
//! - (c) **sidecar**: plain tonic channels through two HAProxy h2c hops
//!   (client-side and server-side proxy), as a sidecar mesh places them;
//! - (d, e, f) **bare-tls**, **mesh-tls**, **sidecar-tls**: the same three
//!   with TLS everywhere, from a CA minted for the run: tonic's own mTLS
//!   (`ServerTlsConfig` / `ClientTlsConfig`); the mesh's mTLS (the
//!   runtime's listener, the mesh client's TLS connections verifying the
//!   server's SPIFFE ID, authorization of the caller); and the two HAProxy
//!   hops with mutual TLS between them (the application to its sidecar and
//!   the sidecar to its application stay on loopback h2c, as Linkerd and
//!   Istio place them);
//! - (g, h) **envoy**, **envoy-tls**: plain tonic channels through two
//!   Envoy 1.40 sidecars placed as Istio places them (the client's
//!   outbound sidecar, the server's inbound sidecar; mutual TLS between
//!   them in envoy-tls), configured from the same mesh policy
//!   ([`shop_bench::envoy`]): retries, timeouts, least request, ejection,
//!   keepalive, and in envoy-tls the server's authorization as RBAC;
//! - and, on request (`--variants`), **mesh-client** (the mesh client stack
//!   to the bare port) and **mesh-server** (plain channels to the mesh
//!   port), to tell the two halves' costs apart.
//!
//! Method (see shared/BENCH.md): variants interleaved (a b c a b c ...),
//! `--reps` repetitions after a warm-up, median and min-max per variant;
//! the load generator runs here (pin it with `taskset -c 0`), the server and
//! proxies are pinned to core 1; a rep waits for an idle machine first.
//! gRPC statuses are counted, not HTTP ones. CPU per request is the server's
//! (plus the proxies') utime+stime over the requests served.
//!
//! Both sides record the mesh's OpenTelemetry metrics (`grpc.client.*`,
//! `grpc.server.*`) into an SDK meter provider, as a service exporting them
//! does: that cost is in the mesh's figures.

mod drive;
mod hops;
mod pki;
mod procs;
mod report;

use anyhow::{Context as _, bail};
use drive::{Sample, drive};
use hops::{HopTls, envoy_pair, haproxy_hop, wait_port};
use pki::mint_pki;
use procs::{Proc, pinned, wait_idle};
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient as Client;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// The benchmarked method.
pub(crate) const METHOD: &str = "/shop.mesh.v1.MeshAdminService/ListUpstreams";

/// Counts the load generator's heap allocations, to report what each client
/// stack allocates per call.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

pub(crate) fn allocations() -> usize {
    GLOBAL.stats().allocations + GLOBAL.stats().reallocations
}

pub(crate) struct Args {
    pub(crate) duration: Duration,
    pub(crate) reps: usize,
    pub(crate) conns: usize,
    pub(crate) streams: usize,
    pub(crate) out: std::path::PathBuf,
    pub(crate) variants: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        duration: Duration::from_secs(4),
        reps: 3,
        conns: 16,
        streams: 1,
        out: "target/bench/mesh.txt".into(),
        variants: [
            "bare",
            "mesh",
            "sidecar",
            "bare-tls",
            "mesh-tls",
            "sidecar-tls",
            "envoy",
            "envoy-tls",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "mesh" => {}
            "--duration-secs" => args.duration = Duration::from_secs_f64(v()?.parse()?),
            "--reps" => args.reps = v()?.parse()?,
            "--conns" => args.conns = v()?.parse()?,
            "--streams" => args.streams = v()?.parse()?,
            "--out" => args.out = v()?.into(),
            "--variants" => args.variants = v()?.split(',').map(str::to_string).collect(),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _meters = shop_bench::install_meter_provider();
    anyhow::ensure!(
        shop_proto::idempotency_level(METHOD) == Some(shop_proto::Idempotency::NoSideEffects),
        "{METHOD} must be NO_SIDE_EFFECTS for the mesh to retry it"
    );
    let dir = std::env::temp_dir().join(format!("shop-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let server_bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("bench-server");
    let pki = mint_pki(&dir)?;
    let mut server = pinned("1", &server_bin)
        .arg("--tls")
        .arg(&pki.server)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bench-server")?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().context("stdout")?).read_line(&mut line)?;
    let server = Proc(server);
    let addr_of = |key: &str| -> anyhow::Result<String> {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .with_context(|| format!("bench-server printed no {key}= address"))
    };
    let (bare, meshed) = (addr_of("bare")?, addr_of("mesh")?);
    let (bare_tls, meshed_tls) = (addr_of("bare_tls")?, addr_of("mesh_tls")?);
    let server_side = shop_bench::free_port()?;
    let client_side = shop_bench::free_port()?;
    let hop2 = haproxy_hop(server_side, &bare, &dir, "server-side", HopTls::None)?;
    let hop1 = haproxy_hop(
        client_side,
        &format!("127.0.0.1:{server_side}"),
        &dir,
        "client-side",
        HopTls::None,
    )?;
    let sidecar = format!("127.0.0.1:{client_side}");
    // The same two hops, with mutual TLS between them.
    let tls_server_side = shop_bench::free_port()?;
    let tls_client_side = shop_bench::free_port()?;
    let hop4 = haproxy_hop(
        tls_server_side,
        &bare,
        &dir,
        "tls-server-side",
        HopTls::Accept {
            pem: &pki.server_pem,
            ca: &pki.ca,
        },
    )?;
    let hop3 = haproxy_hop(
        tls_client_side,
        &format!("127.0.0.1:{tls_server_side}"),
        &dir,
        "tls-client-side",
        HopTls::Originate {
            pem: &pki.client_pem,
            ca: &pki.ca,
        },
    )?;
    let sidecar_tls = format!("127.0.0.1:{tls_client_side}");
    let server_id = shop_identity::SpiffeId::workload("bench.local", "bench", "catalog")?;
    let (envoy_in, envoy_out) = envoy_pair(&dir, "envoy", &bare, None)?;
    let (envoy_tls_in, envoy_tls_out) =
        envoy_pair(&dir, "envoy-tls", &bare, Some((&pki, &server_id)))?;
    let envoy = format!("127.0.0.1:{}", envoy_out.1);
    let envoy_tls = format!("127.0.0.1:{}", envoy_tls_out.1);
    for addr in [
        &bare,
        &meshed,
        &sidecar,
        &bare_tls,
        &meshed_tls,
        &sidecar_tls,
        &envoy,
        &envoy_tls,
    ] {
        wait_port(addr).await?;
    }
    let tonic_tls = {
        use shop_identity::files;
        let read = |name: &str| std::fs::read(pki.client.join(name));
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(files::CA)?))
            .identity(tonic::transport::Identity::from_pem(
                read(files::CERT)?,
                read(files::KEY)?,
            ))
            .domain_name("localhost")
    };
    let connect_tls = |addr: String| {
        let tls = tonic_tls.clone();
        async move {
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tcp_nodelay(true)
                .tls_config(tls)?
                .connect()
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let client_identity =
        shop_identity::Identity::load(&pki.client, shop_identity::ClientAuth::Required)?;

    let connect = |addr: String| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(anyhow::Error::from)
    };
    let mut bare_clients = Vec::new();
    let mut sidecar_clients = Vec::new();
    let mut mesh_clients = Vec::new();
    let mut mesh_client_only = Vec::new();
    let mut mesh_server_only = Vec::new();
    let mut bare_tls_clients = Vec::new();
    let mut mesh_tls_clients = Vec::new();
    let mut sidecar_tls_clients = Vec::new();
    let mut envoy_clients = Vec::new();
    let mut envoy_tls_clients = Vec::new();
    let stats = Arc::new(shop_mesh::stats::MeshStats::default());
    for i in 0..args.conns {
        bare_tls_clients.push(Client::new(connect_tls(bare_tls.clone()).await?));
        sidecar_tls_clients.push(Client::new(connect(sidecar_tls.clone()).await?));
        envoy_clients.push(Client::new(connect(envoy.clone()).await?));
        envoy_tls_clients.push(Client::new(connect(envoy_tls.clone()).await?));
        let policy = shop_mesh::client::bench_policy(&format!("https://{meshed_tls}"));
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
        std::mem::forget(_tx);
        let options = shop_mesh::client::Options {
            trace: None,
            tls: Some(shop_mesh::connection::ClientTls {
                identity: client_identity.clone(),
                expected: server_id.clone(),
            }),
        };
        let channel = shop_mesh::client::MeshChannel::with_options(
            &format!("bench-tls-{i}"),
            rx,
            stats.clone(),
            options,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        mesh_tls_clients.push(Client::new(channel));
        bare_clients.push(Client::new(connect(bare.clone()).await?));
        sidecar_clients.push(Client::new(connect(sidecar.clone()).await?));
        let policy = shop_mesh::client::bench_policy(&format!("http://{meshed}"));
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
        std::mem::forget(_tx);
        let channel = shop_mesh::client::MeshChannel::new(&format!("bench-{i}"), rx, stats.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        mesh_clients.push(Client::new(channel));
        if args.variants.iter().any(|v| v == "mesh-client") {
            let policy = shop_mesh::client::bench_policy(&format!("http://{bare}"));
            let (_tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
            std::mem::forget(_tx);
            let channel =
                shop_mesh::client::MeshChannel::new(&format!("bench-c{i}"), rx, stats.clone())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            mesh_client_only.push(Client::new(channel));
        }
        if args.variants.iter().any(|v| v == "mesh-server") {
            mesh_server_only.push(Client::new(connect(meshed.clone()).await?));
        }
    }

    let server_pid = [server.0.id()];
    let proxy_pids = [server.0.id(), hop1.0.id(), hop2.0.id()];
    let tls_proxy_pids = [server.0.id(), hop3.0.id(), hop4.0.id()];
    let envoy_pids = [server.0.id(), envoy_in.pid(), envoy_out.0.pid()];
    let envoy_tls_pids = [server.0.id(), envoy_tls_in.pid(), envoy_tls_out.0.pid()];
    let mut samples: Vec<(&str, Vec<Sample>)> = vec![
        ("bare", vec![]),
        ("mesh", vec![]),
        ("sidecar", vec![]),
        ("bare-tls", vec![]),
        ("mesh-tls", vec![]),
        ("sidecar-tls", vec![]),
        ("envoy", vec![]),
        ("envoy-tls", vec![]),
        ("mesh-client", vec![]),
        ("mesh-server", vec![]),
    ];
    for rep in 0..args.reps {
        for (name, list) in samples.iter_mut() {
            if !args.variants.iter().any(|v| v == name) {
                continue;
            }
            wait_idle();
            let s = match *name {
                "bare" => {
                    drive(
                        bare_clients.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "mesh-client" => {
                    drive(
                        mesh_client_only.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "mesh-server" => {
                    drive(
                        mesh_server_only.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "mesh" => {
                    drive(
                        mesh_clients.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "bare-tls" => {
                    drive(
                        bare_tls_clients.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "mesh-tls" => {
                    drive(
                        mesh_tls_clients.clone(),
                        args.streams,
                        args.duration,
                        &server_pid,
                    )
                    .await
                }
                "envoy" => {
                    drive(
                        envoy_clients.clone(),
                        args.streams,
                        args.duration,
                        &envoy_pids,
                    )
                    .await
                }
                "envoy-tls" => {
                    drive(
                        envoy_tls_clients.clone(),
                        args.streams,
                        args.duration,
                        &envoy_tls_pids,
                    )
                    .await
                }
                "sidecar-tls" => {
                    drive(
                        sidecar_tls_clients.clone(),
                        args.streams,
                        args.duration,
                        &tls_proxy_pids,
                    )
                    .await
                }
                _ => {
                    drive(
                        sidecar_clients.clone(),
                        args.streams,
                        args.duration,
                        &proxy_pids,
                    )
                    .await
                }
            };
            eprintln!(
                "rep {rep} {name:<11} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  {:>5.1} us CPU/req (client {:>5.1}, {:>4.1} allocs)  {} errors",
                s.rps,
                s.p50_us,
                s.p99_us,
                s.cpu_us_per_req,
                s.client_cpu_us_per_req,
                s.allocs_per_req,
                s.errors
            );
            list.push(s);
        }
    }

    let report = report::report(&args, &samples);
    print!("{report}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(&args.out)?.write_all(report.as_bytes())?;
    eprintln!("written to {}", args.out.display());
    drop((hop1, hop2, hop3, hop4, server));
    drop((envoy_in, envoy_out, envoy_tls_in, envoy_tls_out));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
