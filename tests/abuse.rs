//! The shop under abuse, one attack per test, against real processes:
//!
//! - a flood of sockets that never start or never finish their TLS
//!   handshake does not keep a fresh client out of the gateway;
//! - log-ins with megabyte emails are refused before they cost memory;
//! - calls cancelled at every point of their transactions leave no pooled
//!   connection inside one, and nothing stored is lost;
//! - PlaceOrder is served while orders' consumers work through a backlog:
//!   API calls and consumers draw from separate pools;
//! - a workload flooding a service past its identity's rate is refused with
//!   a pushback while another identity is served;
//! - a client opening 100,000 Health/Watch streams at once on a connection,
//!   ignoring the stream cap, has them refused, and the gateway's memory
//!   stays flat.

mod common;

use common::gateway::end_user;
use futures::StreamExt as _;
use nix::sys::signal::Signal;
use shop_proto::shop::gateway::v1::LogInRequest;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_testkit::process::ServiceProcess;
use shop_testkit::stack::Stack;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The gateway and what it calls; sign-ups from 127.0.0.1 are not limited
/// (the tests make their users).
async fn gateway_stack() -> Stack {
    raise_open_files_limit();
    common::gateway::Shop::start(BTreeMap::new()).await.stack
}

/// The test holds over a thousand sockets at once.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// The resident memory of `process`, in bytes.
fn rss(process: &ServiceProcess) -> u64 {
    let pid = process.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// How long a new client takes to connect (TLS) and get a health answer.
async fn fresh_client_served(gateway: &ServiceProcess) -> Duration {
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(8), async {
        let channel = gateway.public_channel().await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        anyhow::Ok(())
    })
    .await;
    match answered {
        Ok(Ok(())) => started.elapsed(),
        Ok(Err(error)) => panic!("a fresh client failed: {error:#}"),
        Err(_) => panic!("a fresh client was not served within 8 s"),
    }
}

/// The first bytes of a TLS ClientHello announcing 508 bytes, then
/// nothing: a client that stalls mid-handshake.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

#[tokio::test]
async fn silent_and_stalled_handshakes_do_not_keep_a_fresh_client_out() {
    let stack = gateway_stack().await;
    let gateway = stack.service("gateway");
    let addr = gateway.addr();

    // 1,000 sockets that never say a word and 200 that stop in the middle
    // of their ClientHello, all from this host (the fresh client's own
    // address, so no per-address limit can tell them apart).
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..200 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
        held.push(socket);
    }
    // And the attack goes on while fresh clients come: a silent socket
    // every 5 ms for 3 s.
    let attacker = tokio::spawn(async move {
        let mut more = Vec::new();
        for _ in 0..600 {
            if let Ok(socket) = TcpStream::connect(addr).await {
                more.push(socket);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        more
    });

    for attempt in 0..3 {
        let took = fresh_client_served(gateway).await;
        println!("fresh client {attempt} during the attack: served in {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "fresh client {attempt} took {took:?} during the attack"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let more = attacker.await.unwrap();
    let took = fresh_client_served(gateway).await;
    println!(
        "fresh client after {} attacking sockets: served in {took:?}",
        held.len() + more.len()
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(held);
    drop(more);
}

#[tokio::test]
async fn log_ins_with_megabyte_emails_are_refused_in_bounded_memory() {
    let stack = gateway_stack().await;
    let gateway = stack.service("gateway");
    let channel = gateway.public_channel().await.unwrap();
    let client = ShopGatewayServiceClient::new(channel.clone());
    let ada = end_user(client.clone(), "ada").await;
    let before = rss(gateway);

    let email = format!("{}@example.com", "a".repeat(1 << 20));
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut peak = before;
    let mut answers = futures::stream::iter(0..10_000)
        .map(|_| {
            let mut client = client.clone();
            let email = email.clone();
            async move {
                client
                    .log_in(LogInRequest {
                        email,
                        password: "correct horse battery".into(),
                    })
                    .await
            }
        })
        .buffer_unordered(32);
    let mut seen = 0;
    while let Some(answer) = answers.next().await {
        let status = answer.expect_err("a megabyte email is never let in");
        // Each refusal resets a stream the client is still sending on;
        // after `max_local_error_reset_streams` of them the gateway closes
        // the connection (GOAWAY ENHANCE_YOUR_CALM) and the calls still on
        // it fail in the client's transport, not with an answer.
        let in_transport =
            std::error::Error::source(&status).is_some_and(|e| e.is::<tonic::transport::Error>());
        if in_transport {
            *codes
                .entry("connection closed by the gateway".into())
                .or_default() += 1;
        } else {
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::ResourceExhausted
                ),
                "{status:?}"
            );
            *codes.entry(format!("{:?}", status.code())).or_default() += 1;
        }
        seen += 1;
        if seen % 500 == 0 {
            peak = peak.max(rss(gateway));
        }
    }
    peak = peak.max(rss(gateway));
    let closed = codes
        .get("connection closed by the gateway")
        .copied()
        .unwrap_or(0);
    assert!(closed < 1_000, "{codes:?}");
    println!(
        "10,000 log-ins with 1 MiB emails: {codes:?}; gateway RSS {} MB before, {} MB at most during",
        before / 1_000_000,
        peak / 1_000_000
    );
    assert!(
        peak <= before + 32 * 1024 * 1024,
        "the gateway grew from {before} to {peak} bytes"
    );

    // The refusals cost no one else a log-in, from this same address.
    drop(answers);
    let mut client = client;
    client
        .log_in(LogInRequest {
            email: ada.email.clone(),
            password: "correct horse battery".into(),
        })
        .await
        .expect("a genuine log-in still gets in");
}

/// Postgres's own words for statements run in the wrong transaction state:
/// what a connection returned to the pool inside a transaction produces.
const WRONG_TRANSACTION_STATE: &[&str] = &[
    "there is already a transaction in progress",
    "there is no transaction in progress",
];

#[tokio::test]
async fn calls_cancelled_inside_their_transactions_leave_no_connection_in_one() {
    let mut saga = common::Saga::start(BTreeMap::new()).await;
    let product = saga.product(500, 10_000).await;
    let orders = saga.orders().await;

    // How long a call takes on this machine under the same concurrency,
    // so that the cancellations below land inside the call on any machine
    // (the first call opens orders' connections).
    orders
        .clone()
        .place_order(saga.order_request(&[(&product, 1)], "tok_approve"))
        .await
        .expect("a call with no deadline is served");
    let started = Instant::now();
    let warm_up: Vec<_> = (0..32)
        .map(|_| {
            let mut orders = orders.clone();
            let request = saga.order_request(&[(&product, 1)], "tok_approve");
            async move { orders.place_order(request).await.map(|_| ()) }
        })
        .collect();
    futures::future::join_all(warm_up).await;
    let spread = (started.elapsed() * 2).clamp(Duration::from_millis(150), Duration::from_secs(5));
    println!("cancellation points spread over {spread:?}");

    // 1,200 orders placed with deadlines spread over that time, half of
    // them also dropped by the client at a random moment: cancelled
    // before, inside and after BEGIN, at every statement of the
    // transaction, and at its COMMIT, while the others go on. Every tenth
    // call has time to finish and is never dropped: the service keeps
    // serving among the cancellations.
    let spread_us = spread.as_micros() as u64;
    let requests: Vec<_> = (0..1200)
        .map(|_| saga.order_request(&[(&product, 1)], "tok_approve"))
        .collect();
    let patient = |i: usize| i % 10 == 9;
    let outcomes: Vec<(usize, Option<Code>)> =
        futures::stream::iter(requests.into_iter().enumerate())
            .map(|(i, request)| {
                let mut orders = orders.clone();
                async move {
                    let deadline = if patient(i) {
                        Duration::from_secs(60)
                    } else {
                        Duration::from_micros(rand::random_range(0..spread_us))
                    };
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(deadline.max(Duration::from_micros(1)));
                    let call = orders.place_order(request);
                    let answer = if i % 2 == 0 {
                        let drop_after = Duration::from_micros(rand::random_range(0..spread_us));
                        tokio::time::timeout(drop_after, call).await.ok()
                    } else {
                        Some(call.await)
                    };
                    let code = answer.map(|a| {
                        a.err().map_or(Code::Ok, |s| {
                            // The client's own transport, still sending the
                            // request when the server answered at the deadline
                            // and reset the stream, reports the reset as
                            // UNKNOWN "transport error": not an answer of the
                            // server's.
                            if s.code() == Code::Unknown && s.message() == "transport error" {
                                Code::Cancelled
                            } else {
                                s.code()
                            }
                        })
                    });
                    (i, code)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (_, outcome) in &outcomes {
        *tally
            .entry(outcome.map_or("dropped by the client".into(), |c| format!("{c:?}")))
            .or_default() += 1;
    }
    println!("1,200 cancelled-prone PlaceOrder calls: {tally:?}");
    // RESOURCE_EXHAUSTED: the client reset so many streams that the server
    // closed the connection ("rapid reset" protection), failing the calls
    // still on it.
    let mut patient_tally: BTreeMap<String, usize> = BTreeMap::new();
    for (_, outcome) in outcomes.iter().filter(|(i, _)| patient(*i)) {
        *patient_tally.entry(format!("{outcome:?}")).or_default() += 1;
    }
    let patient_served = patient_tally.get("Some(Ok)").copied().unwrap_or(0);
    println!("{patient_served} of 120 calls given time were served: {patient_tally:?}");
    assert!(patient_served > 0, "no call given time was served");
    for code in outcomes.iter().filter_map(|(_, code)| code.as_ref()) {
        assert!(
            matches!(
                code,
                Code::Ok | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted
            ),
            "{code:?}"
        );
    }

    let admin = sqlx::PgPool::connect(&saga.stack.postgres.url("shop_orders"))
        .await
        .unwrap();

    // The saga ends every order that was stored with money and stock
    // conserved.
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT order_id FROM orders")
        .fetch_all(&admin)
        .await
        .unwrap();
    println!("{} orders stored", stored.len());
    saga.placed = stored.iter().map(|id| id.to_string()).collect();
    saga.check_invariants(Duration::from_secs(120)).await;

    // Once the saga has settled, no connection of orders' pools is left in
    // a transaction. A relay or consumer between two statements of its own
    // transaction is "idle in transaction" for a moment; a connection a
    // cancelled call left in one stays so, so only those idle in a
    // transaction for over 2 s count.
    shop_testkit::eventually(Duration::from_secs(10), || async {
        let stuck: Vec<String> = sqlx::query_scalar(
            "SELECT format('%s (idle %s, last statement: %s)', application_name, \
                           now() - state_change, left(query, 120)) \
             FROM pg_stat_activity \
             WHERE datname = 'shop_orders' AND state LIKE 'idle in transaction%' \
             AND state_change < now() - interval '2 seconds'",
        )
        .fetch_all(&admin)
        .await
        .map_err(|e| e.to_string())?;
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} connections idle in transaction for over 2 s: {}",
                stuck.len(),
                stuck.join("; ")
            ))
        }
    })
    .await
    .unwrap();

    let log = std::fs::read_to_string(saga.stack.postgres.log_path()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    for notice in WRONG_TRANSACTION_STATE {
        if let Some(at) = lines.iter().position(|l| l.contains(notice)) {
            let context = lines[at..(at + 3).min(lines.len())].join("\n");
            panic!("Postgres logged \"{notice}\":\n{context}");
        }
    }
}

#[tokio::test]
async fn place_order_is_served_while_the_consumers_work_through_a_backlog() {
    // Sagas given all the time this takes.
    let mut saga = common::Saga::start(BTreeMap::from([(
        "orders".to_string(),
        vec![("SHOP_ORDERS__SAGA__TIMEOUT".to_string(), "10m".to_string())],
    )]))
    .await;
    let product = saga.product(100, 100_000).await;
    let orders = saga.orders().await;

    // 400 orders whose events orders has not consumed yet: placed while
    // inventory is frozen (SIGSTOP), then orders frozen while inventory
    // reserves their stock and payments charges them.
    const BACKLOG: usize = 400;
    let inventory = saga.stack.service("inventory");
    inventory.signal(Signal::SIGSTOP).unwrap();
    let requests: Vec<_> = (0..BACKLOG)
        .map(|_| saga.order_request(&[(&product, 1)], "tok_approve"))
        .collect();
    let placed: Vec<String> = futures::stream::iter(requests)
        .map(|request| place_patiently(orders.clone(), request))
        .buffer_unordered(8)
        .collect()
        .await;
    saga.placed.extend(placed);
    shop_testkit::eventually(Duration::from_secs(60), || {
        saga.published_once("orders", "ORDERS")
    })
    .await
    .unwrap();
    let frozen = saga.stack.service("orders");
    frozen.signal(Signal::SIGSTOP).unwrap();
    inventory.signal(Signal::SIGCONT).unwrap();
    for (service, stream) in [("inventory", "INVENTORY"), ("payments", "PAYMENTS")] {
        shop_testkit::eventually(Duration::from_secs(120), || async {
            let rows = outbox_rows(&saga, service).await?;
            if rows < BACKLOG as i64 {
                return Err(format!("{service}: {rows} events so far"));
            }
            saga.published_once(service, stream).await
        })
        .await
        .unwrap();
    }
    frozen.signal(Signal::SIGCONT).unwrap();

    // 64 concurrent calls while orders' consumers work through 800 events.
    let admin = sqlx::PgPool::connect(&saga.stack.postgres.url("shop_orders"))
        .await
        .unwrap();
    let pending_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let burst: Vec<_> = (0..64)
        .map(|_| {
            let mut orders = orders.clone();
            let request = saga.order_request(&[(&product, 1)], "tok_approve");
            async move { orders.place_order(request).await }
        })
        .collect();
    let answers = futures::future::join_all(burst).await;
    let pending_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for answer in &answers {
        let code = answer.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        *tally.entry(format!("{code:?}")).or_default() += 1;
    }
    println!(
        "64 PlaceOrder calls with {pending_before} sagas pending before, \
         {pending_after} after: {tally:?}"
    );
    assert!(
        pending_before >= BACKLOG as i64 - 64,
        "the consumers had a backlog ({pending_before} pending)"
    );
    // Refused for want of capacity (a busy pool, the concurrency limit) or
    // late from the catalog: never UNAVAILABLE, as if orders were down.
    for answer in &answers {
        if let Err(status) = answer {
            assert!(
                matches!(
                    status.code(),
                    Code::ResourceExhausted | Code::DeadlineExceeded
                ),
                "{status:?}"
            );
        }
    }
    assert!(tally.contains_key("Ok"), "calls were served: {tally:?}");
    for answer in answers.into_iter().flatten() {
        saga.placed
            .push(answer.into_inner().order.unwrap().order_id);
    }
    saga.check_invariants(Duration::from_secs(120)).await;
}

/// Places `request`, again (the same idempotency key) while orders says it
/// is busy: two cores run the whole saga here.
async fn place_patiently(
    mut orders: shop_proto::shop::orders::v1::order_service_client::OrderServiceClient<
        tonic::transport::Channel,
    >,
    request: shop_proto::shop::orders::v1::PlaceOrderRequest,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match orders.place_order(request.clone()).await {
            Ok(placed) => return placed.into_inner().order.unwrap().order_id,
            Err(status)
                if matches!(
                    status.code(),
                    Code::ResourceExhausted | Code::DeadlineExceeded
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("PlaceOrder failed: {status:?}"),
        }
    }
}

/// Events `service` has written to its outbox.
async fn outbox_rows(saga: &common::Saga, service: &str) -> Result<i64, String> {
    use sqlx::Connection as _;
    let mut conn =
        sqlx::PgConnection::connect(&saga.stack.postgres.url(&format!("shop_{service}")))
            .await
            .map_err(|e| e.to_string())?;
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_workload_over_its_rate_is_refused_while_another_identity_passes() {
    use shop_proto::shop::catalog::v1::GetProductRequest;
    use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
    // Each caller identity may make 20 calls at once, then 2 a second.
    let prefix = "SHOP_CATALOG__SERVER__MESH__RATE_LIMIT__IDENTITY";
    let stack = Stack::start_with(shop_testkit::stack::StackOptions {
        services: vec!["catalog".into()],
        service_env: BTreeMap::from([(
            "catalog".to_string(),
            vec![
                (format!("{prefix}__REQUESTS_PER_SECOND"), "2".to_string()),
                (format!("{prefix}__BURST"), "20".to_string()),
            ],
        )]),
        ..Default::default()
    })
    .await
    .unwrap();
    let catalog = stack.service("catalog");
    let client = |name: &str| {
        let dir = stack.identities().mint(name).unwrap();
        async move { CatalogServiceClient::new(catalog.channel_as(&dir).await.unwrap()) }
    };
    let read = GetProductRequest {
        product_id: uuid::Uuid::new_v4().to_string(),
    };

    // A compromised orders floods the catalog: past its burst, refused at
    // once with a pushback.
    let orders = client("orders").await;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut pushback = None;
    for _ in 0..100 {
        let code = match orders.clone().get_product(read.clone()).await {
            Ok(_) => Code::Ok,
            Err(status) => {
                if status.code() == Code::ResourceExhausted {
                    pushback = status
                        .metadata()
                        .get("grpc-retry-pushback-ms")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                }
                status.code()
            }
        };
        *tally.entry(format!("{code:?}")).or_default() += 1;
    }
    println!("100 calls as orders: {tally:?}, pushback {pushback:?} ms");
    // NOT_FOUND is the catalog's answer: the call was served.
    let served = tally.get("NotFound").copied().unwrap_or(0);
    assert!((20..=30).contains(&served), "{tally:?}");
    assert_eq!(
        served + tally.get("ResourceExhausted").copied().unwrap_or(0),
        100
    );
    assert!(
        pushback.is_some_and(|ms| (1..=500).contains(&ms)),
        "{pushback:?}"
    );

    // The gateway, another identity, is served all the while.
    let gateway = client("gateway").await;
    for _ in 0..10 {
        let answer = gateway.clone().get_product(read.clone()).await.unwrap_err();
        assert_eq!(answer.code(), Code::NotFound, "{answer:?}");
    }
    // And the refusals are counted where an operator looks.
    let stats = shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient::new(
        catalog
            .channel_as(&stack.identities().mint("operator").unwrap())
            .await
            .unwrap(),
    )
    .get_stats(shop_proto::shop::mesh::v1::GetStatsRequest::default())
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        stats.server.unwrap().rate_limited as usize,
        100 - served,
        "refusals counted"
    );
}

#[tokio::test]
async fn a_flood_of_health_watch_streams_is_refused_beyond_the_stream_cap() {
    let stack = gateway_stack().await;
    let gateway = stack.service("gateway");
    let before = rss(gateway);
    let mut peak = before;

    // 100,000 Watch streams, as many as the gateway lets on a connection,
    // opened without waiting for anything; when it closes a connection,
    // the attacker opens another and goes on.
    const STREAMS: u32 = 100_000;
    let (mut attempted, mut connections, mut served, mut refused) = (0, 0, 0, 0);
    let mut resets: BTreeMap<u32, u32> = BTreeMap::new();
    while attempted < STREAMS {
        let answers = common::raw_h2::flood(
            gateway.addr(),
            stack.identities().ca_pem(),
            "/grpc.health.v1.Health/Watch",
            STREAMS - attempted,
        )
        .await;
        peak = peak.max(rss(gateway));
        connections += 1;
        if connections <= 3 {
            println!(
                "connection {connections} (RSS {} MB): {} written, {} served, resets {:?}, goaway {:?}",
                rss(gateway) / 1_000_000,
                answers.written,
                answers.served.len(),
                answers.reset,
                answers.goaway
            );
        }
        assert!(
            answers.written > 0,
            "the gateway took no stream: {answers:?}"
        );
        assert!(
            answers.served.len() <= 256,
            "{} streams served at once on one connection",
            answers.served.len()
        );
        // Every other stream is refused: reset, or above the last stream
        // id of the GOAWAY that closed the connection (never processed).
        if answers.unprocessed() > 0 {
            let (last, _) = answers.goaway.expect("unanswered streams without a GOAWAY");
            assert!(answers.served.iter().all(|id| *id <= last), "{answers:?}");
            // The streams it processed are no more than the cap (stream ids
            // are odd: the 256th is 511).
            assert!(last < 2 * 256, "{answers:?}");
        }
        for (code, n) in &answers.reset {
            *resets.entry(*code).or_default() += n;
        }
        served += answers.served.len() as u32;
        refused += answers.written - answers.served.len() as u32;
        attempted += answers.written;
        assert!(
            connections <= 2_000,
            "{connections} connections and counting"
        );
    }
    println!(
        "{attempted} Watch streams on {connections} connection(s): {served} served, {refused} refused \
         (resets by code {resets:?}); gateway RSS {} MB before, {} MB at most",
        before / 1_000_000,
        peak / 1_000_000
    );
    assert!(refused >= STREAMS - 256 * connections, "{refused} refused");
    assert!(
        peak <= before + 32 * 1024 * 1024,
        "the gateway grew from {before} to {peak} bytes"
    );
    let took = fresh_client_served(gateway).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let after = rss(gateway);
    println!(
        "gateway RSS {} MB once the attack stopped",
        after / 1_000_000
    );
}
