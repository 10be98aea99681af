//! The inventory service served in process against a fresh Postgres and a
//! fresh nats-server, a test connection playing the orders service, and an
//! observer that records every event inventory publishes.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{Apply, ConsumerSpec, DomainEvent, Events, Handler, Received, catalog};
use shop_proto::shop::common::v1::{CancellationReason, Money};
use shop_proto::shop::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced,
};
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::inventory::v1::{
    GetReservationRequest, GetStockRequest, Reservation, ReservationStatus, SetStockRequest,
    StockLevel,
};
use shop_testkit::inproc::RunningApp;
use shop_testkit::{Nats, Postgres, eventually};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// Attempts before inventory dead-letters an event.
pub(crate) const MAX_DELIVER: i64 = 3;

/// How long the saga gets to react in these tests.
pub(crate) const WITHIN: Duration = Duration::from_secs(20);

/// Records every event it is given.
#[derive(Default)]
pub(crate) struct Observer {
    seen: Mutex<Vec<Envelope>>,
}

#[async_trait::async_trait]
impl Handler for Observer {
    async fn handle(&self, _apply: &mut Apply<'_>, event: &Received) -> anyhow::Result<()> {
        self.seen.lock().unwrap().push(event.envelope.clone());
        Ok(())
    }
}

pub(crate) struct TestApp {
    pub(crate) client: InventoryServiceClient<Channel>,
    /// The inventory database.
    pub(crate) db: PgPool,
    /// A connection playing the orders service.
    pub(crate) orders: Events,
    observer: Arc<Observer>,
    stop: CancellationToken,
    // Field order is drop order: the services stop before NATS and Postgres.
    apps: Vec<RunningApp>,
    _nats: Nats,
    _postgres: Postgres,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn event_settings(nats_url: String) -> EventsSettings {
    EventsSettings {
        nats_url,
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
    }
}

/// One inventory replica.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_replicas(1).await
}

/// `replicas` inventory servers sharing the database and the durable
/// consumer, as in a deployment with several pods.
pub(crate) async fn spawn_replicas(replicas: usize) -> TestApp {
    let postgres = Postgres::start().await.expect("postgres starts");
    let url = postgres.create_database("inventory").await.unwrap();
    let observer_url = postgres.create_database("observer").await.unwrap();
    let nats = Nats::start().await.expect("nats starts");
    let nats_url = nats.url();
    let mut apps = Vec::new();
    for _ in 0..replicas {
        let config: inventory::Config = shop_runtime::config::from_toml(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [database]
            url = "{url}"
            probe_interval = "100ms"
            [events]
            nats_url = "{nats_url}"
            connect_timeout = "10s"
            [events.relay]
            poll_interval = "50ms"
            [events.consumer]
            ack_wait = "5s"
            max_deliver = {MAX_DELIVER}
            backoff = ["20ms"]
            "#
        ))
        .unwrap();
        apps.push(RunningApp::spawn(
            inventory::build(config).await.expect("inventory builds"),
        ));
    }
    let client = InventoryServiceClient::connect(apps[0].url())
        .await
        .unwrap();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await
        .unwrap();

    let orders = Events::connect("test-orders", &event_settings(nats_url))
        .await
        .unwrap();
    // The observer needs inbox and dead-letter tables of its own.
    let observer_db = PgPool::connect(&observer_url).await.unwrap();
    inventory::MIGRATOR.run(&observer_db).await.unwrap();
    shop_events::migrate(&observer_db).await.unwrap();
    let observer = Arc::new(Observer::default());
    let stop = CancellationToken::new();
    tokio::spawn(orders.consumer(
        observer_db,
        ConsumerSpec::new("test-observer", catalog::INVENTORY).every_event(observer.clone()),
    )(stop.clone()));

    TestApp {
        client,
        db,
        orders,
        observer,
        stop,
        apps,
        _nats: nats,
        _postgres: postgres,
    }
}

pub(crate) fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "EUR".into(),
    })
}

/// Order lines at 1.00 EUR a unit.
pub(crate) fn order_lines(lines: &[(Uuid, i64)]) -> Vec<OrderLine> {
    lines
        .iter()
        .map(|&(product, quantity)| OrderLine {
            product_id: product.to_string(),
            quantity,
            unit_price: eur(100),
        })
        .collect()
}

pub(crate) fn order_placed(order: Uuid, user: Uuid, lines: &[(Uuid, i64)]) -> OrderPlaced {
    OrderPlaced {
        order_id: order.to_string(),
        user_id: user.to_string(),
        lines: order_lines(lines),
        total: eur(lines.iter().map(|(_, q)| q * 100).sum()),
        payment_token: String::new(),
        // Ciphertext to inventory: it passes it on as it came.
        sealed_payment_token: b"sealed for payments".to_vec(),
    }
}

pub(crate) fn order_confirmed(order: Uuid, user: Uuid, lines: &[(Uuid, i64)]) -> OrderConfirmed {
    OrderConfirmed {
        order_id: order.to_string(),
        user_id: user.to_string(),
        lines: order_lines(lines),
        total: eur(lines.iter().map(|(_, q)| q * 100).sum()),
        payment_id: Uuid::now_v7().to_string(),
    }
}

pub(crate) fn order_cancelled(order: Uuid, user: Uuid, lines: &[(Uuid, i64)]) -> OrderCancelled {
    OrderCancelled {
        order_id: order.to_string(),
        user_id: user.to_string(),
        reason: CancellationReason::UserRequested as i32,
        detail: "changed my mind".into(),
        lines: order_lines(lines),
        total: eur(lines.iter().map(|(_, q)| q * 100).sum()),
    }
}

impl TestApp {
    pub(crate) fn replicas(&self) -> usize {
        self.apps.len()
    }

    pub(crate) async fn set_stock(&mut self, product: Uuid, available: i64) -> StockLevel {
        self.client
            .set_stock(SetStockRequest {
                product_id: product.to_string(),
                available,
            })
            .await
            .unwrap()
            .into_inner()
            .stock
            .unwrap()
    }

    pub(crate) async fn stock(&mut self, product: Uuid) -> StockLevel {
        self.client
            .get_stock(GetStockRequest {
                product_id: product.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .stock
            .unwrap()
    }

    /// `(available, reserved, sold)` of a product.
    pub(crate) async fn levels(&mut self, product: Uuid) -> (i64, i64, i64) {
        let s = self.stock(product).await;
        (s.available, s.reserved, s.sold)
    }

    /// Publishes `event` on its orders subject, as the orders service would.
    pub(crate) async fn publish<E: DomainEvent>(&self, order: Uuid, event: &E) -> Envelope {
        self.orders
            .publish_now(&order.to_string(), event, None)
            .await
            .unwrap()
    }

    pub(crate) async fn reservation(&mut self, order: Uuid) -> Option<Reservation> {
        match self
            .client
            .get_reservation(GetReservationRequest {
                order_id: order.to_string(),
            })
            .await
        {
            Ok(r) => Some(r.into_inner().reservation.unwrap()),
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => panic!("GetReservation: {s:?}"),
        }
    }

    /// Waits until the order's reservation is in `status`.
    pub(crate) async fn wait_for(&mut self, order: Uuid, status: ReservationStatus) -> Reservation {
        let client = self.client.clone();
        eventually(WITHIN, || {
            let mut client = client.clone();
            async move {
                let r = client
                    .get_reservation(GetReservationRequest {
                        order_id: order.to_string(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner()
                    .reservation
                    .unwrap();
                if r.status == status as i32 {
                    Ok(r)
                } else {
                    Err(format!("status {:?}", r.status()))
                }
            }
        })
        .await
        .unwrap()
    }

    /// Waits until inventory's consumer has handled (or dead-lettered) the
    /// event: its id is in the inbox.
    pub(crate) async fn wait_handled(&self, envelope: &Envelope) {
        let id: Uuid = envelope.event_id.parse().unwrap();
        eventually(WITHIN, || async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
                .bind(id)
                .fetch_one(&self.db)
                .await
                .unwrap();
            if n == 1 {
                Ok(())
            } else {
                Err("not handled yet")
            }
        })
        .await
        .unwrap();
    }

    /// Every event of type `E` inventory published so far.
    pub(crate) fn published<E: DomainEvent>(&self) -> Vec<E> {
        self.observer
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.event_type == E::TYPE)
            .map(|e| E::decode(e.payload.as_slice()).unwrap())
            .collect()
    }

    /// Waits until inventory published exactly `n` events of type `E` for
    /// `order` (and returns them).
    pub(crate) async fn wait_published<E: DomainEvent>(
        &self,
        n: usize,
        of_order: impl Fn(&E) -> bool,
    ) -> Vec<E> {
        eventually(WITHIN, || async {
            let found: Vec<E> = self
                .published::<E>()
                .into_iter()
                .filter(&of_order)
                .collect();
            if found.len() == n {
                Ok(found)
            } else {
                Err(format!("{} {} events, want {n}", found.len(), E::TYPE))
            }
        })
        .await
        .unwrap()
    }

    /// Every event inventory published, in the order observed.
    pub(crate) fn published_types(&self) -> Vec<String> {
        self.observer
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }
}
