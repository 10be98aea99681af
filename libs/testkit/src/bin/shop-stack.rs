//! `shop-stack`: the whole system on this machine, for `just up`.
//!
//! Starts Postgres, nats-server and every service (fixed ports from 7100 so
//! the README's grpcurl commands work as written), seeds a demo catalog,
//! prints where everything is, and stops it all on Ctrl-C or SIGTERM.
//!
//! Flags: `--services users,catalog`, `--port-base 7100` (`0` for free
//! ports), `--replicas catalog=3` (more instances of a service, on ports
//! base+offset+10, +20...; orders balances over every catalog instance),
//! `--state-file PATH` (writes `name pid addr health-addr` lines once
//! ready), `--pki-dir PATH` (where the stack's CA certificate and the
//! operator's identity are copied for grpcurl, `.stack/pki` by default),
//! `--flags-file PATH` (the feature flags every service watches, written
//! with the shipped definitions at start, `.stack/flags/flags.json` by
//! default: edit it to flip a flag live).
//!
//! Every hop is mutual TLS with identities from a CA made for the run: the
//! internal ports want a client certificate (the operator's, for grpcurl),
//! the gateway's port a TLS client that trusts the CA; health alone is also
//! served plaintext on a port of its own per service (the table's last
//! column), as Kubernetes probes need.

use anyhow::Context as _;
use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::Money;
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Services in start order (callees before callers), with their offset from
/// the port base.
const SERVICES: &[(&str, u16)] = &[
    ("users", 1),
    ("catalog", 2),
    ("inventory", 3),
    ("payments", 5),
    ("orders", 4),
    ("notifications", 6),
    ("analytics", 7),
    // The entry point: started last (it calls the others), listed first.
    ("gateway", 0),
];

/// The console's port, from the port base.
const CONSOLE_OFFSET: u16 = 90;

struct Args {
    services: Vec<String>,
    replicas: BTreeMap<String, usize>,
    port_base: u16,
    state_file: Option<std::path::PathBuf>,
    pki_dir: std::path::PathBuf,
    flags_file: std::path::PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        services: SERVICES.iter().map(|(s, _)| s.to_string()).collect(),
        replicas: BTreeMap::new(),
        port_base: 7100,
        state_file: None,
        pki_dir: ".stack/pki".into(),
        flags_file: ".stack/flags/flags.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => {
                args.services = value()?.split(',').map(str::to_string).collect();
            }
            "--port-base" => args.port_base = value()?.parse().context("--port-base")?,
            "--replicas" => {
                let spec = value()?;
                let (name, n) = spec
                    .split_once('=')
                    .with_context(|| format!("--replicas {spec}: expected service=count"))?;
                let n: usize = n.parse().context("--replicas count")?;
                anyhow::ensure!((1..=9).contains(&n), "--replicas count must be 1 to 9");
                args.replicas.insert(name.to_string(), n);
            }
            "--state-file" => args.state_file = Some(value()?.into()),
            "--pki-dir" => args.pki_dir = value()?.into(),
            "--flags-file" => args.flags_file = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "shop-stack [--services users,catalog,...] [--port-base 7100] [--replicas catalog=3] [--state-file PATH] [--pki-dir .stack/pki] [--flags-file .stack/flags/flags.json]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    for s in &args.services {
        anyhow::ensure!(
            SERVICES.iter().any(|(known, _)| known == s),
            "unknown service {s}; known: {}",
            SERVICES
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut listen = BTreeMap::new();
    if args.port_base != 0 {
        for (name, offset) in SERVICES {
            let addr: SocketAddr = ([127, 0, 0, 1], args.port_base + offset).into();
            listen.insert(name.to_string(), addr);
            for k in 2..=args.replicas.get(*name).copied().unwrap_or(1) {
                let port = args.port_base + offset + 10 * (k as u16 - 1);
                listen.insert(format!("{name}-{k}"), ([127, 0, 0, 1], port).into());
            }
        }
    }
    let options = StackOptions {
        services: args.services.clone(),
        listen,
        env: vec![("RUST_LOG".into(), "info".into())],
        replicas: args.replicas.clone(),
        flags_file: Some(args.flags_file.clone()),
        ..StackOptions::default()
    };
    let started = tokio::select! {
        stack = Stack::start_reporting(options, |line| println!("==> {line}")) => stack?,
        () = stop_signal() => {
            println!("==> interrupted while starting; stopping");
            return Ok(());
        }
    };
    let stack = started;

    publish_pki(&stack, &args.pki_dir)?;
    let has = |name: &str| args.services.iter().any(|s| s == name);
    let mut products = Vec::new();
    if has("catalog") {
        products = seed_catalog(stack.service("catalog")).await?;
        println!(
            "==> seeded the demo catalog with {} products",
            products.len()
        );
    }
    if ["gateway", "users", "inventory", "orders", "payments"]
        .iter()
        .all(|s| has(s))
    {
        demo_saga(&stack, &products).await?;
    }
    // The operator console, holding the operator's identity, on loopback.
    let console_addr: SocketAddr = if args.port_base == 0 {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([127, 0, 0, 1], args.port_base + CONSOLE_OFFSET).into()
    };
    let console = shop_testkit::console::Console::start(&stack, console_addr)?;
    print_summary(&stack, &args.pki_dir);
    if has("gateway") {
        println!(
            "  Storefront:       https://{}/  (the stack's CA signed its certificate: trust {}/ca.crt or accept the warning)",
            stack.service("gateway").addr(),
            args.pki_dir.display()
        );
    }
    println!(
        "  Operator console: {}/  (loopback only; pid {})",
        console.url(),
        console.pid().unwrap_or(0)
    );
    println!();
    if let Some(path) = &args.state_file {
        write_state(&stack, &console, path)?;
    }
    println!("==> ready; Ctrl-C stops everything");
    let _ = std::io::stdout().flush();

    stop_signal().await;
    println!("==> stopping the console, services, nats-server and postgres");
    drop(console);
    drop(stack);
    println!("==> stopped");
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn print_summary(stack: &Stack, pki: &std::path::Path) {
    println!();
    println!(
        "  {:<13} {:<24} {:<8} {:<24} log",
        "component", "address", "pid", "health (plaintext)"
    );
    println!(
        "  {:<13} {:<24} {:<8} {:<24} {}",
        "postgres",
        format!("127.0.0.1:{}", stack.postgres.port()),
        stack.postgres.pid().unwrap_or(0),
        "",
        stack.postgres.log_path().display()
    );
    println!(
        "  {:<13} {:<24} {:<8} {:<24} {}",
        "nats",
        stack.nats.url(),
        stack.nats.pid().unwrap_or(0),
        "",
        stack.nats.log_path().display()
    );
    for s in entry_first(stack) {
        println!(
            "  {:<13} {:<24} {:<8} {:<24} {}",
            s.name(),
            s.addr().to_string(),
            s.pid().unwrap_or(0),
            s.health_addr().to_string(),
            s.log_path().display()
        );
    }
    let pki = pki.display();
    let public = format!("-cacert {pki}/ca.crt");
    let operator =
        format!("-cacert {pki}/ca.crt -cert {pki}/operator/tls.crt -key {pki}/operator/tls.key");
    println!();
    println!("  Try (with .tools/bin on PATH: export PATH=\"$PWD/.tools/bin:$PATH\"):");
    for s in entry_first(stack) {
        let addr = s.addr();
        match s.name() {
            "gateway" => {
                println!("    grpcurl {public} {addr} list shop.gateway.v1.ShopGatewayService");
                println!(
                    "    grpcurl {public} -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\",\"display_name\":\"Ada\"}}' {addr} shop.gateway.v1.ShopGatewayService/SignUp"
                );
                println!(
                    "    grpcurl {public} -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}' {addr} shop.gateway.v1.ShopGatewayService/LogIn"
                );
                println!(
                    "    grpcurl {public} -d '{{\"page_size\":4}}' {addr} shop.gateway.v1.ShopGatewayService/ListProducts"
                );
                println!(
                    "    grpcurl {public} -H \"authorization: Bearer $TOKEN\" {addr} shop.gateway.v1.ShopGatewayService/ListOrders"
                );
            }
            name => {
                println!("    grpcurl {operator} {addr} list");
                println!(
                    "    grpcurl -plaintext {} grpc.health.v1.Health/Check",
                    s.health_addr()
                );
                match name {
                    "catalog" => println!(
                        "    grpcurl {operator} -d '{{\"page_size\":4}}' {addr} shop.catalog.v1.CatalogService/ListProducts"
                    ),
                    "analytics" => println!(
                        "    grpcurl {operator} {addr} shop.analytics.v1.AnalyticsService/GetSalesReport"
                    ),
                    _ => {}
                }
            }
        }
    }
    println!(
        "  Flags: edit {} (reloaded within a second); see them with",
        stack.flags_file().display()
    );
    if let Some(gateway) = stack.services().find(|s| s.name() == "gateway") {
        println!(
            "    grpcurl {operator} {} shop.flags.v1.FlagsAdminService/ListFlags",
            gateway.addr()
        );
    }
    println!();
}

/// Copies the CA certificate and the operator's identity to `dir`, for
/// grpcurl and the README's examples.
fn publish_pki(stack: &Stack, dir: &std::path::Path) -> anyhow::Result<()> {
    use shop_identity::files;
    let operator = shop_testkit::identities::Identities::dir_in(stack.dir(), "operator");
    std::fs::create_dir_all(dir.join("operator"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(operator.join(files::CA), dir.join(files::CA))?;
    for name in [files::CERT, files::KEY] {
        std::fs::copy(operator.join(name), dir.join("operator").join(name))?;
    }
    println!(
        "==> the CA certificate and the operator's identity (spiffe://{}/ns/{}/sa/operator) are in {}",
        shop_testkit::identities::TRUST_DOMAIN,
        shop_testkit::identities::NAMESPACE,
        dir.display()
    );
    Ok(())
}

/// The gateway (the entry point) first, then the others by name.
fn entry_first(stack: &Stack) -> impl Iterator<Item = &shop_testkit::ServiceProcess> {
    let (entry, rest): (Vec<_>, Vec<_>) = stack.services().partition(|s| s.name() == "gateway");
    entry.into_iter().chain(rest)
}

fn write_state(
    stack: &Stack,
    console: &shop_testkit::console::Console,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut lines = vec![
        format!(
            "postgres {} 127.0.0.1:{}",
            stack.postgres.pid().unwrap_or(0),
            stack.postgres.port()
        ),
        format!(
            "nats {} {}",
            stack.nats.pid().unwrap_or(0),
            stack.nats.url().trim_start_matches("nats://")
        ),
    ];
    lines.push(format!(
        "console {} {}",
        console.pid().unwrap_or(0),
        console.url().trim_start_matches("http://")
    ));
    for s in stack.services() {
        lines.push(format!(
            "{} {} {} {}",
            s.name(),
            s.pid().unwrap_or(0),
            s.addr(),
            s.health_addr()
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// A small demo catalog: three categories, prices in EUR minor units.
/// Returns the product ids.
async fn seed_catalog(catalog: &shop_testkit::ServiceProcess) -> anyhow::Result<Vec<String>> {
    const PRODUCTS: &[(&str, &str, &str, i64)] = &[
        ("BK-RUST-01", "The Rust Programming Language", "books", 3999),
        (
            "BK-DDIA-01",
            "Designing Data-Intensive Applications",
            "books",
            4599,
        ),
        ("BK-SRE-01", "Site Reliability Engineering", "books", 3499),
        ("KT-MUG-01", "Ferris coffee mug", "kitchen", 1299),
        ("KT-KETL-01", "Gooseneck kettle", "kitchen", 5900),
        ("KT-GRND-01", "Burr coffee grinder", "kitchen", 8900),
        ("GM-CHESS-01", "Wooden chess set", "games", 4999),
        ("GM-GO-01", "Go board with stones", "games", 6999),
        ("GM-PUZ-01", "1000-piece puzzle: lighthouse", "games", 1899),
        ("GM-CARD-01", "Deck of playing cards", "games", 499),
    ];
    let mut client = CatalogServiceClient::new(catalog.channel().await?);
    let mut ids = Vec::new();
    for (sku, name, category, price) in PRODUCTS {
        let product = client
            .create_product(CreateProductRequest {
                sku: sku.to_string(),
                name: name.to_string(),
                description: format!("Demo product {sku}."),
                category: category.to_string(),
                price: Some(Money {
                    amount_minor: *price,
                    currency_code: "EUR".into(),
                }),
            })
            .await
            .with_context(|| format!("seeding {sku}"))?
            .into_inner()
            .product
            .context("CreateProduct answered no product")?;
        ids.push(product.product_id);
    }
    Ok(ids)
}

/// Stocks the demo products (as an operator, on inventory), then as an end
/// user through the gateway: signs up, logs in and places two orders, one
/// that ends CONFIRMED, one that ends CANCELLED because the payment is
/// declined; prints both saga timelines.
async fn demo_saga(stack: &Stack, products: &[String]) -> anyhow::Result<()> {
    use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
    use shop_proto::shop::gateway::v1::{
        GetOrderRequest, LogInRequest, PlaceOrderRequest, SignUpRequest,
    };
    use shop_proto::shop::inventory::v1::SetStockRequest;
    use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
    use shop_proto::shop::orders::v1::{NewOrderLine, OrderStatus, SagaStepStatus, SagaStepType};

    let mut inventory = InventoryServiceClient::new(stack.service("inventory").channel().await?);
    for id in products {
        inventory
            .set_stock(SetStockRequest {
                product_id: id.clone(),
                available: 25,
            })
            .await
            .context("stocking the demo products")?;
    }
    let mut gateway =
        ShopGatewayServiceClient::new(stack.service("gateway").public_channel().await?);
    let user = gateway
        .sign_up(SignUpRequest {
            email: "demo@example.com".into(),
            password: "demo password 1".into(),
            display_name: "Demo Shopper".into(),
        })
        .await
        .context("signing up the demo user")?
        .into_inner()
        .user
        .context("SignUp answered no user")?;
    let token = gateway
        .log_in(LogInRequest {
            email: "demo@example.com".into(),
            password: "demo password 1".into(),
        })
        .await
        .context("logging the demo user in")?
        .into_inner()
        .access_token;
    let authed = |message| shop_testkit::with_bearer(&token, message);
    println!(
        "==> stocked the demo products (25 each); demo user {} ({}) signed up and logged in through the gateway",
        user.user_id, user.email
    );

    let mut placed = Vec::new();
    for (label, payment, lines) in [
        ("confirmed", "tok_approve", vec![(0usize, 1i64), (3, 2)]),
        ("declined", "tok_decline", vec![(6, 1)]),
    ] {
        let order = gateway
            .place_order(authed(PlaceOrderRequest {
                lines: lines
                    .iter()
                    .filter_map(|(i, q)| {
                        products.get(*i).map(|p| NewOrderLine {
                            product_id: p.clone(),
                            quantity: *q,
                        })
                    })
                    .collect(),
                payment_token: payment.into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            }))
            .await
            .with_context(|| format!("placing the {label} demo order"))?
            .into_inner()
            .order
            .context("PlaceOrder answered no order")?;
        println!(
            "==> placed demo order {} with payment token {payment}",
            order.order_id
        );
        placed.push(order.order_id);
    }
    for order_id in placed {
        let order = shop_testkit::eventually(std::time::Duration::from_secs(60), || {
            let mut gateway = gateway.clone();
            let request = shop_testkit::with_bearer(
                &token,
                GetOrderRequest {
                    order_id: order_id.clone(),
                },
            );
            async move {
                let order = gateway
                    .get_order(request)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .order
                    .ok_or("no order")?;
                if order.status == OrderStatus::Pending as i32 {
                    Err("still pending".to_string())
                } else {
                    Ok(order)
                }
            }
        })
        .await
        .context("waiting for the demo orders to finish")?;
        let total = order.total.clone().unwrap_or_default();
        println!(
            "\n  order {}  {}  total {}.{:02} {}",
            order.order_id,
            order.status().as_str_name(),
            total.amount_minor / 100,
            total.amount_minor % 100,
            total.currency_code
        );
        for step in &order.timeline {
            let at = step
                .occur_time
                .as_ref()
                .and_then(|t| chrono_like(t.seconds, t.nanos))
                .unwrap_or_default();
            let step_name = SagaStepType::try_from(step.step)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("SAGA_STEP_TYPE_")
                        .to_string()
                })
                .unwrap_or_default();
            let status = SagaStepStatus::try_from(step.status)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("SAGA_STEP_STATUS_")
                        .to_string()
                })
                .unwrap_or_default();
            println!("    {at}  {step_name:<16} {status:<10} {}", step.reason);
        }
    }
    println!();
    Ok(())
}

/// `HH:MM:SS.mmm` (UTC) of a protobuf timestamp.
fn chrono_like(seconds: i64, nanos: i32) -> Option<String> {
    let day = seconds.rem_euclid(86_400);
    Some(format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        nanos / 1_000_000
    ))
}
