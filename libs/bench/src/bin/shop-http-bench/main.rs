//! `shop-http-bench`: the same shoppers' requests through three front
//! doors of the gateway, in one interleaved run on the binaries of
//! `SHOP_BIN_DIR` (release ones from `just bench http`):
//!
//! - gRPC to the gateway's public port;
//! - REST/JSON to the same port, transcoded by the gateway itself;
//! - REST/JSON to a local Envoy 1.40 whose `grpc_json_transcoder` calls
//!   that gRPC port (the data plane the in-process face replaces).
//!
//! The mix: GetProduct 45%, ListProducts (10 a page) 45%, PlaceOrder 10%
//! (an approved card, so each order runs its saga), authenticated as one
//! of `--workers` shoppers. Each worker keeps one connection and sends its
//! next request when the last is answered (closed loop), for `--secs` per
//! phase; the routes take turns in `--rounds` rounds, each round in
//! another order, after a warm-up of each.
//!
//! Per route: requests answered per second (median of the rounds), p50 and
//! p99, errors, and CPU per request of the processes on the path: the
//! gateway, and for the Envoy route the gateway plus Envoy. Results go to
//! `--out`. Loopback only: the stack and Envoy are this process's own.

mod paths;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use paths::{Action, Call, Route, Targets};
use rand::Rng as _;
use shop_bench::envoy::{self, Envoy};
use shop_bench::procstat;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICES: &[&str] = &[
    "users",
    "catalog",
    "inventory",
    "payments",
    "orders",
    "gateway",
];
const PRODUCTS: usize = 20;

struct Args {
    secs: u64,
    rounds: usize,
    workers: usize,
    out: PathBuf,
    /// Seconds to wait before the rounds, printing the gateway's and
    /// Envoy's PIDs (to attach a profiler).
    pause: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        secs: 8,
        rounds: 3,
        workers: 16,
        out: "target/bench/http.txt".into(),
        pause: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => a.secs = value()?.parse()?,
            "--rounds" => a.rounds = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            "--pause" => a.pause = value()?.parse()?,
            other => bail!(
                "unknown flag {other}; known: --secs N --rounds N --workers N --out FILE --pause SECS"
            ),
        }
    }
    anyhow::ensure!(
        a.secs > 0 && a.rounds > 0 && a.workers > 0,
        "every count must be positive"
    );
    Ok(a)
}

/// What every worker shares.
struct Shop {
    targets: Targets,
    products: Vec<String>,
    tokens: Vec<String>,
}

/// What a phase measured.
#[derive(Clone)]
struct Phase {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    secs: f64,
    gateway_cpu: Duration,
    envoy_cpu: Duration,
}

async fn start(workers: usize) -> anyhow::Result<(Stack, Envoy, Arc<Shop>)> {
    // Shoppers sign up and log in from one address: lift those limits.
    let env = vec![
        (
            "SHOP_GATEWAY__LIMITS__SIGNUP__PER_PEER__BURST".to_string(),
            "100000".to_string(),
        ),
        (
            "SHOP_GATEWAY__LIMITS__LOGIN__PER_PEER__BURST".to_string(),
            "100000".to_string(),
        ),
    ];
    let stack = Stack::start_with(StackOptions {
        services: SERVICES.iter().map(|s| s.to_string()).collect(),
        env,
        ..StackOptions::default()
    })
    .await?;
    let products = shop_bench::catalog::stocked_products(&stack, PRODUCTS, 1500).await?;
    let gateway = stack.service("gateway");
    let mut client = ShopGatewayServiceClient::new(gateway.public_channel().await?);
    let tokens = shop_bench::shoppers::logged_in(&mut client, workers, "http-bench").await?;

    let ca = shop_testkit::identities::Identities::dir_in(stack.dir(), "operator")
        .join(shop_identity::files::CA);
    let descriptors = stack.dir().join("shop-descriptors.binpb");
    // The contracts and the google.rpc error details, as the face has them.
    let pool = shop_http::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET)?;
    std::fs::write(&descriptors, pool.encode_to_vec())?;
    let listen = shop_bench::free_port()?;
    let config = envoy::transcoder::render(&envoy::transcoder::Transcoder {
        listen,
        upstream: gateway.addr().port(),
        ca: &ca,
        descriptors: &descriptors,
        services: &["shop.gateway.v1.ShopGatewayService"],
    });
    envoy::process::validate(stack.dir(), "transcoder", &config)?;
    let proxy = Envoy::start(stack.dir(), "transcoder", &config, "0-1")?;

    let targets = Targets {
        gateway: gateway.addr(),
        envoy: ([127, 0, 0, 1], listen).into(),
        tls_h1: Targets::tls_h1(&ca)?,
        grpc: gateway.public_channel().await?,
    };
    let shop = Arc::new(Shop {
        targets,
        products,
        tokens,
    });
    // Envoy serves once its listener is up: a first request through it.
    let started = Instant::now();
    loop {
        let tried = async {
            let mut conn = paths::connect(Route::Envoy, &shop.targets).await?;
            let call = Call {
                token: &shop.tokens[0],
                product: &shop.products[0],
            };
            paths::send(&mut conn, Action::GetProduct, &call).await
        };
        match tried.await {
            Ok(()) => break,
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                return Err(e.context("Envoy did not answer within 20 s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok((stack, proxy, shop))
}

/// `workers` shoppers on `route` for `secs`, closed loop.
async fn phase(
    shop: &Arc<Shop>,
    route: Route,
    workers: usize,
    secs: u64,
    pids: (u32, u32),
) -> Phase {
    let cpu = || (procstat::cpu_of(pids.0), procstat::cpu_of(pids.1));
    let (gateway_before, envoy_before) = cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let shop = shop.clone();
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("a valid histogram");
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut conn = None;
            while Instant::now() < deadline {
                let action = match rand::rng().random_range(0..100) {
                    0..45 => Action::GetProduct,
                    45..90 => Action::ListProducts,
                    _ => Action::PlaceOrder,
                };
                let product = &shop.products[rand::rng().random_range(0..shop.products.len())];
                let call = Call {
                    token: &shop.tokens[worker],
                    product,
                };
                let sent = Instant::now();
                let result = match &mut conn {
                    Some(conn) => paths::send(conn, action, &call).await,
                    None => match paths::connect(route, &shop.targets).await {
                        Ok(mut fresh) => {
                            let result = paths::send(&mut fresh, action, &call).await;
                            conn = Some(fresh);
                            result
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        let _ = latency.record(sent.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        // A closed or broken connection is opened again.
                        conn = None;
                    }
                }
            }
            (ok, errors, first_error, latency)
        });
    }
    let mut total = Phase {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: Histogram::<u64>::new(3).expect("a valid histogram"),
        secs: 0.0,
        gateway_cpu: Duration::ZERO,
        envoy_cpu: Duration::ZERO,
    };
    while let Some(done) = tasks.join_next().await {
        let (ok, errors, first_error, latency) = done.expect("a worker does not panic");
        total.ok += ok;
        total.errors += errors;
        if total.first_error.is_none() {
            total.first_error = first_error;
        }
        total.latency.add(&latency).expect("same bounds");
    }
    total.secs = started.elapsed().as_secs_f64();
    let (gateway_after, envoy_after) = cpu();
    total.gateway_cpu = gateway_after.saturating_sub(gateway_before);
    total.envoy_cpu = envoy_after.saturating_sub(envoy_before);
    total
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let (stack, proxy, shop) = start(args.workers).await?;
    let gateway_pid = stack.service("gateway").pid().context("the gateway runs")?;
    let pids = (gateway_pid, proxy.pid());

    for route in Route::ALL {
        phase(&shop, route, args.workers, 2, pids).await;
    }
    if args.pause > 0 {
        eprintln!(
            "gateway pid {} envoy pid {}: rounds start in {} s",
            pids.0, pids.1, args.pause
        );
        tokio::time::sleep(Duration::from_secs(args.pause)).await;
    }
    let mut phases: HashMap<Route, Vec<Phase>> = HashMap::new();
    for round in 0..args.rounds {
        for i in 0..Route::ALL.len() {
            let route = Route::ALL[(i + round) % Route::ALL.len()];
            let measured = phase(&shop, route, args.workers, args.secs, pids).await;
            eprintln!(
                "round {} {:<15} {:>8.0} req/s  p99 {:>6.1} ms  errors {}",
                round + 1,
                route.name(),
                measured.rate(),
                measured.latency.value_at_quantile(0.99) as f64 / 1000.0,
                measured.errors
            );
            phases.entry(route).or_default().push(measured);
        }
    }
    let report = report(&args, &phases)?;
    print!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)?;
    drop(proxy);
    drop(stack);
    Ok(())
}

fn report(args: &Args, phases: &HashMap<Route, Vec<Phase>>) -> anyhow::Result<String> {
    let binaries = std::env::var("SHOP_BIN_DIR").unwrap_or_else(|_| "target/debug".into());
    let mut out = String::new();
    writeln!(
        out,
        "shop-http-bench: {} workers, {} rounds of {} s per route (interleaved), binaries {binaries}, {}",
        args.workers,
        args.rounds,
        args.secs,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )?;
    writeln!(
        out,
        "mix: GetProduct 45%, ListProducts 45%, PlaceOrder 10%; one kept-alive connection per worker"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<15} {:>9} {:>22} {:>8} {:>8} {:>7} {:>16}",
        "route", "req/s", "req/s by round", "p50 ms", "p99 ms", "errors", "CPU/req on path"
    )?;
    let mut summary = HashMap::new();
    for route in Route::ALL {
        let list = phases.get(&route).context("every route measured")?;
        let mut merged = Histogram::<u64>::new(3)?;
        for p in list {
            merged.add(&p.latency)?;
        }
        let rate = median(list.iter().map(Phase::rate).collect());
        let rounds: Vec<String> = list.iter().map(|p| format!("{:.0}", p.rate())).collect();
        let ok: u64 = list.iter().map(|p| p.ok).sum();
        let errors: u64 = list.iter().map(|p| p.errors).sum();
        let cpu: Duration = list
            .iter()
            .map(|p| match route {
                Route::Envoy => p.gateway_cpu + p.envoy_cpu,
                _ => p.gateway_cpu,
            })
            .sum();
        let per_request = cpu.as_secs_f64() * 1e6 / ok.max(1) as f64;
        writeln!(
            out,
            "{:<15} {:>9.0} {:>22} {:>8.1} {:>8.1} {:>7} {:>13.0} us",
            route.name(),
            rate,
            rounds.join(" "),
            merged.value_at_quantile(0.5) as f64 / 1000.0,
            merged.value_at_quantile(0.99) as f64 / 1000.0,
            errors,
            per_request
        )?;
        if route == Route::Envoy {
            let envoy: Duration = list.iter().map(|p| p.envoy_cpu).sum();
            writeln!(
                out,
                "{:<15} of which Envoy {:.0} us per request",
                "",
                envoy.as_secs_f64() * 1e6 / ok.max(1) as f64
            )?;
        }
        if let Some(e) = list.iter().find_map(|p| p.first_error.clone()) {
            writeln!(out, "{:<15} first error: {e}", "")?;
        }
        summary.insert(route, (rate, per_request));
    }
    let (grpc_rate, _) = summary[&Route::Grpc];
    let (rest_rate, rest_cpu) = summary[&Route::Rest];
    let (envoy_rate, envoy_cpu) = summary[&Route::Envoy];
    writeln!(out)?;
    writeln!(
        out,
        "REST through the gateway / gRPC through it, requests per second: {:.2}x (wanted >= 0.8x)",
        rest_rate / grpc_rate
    )?;
    writeln!(
        out,
        "REST through the gateway / through Envoy, requests per CPU second on the path: {:.2}x (wanted >= 2x); requests per second: {:.2}x",
        envoy_cpu / rest_cpu,
        rest_rate / envoy_rate
    )?;
    Ok(out)
}
