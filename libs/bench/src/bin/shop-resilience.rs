//! `shop-resilience` (`just bench resilience`): what callers see when
//! replicas crash, freeze, slow down, fail, restart or are overloaded,
//! through (a) the mesh, (b) Envoy sidecars placed as Istio places them and
//! configured from the same mesh policy ([`shop_bench::envoy`]), (c) bare
//! tonic channels taken in turn, with no resilience at all.
//!
//! Three `bench-replica` processes serve a read (NO_SIDE_EFFECTS) and a
//! write (IDEMPOTENT with an idempotency key). At the start the run
//! measures each path's capacity (a closed loop of 64 callers); every
//! scenario then offers half the smallest of them (the overload scenario:
//! twice the smallest) as open-loop load for 18 s, the fault coming at
//! 4 s, each scenario run on every path in turn before the next. Per
//! scenario and path: the share of calls that succeeded as the caller saw
//! them (1 s deadline), p50/p99/p99.9 of those, attempts per call, CPU per
//! successful call over every process on the path (the generator, the
//! sidecars, the replicas), the time from the fault to the first ejection
//! and to recovery. The generator runs on core 0 (pin it with taskset),
//! replicas and sidecars on core 1.

use anyhow::Context as _;
use shop_bench::envoy::{Certs, Envoy};
use shop_bench::resilience::load::{self, Record};
use shop_bench::resilience::paths::{self, Callers};
use shop_bench::resilience::replicas::Replicas;
use shop_bench::resilience::report::{self, PATHS, Summary};
use shop_bench::resilience::scenario::{BEFORE, LENGTH, Scenario};
use shop_identity::SpiffeId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every call's deadline.
const DEADLINE: Duration = Duration::from_secs(1);
/// CPU each call costs a replica (`--work-us`): three replicas sharing one
/// core then serve about 5,000 calls a second, less than any path can carry
/// to them, so the replicas are what the overload scenario overloads. At 0,
/// what a call costs is what the paths themselves spend.
const WORK_US: u64 = 150;
/// The core the replicas and sidecars run on.
const SERVER_CORE: &str = "1";

struct Args {
    out: std::path::PathBuf,
    svg: std::path::PathBuf,
    scenarios: Vec<Scenario>,
    work_us: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        out: "target/bench/resilience.txt".into(),
        svg: "target/bench/resilience.svg".into(),
        scenarios: Scenario::ALL.to_vec(),
        work_us: WORK_US,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => args.out = v()?.into(),
            "--svg" => args.svg = v()?.into(),
            "--work-us" => args.work_us = v()?.parse().context("--work-us")?,
            "--scenarios" => {
                let names = v()?;
                args.scenarios = Scenario::ALL
                    .into_iter()
                    .filter(|s| names.split(',').any(|n| s.name().starts_with(n)))
                    .collect();
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// The identities of the run: the replicas' and the caller's.
struct Pki {
    replica_dir: std::path::PathBuf,
    caller_dir: std::path::PathBuf,
    replica_id: SpiffeId,
}

fn mint(dir: &std::path::Path) -> anyhow::Result<Pki> {
    use shop_identity::mint::{Authority, Leaf};
    let ca = Authority::generate("bench.local")?;
    let leaf = Leaf::local(Duration::from_secs(3600));
    let id = |sa| SpiffeId::workload("bench.local", "bench", sa);
    let replica_id = id(paths::UPSTREAM)?;
    let (replica_dir, caller_dir) = (dir.join("pki/replica"), dir.join("pki/gateway"));
    ca.write(&replica_dir, &replica_id, &leaf)?;
    ca.write(&caller_dir, &id("gateway")?, &leaf)?;
    Ok(Pki {
        replica_dir,
        caller_dir,
        replica_id,
    })
}

/// A path set up afresh for one run (no ejection or budget carried over).
struct PathRun {
    callers: Callers,
    /// The mesh client's counters (mesh path).
    stats: Option<Arc<shop_mesh::stats::MeshStats>>,
    /// The sidecars, the outbound one last (Envoy path).
    envoys: Vec<Envoy>,
}

async fn set_up(
    path: &str,
    dir: &std::path::Path,
    pki: &Pki,
    replicas: &Arc<Mutex<Replicas>>,
) -> anyhow::Result<PathRun> {
    let (bare, mesh): (Vec<u16>, Vec<u16>) = {
        let r = replicas.lock().expect("not poisoned");
        r.slots.iter().map(|s| (s.bare, s.mesh)).unzip()
    };
    let policy = paths::upstream_policy(&mesh);
    Ok(match path {
        "mesh" => {
            let stats = Arc::new(shop_mesh::stats::MeshStats::default());
            let identity = shop_identity::Identity::load(
                &pki.caller_dir,
                shop_identity::ClientAuth::Required,
            )?;
            PathRun {
                callers: paths::mesh(policy, stats.clone(), identity, pki.replica_id.clone())?,
                stats: Some(stats),
                envoys: Vec::new(),
            }
        }
        "envoy" => {
            let server_policy = paths::server_policy("gateway");
            let (caller, replica) = (Certs::new(&pki.caller_dir), Certs::new(&pki.replica_dir));
            let (envoys, port) = paths::sidecars(
                dir,
                &policy,
                &server_policy,
                &bare,
                (&caller, &replica),
                &pki.replica_id,
                SERVER_CORE,
            )?;
            PathRun {
                callers: paths::plain(&[port]).await?,
                stats: None,
                envoys,
            }
        }
        _ => PathRun {
            callers: paths::plain(&bare).await?,
            stats: None,
            envoys: Vec::new(),
        },
    })
}

/// An Envoy counter from its admin interface (0 when absent).
async fn envoy_stat(admin: &str, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut conn) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    let request =
        format!("GET /stats?filter={name} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body).await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl PathRun {
    /// Ejections so far.
    async fn ejections(&self) -> Option<u64> {
        if let Some(stats) = &self.stats {
            return Some(shop_mesh::stats::read(
                &stats.upstream(paths::UPSTREAM).counters.ejections,
            ));
        }
        let outbound = self.envoys.last()?;
        Some(
            envoy_stat(
                outbound.admin(),
                "cluster.upstream.outlier_detection.ejections_enforced_total",
            )
            .await,
        )
    }

    /// (attempts, calls) so far.
    async fn attempts(&self) -> Option<(u64, u64)> {
        if let Some(stats) = &self.stats {
            let c = &stats.upstream(paths::UPSTREAM).counters;
            return Some((
                shop_mesh::stats::read(&c.attempts),
                shop_mesh::stats::read(&c.calls),
            ));
        }
        let admin = self.envoys.last()?.admin();
        Some((
            envoy_stat(admin, "cluster.upstream.upstream_rq_total").await,
            envoy_stat(admin, "http.outbound.downstream_rq_total").await,
        ))
    }
}

/// Samples the CPU time of the processes `pids` names every 100 ms until
/// stopped; returns the CPU they spent meanwhile (a process that exits
/// counts up to its last sample).
fn sample_cpu(
    pids: impl Fn() -> Vec<u32> + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut seen: std::collections::HashMap<u32, (Duration, Duration)> = Default::default();
        loop {
            for pid in pids() {
                let now = shop_bench::procstat::cpu_of(pid);
                seen.entry(pid).or_insert((now, now)).1 = now;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen.values().map(|(first, last)| *last - *first).sum()
    })
}

async fn run_one(
    scenario: Scenario,
    path: &'static str,
    rate: f64,
    dir: &std::path::Path,
    pki: &Pki,
    replicas: &Arc<Mutex<Replicas>>,
) -> anyhow::Result<Summary> {
    let run = set_up(path, dir, pki, replicas).await?;
    // Let connections form before the clock starts.
    let _ = load::open_loop(
        &run.callers,
        rate.min(200.0),
        Duration::from_millis(500),
        DEADLINE,
    )
    .await;
    let ejections0 = run.ejections().await;
    let attempts0 = run.attempts().await;
    let envoy_pids: Vec<u32> = run.envoys.iter().map(Envoy::pid).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = {
        let replicas = replicas.clone();
        let me = std::process::id();
        sample_cpu(
            move || {
                let mut pids = replicas.lock().expect("not poisoned").pids();
                pids.extend(&envoy_pids);
                pids.push(me);
                pids
            },
            stop.clone(),
        )
    };
    let start = Instant::now();
    let play = {
        let replicas = replicas.clone();
        std::thread::spawn(move || scenario.play(&replicas, start))
    };
    let watch = async {
        if !scenario.has_fault() {
            return None;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + BEFORE)).await;
        let base = ejections0?;
        while start.elapsed() < LENGTH {
            if run.ejections().await? > base {
                return Some(start.elapsed() - BEFORE);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let (records, first_ejection): (Vec<Record>, _) =
        tokio::join!(load::open_loop(&run.callers, rate, LENGTH, DEADLINE), watch);
    play.join().expect("scenario thread")?;
    stop.store(true, Ordering::Relaxed);
    let cpu = cpu.join().expect("cpu sampler");
    let attempts = match (attempts0, run.attempts().await) {
        (Some((a0, c0)), Some((a1, c1))) => (a1 - a0) as f64 / (c1 - c0).max(1) as f64,
        _ => 1.0,
    };
    Ok(Summary::new(
        scenario,
        path,
        rate,
        &records,
        attempts,
        cpu,
        first_ejection,
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _meters = shop_bench::install_meter_provider();
    let dir = std::env::temp_dir().join(format!("shop-resilience-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pki = mint(&dir)?;
    let replica_bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("bench-replica");
    let replicas = Arc::new(Mutex::new(Replicas::start(
        replica_bin,
        pki.replica_dir.clone(),
        "gateway",
        (3, args.work_us),
        SERVER_CORE,
    )?));

    let mut capacity = std::collections::BTreeMap::new();
    for path in PATHS {
        let run = set_up(path, &dir, &pki, &replicas).await?;
        let c = load::capacity(&run.callers, 64, Duration::from_secs(3)).await;
        eprintln!("capacity {path}: {c:.0} calls/s");
        capacity.insert(path, c);
    }
    let smallest = capacity.values().copied().fold(f64::MAX, f64::min);
    let steady = (smallest * 0.5).round();
    let mut header = format!(
        "shop-resilience: 3 replicas, reads and writes half and half, {:?} deadline, runs of {:?} with the fault at {:?}\n\
         capacity (closed loop of 64): mesh {:.0}/s, envoy {:.0}/s, bare {:.0}/s; replicas burn {} us a call; offered {steady:.0}/s (2x capacity: {:.0}/s)\n",
        DEADLINE,
        LENGTH,
        BEFORE,
        capacity["mesh"],
        capacity["envoy"],
        capacity["bare"],
        args.work_us,
        smallest * 2.0,
    );
    header.push_str("scenarios: kill = SIGKILL, back after 4 s; freeze = SIGSTOP, resumed after 6 s; slow = +200 ms for 8 s; fail = 20% UNAVAILABLE for 8 s; rolling = SIGTERM, drain, start, 2 s apart\n");
    let mut summaries = Vec::new();
    for scenario in &args.scenarios {
        for path in PATHS {
            let rate = if *scenario == Scenario::Overload {
                (smallest * 2.0).round()
            } else {
                steady
            };
            let s = run_one(*scenario, path, rate, &dir, &pki, &replicas).await?;
            eprintln!(
                "{:<16} {:<6} {:>6.0}/s ok {:>7.3}% p99 {:>8.1} ms attempts {:.3} cpu {:.0} us ejected {:?} recovered {:?}",
                s.scenario.name(),
                s.path,
                s.rate,
                s.success * 100.0,
                s.p99_us as f64 / 1000.0,
                s.attempts,
                s.cpu_us,
                s.first_ejection,
                s.recovery
            );
            summaries.push(s);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let report = report::table(&header, &summaries);
    print!("{report}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &report)?;
    report::plot(&summaries, &args.svg)?;
    eprintln!("wrote {} and {}", args.out.display(), args.svg.display());
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
