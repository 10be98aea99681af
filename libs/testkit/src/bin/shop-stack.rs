//! `shop-stack`: the whole system on this machine, for `just up`.
//!
//! Starts Postgres, nats-server and every service (fixed ports from 7100 so
//! the README's grpcurl commands work as written), seeds a demo catalog,
//! prints where everything is, and stops it all on Ctrl-C or SIGTERM.
//!
//! Flags: `--services users,catalog`, `--port-base 7100` (`0` for free
//! ports), `--state-file PATH` (writes `name pid addr` lines once ready).

use anyhow::Context as _;
use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::Money;
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Services in start order, with their offset from the port base.
const SERVICES: &[(&str, u16)] = &[("users", 1), ("catalog", 2)];

struct Args {
    services: Vec<String>,
    port_base: u16,
    state_file: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        services: SERVICES.iter().map(|(s, _)| s.to_string()).collect(),
        port_base: 7100,
        state_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => {
                args.services = value()?.split(',').map(str::to_string).collect();
            }
            "--port-base" => args.port_base = value()?.parse().context("--port-base")?,
            "--state-file" => args.state_file = Some(value()?.into()),
            "-h" | "--help" => {
                println!(
                    "shop-stack [--services users,catalog] [--port-base 7100] [--state-file PATH]"
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
        }
    }
    let options = StackOptions {
        services: args.services.clone(),
        listen,
        env: vec![("RUST_LOG".into(), "info".into())],
    };
    let started = tokio::select! {
        stack = Stack::start_reporting(options, |line| println!("==> {line}")) => stack?,
        () = stop_signal() => {
            println!("==> interrupted while starting; stopping");
            return Ok(());
        }
    };
    let stack = started;

    if args.services.iter().any(|s| s == "catalog") {
        let n = seed_catalog(&stack.service("catalog").url()).await?;
        println!("==> seeded the demo catalog with {n} products");
    }
    print_summary(&stack);
    if let Some(path) = &args.state_file {
        write_state(&stack, path)?;
    }
    println!("==> ready; Ctrl-C stops everything");
    let _ = std::io::stdout().flush();

    stop_signal().await;
    println!("==> stopping services, nats-server and postgres");
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

fn print_summary(stack: &Stack) {
    println!();
    println!("  {:<10} {:<24} {:<8} log", "component", "address", "pid");
    println!(
        "  {:<10} {:<24} {:<8} {}",
        "postgres",
        format!("127.0.0.1:{}", stack.postgres.port()),
        stack.postgres.pid().unwrap_or(0),
        stack.postgres.log_path().display()
    );
    println!(
        "  {:<10} {:<24} {:<8} {}",
        "nats",
        stack.nats.url(),
        stack.nats.pid().unwrap_or(0),
        stack.nats.log_path().display()
    );
    for s in stack.services() {
        println!(
            "  {:<10} {:<24} {:<8} {}",
            s.name(),
            s.addr().to_string(),
            s.pid().unwrap_or(0),
            s.log_path().display()
        );
    }
    println!();
    println!("  Try (with .tools/bin on PATH: export PATH=\"$PWD/.tools/bin:$PATH\"):");
    for s in stack.services() {
        let addr = s.addr();
        println!("    grpcurl -plaintext {addr} list");
        println!("    grpcurl -plaintext {addr} grpc.health.v1.Health/Check");
        match s.name() {
            "users" => println!(
                "    grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\",\"display_name\":\"Ada\"}}' {addr} shop.users.v1.UserService/CreateUser"
            ),
            "catalog" => println!(
                "    grpcurl -plaintext -d '{{\"page_size\":4}}' {addr} shop.catalog.v1.CatalogService/ListProducts"
            ),
            _ => {}
        }
    }
    println!();
}

fn write_state(stack: &Stack, path: &std::path::Path) -> anyhow::Result<()> {
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
    for s in stack.services() {
        lines.push(format!(
            "{} {} {}",
            s.name(),
            s.pid().unwrap_or(0),
            s.addr()
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// A small demo catalog: three categories, prices in EUR minor units.
async fn seed_catalog(url: &str) -> anyhow::Result<usize> {
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
    let mut client = CatalogServiceClient::connect(url.to_string()).await?;
    for (sku, name, category, price) in PRODUCTS {
        client
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
            .with_context(|| format!("seeding {sku}"))?;
    }
    Ok(PRODUCTS.len())
}
