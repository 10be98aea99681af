//! A batched consumer killed (SIGKILL, a real process) after its batch
//! committed and before JetStream got its acks: the events come back, and
//! nothing is applied twice.
//!
//! The consumer runs in a child process (this test binary again, running
//! `child_consumer`), connected to nats-server through a relay this test
//! holds. Once the child's pull request is waiting at the server, the relay
//! stops passing what the child sends, so the batch's acks never arrive;
//! the events are published, the child applies them in one transaction and
//! commits, and is killed. A consumer of the same name started afterwards
//! gets them again after the ack wait, and its inbox finds them applied.

use shop_events::catalog::ORDERS;
use shop_events::settings::{ConsumerSettings, EventsSettings};
use shop_events::{Apply, ConsumerSpec, Events, On, Received};
use shop_proto::shop::events::v1::events_admin_service_server::EventsAdminService as _;
use shop_proto::shop::events::v1::{ListConsumersRequest, OrderPlaced};
use shop_testkit::{Nats, Postgres, eventually};
use sqlx::PgPool;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 6;
const CONSUMER: &str = "crash-orders";
const CHILD_DB: &str = "SHOP_EVENTS_CRASH_CHILD_DB";
const CHILD_NATS: &str = "SHOP_EVENTS_CRASH_CHILD_NATS";

/// Writes one row per event applied, with the transaction that wrote it.
struct Applier;

#[async_trait::async_trait]
impl On<OrderPlaced> for Applier {
    async fn on(&self, apply: &mut Apply<'_>, e: OrderPlaced, _: &Received) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO applied (order_id, txid) VALUES ($1, txid_current())")
            .bind(&e.order_id)
            .execute(apply.tx().await?)
            .await?;
        Ok(())
    }
}

fn settings(nats_url: String) -> EventsSettings {
    EventsSettings {
        consumer: ConsumerSettings {
            ack_wait: Duration::from_secs(2),
            ..ConsumerSettings::default()
        },
        ..EventsSettings::plaintext(nats_url)
    }
}

fn spec() -> ConsumerSpec {
    ConsumerSpec::new(CONSUMER, ORDERS)
        .on::<OrderPlaced>(Arc::new(Applier))
        .batched()
}

/// The consumer, in the child process; runs until killed. (Without the
/// parent's environment it has nothing to do.)
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by batch_killed_between_commit_and_acks_applies_nothing_twice"]
async fn child_consumer() {
    let (Ok(db), Ok(nats)) = (std::env::var(CHILD_DB), std::env::var(CHILD_NATS)) else {
        return;
    };
    let pool = PgPool::connect(&db).await.unwrap();
    let events = Events::connect("test", &settings(nats)).await.unwrap();
    events.consumer(pool, spec())(CancellationToken::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_killed_between_commit_and_acks_applies_nothing_twice() {
    let postgres = Postgres::start().await.unwrap();
    let url = postgres.create_database("events").await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    shop_events::migrate(&pool).await.unwrap();
    sqlx::raw_sql("CREATE TABLE applied (order_id text NOT NULL, txid bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let nats = Nats::start().await.unwrap();
    let publisher = Events::connect("test", &settings(nats.url()))
        .await
        .unwrap();

    // The child reaches nats-server through a relay that can stop passing
    // what the child sends.
    let relay = Relay::start(nats.url()).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_consumer", "--ignored", "--nocapture"])
        .env(CHILD_DB, &url)
        .env(CHILD_NATS, format!("nats://{}", relay.addr))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Its pull request is waiting at the server: from now on nothing it
    // sends (acks included) gets through.
    let js = publisher.jetstream().clone();
    eventually(Duration::from_secs(30), || async {
        let stream = js
            .get_stream(ORDERS.name)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream
            .consumer_info(CONSUMER)
            .await
            .map_err(|e| e.to_string())?;
        if info.num_waiting > 0 {
            Ok(())
        } else {
            Err("no pull request waiting yet".to_string())
        }
    })
    .await
    .unwrap();
    relay.hold_client_bytes();

    for i in 0..EVENTS {
        let order = format!("order-{i}");
        let placed = OrderPlaced {
            order_id: order.clone(),
            ..Default::default()
        };
        publisher.publish_now(&order, &placed, None).await.unwrap();
    }
    // Applied and committed by the child...
    eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applied")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
        if n == EVENTS as i64 {
            Ok(())
        } else {
            Err(format!("{n} applied"))
        }
    })
    .await
    .unwrap();
    // ...in batches (more events than transactions)...
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT txid) FROM applied")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        transactions < EVENTS as i64,
        "{EVENTS} events in {transactions} transactions: the batched path was not taken"
    );
    // ...and killed before any ack reached the server.
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let stream = js.get_stream(ORDERS.name).await.unwrap();
    let held = stream.consumer_info(CONSUMER).await.unwrap();
    assert_eq!(held.num_ack_pending, EVENTS, "the acks were held back");
    drop(relay);

    // The same consumer, started again: every event redelivered, found in
    // the inbox, acked, applied by nobody.
    let shutdown = CancellationToken::new();
    let again = Events::connect("test", &settings(nats.url()))
        .await
        .unwrap();
    tokio::spawn(again.consumer(pool.clone(), spec())(shutdown.clone()));
    let admin = again.admin(pool.clone());
    let state = eventually(Duration::from_secs(30), || async {
        let state = admin
            .list_consumers(tonic::Request::new(ListConsumersRequest {}))
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .consumers
            .remove(0);
        if state.ack_pending == 0 && state.duplicates == EVENTS as u64 {
            Ok(state)
        } else {
            Err(format!("{state:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(state.applied, 0, "{state:?}");
    let per_order: Vec<(String, i64)> =
        sqlx::query_as("SELECT order_id, count(*) FROM applied GROUP BY order_id ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_order.len(), EVENTS);
    assert!(per_order.iter().all(|(_, n)| *n == 1), "{per_order:?}");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1")
        .bind(CONSUMER)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, EVENTS as i64);
    shutdown.cancel();
}

/// A TCP relay to `upstream` that can stop passing the client's bytes
/// (dropping them) while still passing the server's.
struct Relay {
    addr: std::net::SocketAddr,
    hold: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let upstream = upstream.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = Arc::new(AtomicBool::new(false));
        let held = hold.clone();
        let task = tokio::spawn(async move {
            // The child connects once (a reconnect would go through here
            // too, and be relayed the same way).
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let held = held.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if held.load(Ordering::SeqCst) {
                            continue;
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
            }
        });
        Self { addr, hold, task }
    }

    /// From now on, what the client sends is dropped.
    fn hold_client_bytes(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
