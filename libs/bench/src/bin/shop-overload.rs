//! `shop-overload`: the shop pushed past its capacity, through the gateway,
//! on the binaries of `SHOP_BIN_DIR` (release ones from `just bench
//! overload`), with the adaptive concurrency limit on in every service as
//! `k8s/` runs them (the defaults: no `latency_floor`).
//!
//! 1. **capacity**: shoppers in a closed loop (`--workers` at once, each
//!    starting its next action when the last answered) give the most the
//!    system answers per second; open-loop probes (`--step-secs` / 2 each)
//!    then step down from there by 10% until one has nothing refused and
//!    its p99 within the SLO: that rate is the capacity of this machine in
//!    this run (a closed loop hides the queueing an open loop at the same
//!    rate meets).
//! 2. **steps**: open-loop traffic at 0.5x, 1x, 2x and 3x that capacity,
//!    `--step-secs` each: an action starts on schedule whether or not
//!    earlier ones answered (at most `--max-in-flight` at once, beyond
//!    which it is counted as dropped).
//!
//! Per step: goodput (actions answered OK per second, and as a share of
//! the capacity), the share refused with RESOURCE_EXHAUSTED, other
//! failures, p50 and p99 of the actions answered OK, the gateway's attempts
//! per upstream call (MeshAdmin's counters over the step), and the most
//! resident memory of every server. The mix has no sign-ups or log-ins
//! (their per-address limits would refuse the load generator, not the
//! overload): ListProducts 40%, GetProduct 20%, PlaceOrder 20% (approved
//! cards), GetOrderDetails 10%, ListOrders 10%, as a few shoppers.
//!
//! Loopback only: the stack is this process's own.

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use rand::Rng as _;
use shop_proto::shop::gateway::v1 as gw;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::mesh::v1::GetStatsRequest;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::orders::v1::NewOrderLine;
use shop_testkit::stack::{SERVICES, Stack, StackOptions};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};

struct Args {
    step_secs: u64,
    workers: usize,
    max_in_flight: usize,
    out: PathBuf,
    svg: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        step_secs: 20,
        workers: 32,
        max_in_flight: 2048,
        out: "target/bench/overload.txt".into(),
        svg: "target/bench/overload.svg".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--step-secs" => a.step_secs = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--max-in-flight" => a.max_in_flight = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            "--svg" => a.svg = value()?.into(),
            other => bail!(
                "unknown flag {other}; known: --step-secs S --workers N --max-in-flight N --out FILE --svg FILE"
            ),
        }
    }
    anyhow::ensure!((5..=300).contains(&a.step_secs), "--step-secs is 5 to 300");
    anyhow::ensure!((1..=512).contains(&a.workers), "--workers is 1 to 512");
    Ok(a)
}

const PRODUCTS: usize = 50;
const SHOPPERS: usize = 8;
/// The service catalog's latency SLO for the gateway (p99).
const SLO_P99: Duration = Duration::from_millis(500);

/// What one step saw.
struct Tally {
    ok: u64,
    refused: u64,
    failed: u64,
    dropped: u64,
    latency: Histogram<u64>,
    /// p99 of OK actions per second of the whole run (µs), for the plot.
    per_second: Vec<(f64, f64)>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            refused: 0,
            failed: 0,
            dropped: 0,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            per_second: Vec::new(),
        }
    }
}

struct Shopper {
    token: String,
    orders: Mutex<Vec<String>>,
}

struct Shop {
    gateway: ShopGatewayServiceClient<Channel>,
    products: Vec<String>,
    shoppers: Vec<Shopper>,
}

impl Shop {
    fn bearer<T>(token: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// One action of the mix; its outcome.
    async fn act(&self) -> Result<(), Code> {
        let mut gateway = self.gateway.clone();
        let (roll, product, shopper) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..100),
                self.products[rng.random_range(0..self.products.len())].clone(),
                &self.shoppers[rng.random_range(0..self.shoppers.len())],
            )
        };
        match roll {
            0..40 => code(
                gateway
                    .list_products(gw::ListProductsRequest {
                        page_size: 10,
                        ..Default::default()
                    })
                    .await,
            ),
            40..60 => code(
                gateway
                    .get_product(gw::GetProductRequest {
                        product_id: product,
                    })
                    .await,
            ),
            60..80 => {
                let placed = gateway
                    .place_order(Self::bearer(
                        &shopper.token,
                        gw::PlaceOrderRequest {
                            lines: vec![NewOrderLine {
                                product_id: product,
                                quantity: 1,
                            }],
                            payment_token: "tok_approve".into(),
                            idempotency_key: uuid::Uuid::new_v4().to_string(),
                        },
                    ))
                    .await
                    .map_err(|s| s.code())?;
                if let Some(order) = placed.into_inner().order {
                    let mut orders = shopper.orders.lock().expect("not poisoned");
                    orders.push(order.order_id);
                    if orders.len() > 100 {
                        orders.remove(0);
                    }
                }
                Ok(())
            }
            80..90 => {
                let last = shopper.orders.lock().expect("not poisoned").last().cloned();
                let Some(order_id) = last else {
                    return Ok(());
                };
                code(
                    gateway
                        .get_order_details(Self::bearer(
                            &shopper.token,
                            gw::GetOrderDetailsRequest { order_id },
                        ))
                        .await,
                )
            }
            _ => code(
                gateway
                    .list_orders(Self::bearer(
                        &shopper.token,
                        gw::ListOrdersRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        }
    }
}

/// The outcome of a call, as a code.
fn code<T>(answer: Result<T, tonic::Status>) -> Result<(), Code> {
    answer.map(drop).map_err(|s| s.code())
}

/// Records `outcome` of an action that started at `started`.
fn record(tally: &Mutex<Tally>, started: Instant, outcome: Result<(), Code>) {
    let mut t = tally.lock().expect("not poisoned");
    match outcome {
        Ok(()) => {
            t.ok += 1;
            let us = (started.elapsed().as_micros() as u64).clamp(1, 120_000_000);
            t.latency.saturating_record(us);
        }
        Err(Code::ResourceExhausted) => t.refused += 1,
        Err(_) => t.failed += 1,
    }
}

/// The gateway's upstream calls and attempts so far.
async fn attempts(admin: &mut MeshAdminServiceClient<Channel>) -> anyhow::Result<(i64, i64)> {
    let stats = admin
        .get_stats(GetStatsRequest::default())
        .await?
        .into_inner();
    Ok(stats
        .upstreams
        .iter()
        .filter_map(|u| u.counters.as_ref())
        .fold((0, 0), |(c, a), n| (c + n.calls, a + n.attempts)))
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The most resident memory of each server while `run` runs, sampled
/// every 250 ms.
async fn with_peak_rss<F: std::future::Future>(
    servers: &[(String, u32)],
    run: F,
) -> (F::Output, Vec<(String, u64)>) {
    let peaks = Mutex::new(vec![0u64; servers.len()]);
    let sample = async {
        loop {
            {
                let mut peaks = peaks.lock().expect("not poisoned");
                for (peak, (_, pid)) in peaks.iter_mut().zip(servers) {
                    *peak = (*peak).max(rss(*pid));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let output = tokio::select! {
        output = run => output,
        () = sample => unreachable!("sampling never ends"),
    };
    let peaks = peaks.into_inner().expect("not poisoned");
    (
        output,
        servers
            .iter()
            .map(|(name, _)| name.clone())
            .zip(peaks)
            .collect(),
    )
}

/// Shoppers in a closed loop for `secs`: actions answered OK per second.
async fn closed_loop(shop: &Arc<Shop>, workers: usize, secs: u64) -> (f64, Tally) {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (shop, tally) = (shop.clone(), tally.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let started = Instant::now();
                    let outcome = shop.act().await;
                    record(&tally, started, outcome);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let tally = Arc::try_unwrap(tally)
        .ok()
        .expect("every worker is done")
        .into_inner()
        .expect("not poisoned");
    (tally.ok as f64 / secs as f64, tally)
}

/// Open-loop traffic at `rate` actions/s for `secs`.
async fn open_loop(
    shop: &Arc<Shop>,
    rate: f64,
    secs: u64,
    max_in_flight: usize,
    run_start: Instant,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let per_second: Arc<Mutex<std::collections::BTreeMap<u64, Histogram<u64>>>> = Arc::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0;
    while Instant::now() < until {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let (shop, tally, per_second) = (shop.clone(), tally.clone(), per_second.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = shop.act().await;
            if outcome.is_ok() {
                let second = started.duration_since(run_start).as_secs();
                let us = (started.elapsed().as_micros() as u64).clamp(1, 120_000_000);
                per_second
                    .lock()
                    .expect("not poisoned")
                    .entry(second)
                    .or_insert_with(|| {
                        Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
                    })
                    .saturating_record(us);
            }
            record(&tally, started, outcome);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut tally = Arc::try_unwrap(tally)
        .ok()
        .expect("every action is done")
        .into_inner()
        .expect("not poisoned");
    tally.dropped = dropped;
    tally.per_second = per_second
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(s, h)| (*s as f64, h.value_at_quantile(0.99) as f64 / 1000.0))
        .collect();
    tally
}

async fn start() -> anyhow::Result<(Stack, Arc<Shop>)> {
    let mut env = vec![("RUST_LOG".to_string(), "warn".to_string())];
    for service in SERVICES {
        let key = |k: &str| {
            format!(
                "SHOP_{}__SERVER__MESH__ADAPTIVE_CONCURRENCY__{k}",
                service.to_uppercase()
            )
        };
        env.push((key("ENABLED"), "true".into()));
    }
    let stack = Stack::start_with(StackOptions {
        services: SERVICES.iter().map(|s| s.to_string()).collect(),
        env,
        ..StackOptions::default()
    })
    .await?;
    let products = shop_bench::catalog::stocked_products(&stack, PRODUCTS, 1500).await?;
    let mut gateway =
        ShopGatewayServiceClient::new(stack.service("gateway").public_channel().await?);
    let shoppers = shop_bench::shoppers::logged_in(&mut gateway, SHOPPERS, "overload")
        .await?
        .into_iter()
        .map(|token| Shopper {
            token,
            orders: Mutex::new(Vec::new()),
        })
        .collect();
    let shop = Arc::new(Shop {
        gateway,
        products,
        shoppers,
    });
    Ok((stack, shop))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let (stack, shop) = start().await?;
    let servers: Vec<(String, u32)> = stack
        .services()
        .filter_map(|s| Some((s.name().to_string(), s.pid()?)))
        .collect();
    let mut admin = MeshAdminServiceClient::new(stack.service("gateway").channel().await?);
    let binaries = std::env::var("SHOP_BIN_DIR").unwrap_or_else(|_| "target/debug".into());

    // Warm-up, then the capacity of this machine in this run.
    closed_loop(&shop, args.workers, 3).await;
    let (ceiling, closed) = closed_loop(&shop, args.workers, args.step_secs).await;
    anyhow::ensure!(ceiling > 0.0, "nothing was served in the closed loop");
    let closed_p99 = closed.latency.value_at_quantile(0.99) as f64 / 1000.0;
    let probe_secs = (args.step_secs / 2).max(5);
    let mut capacity = ceiling;
    let mut probes = Vec::new();
    loop {
        let probe = open_loop(
            &shop,
            capacity,
            probe_secs,
            args.max_in_flight,
            Instant::now(),
        )
        .await;
        let p99 = probe.latency.value_at_quantile(0.99) as f64 / 1000.0;
        probes.push(format!(
            "{capacity:.0}/s: {} refused, p99 {p99:.0} ms",
            probe.refused
        ));
        let clean = probe.refused == 0 && probe.failed == 0 && probe.dropped == 0;
        if (clean && p99 <= SLO_P99.as_secs_f64() * 1000.0) || capacity < ceiling * 0.2 {
            break;
        }
        capacity *= 0.9;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "shop-overload: binaries of {binaries}, adaptive concurrency on in every service, {} s per step",
        args.step_secs
    );
    let _ = writeln!(
        out,
        "closed loop ({} shoppers at once): {ceiling:.0} actions/s answered OK, p99 {closed_p99:.1} ms, {} refused, {} failed",
        args.workers, closed.refused, closed.failed
    );
    let _ = writeln!(
        out,
        "open-loop probes of {probe_secs} s: {}; capacity {capacity:.0} actions/s",
        probes.join("; ")
    );
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9}  max RSS MB by server",
        "load",
        "offered",
        "goodput",
        "of cap.",
        "refused",
        "failed",
        "p50 ms",
        "p99 ms",
        "attempts"
    );
    let run_start = Instant::now();
    let mut series = Vec::new();
    let mut verdicts = Vec::new();
    for multiple in [0.5, 1.0, 2.0, 3.0] {
        let rate = capacity * multiple;
        let (calls_before, attempts_before) = attempts(&mut admin).await?;
        let (tally, peaks) = with_peak_rss(
            &servers,
            open_loop(&shop, rate, args.step_secs, args.max_in_flight, run_start),
        )
        .await;
        let (calls_after, attempts_after) = attempts(&mut admin).await?;
        let started = (tally.ok + tally.refused + tally.failed).max(1) as f64;
        let goodput = tally.ok as f64 / args.step_secs as f64;
        let refused = tally.refused as f64 / started;
        let p50 = tally.latency.value_at_quantile(0.5) as f64 / 1000.0;
        let p99 = tally.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let per_call =
            (attempts_after - attempts_before) as f64 / (calls_after - calls_before).max(1) as f64;
        let max_rss = peaks.iter().map(|(_, b)| *b).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:>4.1}x {:>8.0} {:>8.0} {:>7.0}% {:>7.1}% {:>7} {:>8.1} {:>8.1} {:>9.3}  {}",
            multiple,
            rate,
            goodput,
            goodput / capacity * 100.0,
            refused * 100.0,
            tally.failed + tally.dropped,
            p50,
            p99,
            per_call,
            peaks
                .iter()
                .map(|(n, b)| format!("{n} {}", b / 1_000_000))
                .collect::<Vec<_>>()
                .join(", ")
        );
        series.push((format!("{multiple}x"), tally.per_second.clone()));
        if multiple == 1.0 {
            verdicts.push(("at 1x nothing is refused".to_string(), tally.refused == 0));
        }
        if multiple == 3.0 {
            verdicts.push((
                format!(
                    "at 3x goodput {:.0}% of capacity (at least 90%)",
                    goodput / capacity * 100.0
                ),
                goodput >= 0.9 * capacity,
            ));
            verdicts.push((
                format!(
                    "at 3x p99 of admitted calls {p99:.0} ms (at most {} ms)",
                    SLO_P99.as_millis()
                ),
                p99 <= SLO_P99.as_secs_f64() * 1000.0,
            ));
            verdicts.push((
                format!("at 3x {per_call:.3} attempts per upstream call (at most 1.1)"),
                per_call <= 1.1,
            ));
            verdicts.push((
                format!("no server above 128 MB (most: {} MB)", max_rss / 1_000_000),
                max_rss <= 128 * 1024 * 1024,
            ));
        }
    }
    for (what, met) in &verdicts {
        let _ = writeln!(out, "{} {what}", if *met { "met:   " } else { "MISSED:" });
    }
    print!("{out}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &out)?;
    shop_bench::plot::over_time(
        &args.svg,
        &format!("p99 of admitted actions per second at 0.5x to 3x of {capacity:.0} actions/s"),
        &series,
    )?;
    println!("wrote {} and {}", args.out.display(), args.svg.display());
    drop(stack);
    Ok(())
}
