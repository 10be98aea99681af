//! `shop-load`: end users' traffic through the gateway of a running stack
//! (`just up`), at a fixed rate for a fixed time, and a report of each RPC
//! against the service catalog's SLOs (`services/service-catalog.yaml`).
//!
//! The mix, per second of `--rate` actions: browsing (ListProducts,
//! GetProduct), orders with every payment outcome (approved, declined, a
//! transient failure retried, a slow processor), the order's details and
//! the shopper's orders; log-ins, and sign-ups within the gateway's limits
//! for one address (a sign-up every 8 s, a log-in every 2 s). Before the load,
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

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use rand::Rng as _;
use shop_proto::shop::gateway::v1 as gw;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::inventory::v1::SetStockRequest;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::orders::v1::NewOrderLine;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

struct Args {
    gateway: SocketAddr,
    inventory: SocketAddr,
    pki: PathBuf,
    rate: f64,
    secs: u64,
    max_in_flight: usize,
    catalog: PathBuf,
    out: PathBuf,
    svg: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        gateway: "127.0.0.1:7100".parse()?,
        inventory: "127.0.0.1:7103".parse()?,
        pki: ".stack/pki".into(),
        rate: 20.0,
        secs: 60,
        max_in_flight: 256,
        catalog: "services/service-catalog.yaml".into(),
        out: "target/load/report.txt".into(),
        svg: "target/load/latency.svg".into(),
    };
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
            "--out" => a.out = value()?.into(),
            "--svg" => a.svg = value()?.into(),
            other => bail!(
                "unknown flag {other}; known: --gateway ADDR --inventory ADDR --pki DIR --rate N --secs S \
                 --max-in-flight N --catalog FILE --out FILE --svg FILE"
            ),
        }
    }
    ensure!(
        a.gateway.ip().is_loopback() && a.inventory.ip().is_loopback(),
        "shop-load sends traffic to loopback addresses only"
    );
    ensure!(
        a.rate > 0.0 && a.rate <= 500.0,
        "--rate is between 0 and 500 actions/s"
    );
    ensure!((1..=600).contains(&a.secs), "--secs is between 1 and 600");
    Ok(a)
}

/// What one RPC saw.
#[derive(Default)]
struct Rpc {
    calls: u64,
    /// The service's fault (counted against availability).
    failures: u64,
    /// Answers that are not OK but not the service's fault, by code.
    answered: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    /// Per second of the run: latencies of successful calls (µs).
    per_second: BTreeMap<u64, Histogram<u64>>,
}

impl Rpc {
    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
    }

    fn record(&mut self, second: u64, took: Duration, result: Result<(), Code>) {
        self.calls += 1;
        match result {
            Ok(()) => {
                let us = (took.as_micros() as u64).clamp(1, 120_000_000);
                self.latency
                    .get_or_insert_with(Self::histogram)
                    .saturating_record(us);
                self.per_second
                    .entry(second)
                    .or_insert_with(Self::histogram)
                    .saturating_record(us);
            }
            Err(code) if is_fault(code) => self.failures += 1,
            Err(code) => *self.answered.entry(format!("{code:?}")).or_insert(0) += 1,
        }
    }
}

fn is_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            // This client's own 10 s timeout: a call the system did not answer.
            | Code::Cancelled
            | Code::DataLoss
    )
}

/// The SLO the report holds an RPC to.
struct Slo {
    service: String,
    availability: f64,
    p99: Duration,
}

/// `services/service-catalog.yaml`'s SLOs, read with the bootstrap's Python
/// (PyYAML comes with kubernetes-validate).
fn slos(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, (f64, Duration)>> {
    let python = shop_testkit::tools::find("shop-python")?;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; json.dump({n: s['slos'] for n, s in yaml.safe_load(open(sys.argv[1]))['services'].items()}, sys.stdout)",
        ])
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_slice(&out.stdout)?;
    let mut slos = BTreeMap::new();
    for (service, s) in raw {
        let availability: f64 = s["availability"]
            .trim_end_matches('%')
            .parse::<f64>()
            .with_context(|| format!("{service}: availability"))?
            / 100.0;
        let p99 = &s["latency_p99"];
        let p99 = match p99.strip_suffix("ms") {
            Some(ms) => Duration::from_millis(ms.parse()?),
            None => Duration::from_secs(p99.trim_end_matches('s').parse()?),
        };
        slos.insert(service, (availability, p99));
    }
    Ok(slos)
}

/// The service whose SLO each gateway RPC answers to: the gateway's, and
/// for PlaceOrder the orders service's as well (the stricter of the two).
fn slo_of(rpc: &str, slos: &BTreeMap<String, (f64, Duration)>) -> anyhow::Result<Slo> {
    let mut owners = vec!["gateway"];
    if rpc == "PlaceOrder" {
        owners.push("orders");
    }
    let mut best: Option<Slo> = None;
    for owner in owners {
        let (availability, p99) = *slos
            .get(owner)
            .with_context(|| format!("the service catalog has no SLOs for {owner}"))?;
        let stricter = best
            .as_ref()
            .is_none_or(|b| availability > b.availability || p99 < b.p99);
        if stricter {
            best = Some(Slo {
                service: owner.to_string(),
                availability,
                p99,
            });
        }
    }
    Ok(best.expect("at least the gateway"))
}

/// A shopper the load acts as.
#[derive(Clone)]
struct Shopper {
    email: String,
    token: String,
    orders: Vec<String>,
}

const PASSWORD: &str = "correct horse battery";

struct Load {
    gateway: ShopGatewayServiceClient<Channel>,
    products: Vec<String>,
    shoppers: Mutex<Vec<Shopper>>,
    rpcs: Mutex<BTreeMap<&'static str, Rpc>>,
    start: Instant,
}

impl Load {
    async fn timed<T>(
        &self,
        rpc: &'static str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let second = started.duration_since(self.start).as_secs();
        let mut rpcs = self.rpcs.lock().expect("not poisoned");
        let entry = rpcs.entry(rpc).or_default();
        match result {
            Ok(value) => {
                entry.record(second, started.elapsed(), Ok(()));
                Some(value)
            }
            Err(status) => {
                entry.record(second, started.elapsed(), Err(status.code()));
                None
            }
        }
    }

    fn shopper(&self) -> Option<(usize, Shopper)> {
        let shoppers = self.shoppers.lock().expect("not poisoned");
        if shoppers.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..shoppers.len());
        Some((i, shoppers[i].clone()))
    }

    fn bearer<T>(token: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    async fn sign_up(&self) {
        let email = format!("load-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut gateway = self.gateway.clone();
        let signed_up = self
            .timed(
                "SignUp",
                gateway.sign_up(gw::SignUpRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                    display_name: "Load".into(),
                }),
            )
            .await;
        if signed_up.is_some() {
            self.log_in(email).await;
        }
    }

    async fn log_in(&self, email: String) {
        let mut gateway = self.gateway.clone();
        if let Some(r) = self
            .timed(
                "LogIn",
                gateway.log_in(gw::LogInRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                }),
            )
            .await
        {
            let token = r.into_inner().access_token;
            let mut shoppers = self.shoppers.lock().expect("not poisoned");
            match shoppers.iter_mut().find(|s| s.email == email) {
                Some(s) => s.token = token,
                None => shoppers.push(Shopper {
                    email,
                    token,
                    orders: Vec::new(),
                }),
            }
        }
    }

    fn product(&self) -> String {
        self.products[rand::rng().random_range(0..self.products.len())].clone()
    }

    async fn act(&self, roll: u32) {
        let mut gateway = self.gateway.clone();
        match roll {
            0..40 => {
                self.timed(
                    "ListProducts",
                    gateway.list_products(gw::ListProductsRequest {
                        page_size: 10,
                        ..Default::default()
                    }),
                )
                .await;
            }
            40..60 => {
                self.timed(
                    "GetProduct",
                    gateway.get_product(gw::GetProductRequest {
                        product_id: self.product(),
                    }),
                )
                .await;
            }
            60..80 => {
                let Some((i, shopper)) = self.shopper() else {
                    return;
                };
                let payment_token = match rand::rng().random_range(0..10) {
                    0 => "tok_decline",
                    1 => "tok_fail_transient",
                    2 => "tok_approve_slow",
                    _ => "tok_approve",
                };
                let placed = self
                    .timed(
                        "PlaceOrder",
                        gateway.place_order(Self::bearer(
                            &shopper.token,
                            gw::PlaceOrderRequest {
                                lines: vec![NewOrderLine {
                                    product_id: self.product(),
                                    quantity: 1,
                                }],
                                payment_token: payment_token.into(),
                                idempotency_key: uuid::Uuid::new_v4().to_string(),
                            },
                        )),
                    )
                    .await;
                if let Some(order) = placed.and_then(|r| r.into_inner().order) {
                    let mut shoppers = self.shoppers.lock().expect("not poisoned");
                    if let Some(s) = shoppers.get_mut(i) {
                        s.orders.push(order.order_id);
                    }
                }
            }
            80..92 => {
                let Some((_, shopper)) = self.shopper() else {
                    return;
                };
                let Some(order_id) = shopper.orders.last().cloned() else {
                    return;
                };
                self.timed(
                    "GetOrderDetails",
                    gateway.get_order_details(Self::bearer(
                        &shopper.token,
                        gw::GetOrderDetailsRequest { order_id },
                    )),
                )
                .await;
            }
            _ => {
                let Some((_, shopper)) = self.shopper() else {
                    return;
                };
                self.timed(
                    "ListOrders",
                    gateway.list_orders(Self::bearer(
                        &shopper.token,
                        gw::ListOrdersRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                    )),
                )
                .await;
            }
        }
    }
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
    let slos = slos(&args.catalog)?;
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    let ca = Certificate::from_pem(read(args.pki.join("ca.crt"))?);
    let public = ClientTlsConfig::new().ca_certificate(ca.clone());
    let operator = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(Identity::from_pem(
            read(args.pki.join("operator/tls.crt"))?,
            read(args.pki.join("operator/tls.key"))?,
        ));
    let mut gateway = ShopGatewayServiceClient::new(channel(args.gateway, public).await?);
    let mut inventory = InventoryServiceClient::new(channel(args.inventory, operator).await?);

    // The catalog as a shopper sees it, stocked for the whole run.
    let page = gateway
        .list_products(gw::ListProductsRequest {
            page_size: 50,
            ..Default::default()
        })
        .await?
        .into_inner();
    let products: Vec<String> = page
        .items
        .into_iter()
        .filter_map(|i| i.product.map(|p| p.product_id))
        .collect();
    ensure!(
        !products.is_empty(),
        "the catalog is empty: run `just up` (it seeds one)"
    );
    for product_id in &products {
        inventory
            .set_stock(SetStockRequest {
                product_id: product_id.clone(),
                available: 1_000_000,
            })
            .await?;
    }

    let load = Arc::new(Load {
        gateway,
        products,
        shoppers: Mutex::new(Vec::new()),
        rpcs: Mutex::new(BTreeMap::new()),
        start: Instant::now(),
    });
    // A few shoppers to begin with (within the sign-up limit's burst).
    for _ in 0..4 {
        load.sign_up().await;
    }

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let until = load.start + Duration::from_secs(args.secs);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut dropped, mut n) = (0u64, 0u64);
    let mut next_sign_up = load.start + Duration::from_secs(8);
    let mut next_log_in = load.start + Duration::from_secs(1);
    while Instant::now() < until {
        ticker.tick().await;
        n += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let load = load.clone();
        let now = Instant::now();
        let action = if now >= next_sign_up {
            next_sign_up = now + Duration::from_secs(8);
            0
        } else if now >= next_log_in {
            next_log_in = now + Duration::from_secs(2);
            1
        } else {
            2
        };
        let roll = rand::rng().random_range(0..100);
        tasks.spawn(async move {
            match action {
                0 => load.sign_up().await,
                1 => {
                    if let Some((_, s)) = load.shopper() {
                        load.log_in(s.email).await;
                    }
                }
                _ => load.act(roll).await,
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Calls still in flight finish (bounded by the channel's timeout).
    while tasks.join_next().await.is_some() {}
    let elapsed = load.start.elapsed();

    let rpcs = std::mem::take(&mut *load.rpcs.lock().expect("not poisoned"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shop-load: {:.0} actions/s for {} s against the gateway at {} ({} actions, {} dropped at {} in flight); {:.1} s in all",
        args.rate,
        args.secs,
        args.gateway,
        n,
        dropped,
        args.max_in_flight,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9}  {:<28} verdict / other answers",
        "rpc", "calls", "avail", "p50 ms", "p99 ms", "max ms", "SLO (service)"
    );
    let mut all_met = true;
    for (rpc, r) in &rpcs {
        let slo = slo_of(rpc, &slos)?;
        let availability = if r.calls == 0 {
            1.0
        } else {
            1.0 - r.failures as f64 / r.calls as f64
        };
        let (p50, p99, max) = r.latency.as_ref().map_or((0.0, 0.0, 0.0), |h| {
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            )
        });
        let met = availability >= slo.availability && p99 <= slo.p99.as_secs_f64() * 1000.0;
        all_met &= met;
        let others: Vec<String> = r.answered.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>8.3}% {:>9.1} {:>9.1} {:>9.1}  {:<28} {}{}",
            rpc,
            r.calls,
            availability * 100.0,
            p50,
            p99,
            max,
            format!(
                "{:.2}%, p99 {} ms ({})",
                slo.availability * 100.0,
                slo.p99.as_millis(),
                slo.service
            ),
            if met { "met" } else { "MISSED" },
            if others.is_empty() {
                String::new()
            } else {
                format!("; {}", others.join(", "))
            }
        );
    }
    if dropped > 0 {
        all_met = false;
        let _ = writeln!(
            out,
            "{dropped} actions dropped at the in-flight bound: the system did not keep up"
        );
    }
    let _ = writeln!(out, "every SLO {}", if all_met { "met" } else { "not met" });
    print!("{out}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &out)?;

    // p99 of each RPC per second of the run.
    let series: Vec<(String, Vec<(f64, f64)>)> = rpcs
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
        &args.svg,
        &format!(
            "p99 latency per second through the gateway, {:.0} actions/s",
            args.rate
        ),
        &series,
    )?;
    println!("wrote {} and {}", args.out.display(), args.svg.display());
    Ok(())
}
