//! `saga-bench`: the order saga on the local stack, measured against the
//! ceiling of its own Postgres (`just bench saga`).
//!
//! One run, on release binaries (`SHOP_BIN_DIR`), with Postgres `fsync` on
//! and JetStream `sync_interval: always`, one replica of each service:
//!
//! 1. **ceiling**: 8, then 32 connections committing small two-insert
//!    transactions on the same Postgres for `--ceiling-secs`: transactions
//!    per second (the better of the two counts).
//! 2. **saturated**: `--clients` clients place orders (one line, one of 200
//!    products with ample stock, `tok_approve`) as fast as PlaceOrder answers, for `--secs`: confirmed
//!    orders per second (confirmations inside the window), the
//!    transactions one saga commits (from `pg_stat_database`), and CPU per
//!    confirmed order of each process.
//! 3. **half**: orders at half the saturated rate, open loop: p50/p99/p99.9
//!    from PlaceOrder to CONFIRMED, read from each order's timeline.
//! 4. **half-slow**: the same rate with one order in ten on
//!    `tok_approve_slow` (1.5 s at the processor): the other orders' p99
//!    next to half's.
//! 5. **user**: the scenario: 32 clients place 800 orders, one in
//!    eight on `tok_approve_slow`: every order ends as its card decides.
//!
//! Results go to `--out` (text) and `--svg` (latency CDFs).

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use shop_bench::procstat;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{
    GetOrderRequest, NewOrderLine, Order, OrderStatus, PlaceOrderRequest, SagaStepType,
};
use shop_testkit::stack::{Stack, StackOptions};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const SERVICES: &[&str] = &[
    "catalog",
    "inventory",
    "payments",
    "orders",
    "notifications",
    "analytics",
];
const SLOW_DELAY: &str = "1500ms";

struct Args {
    clients: usize,
    secs: u64,
    ceiling_secs: u64,
    out: std::path::PathBuf,
    svg: std::path::PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        clients: 32,
        secs: 20,
        ceiling_secs: 10,
        out: "target/bench/saga.txt".into(),
        svg: "target/bench/saga.svg".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => a.clients = value()?.parse()?,
            "--secs" => a.secs = value()?.parse()?,
            "--ceiling-secs" => a.ceiling_secs = value()?.parse()?,
            "--out" => a.out = value()?.into(),
            "--svg" => a.svg = value()?.into(),
            other => bail!(
                "unknown flag {other}; known: --clients N --secs S --ceiling-secs S --out FILE --svg FILE"
            ),
        }
    }
    Ok(a)
}

/// One order placed by the load, and what its card does.
struct Placed {
    order_id: String,
    slow: bool,
}

/// What a scenario measured.
struct Outcome {
    name: &'static str,
    placed: usize,
    confirmed: usize,
    cancelled: usize,
    /// Confirmations per second inside the load window.
    confirmed_per_sec: f64,
    /// PlaceOrder to CONFIRMED of orders on fast cards, in microseconds.
    fast: Histogram<u64>,
    /// The same of orders on slow cards.
    slow: Histogram<u64>,
    /// Slow-card orders cancelled, fast-card orders cancelled.
    cancelled_fast: usize,
    cancelled_slow: usize,
    /// Transactions committed in Postgres per confirmed order.
    commits_per_order: f64,
    /// The same, by database.
    commits_by_database: Vec<(String, f64)>,
    /// CPU per confirmed order, by process.
    cpu_per_order: Vec<(String, Duration)>,
}

/// Products in the bench's catalog; each order takes one at random, so
/// orders do not all queue on one stock row.
const PRODUCTS: usize = 200;

struct Bench {
    stack: Stack,
    orders: OrderServiceClient<Channel>,
    products: Vec<String>,
    user_id: String,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let mut service_env = BTreeMap::new();
        service_env.insert(
            "payments".to_string(),
            vec![(
                "SHOP_PAYMENTS__PROCESSOR__SLOW_DELAY".to_string(),
                SLOW_DELAY.to_string(),
            )],
        );
        let stack = Stack::start_with(StackOptions {
            services: SERVICES.iter().map(|s| s.to_string()).collect(),
            env: vec![("RUST_LOG".into(), "warn".into())],
            service_env,
            durable_postgres: true,
            ..StackOptions::default()
        })
        .await?;
        let products = shop_bench::catalog::stocked_products(&stack, PRODUCTS, 1200).await?;
        let orders = OrderServiceClient::new(stack.service("orders").channel().await?);
        Ok(Self {
            stack,
            orders,
            products,
            user_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    fn request(&self, slow: bool) -> PlaceOrderRequest {
        PlaceOrderRequest {
            user_id: self.user_id.clone(),
            lines: vec![NewOrderLine {
                product_id: self.products[rand::random_range(0..self.products.len())].clone(),
                quantity: 1,
            }],
            payment_token: if slow {
                "tok_approve_slow"
            } else {
                "tok_approve"
            }
            .into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        }
    }

    async fn place(&self, slow: bool) -> anyhow::Result<Placed> {
        let order = self
            .orders
            .clone()
            .place_order(self.request(slow))
            .await?
            .into_inner()
            .order
            .context("no order")?;
        Ok(Placed {
            order_id: order.order_id,
            slow,
        })
    }

    /// `clients` loops placing orders until `until` (or `limit` orders in
    /// all); `slow_every`: every n-th order of the run is slow.
    async fn closed_loop(
        self: &Arc<Self>,
        clients: usize,
        until: Instant,
        limit: usize,
        slow_every: Option<usize>,
    ) -> anyhow::Result<Vec<Placed>> {
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let bench = self.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                let mut placed = Vec::new();
                while Instant::now() < until {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= limit {
                        break;
                    }
                    let slow = slow_every.is_some_and(|k| n % k == k - 1);
                    placed.push(bench.place(slow).await?);
                }
                anyhow::Ok(placed)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok(all)
    }

    /// Orders at `rate` per second until `until`, each on its own task.
    async fn open_loop(
        self: &Arc<Self>,
        rate: f64,
        until: Instant,
        slow_every: Option<usize>,
    ) -> anyhow::Result<Vec<Placed>> {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        let mut n = 0usize;
        while Instant::now() < until {
            ticker.tick().await;
            let slow = slow_every.is_some_and(|k| n % k == k - 1);
            n += 1;
            let bench = self.clone();
            tasks.push(tokio::spawn(async move { bench.place(slow).await }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        Ok(all)
    }

    /// Waits for every order to end (bounded), and returns them.
    async fn settle(&self, placed: &[Placed]) -> anyhow::Result<Vec<(Order, bool)>> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let results = futures::stream::iter(placed.iter().map(|p| {
            let mut orders = self.orders.clone();
            let id = p.order_id.clone();
            let slow = p.slow;
            async move {
                loop {
                    let order = orders
                        .get_order(GetOrderRequest {
                            order_id: id.clone(),
                        })
                        .await?
                        .into_inner()
                        .order
                        .context("no order")?;
                    if order.status() != OrderStatus::Pending {
                        return anyhow::Ok((order, slow));
                    }
                    if Instant::now() > deadline {
                        bail!("order {id} still pending after 180 s");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect()
    }

    /// Transactions committed so far in each service's database (read-only
    /// ones included: Postgres counts every transaction).
    async fn commits(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let pool = sqlx::PgPool::connect(&self.stack.postgres.url("postgres")).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT datname::text, xact_commit FROM pg_stat_database
             WHERE datname LIKE 'shop\\_%'",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(rows.into_iter().collect())
    }

    /// CPU used so far by each process of the system.
    fn cpu(&self) -> Vec<(String, Duration)> {
        let mut v: Vec<(String, Duration)> = self
            .stack
            .services()
            .filter_map(|s| Some((s.name().to_string(), procstat::cpu_of(s.pid()?))))
            .collect();
        if let Some(pid) = self.stack.nats.pid() {
            v.push(("nats-server".into(), procstat::cpu_of(pid)));
        }
        if let Some(pid) = self.stack.postgres.pid() {
            v.push(("postgres".into(), procstat::cpu_of_tree(pid)));
        }
        v
    }

    /// Runs one scenario: `load` places orders during `window`.
    async fn scenario<F, Fut>(
        self: &Arc<Self>,
        name: &'static str,
        window: Duration,
        load: F,
    ) -> anyhow::Result<Outcome>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Vec<Placed>>>,
    {
        let commits_before = self.commits().await?;
        let cpu_before = self.cpu();
        let start_wall = chrono::Utc::now();
        let started = Instant::now();
        let placed = load(started + window).await?;
        let end_wall = start_wall + chrono::Duration::from_std(window)?;
        let settled = self.settle(&placed).await?;
        let cpu_after = self.cpu();
        let commits_after = self.commits().await?;

        let mut fast = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut slow = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let (mut confirmed, mut cancelled, mut in_window) = (0, 0, 0usize);
        let (mut cancelled_fast, mut cancelled_slow) = (0, 0);
        for (order, is_slow) in &settled {
            if order.status() == OrderStatus::Cancelled {
                cancelled += 1;
                if *is_slow {
                    cancelled_slow += 1;
                } else {
                    cancelled_fast += 1;
                }
                continue;
            }
            confirmed += 1;
            let at = |step: SagaStepType| {
                order
                    .timeline
                    .iter()
                    .find(|s| s.step() == step)
                    .and_then(|s| s.occur_time.as_ref())
                    .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            };
            let (Some(placed_at), Some(confirmed_at)) =
                (at(SagaStepType::PlaceOrder), at(SagaStepType::ConfirmOrder))
            else {
                bail!("confirmed order {} without its steps", order.order_id);
            };
            if confirmed_at >= start_wall && confirmed_at <= end_wall {
                in_window += 1;
            }
            let micros = (confirmed_at - placed_at).num_microseconds().unwrap_or(0);
            let h = if *is_slow { &mut slow } else { &mut fast };
            h.record(micros.max(1) as u64)?;
        }
        let per_order = |d: Duration| d / u32::try_from(confirmed.max(1)).unwrap_or(u32::MAX);
        let per_db: Vec<(String, f64)> = commits_after
            .iter()
            .map(|(db, after)| {
                let before = commits_before.get(db).copied().unwrap_or(0);
                (
                    db.clone(),
                    (after - before) as f64 / confirmed.max(1) as f64,
                )
            })
            .collect();
        let commits: f64 = per_db.iter().map(|(_, n)| n).sum();
        let cpu_per_order = cpu_after
            .iter()
            .map(|(name, after)| {
                let before = cpu_before
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(Duration::ZERO, |(_, d)| *d);
                (name.clone(), per_order(after.saturating_sub(before)))
            })
            .collect();
        Ok(Outcome {
            name,
            placed: placed.len(),
            confirmed,
            cancelled,
            confirmed_per_sec: in_window as f64 / window.as_secs_f64(),
            fast,
            slow,
            cancelled_fast,
            cancelled_slow,
            commits_per_order: commits,
            commits_by_database: per_db,
            cpu_per_order,
        })
    }
}

/// Postgres's statements by total execution time since the last reset,
/// when `pg_stat_statements` is loaded: where the database's time goes.
async fn top_statements(stack: &Stack, reset: bool) -> anyhow::Result<Vec<String>> {
    let pool = sqlx::PgPool::connect(&stack.postgres.url("postgres")).await?;
    if sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .is_err()
    {
        return Ok(vec!["(pg_stat_statements is not available here)".into()]);
    }
    if reset {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&pool)
            .await?;
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, f64, f64, String)> = sqlx::query_as(
        "SELECT d.datname::text, s.calls, s.total_exec_time, s.mean_exec_time,
                regexp_replace(left(s.query, 90), '\\s+', ' ', 'g')
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         ORDER BY s.total_exec_time DESC LIMIT 10",
    )
    .fetch_all(&pool)
    .await?;
    // Every statement, summed per database: what each service's own
    // database would execute, were it on cores of its own.
    let per_database: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT d.datname::text, sum(s.calls)::bigint, sum(s.total_exec_time)
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname LIKE 'shop\\_%'
         GROUP BY 1 ORDER BY 3 DESC",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|(db, calls, total, mean, query)| {
            format!("{db:<18} {calls:>8} calls {total:>9.0} ms total {mean:>7.3} ms mean  {query}")
        })
        .chain(per_database.into_iter().map(|(db, calls, total)| {
            format!(
                "{db:<18} {calls:>8} calls {total:>9.0} ms total  (every statement of the database)"
            )
        }))
        .collect())
}

/// Small two-insert transactions per second on `stack`'s Postgres, from
/// `connections` connections, for `secs`.
async fn ceiling(stack: &Stack, connections: u32, secs: u64) -> anyhow::Result<f64> {
    let db = format!("ceiling_{connections}");
    let url = stack.postgres.create_database(&db).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(&url)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE a (id bigserial PRIMARY KEY, v bigint NOT NULL, at timestamptz DEFAULT now());
         CREATE TABLE b (id bigserial PRIMARY KEY, v bigint NOT NULL, at timestamptz DEFAULT now());",
    )
    .execute(&pool)
    .await?;
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO a (v) VALUES ($1)")
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO b (v) VALUES ($1)")
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    pool.close().await;
    Ok(total as f64 / secs as f64)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn report(o: &Outcome, out: &mut String) {
    let _ = writeln!(
        out,
        "{:<10} placed {:>6}  confirmed {:>6}  cancelled {:>4} (fast {}, slow {})  confirmed/s {:>7.1}  commits/order {:>5.1}",
        o.name,
        o.placed,
        o.confirmed,
        o.cancelled,
        o.cancelled_fast,
        o.cancelled_slow,
        o.confirmed_per_sec,
        o.commits_per_order
    );
    let _ = writeln!(
        out,
        "{:<10} fast cards: p50 {:>8.1} ms  p99 {:>8.1} ms  p99.9 {:>8.1} ms  max {:>8.1} ms  (n={})",
        "",
        ms(&o.fast, 0.5),
        ms(&o.fast, 0.99),
        ms(&o.fast, 0.999),
        ms(&o.fast, 1.0),
        o.fast.len()
    );
    if !o.slow.is_empty() {
        let _ = writeln!(
            out,
            "{:<10} slow cards: p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (n={})",
            "",
            ms(&o.slow, 0.5),
            ms(&o.slow, 0.99),
            ms(&o.slow, 1.0),
            o.slow.len()
        );
    }
    let cpu: Vec<String> = o
        .cpu_per_order
        .iter()
        .map(|(n, d)| format!("{n} {} us", d.as_micros()))
        .collect();
    let _ = writeln!(
        out,
        "{:<10} CPU per confirmed order: {}",
        "",
        cpu.join(", ")
    );
    let commits: Vec<String> = o
        .commits_by_database
        .iter()
        .map(|(db, n)| format!("{} {n:.1}", db.trim_start_matches("shop_")))
        .collect();
    let _ = writeln!(
        out,
        "{:<10} commits per confirmed order: {}",
        "",
        commits.join(", ")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bench = Arc::new(Bench::start().await?);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "saga-bench: {} clients, {} s windows; Postgres fsync on, JetStream sync_interval always; one replica per service; release binaries",
        args.clients, args.secs
    );

    // The ceiling at two concurrencies (group commit grows with committers);
    // the better one counts.
    let tx_8 = ceiling(&bench.stack, 8, args.ceiling_secs).await?;
    let tx_32 = ceiling(&bench.stack, 32, args.ceiling_secs).await?;
    let tx_per_sec = tx_8.max(tx_32);
    let window = Duration::from_secs(args.secs);

    // Warm-up: connections, pools and caches.
    let b = bench.clone();
    bench
        .scenario("warm-up", Duration::from_secs(3), |until| async move {
            b.closed_loop(8, until, usize::MAX, None).await
        })
        .await?;

    top_statements(&bench.stack, true).await?;
    let b = bench.clone();
    let clients = args.clients;
    let saturated = bench
        .scenario("saturated", window, |until| async move {
            b.closed_loop(clients, until, usize::MAX, None).await
        })
        .await?;
    let ceiling_orders = tx_per_sec / saturated.commits_per_order.max(1.0);
    let _ = writeln!(
        out,
        "ceiling    {tx_8:.0} two-insert transactions/s from 8 connections, {tx_32:.0} from 32; at {:.1} commits per saga: {ceiling_orders:.0} orders/s",
        saturated.commits_per_order
    );
    report(&saturated, &mut out);
    let _ = writeln!(
        out,
        "{:<10} {:.0}% of the Postgres ceiling",
        "",
        100.0 * saturated.confirmed_per_sec / ceiling_orders
    );

    let _ = writeln!(out, "saturated: Postgres statements by total time");
    for line in top_statements(&bench.stack, false).await? {
        let _ = writeln!(out, "  {line}");
    }

    let rate = (saturated.confirmed_per_sec / 2.0).max(1.0);
    let b = bench.clone();
    let half = bench
        .scenario("half", window, |until| async move {
            b.open_loop(rate, until, None).await
        })
        .await?;
    let _ = writeln!(out, "half rate: {rate:.0} orders/s offered");
    report(&half, &mut out);

    let b = bench.clone();
    let half_slow = bench
        .scenario("half-slow", window, |until| async move {
            b.open_loop(rate, until, Some(10)).await
        })
        .await?;
    report(&half_slow, &mut out);
    let _ = writeln!(
        out,
        "{:<10} fast cards' p99 with 10% slow cards: {:.2}x half's",
        "",
        ms(&half_slow.fast, 0.99) / ms(&half.fast, 0.99).max(0.001)
    );

    let b = bench.clone();
    let user = bench
        .scenario("user", Duration::from_secs(120), |until| async move {
            b.closed_loop(32, until, 800, Some(8)).await
        })
        .await?;
    let _ = writeln!(
        out,
        "user: 32 clients, 800 orders, one in eight on tok_approve_slow ({SLOW_DELAY})"
    );
    report(&user, &mut out);

    print!("{out}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &out)?;
    shop_bench::plot::latency_cdfs(
        &args.svg,
        "PlaceOrder to CONFIRMED (fast cards)",
        &[
            ("half rate", &half.fast),
            ("half rate, 10% slow cards", &half_slow.fast),
            ("saturated", &saturated.fast),
        ],
    )?;
    println!("wrote {} and {}", args.out.display(), args.svg.display());
    Ok(())
}
