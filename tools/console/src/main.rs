//! `shop-console`: the operator console on loopback (see the crate's docs).
//!
//! ```text
//! shop-console --identity DIR --service NAME=HOST:PORT... [--listen 127.0.0.1:7190]
//!              [--site-dir web/dist/console] [--server-name localhost]
//! ```
//!
//! `--identity` is the operator's identity directory (`ca.crt`, `tls.crt`,
//! `tls.key`); each `--service` an instance's internal port. Prints
//! `console: http://ADDR/` once it listens, and stops on Ctrl-C or SIGTERM.

use anyhow::Context as _;
use shop_console::admin::{Services, parse_service};
use shop_console::guard::{Guard, loopback_only, new_token};
use shop_console::{Console, actions::Log};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

struct Args {
    listen: SocketAddr,
    identity: PathBuf,
    services: Vec<(String, SocketAddr)>,
    site_dir: Option<PathBuf>,
    server_name: String,
}

const USAGE: &str = "usage: shop-console --identity DIR --service NAME=HOST:PORT... \
                     [--listen 127.0.0.1:7190] [--site-dir DIR] [--server-name localhost]";

fn args() -> anyhow::Result<Args> {
    let mut listen: SocketAddr = "127.0.0.1:7190".parse()?;
    let mut identity = None;
    let mut services = Vec::new();
    let mut site_dir = None;
    let mut server_name = "localhost".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => listen = value()?.parse().context("--listen")?,
            "--identity" => identity = Some(PathBuf::from(value()?)),
            "--service" => services.push(parse_service(&value()?)?),
            "--site-dir" => site_dir = Some(PathBuf::from(value()?)),
            "--server-name" => server_name = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(Args {
        listen,
        identity: identity.with_context(|| format!("--identity is required\n{USAGE}"))?,
        services,
        site_dir,
        server_name,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args()?;
    loopback_only(args.listen)?;
    let services = Services::connect(&args.identity, &args.server_name, &args.services)?;
    let site = match &args.site_dir {
        Some(dir) => Some(shop_http::Site::load(dir).context("--site-dir")?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    let console = Arc::new(Console {
        services,
        site,
        guard: Arc::new(Guard {
            local,
            token: new_token(),
        }),
        log: Log::default(),
    });
    let app = shop_console::router(console);
    println!("console: http://{local}/");
    std::io::stdout().flush()?;
    tracing::info!(%local, services = args.services.len(), "the operator console");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
