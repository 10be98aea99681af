//! The outbox relay and the inbox consumer against a real nats-server with
//! JetStream and a real Postgres.

use shop_events::catalog::ORDERS;
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{Apply, ConsumerSpec, Events, On, Received, outbox};
use shop_proto::shop::common::v1::DeadLetterStatus;
use shop_proto::shop::events::v1::OrderPlaced;
use shop_proto::shop::events::v1::events_admin_service_server::EventsAdminService as _;
use shop_proto::shop::events::v1::{
    DiscardDeadLetterRequest, ListConsumersRequest, ListDeadLettersRequest, ReplayDeadLetterRequest,
};
use shop_testkit::{Nats, Postgres, eventually};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_DELIVER: i64 = 3;

/// Records each event it applies; fails `poison` until healed; holds
/// `slow` events until the test lets them through.
struct Recorder {
    attempts: Mutex<HashMap<String, usize>>,
    /// `(order_id, user_id)` of each event applied, in the order applied.
    log: Mutex<Vec<(String, String)>>,
    /// Permits for `slow` events.
    gate: tokio::sync::Semaphore,
    healed: AtomicBool,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            attempts: Mutex::default(),
            log: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
            healed: AtomicBool::new(false),
        }
    }
}

#[async_trait::async_trait]
impl On<OrderPlaced> for Recorder {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        placed: OrderPlaced,
        _: &Received,
    ) -> anyhow::Result<()> {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(placed.order_id.clone())
            .or_default() += 1;
        if placed.order_id == "poison" && !self.healed.load(Ordering::SeqCst) {
            anyhow::bail!("this event always fails");
        }
        if placed.order_id == "panics" {
            panic!("a bug in the handler");
        }
        if placed.order_id == "slow" {
            self.gate.acquire().await?.forget();
        }
        let tx = apply.tx().await?;
        sqlx::query("INSERT INTO applied (order_id) VALUES ($1)")
            .bind(&placed.order_id)
            .execute(&mut *tx)
            .await?;
        self.log
            .lock()
            .unwrap()
            .push((placed.order_id.clone(), placed.user_id.clone()));
        Ok(())
    }
}

struct Fixture {
    pool: PgPool,
    events: Events,
    settings: EventsSettings,
    shutdown: CancellationToken,
    recorder: Arc<Recorder>,
    nats: Nats,
    _postgres: Postgres,
}

async fn fixture() -> Fixture {
    let postgres = Postgres::start().await.unwrap();
    let url = postgres.create_database("events").await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    shop_events::migrate(&pool).await.unwrap();
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
            ..ConsumerSettings::default()
        },
        streams: Default::default(),
        retention: Default::default(),
    };
    let events = Events::connect("test", &settings).await.unwrap();
    let shutdown = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    tokio::spawn(events.relay(pool.clone())(shutdown.clone()));
    tokio::spawn(events.consumer(
        pool.clone(),
        ConsumerSpec::new("test-orders", ORDERS).on::<OrderPlaced>(recorder.clone()),
    )(shutdown.clone()));
    Fixture {
        pool,
        events,
        settings,
        shutdown,
        recorder,
        nats,
        _postgres: postgres,
    }
}

impl Fixture {
    async fn place(&self, order_id: &str) -> shop_proto::shop::events::v1::Envelope {
        self.place_as(order_id, "").await
    }

    /// An OrderPlaced of aggregate `order_id`; `user_id` tells two events
    /// of one aggregate apart.
    async fn place_as(
        &self,
        order_id: &str,
        user_id: &str,
    ) -> shop_proto::shop::events::v1::Envelope {
        let mut tx = self.pool.begin().await.unwrap();
        let envelope = outbox::enqueue(
            &mut tx,
            "test",
            order_id,
            &OrderPlaced {
                order_id: order_id.into(),
                user_id: user_id.into(),
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

    /// The newest dead letter, as the admin service lists it, once there
    /// are `count` of them.
    async fn newest_dead_letter(
        &self,
        admin: &shop_events::admin::EventsAdmin,
        count: i64,
    ) -> shop_proto::shop::common::v1::DeadLetter {
        eventually(Duration::from_secs(20), || async {
            let n = self.dead_letters().await;
            if n == count { Ok(()) } else { Err(n) }
        })
        .await
        .unwrap();
        admin
            .list_dead_letters(tonic::Request::new(ListDeadLettersRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .dead_letters
            .remove(0)
    }

    fn log(&self) -> Vec<(String, String)> {
        self.recorder.log.lock().unwrap().clone()
    }

    async fn dead_letters(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&self.pool)
            .await
            .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failed_delivery_and_dead_lettered_after_max_deliver() {
    let f = fixture().await;

    f.place("panics").await;
    f.place("o-after").await;

    eventually(Duration::from_secs(20), || async {
        let letters = f.dead_letters().await;
        if letters == 1 { Ok(()) } else { Err(letters) }
    })
    .await
    .unwrap();
    let (delivery_count, error): (i64, String) =
        sqlx::query_as("SELECT delivery_count, last_error FROM dead_letters")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!(delivery_count, MAX_DELIVER);
    assert!(error.contains("panicked: a bug in the handler"), "{error}");
    // Nothing the panicking attempts wrote stayed; the consumer went on.
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = f.recorder.attempts.lock().unwrap()["panics"];
    assert_eq!(attempts as i64, MAX_DELIVER, "exactly max_deliver attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_event_holds_up_its_own_aggregate_only_and_each_aggregate_stays_in_order() {
    let f = fixture().await;

    // Two events of the slow aggregate, then forty of twenty others (two
    // each, in order).
    f.place_as("slow", "first").await;
    f.place_as("slow", "second").await;
    for i in 0..20 {
        f.place_as(&format!("o-{i}"), "first").await;
        f.place_as(&format!("o-{i}"), "second").await;
    }
    // Everything else is applied while the slow one is held.
    eventually(Duration::from_secs(20), || async {
        let n = f.log().len();
        if n == 40 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    assert!(f.log().iter().all(|(order, _)| order != "slow"));
    // The second slow event waits behind the first, not beside it. An
    // event is in the log before its transaction commits and its ack is
    // sent, so the counters are waited for too.
    let admin = f.events.admin(f.pool.clone());
    let consumers = eventually(Duration::from_secs(10), || async {
        let consumers = admin
            .list_consumers(tonic::Request::new(ListConsumersRequest {}))
            .await
            .map_err(|e| format!("{e:?}"))?
            .into_inner()
            .consumers;
        match consumers.as_slice() {
            [c] if c.applied == 40 && c.in_flight == 2 => Ok(consumers),
            _ => Err(format!("{consumers:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(consumers[0].name, "test-orders");
    assert_eq!(consumers[0].max_in_flight, 64);

    f.recorder.gate.add_permits(2);
    eventually(Duration::from_secs(10), || async {
        let n = f.log().len();
        if n == 42 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    // Per aggregate, stream order.
    let log = f.log();
    for order in log.iter().map(|(o, _)| o.clone()) {
        let users: Vec<&str> = log
            .iter()
            .filter(|(o, _)| *o == order)
            .map(|(_, u)| u.as_str())
            .collect();
        assert_eq!(users, ["first", "second"], "{order}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_leaves_the_event_in_the_stream() {
    let f = fixture().await;
    // The dead_letters table refuses writes (as a full disk or a broken
    // constraint would).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'dead letters refused'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON dead_letters
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&f.pool)
    .await
    .unwrap();

    f.place("poison").await;
    // It is tried past max_deliver: each dead letter refused, the message
    // nak'ed rather than terminated.
    eventually(Duration::from_secs(20), || async {
        let attempts = f.recorder.attempts.lock().unwrap().get("poison").copied();
        match attempts {
            Some(n) if n as i64 > MAX_DELIVER + 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(f.dead_letters().await, 0);
    let admin = f.events.admin(f.pool.clone());
    let state = admin
        .list_consumers(tonic::Request::new(ListConsumersRequest {}))
        .await
        .unwrap()
        .into_inner()
        .consumers
        .remove(0);
    assert!(state.dead_letter_write_failures >= 2, "{state:?}");
    assert_eq!(state.dead_lettered, 0);

    // The cause is fixed: the event, still in the stream, is applied.
    f.recorder.healed.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(10), || async {
        let applied = f.applied().await;
        if applied == ["poison"] {
            Ok(())
        } else {
            Err(format!("{applied:?}"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_dead_letter_once_or_discards_it_with_a_reason() {
    let f = fixture().await;
    let admin = f.events.admin(f.pool.clone());
    f.place("poison").await;
    let letter = f.newest_dead_letter(&admin, 1).await;
    assert_eq!(letter.status(), DeadLetterStatus::Pending);
    let replay = |id: &str| {
        let admin = &admin;
        let id = id.to_string();
        async move {
            admin
                .replay_dead_letter(tonic::Request::new(ReplayDeadLetterRequest {
                    dead_letter_id: id,
                }))
                .await
        }
    };

    // Still failing: the replay says why, and the letter stays pending.
    let err = replay(&letter.dead_letter_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("always fails"), "{err:?}");

    // Fixed: two replays racing apply it once.
    f.recorder.healed.store(true, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        replay(&letter.dead_letter_id),
        replay(&letter.dead_letter_id)
    );
    for r in [a, b] {
        let replayed = r.unwrap().into_inner().dead_letter.unwrap();
        assert_eq!(replayed.status(), DeadLetterStatus::Replayed);
        assert_eq!(replayed.replay_attempts, 2);
        assert!(replayed.resolve_time.is_some());
    }
    assert_eq!(f.applied().await, ["poison"]);
    // ... and a replayed letter cannot be discarded.
    let err = admin
        .discard_dead_letter(tonic::Request::new(DiscardDeadLetterRequest {
            dead_letter_id: letter.dead_letter_id.clone(),
            reason: "too late".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Another one, discarded: a reason is required, and then it is kept
    // as DISCARDED and can no longer be replayed.
    f.recorder.healed.store(false, Ordering::SeqCst);
    f.place("poison").await;
    let second = f.newest_dead_letter(&admin, 2).await;
    assert_ne!(second.dead_letter_id, letter.dead_letter_id);
    let discard = |reason: &str| {
        admin.discard_dead_letter(tonic::Request::new(DiscardDeadLetterRequest {
            dead_letter_id: second.dead_letter_id.clone(),
            reason: reason.into(),
        }))
    };
    let err = discard("  ").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let discarded = discard("the order was settled by hand")
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert_eq!(discarded.status(), DeadLetterStatus::Discarded);
    assert_eq!(discarded.discard_reason, "the order was settled by hand");
    let err = replay(&second.dead_letter_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = replay(&uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = replay("nope").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(f.applied().await, ["poison"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_in_the_middle_of_the_relays_window_loses_and_repeats_nothing() {
    let mut f = fixture().await;
    const EVENTS: usize = 400;
    {
        let mut tx = f.pool.begin().await.unwrap();
        for i in 0..EVENTS {
            outbox::enqueue(
                &mut tx,
                "test",
                &format!("o-{i}"),
                &OrderPlaced {
                    order_id: format!("o-{i}"),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    f.events.wake_relay();
    // Killed while the relay has publishes in flight.
    eventually(Duration::from_secs(10), || async {
        let n = f.events.stream_message_count("ORDERS").await.unwrap_or(0);
        if n > 0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    f.nats.kill().unwrap();
    f.nats.restart().await.unwrap();
    eventually(Duration::from_secs(60), || async {
        let applied = f.applied().await.len();
        if applied == EVENTS {
            Ok(())
        } else {
            Err(applied)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        f.events.stream_message_count("ORDERS").await.unwrap(),
        EVENTS as u64
    );
    let mut applied = f.applied().await;
    applied.dedup();
    assert_eq!(applied.len(), EVENTS, "each event applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_old_published_outbox_rows_and_old_inbox_rows_only() {
    let f = fixture().await;
    for id in ["o-old-1", "o-old-2", "o-new"] {
        f.place(id).await;
    }
    eventually(Duration::from_secs(15), || async {
        let n = f.applied().await.len();
        if n == 3 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    // Two events published and applied two hours ago, one just now; and
    // one row not published yet, however old.
    sqlx::raw_sql(
        "UPDATE outbox SET published_at = now() - interval '2 hours'
             WHERE event_id IN (
                 SELECT event_id FROM outbox ORDER BY seq LIMIT 2);
         UPDATE inbox SET processed_at = now() - interval '2 hours'
             WHERE event_id IN (SELECT event_id FROM outbox ORDER BY seq LIMIT 2);
         INSERT INTO outbox (event_id, subject, event_type, envelope, created_at)
             VALUES (gen_random_uuid(), 'nowhere', 'none', '\\x00', now() - interval '3 hours');",
    )
    .execute(&f.pool)
    .await
    .unwrap();
    let settings = shop_events::settings::RetentionSettings {
        outbox_after: Duration::from_secs(3600),
        inbox_after: Duration::from_secs(3600),
        batch: 1,
        ..Default::default()
    };
    let swept = shop_events::retention::sweep_now(&f.pool, &settings)
        .await
        .unwrap();
    assert_eq!((swept.outbox, swept.inbox), (2, 2));
    let (outbox, unpublished, inbox): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox),
                (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                (SELECT count(*) FROM inbox)",
    )
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert_eq!((outbox, unpublished, inbox), (2, 1, 1));
    let again = shop_events::retention::sweep_now(&f.pool, &settings)
        .await
        .unwrap();
    assert_eq!((again.outbox, again.inbox), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_an_operator_changed_keeps_its_settings_and_a_foreign_one_is_refused() {
    let f = fixture().await;
    let js = f.events.jetstream();
    // An operator raises the ORDERS limits by hand.
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    let mut config = orders.info().await.unwrap().config.clone();
    assert_eq!(config.max_messages, -1);
    config.max_messages = 12_345;
    js.update_stream(&config).await.unwrap();

    // A service (re)starting leaves them alone.
    let settings = f.settings.clone();
    Events::connect("test", &settings).await.unwrap();
    let mut orders = js.get_stream("ORDERS").await.unwrap();
    assert_eq!(orders.info().await.unwrap().config.max_messages, 12_345);

    // A stream of the same name storing other subjects is not ours.
    js.delete_stream("CATALOG").await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CATALOG".into(),
        subjects: vec!["elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = Events::connect("test", &settings).await.unwrap_err();
    assert!(format!("{err:#}").contains("shop.catalog.>"), "{err:#}");
}
