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

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use shop_proto::shop::mesh::v1::ListUpstreamsRequest;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient as Client;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The benchmarked method.
const METHOD: &str = "/shop.mesh.v1.MeshAdminService/ListUpstreams";

/// Counts the load generator's heap allocations, to report what each client
/// stack allocates per call.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn allocations() -> usize {
    GLOBAL.stats().allocations + GLOBAL.stats().reallocations
}

struct Args {
    duration: Duration,
    reps: usize,
    conns: usize,
    streams: usize,
    out: std::path::PathBuf,
    variants: Vec<String>,
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

/// A child process killed (by PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(core: &str, program: &std::path::Path) -> Command {
    if std::path::Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("/usr/bin/taskset");
        c.arg("-c").arg(core).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: state is field 0; utime 11, stime 12.
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// Busy share of all CPUs over `window`, from /proc/stat.
fn busy_share(window: Duration) -> f64 {
    fn read() -> (u64, u64) {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (v.iter().sum(), idle)
    }
    let (t0, i0) = read();
    std::thread::sleep(window);
    let (t1, i1) = read();
    let total = (t1 - t0).max(1) as f64;
    1.0 - (i1 - i0) as f64 / total
}

fn wait_idle() {
    for _ in 0..20 {
        if busy_share(Duration::from_millis(200)) < 0.15 {
            return;
        }
    }
}

/// How an HAProxy hop speaks on each side.
enum HopTls<'a> {
    /// h2c in and out.
    None,
    /// Accepts mTLS (its certificate and key in one PEM, the CA to verify
    /// clients with), forwards h2c: the server-side sidecar.
    Accept {
        pem: &'a std::path::Path,
        ca: &'a std::path::Path,
    },
    /// Accepts h2c, forwards over mTLS: the client-side sidecar.
    Originate {
        pem: &'a std::path::Path,
        ca: &'a std::path::Path,
    },
}

fn haproxy_hop(
    listen: u16,
    upstream: &str,
    dir: &std::path::Path,
    name: &str,
    tls: HopTls<'_>,
) -> anyhow::Result<Proc> {
    let (bind, server) = match tls {
        HopTls::None => (" proto h2".to_string(), " proto h2".to_string()),
        HopTls::Accept { pem, ca } => (
            format!(
                " ssl crt {} ca-file {} verify required alpn h2",
                pem.display(),
                ca.display()
            ),
            " proto h2".to_string(),
        ),
        HopTls::Originate { pem, ca } => (
            " proto h2".to_string(),
            format!(
                " ssl crt {} ca-file {} verify required alpn h2",
                pem.display(),
                ca.display()
            ),
        ),
    };
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{listen}{bind}\n  default_backend be\n\
             backend be\n  server s1 {upstream}{server}\n"
        ),
    )?;
    let child = pinned("1", std::path::Path::new("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    Ok(Proc(child))
}

/// A CA for the run and two identities: the server's (`catalog`, which
/// the mesh client expects) and the load generator's (`operator`, which
/// MeshAdmin allows); the directory of each, and PEMs for HAProxy.
struct Pki {
    ca: std::path::PathBuf,
    server: std::path::PathBuf,
    client: std::path::PathBuf,
    server_pem: std::path::PathBuf,
    client_pem: std::path::PathBuf,
}

fn mint_pki(dir: &std::path::Path) -> anyhow::Result<Pki> {
    use shop_identity::files;
    use shop_identity::mint::{Authority, Leaf};
    let ca = Authority::generate("bench.local")?;
    let leaf = Leaf::local(Duration::from_secs(3600));
    let id = |sa| shop_identity::SpiffeId::workload("bench.local", "bench", sa);
    let server = dir.join("pki/catalog");
    let client = dir.join("pki/operator");
    ca.write(&server, &id("catalog")?, &leaf)?;
    ca.write(&client, &id("operator")?, &leaf)?;
    let pem = |d: &std::path::Path, name: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("pki/{name}.pem"));
        let mut both = std::fs::read(d.join(files::CERT))?;
        both.extend(std::fs::read(d.join(files::KEY))?);
        std::fs::write(&path, both)?;
        Ok(path)
    };
    Ok(Pki {
        ca: server.join(files::CA),
        server_pem: pem(&server, "server")?,
        client_pem: pem(&client, "client")?,
        server,
        client,
    })
}

/// Two Envoy sidecars in front of the server's bare port, as Istio places
/// them, from the same policy the mesh variants run: the server's inbound
/// sidecar and the client's outbound one (mTLS between them when `tls`
/// gives the PKI and the server's identity). The outbound one comes with
/// its port.
fn envoy_pair(
    dir: &std::path::Path,
    name: &str,
    app: &str,
    tls: Option<(&Pki, &shop_identity::SpiffeId)>,
) -> anyhow::Result<(shop_bench::envoy::Envoy, (shop_bench::envoy::Envoy, u16))> {
    use shop_bench::envoy::{Certs, Envoy, inbound, outbound};
    let app: u16 = app
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("bare address")?;
    let (inbound_port, outbound_port) = (shop_bench::free_port()?, shop_bench::free_port()?);
    let server_certs = tls.map(|(pki, _)| Certs::new(&pki.server));
    let client_certs = tls.map(|(pki, _)| Certs::new(&pki.client));
    let server_id = tls.map(|(_, id)| id);
    let server_policy = shop_mesh::policy::ServerPolicy::default();
    let inbound = inbound::render(&inbound::Inbound {
        listen: inbound_port,
        app,
        policy: &server_policy,
        tls: server_certs.as_ref().zip(server_id),
    });
    let upstream = shop_mesh::client::bench_policy("http://127.0.0.1:1");
    let outbound = outbound::render(&outbound::Outbound {
        listen: outbound_port,
        service: "shop.mesh.v1.MeshAdminService",
        policy: &upstream,
        replicas: &[inbound_port],
        tls: client_certs.as_ref().zip(server_id),
    });
    let server_side = Envoy::start(dir, &format!("{name}-inbound"), &inbound.config, "1")?;
    let client_side = Envoy::start(dir, &format!("{name}-outbound"), &outbound.config, "1")?;
    Ok((server_side, (client_side, outbound_port)))
}

async fn wait_port(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} never accepted a connection")
}

/// One measurement of one variant.
#[derive(Debug, Clone)]
struct Sample {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    cpu_us_per_req: f64,
    client_cpu_us_per_req: f64,
    allocs_per_req: f64,
    errors: u64,
}

async fn drive<T>(
    clients: Vec<Client<T>>,
    streams: usize,
    duration: Duration,
    cpu_pids: &[u32],
) -> Sample
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    // Warm-up, discarded.
    let warm = Instant::now() + Duration::from_millis(500);
    let _ = run_loops(&clients, streams, warm).await;
    let cpu0: f64 = cpu_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let own0 = cpu_seconds(std::process::id());
    let allocs0 = allocations();
    let start = Instant::now();
    let (hist, ok, errors) = run_loops(&clients, streams, start + duration).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1: f64 = cpu_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let own1 = cpu_seconds(std::process::id());
    let allocs1 = allocations();
    Sample {
        rps: ok as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        cpu_us_per_req: (cpu1 - cpu0) * 1e6 / ok.max(1) as f64,
        client_cpu_us_per_req: (own1 - own0) * 1e6 / ok.max(1) as f64,
        allocs_per_req: (allocs1 - allocs0) as f64 / ok.max(1) as f64,
        errors,
    }
}

async fn run_loops<T>(
    clients: &[Client<T>],
    streams: usize,
    until: Instant,
) -> (Histogram<u64>, u64, u64)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..streams {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < until {
                    let t = Instant::now();
                    match client.list_upstreams(ListUpstreamsRequest::default()).await {
                        Ok(_) => {
                            ok += 1;
                            let _ = hist.record(t.elapsed().as_micros() as u64);
                        }
                        Err(status) => {
                            if errors == 0 && std::env::var_os("SHOP_BENCH_SHOW_ERRORS").is_some() {
                                eprintln!("first error: {status:?}");
                            }
                            errors += 1
                        }
                    }
                }
                (hist, ok, errors)
            }));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.expect("load task");
        hist.add(h).expect("same bounds");
        ok += o;
        errors += e;
    }
    (hist, ok, errors)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
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

    let mut report = String::new();
    report.push_str(&format!(
        "shop-bench mesh: {METHOD}, {} conns x {} streams, {} reps of {:?} (medians; min-max)\n",
        args.conns, args.streams, args.reps, args.duration
    ));
    report.push_str(
        "variant      req/s (min-max)            p50 us  p99 us  p99.9 us  CPU us/req  client CPU us/req  client allocs/req  errors\n",
    );
    let mut medians = std::collections::BTreeMap::new();
    for (name, list) in &samples {
        if list.is_empty() {
            continue;
        }
        let (rps, lo, hi) = median(list.iter().map(|s| s.rps).collect());
        let (p50, _, _) = median(list.iter().map(|s| s.p50_us as f64).collect());
        let (p99, _, _) = median(list.iter().map(|s| s.p99_us as f64).collect());
        let (p999, _, _) = median(list.iter().map(|s| s.p999_us as f64).collect());
        let (cpu, _, _) = median(list.iter().map(|s| s.cpu_us_per_req).collect());
        let (client_cpu, _, _) = median(list.iter().map(|s| s.client_cpu_us_per_req).collect());
        let (allocs, _, _) = median(list.iter().map(|s| s.allocs_per_req).collect());
        let errors: u64 = list.iter().map(|s| s.errors).sum();
        report.push_str(&format!(
            "{name:<12} {rps:>7.0} ({lo:>7.0}-{hi:>7.0})  {p50:>8.0} {p99:>7.0} {p999:>9.0} {cpu:>11.1} {client_cpu:>18.1} {allocs:>18.1} {errors:>7}\n"
        ));
        medians.insert(*name, (rps, p99, cpu + client_cpu));
    }
    if let (Some(a), Some(b), Some(c)) = (
        medians.get("bare").copied(),
        medians.get("mesh").copied(),
        medians.get("sidecar").copied(),
    ) {
        report.push_str(&format!(
        "ratios: mesh/bare req/s = {:.2}; mesh/sidecar req/s = {:.2}; p99 mesh {:.0} us vs sidecar {:.0} us\n",
        b.0 / a.0,
        b.0 / c.0,
        b.1,
        c.1
    ));
    }
    if let (Some(a), Some(b), Some(c)) = (
        medians.get("bare-tls").copied(),
        medians.get("mesh-tls").copied(),
        medians.get("sidecar-tls").copied(),
    ) {
        report.push_str(&format!(
            "ratios under TLS: mesh-tls/bare-tls req/s = {:.2}; mesh-tls/sidecar-tls req/s = {:.2}; p99 mesh-tls {:.0} us vs sidecar-tls {:.0} us\n",
            b.0 / a.0,
            b.0 / c.0,
            b.1,
            c.1
        ));
    }
    for (mesh, envoy) in [("mesh", "envoy"), ("mesh-tls", "envoy-tls")] {
        if let (Some(m), Some(e)) = (medians.get(mesh).copied(), medians.get(envoy).copied()) {
            // Requests per second per CPU second spent on the whole path
            // (server, proxies and the client's own process).
            let per_cpu = |(_, _, cpu_us): (f64, f64, f64)| 1e6 / cpu_us.max(1e-9);
            report.push_str(&format!(
                "{mesh} vs {envoy}: req/s {:.2}x; req/s per path CPU {:.2}x ({:.0} vs {:.0}); p99 {:.0} us vs {:.0} us ({:.2} of Envoy's)\n",
                m.0 / e.0,
                per_cpu(m) / per_cpu(e),
                per_cpu(m),
                per_cpu(e),
                m.1,
                e.1,
                m.1 / e.1
            ));
        }
    }
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
