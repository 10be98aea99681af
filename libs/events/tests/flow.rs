//! The outbox relay and the inbox consumer against a real nats-server with
//! JetStream and a real Postgres.

use shop_events::catalog::ORDERS;
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{ConsumerSpec, DomainEvent, Events, Handler, Received, outbox};
use shop_proto::shop::events::v1::OrderPlaced;
use shop_testkit::{Nats, Postgres, eventually};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_DELIVER: i64 = 3;

/// Records each order id it sees; always fails for `poison`.
#[derive(Default)]
struct Recorder {
    attempts: Mutex<HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, event: &Received) -> anyhow::Result<()> {
        let placed = event.decode::<OrderPlaced>()?;
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(placed.order_id.clone())
            .or_default() += 1;
        if placed.order_id == "poison" {
            anyhow::bail!("this event always fails");
        }
        sqlx::query("INSERT INTO applied (order_id) VALUES ($1)")
            .bind(&placed.order_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

struct Fixture {
    pool: PgPool,
    events: Events,
    shutdown: CancellationToken,
    recorder: Arc<Recorder>,
    _nats: Nats,
    _postgres: Postgres,
}

async fn fixture() -> Fixture {
    let postgres = Postgres::start().await.unwrap();
    let url = postgres.create_database("events").await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    let ddl = std::fs::read_to_string(
        shop_testkit::tools::repo_root().join("migrations/orders/0001_events.sql"),
    )
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE applied (order_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let nats = Nats::start().await.unwrap();
    let settings = EventsSettings {
        nats_url: nats.url(),
        nats_user: None,
        nats_password: None,
        tls_dir: None,
        connect_timeout: Duration::from_secs(10),
        duplicate_window: Duration::from_secs(120),
        relay: RelaySettings {
            poll_interval: Duration::from_millis(50),
            ..RelaySettings::default()
        },
        consumer: ConsumerSettings {
            ack_wait: Duration::from_secs(5),
            max_deliver: MAX_DELIVER,
            backoff: vec![Duration::from_millis(20).into()],
            durable_prefix: None,
        },
    };
    let events = Events::connect("test", &settings).await.unwrap();
    let shutdown = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    tokio::spawn(events.relay(pool.clone())(shutdown.clone()));
    tokio::spawn(events.consumer(
        pool.clone(),
        ConsumerSpec::new("test-orders", ORDERS, &[OrderPlaced::SUBJECT]),
        recorder.clone(),
    )(shutdown.clone()));
    Fixture {
        pool,
        events,
        shutdown,
        recorder,
        _nats: nats,
        _postgres: postgres,
    }
}

impl Fixture {
    async fn place(&self, order_id: &str) -> shop_proto::shop::events::v1::Envelope {
        let mut tx = self.pool.begin().await.unwrap();
        let envelope = outbox::enqueue(
            &mut tx,
            "test",
            order_id,
            &OrderPlaced {
                order_id: order_id.into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        self.events.wake_relay();
        envelope
    }

    async fn applied(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT order_id FROM applied ORDER BY order_id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_once_and_applied_once() {
    let f = fixture().await;

    let envelope = f.place("o-1").await;
    f.place("o-2").await;
    // A rolled-back transaction publishes nothing.
    {
        let mut tx = f.pool.begin().await.unwrap();
        outbox::enqueue(
            &mut tx,
            "test",
            "o-rolled-back",
            &OrderPlaced {
                order_id: "o-rolled-back".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    eventually(Duration::from_secs(15), || async {
        let applied = f.applied().await;
        if applied == ["o-1", "o-2"] {
            Ok(())
        } else {
            Err(format!("{applied:?}"))
        }
    })
    .await
    .unwrap();

    // The relay crashed after publishing o-1 but before marking it: it
    // publishes it again; JetStream drops the copy.
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE event_id = $1")
        .bind(envelope.event_id.parse::<uuid::Uuid>().unwrap())
        .execute(&f.pool)
        .await
        .unwrap();
    f.events.wake_relay();
    eventually(Duration::from_secs(10), || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&f.pool)
                .await
                .unwrap();
        if pending == 0 { Ok(()) } else { Err(pending) }
    })
    .await
    .unwrap();
    assert_eq!(f.events.stream_message_count("ORDERS").await.unwrap(), 2);
    assert_eq!(f.applied().await, ["o-1", "o-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_max_deliver_and_others_flow_past_it() {
    let f = fixture().await;

    f.place("poison").await;
    f.place("o-after").await;

    eventually(Duration::from_secs(20), || async {
        let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&f.pool)
            .await
            .unwrap();
        if letters == 1 { Ok(()) } else { Err(letters) }
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        let applied = f.applied().await;
        if applied == ["o-after"] {
            Ok(())
        } else {
            Err(format!("{applied:?}"))
        }
    })
    .await
    .unwrap();
    let (delivery_count, error, event_type): (i64, String, String) =
        sqlx::query_as("SELECT delivery_count, last_error, event_type FROM dead_letters")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(delivery_count, MAX_DELIVER);
    assert!(error.contains("always fails"), "{error}");
    assert_eq!(event_type, "shop.events.v1.OrderPlaced");
    // Give JetStream a chance to (wrongly) redeliver, then count attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = f.recorder.attempts.lock().unwrap()["poison"];
    assert_eq!(attempts as i64, MAX_DELIVER, "exactly max_deliver attempts");
}
