//! `shop-load`: end users' traffic through the gateway of a running stack
//! (`just up`), and a report of each RPC against the service catalog's SLOs
//! (`services/service-catalog.yaml`). Two modes:
//!
//! - **fixed** (`--rate N --secs S`): one run at a fixed rate, its table of
//!   RPCs and the p99 of each per second as SVG;
//! - **capacity** (`--find-capacity`): runs of `--step-secs` at offered
//!   rates from `--from`, times `--factor` each, until one misses an SLO,
//!   then `--refine` bisections between the last rate met and the first
//!   missed: the highest rate with every SLO met, the RPCs at it and at the
//!   miss above it, the CPU each process of the stack used in every step,
//!   and p99 by offered rate as SVG ([`capacity`]).
//!
//! The mix, per second of actions: browsing (ListProducts, GetProduct),
//! orders with every payment outcome (approved, declined, a transient
//! failure retried, a slow processor), the order's details and the
//! shopper's orders; log-ins, and sign-ups within the gateway's limits for
//! one address (a sign-up every 8 s, a log-in every 2 s). Before the load,
//! as the operator, the demo products are stocked so orders do not run out.
//!
//! Open loop: an action starts on schedule whether or not earlier ones
//! answered (at most `--max-in-flight` at once; beyond that an action is
//! counted as dropped, not delayed), so a slow system shows as latency, not
//! as fewer calls. Loopback only: `--gateway` and `--inventory` must be
//! 127.0.0.1 addresses.
//!
//! Availability counts as failures only what is the service's fault
//! (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS, and
//! CANCELLED: this client's own timeout); a caller's mistake or a limit
//! (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED...) is an answer, listed
//! beside the verdict. Latency is of successful calls. An action dropped at
//! the in-flight bound fails the run's verdict.

mod capacity;
mod slo;
mod traffic;

use anyhow::{Context as _, bail, ensure};
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Args {
    gateway: SocketAddr,
    inventory: SocketAddr,
    pki: PathBuf,
    rate: f64,
    secs: u64,
    max_in_flight: usize,
    catalog: PathBuf,
    out: Option<PathBuf>,
    svg: Option<PathBuf>,
    /// `--find-capacity`: the search, instead of one run at `rate`.
    capacity: Option<capacity::Search>,
}

const USAGE: &str = "known: --gateway ADDR --inventory ADDR --pki DIR --rate N --secs S \
     --max-in-flight N --catalog FILE --out FILE --svg FILE; \
     --find-capacity [--from N --factor F --step-secs S --refine N --max-rate N --max-steps N \
     --max-secs S --settle-secs S --stack-pid PID]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        gateway: "127.0.0.1:7100".parse()?,
        inventory: "127.0.0.1:7103".parse()?,
        pki: ".stack/pki".into(),
        rate: 20.0,
        secs: 60,
        max_in_flight: 256,
        catalog: "services/service-catalog.yaml".into(),
        out: None,
        svg: None,
        capacity: None,
    };
    let mut search = capacity::Search::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--gateway" => a.gateway = value()?.parse()?,
            "--inventory" => a.inventory = value()?.parse()?,
            "--pki" => a.pki = value()?.into(),
            "--rate" => a.rate = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--max-in-flight" => a.max_in_flight = value()?.parse()?,
            "--catalog" => a.catalog = value()?.into(),
            "--out" => a.out = Some(value()?.into()),
            "--svg" => a.svg = Some(value()?.into()),
            "--find-capacity" => a.capacity = Some(capacity::Search::default()),
            "--from" => search.from = value()?.parse()?,
            "--factor" => search.factor = value()?.parse()?,
            "--step-secs" => search.step_secs = value()?.parse()?,
            "--refine" => search.refine = value()?.parse()?,
            "--max-rate" => search.max_rate = value()?.parse()?,
            "--max-steps" => search.max_steps = value()?.parse()?,
            "--max-secs" => search.max_secs = value()?.parse()?,
            "--settle-secs" => search.settle_secs = value()?.parse()?,
            "--stack-pid" => search.stack_pid = Some(value()?.parse()?),
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    ensure!(
        a.gateway.ip().is_loopback() && a.inventory.ip().is_loopback(),
        "shop-load sends traffic to loopback addresses only"
    );
    ensure!(
        (1..=4096).contains(&a.max_in_flight),
        "--max-in-flight is 1 to 4096"
    );
    if a.capacity.is_some() {
        search.max_in_flight = a.max_in_flight;
        search.check()?;
        a.capacity = Some(search);
    } else {
        ensure!(
            search == capacity::Search::default(),
            "--from, --factor, --step-secs, --refine, --max-*, --settle-secs and --stack-pid go with --find-capacity"
        );
        ensure!(
            a.rate > 0.0 && a.rate <= 500.0,
            "--rate is between 0 and 500 actions/s"
        );
        ensure!((1..=600).contains(&a.secs), "--secs is between 1 and 600");
    }
    Ok(a)
}

async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.domain_name("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr} (is `just up` running?)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let slos = slo::Slos::read(&args.catalog)?;
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    let ca = Certificate::from_pem(read(args.pki.join("ca.crt"))?);
    let public = ClientTlsConfig::new().ca_certificate(ca.clone());
    let operator = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(Identity::from_pem(
            read(args.pki.join("operator/tls.crt"))?,
            read(args.pki.join("operator/tls.key"))?,
        ));
    let gateway = ShopGatewayServiceClient::new(channel(args.gateway, public).await?);
    let inventory = InventoryServiceClient::new(channel(args.inventory, operator).await?);
    let load = traffic::Load::prepare(gateway, inventory).await?;

    let (out, svg) = if args.capacity.is_some() {
        ("target/load/capacity.txt", "target/load/capacity.svg")
    } else {
        ("target/load/report.txt", "target/load/latency.svg")
    };
    let out = args.out.clone().unwrap_or_else(|| out.into());
    let svg = args.svg.clone().unwrap_or_else(|| svg.into());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = match &args.capacity {
        Some(search) => capacity::find(&load, search, &slos, args.gateway, &svg).await?,
        None => {
            let run = load.run(args.rate, args.secs, args.max_in_flight).await;
            fixed_report(&run, &slos, args.gateway, &svg)?
        }
    };
    std::fs::write(&out, &report)?;
    println!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

/// One run's table (printed as it is written), and the p99 of each RPC per
/// second of the run as SVG.
fn fixed_report(
    run: &traffic::Run,
    slos: &slo::Slos,
    gateway: SocketAddr,
    svg: &std::path::Path,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shop-load: {:.0} actions/s for {} s against the gateway at {} ({} actions, {} dropped at {} in flight); {:.1} s in all",
        run.rate,
        run.secs,
        gateway,
        run.actions,
        run.dropped,
        run.max_in_flight,
        run.elapsed.as_secs_f64()
    );
    slo::Judged::new(run, slos)?.write_table(&mut out);
    print!("{out}");

    let series: Vec<(String, Vec<(f64, f64)>)> = run
        .rpcs
        .iter()
        .map(|(rpc, r)| {
            (
                rpc.to_string(),
                r.per_second
                    .iter()
                    .map(|(s, h)| (*s as f64, h.value_at_quantile(0.99) as f64 / 1000.0))
                    .collect(),
            )
        })
        .collect();
    shop_bench::plot::over_time(
        svg,
        &format!(
            "p99 latency per second through the gateway, {:.0} actions/s",
            run.rate
        ),
        &series,
    )?;
    Ok(out)
}
