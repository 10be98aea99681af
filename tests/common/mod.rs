//! Shared pieces of the saga suites: a stack running the saga's services,
//! typed clients, and the invariant checks every run ends with.

#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod gateway;
pub mod mesh;
pub mod raw_h2;
pub mod rest;

use shop_proto::shop::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use shop_proto::shop::catalog::v1::CreateProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::common::v1::{DeadLetter, Money};
use shop_proto::shop::events::v1::ListDeadLettersRequest;
use shop_proto::shop::events::v1::events_admin_service_client::EventsAdminServiceClient;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::inventory::v1::{GetStockRequest, SetStockRequest};
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{
    GetOrderRequest, NewOrderLine, Order, OrderStatus, PlaceOrderRequest,
};
use shop_proto::shop::payments::v1::payment_service_client::PaymentServiceClient;
use shop_proto::shop::payments::v1::{ListPaymentsRequest, PaymentStatus};
use shop_testkit::stack::{Stack, StackOptions};
use shop_testkit::{ServiceProcess, eventually};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::transport::Channel;

/// The services the saga needs, in start order (callees first).
pub const SAGA_SERVICES: &[&str] = &["catalog", "inventory", "payments", "orders", "analytics"];

pub struct Saga {
    pub stack: Stack,
    pub user_id: String,
    /// product id -> stock it started with.
    pub initial_stock: BTreeMap<String, i64>,
    /// every order placed, with its total (minor units).
    pub placed: Vec<String>,
}

/// Environment that makes the saga quick to observe in tests: fast relay
/// polling, short backoff.
pub fn fast_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for svc in [
        "users",
        "inventory",
        "payments",
        "orders",
        "notifications",
        "analytics",
    ] {
        let p = format!("SHOP_{}__EVENTS__", svc.to_uppercase());
        env.push((format!("{p}RELAY__POLL_INTERVAL"), "50ms".into()));
        env.push((
            format!("{p}CONSUMER__BACKOFF"),
            "[\"50ms\", \"200ms\"]".into(),
        ));
        env.push((format!("{p}CONSUMER__ACK_WAIT"), "5s".into()));
    }
    env.push(("RUST_LOG".into(), "info".into()));
    env
}

/// A product in the stack's catalog (named `name`, or after its SKU),
/// priced `price_minor` EUR, with `stock` units in inventory; its id. Made
/// as an operator would, on catalog and inventory directly.
pub async fn stocked_product(
    stack: &Stack,
    name: Option<&str>,
    price_minor: i64,
    stock: i64,
) -> String {
    stocked_product_on(
        stack.service("catalog"),
        stack.service("inventory"),
        name,
        price_minor,
        stock,
    )
    .await
}

/// [`stocked_product`] on the given catalog and inventory processes.
pub async fn stocked_product_on(
    catalog: &ServiceProcess,
    inventory: &ServiceProcess,
    name: Option<&str>,
    price_minor: i64,
    stock: i64,
) -> String {
    let sku = format!("SKU-{}", uuid::Uuid::new_v4().simple());
    let product = CatalogServiceClient::new(catalog.channel().await.unwrap())
        .create_product(CreateProductRequest {
            sku: sku.clone(),
            name: name.map_or_else(|| format!("Product {sku}"), str::to_string),
            description: String::new(),
            category: "test".into(),
            price: Some(Money {
                amount_minor: price_minor,
                currency_code: "EUR".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    InventoryServiceClient::new(inventory.channel().await.unwrap())
        .set_stock(SetStockRequest {
            product_id: product.product_id.clone(),
            available: stock,
        })
        .await
        .unwrap();
    product.product_id
}

/// Events settings of NATS's admin user: tests that look at streams or play
/// the part of a service.
pub fn admin_events(stack: &Stack) -> shop_events::EventsSettings {
    stack.admin_events().unwrap()
}

/// Payments' database refusing every refund (a trigger on `refunds`)
/// until [`RefusedRefunds::allow`]: a compensation that is dead-lettered,
/// then replayable once the cause is gone.
pub struct RefusedRefunds(sqlx::PgConnection);

impl RefusedRefunds {
    /// Drops the trigger: refunds are stored again. Returns the connection
    /// to payments' database.
    pub async fn allow(mut self) -> sqlx::PgConnection {
        sqlx::raw_sql("DROP TRIGGER refuse ON refunds")
            .execute(&mut self.0)
            .await
            .unwrap();
        self.0
    }
}

impl Saga {
    /// From now on payments' database refuses refunds.
    pub async fn refuse_refunds(&self) -> RefusedRefunds {
        use sqlx::Connection as _;
        let mut db = sqlx::PgConnection::connect(&self.stack.postgres.url("shop_payments"))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refunds refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON refunds FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .execute(&mut db)
        .await
        .unwrap();
        RefusedRefunds(db)
    }

    /// The first dead letter of `service`, once there is one (30 s at most).
    pub async fn dead_letter(&self, service: &str) -> DeadLetter {
        let admin = self.events_admin(service).await;
        eventually(Duration::from_secs(30), || {
            let mut admin = admin.clone();
            async move {
                admin
                    .list_dead_letters(ListDeadLettersRequest::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .dead_letters
                    .into_iter()
                    .next()
                    .ok_or_else(|| "no dead letter yet".to_string())
            }
        })
        .await
        .unwrap()
    }

    pub async fn start(service_env: BTreeMap<String, Vec<(String, String)>>) -> Self {
        Self::start_replicated(service_env, BTreeMap::new()).await
    }

    /// [`Saga::start`] with `replicas` instances of some services (sharing
    /// their database and durable consumers).
    pub async fn start_replicated(
        service_env: BTreeMap<String, Vec<(String, String)>>,
        replicas: BTreeMap<String, usize>,
    ) -> Self {
        let mut services: Vec<String> = SAGA_SERVICES.iter().map(|s| s.to_string()).collect();
        services.push("notifications".into());
        let stack = Stack::start_with(StackOptions {
            services,
            env: fast_env(),
            service_env,
            replicas,
            ..StackOptions::default()
        })
        .await
        .expect("the saga stack starts");
        Saga {
            stack,
            user_id: uuid::Uuid::new_v4().to_string(),
            initial_stock: BTreeMap::new(),
            placed: Vec::new(),
        }
    }

    pub async fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.stack.service("catalog").channel().await.unwrap())
    }
    pub async fn inventory(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.stack.service("inventory").channel().await.unwrap())
    }
    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.stack.service("orders").channel().await.unwrap())
    }
    pub async fn payments(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.stack.service("payments").channel().await.unwrap())
    }
    /// `EventsAdminService` of `service`, as the operator.
    pub async fn events_admin(&self, service: &str) -> EventsAdminServiceClient<Channel> {
        EventsAdminServiceClient::new(self.stack.service(service).channel().await.unwrap())
    }
    pub async fn analytics(&self) -> AnalyticsServiceClient<Channel> {
        AnalyticsServiceClient::new(self.stack.service("analytics").channel().await.unwrap())
    }

    /// A product priced `price_minor` EUR with `stock` units in inventory.
    pub async fn product(&mut self, price_minor: i64, stock: i64) -> String {
        let id = stocked_product(&self.stack, None, price_minor, stock).await;
        self.initial_stock.insert(id.clone(), stock);
        id
    }

    pub fn order_request(&self, lines: &[(&str, i64)], token: &str) -> PlaceOrderRequest {
        PlaceOrderRequest {
            user_id: self.user_id.clone(),
            lines: lines
                .iter()
                .map(|(p, q)| NewOrderLine {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
            payment_token: token.into(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Places an order and returns its id.
    pub async fn place(&mut self, lines: &[(&str, i64)], token: &str) -> String {
        let request = self.order_request(lines, token);
        let order = self
            .orders()
            .await
            .place_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(order.status, OrderStatus::Pending as i32);
        self.placed.push(order.order_id.clone());
        order.order_id
    }

    pub async fn order(&self, order_id: &str) -> Order {
        self.orders()
            .await
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    }

    /// Waits until the order is CONFIRMED or CANCELLED.
    pub async fn terminal(&self, order_id: &str, within: Duration) -> Order {
        let orders = self.orders().await;
        eventually(within, || {
            let mut orders = orders.clone();
            let order_id = order_id.to_string();
            async move {
                let order = orders
                    .get_order(GetOrderRequest { order_id })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .order
                    .ok_or("no order")?;
                if order.status == OrderStatus::Pending as i32 {
                    Err(format!("{} still pending", order.order_id))
                } else {
                    Ok(order)
                }
            }
        })
        .await
        .unwrap()
    }

    /// Waits until the order's compensation (or commitment) has settled in
    /// inventory and payments, then checks every invariant of DESIGN §4
    /// over all orders placed so far.
    pub async fn check_invariants(&self, within: Duration) {
        eventually(within, || async { self.invariants().await })
            .await
            .unwrap();
    }

    /// `Ok` when every invariant holds; `Err` says which does not (yet).
    pub async fn invariants(&self) -> Result<(), String> {
        let mut orders = self.orders().await;
        let mut payments = self.payments().await;
        let mut inventory = self.inventory().await;
        let mut confirmed_total = 0i64;
        let mut net_captured = 0i64;
        let mut committed: HashMap<String, i64> = HashMap::new();
        for order_id in &self.placed {
            let order = orders
                .get_order(GetOrderRequest {
                    order_id: order_id.clone(),
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .order
                .ok_or("no order")?;
            let status = order.status();
            if status == OrderStatus::Pending {
                return Err(format!("order {order_id} still pending"));
            }
            let list = payments
                .list_payments(ListPaymentsRequest {
                    order_id: order_id.clone(),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .payments;
            let captured: Vec<_> = list
                .iter()
                .filter(|p| p.status() == PaymentStatus::Captured)
                .collect();
            let refunded: Vec<_> = list
                .iter()
                .filter(|p| p.status() == PaymentStatus::Refunded)
                .collect();
            if list.len() > 1 {
                return Err(format!("order {order_id} has {} payments", list.len()));
            }
            let total = order.total.as_ref().map_or(0, |m| m.amount_minor);
            match status {
                OrderStatus::Confirmed => {
                    if captured.len() != 1 {
                        return Err(format!(
                            "confirmed {order_id} without one unrefunded capture"
                        ));
                    }
                    if captured[0].amount.as_ref().map(|m| m.amount_minor) != Some(total) {
                        return Err(format!("confirmed {order_id} captured a different amount"));
                    }
                    confirmed_total += total;
                    for line in &order.lines {
                        *committed.entry(line.product_id.clone()).or_default() += line.quantity;
                    }
                }
                OrderStatus::Cancelled if !captured.is_empty() => {
                    return Err(format!("cancelled {order_id} still has a capture"));
                }
                _ => {}
            }
            for p in captured.iter().chain(refunded.iter()) {
                let amount = p.amount.as_ref().map_or(0, |m| m.amount_minor);
                let back = p.refunded_amount.as_ref().map_or(0, |m| m.amount_minor);
                net_captured += amount - back;
            }
        }
        if net_captured != confirmed_total {
            return Err(format!(
                "money: captured - refunded = {net_captured}, confirmed orders total {confirmed_total}"
            ));
        }
        // The processor's own books agree: what it holds, net of refunds,
        // is what the confirmed orders cost, and it answered each order
        // with at most one charge (one ledger row per idempotency key).
        let held = self.processor_holds().await?;
        if held != confirmed_total {
            return Err(format!(
                "money at the processor: it holds {held}, confirmed orders total {confirmed_total}"
            ));
        }
        for (product_id, initial) in &self.initial_stock {
            let level = inventory
                .get_stock(GetStockRequest {
                    product_id: product_id.clone(),
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .stock
                .ok_or("no stock level")?;
            if level.available < 0 || level.reserved < 0 || level.sold < 0 {
                return Err(format!("negative stock for {product_id}: {level:?}"));
            }
            if level.available + level.reserved + level.sold != *initial {
                return Err(format!(
                    "stock of {product_id} does not add up to {initial}: {level:?}"
                ));
            }
            if level.reserved != 0 {
                return Err(format!(
                    "{product_id} still has {} reserved",
                    level.reserved
                ));
            }
            let sold = committed.get(product_id).copied().unwrap_or(0);
            if level.sold != sold {
                return Err(format!(
                    "{product_id}: sold {} but confirmed orders hold {sold}",
                    level.sold
                ));
            }
        }
        Ok(())
    }

    /// What the card processor's ledger holds for the orders placed:
    /// captures not refunded.
    pub async fn processor_holds(&self) -> Result<i64, String> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.stack.postgres.url("shop_payments"))
            .await
            .map_err(|e| e.to_string())?;
        let placed: Vec<uuid::Uuid> = self
            .placed
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect();
        sqlx::query_scalar(
            "SELECT coalesce(sum(amount_minor), 0)::bigint FROM processor_ledger
             WHERE idempotency_key = ANY($1) AND outcome = 'captured' AND refunded_at IS NULL",
        )
        .bind(&placed)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())
    }

    /// Waits (at most `within`) until the outboxes of orders, inventory and
    /// payments are published, every row exactly once. The relay marks a row
    /// published only after the stream's ack, so this lags what the
    /// invariants see.
    pub async fn all_published_once(&self, within: Duration) {
        for (service, stream) in [
            ("orders", "ORDERS"),
            ("inventory", "INVENTORY"),
            ("payments", "PAYMENTS"),
        ] {
            eventually(within, || self.published_once(service, stream))
                .await
                .unwrap();
        }
    }

    /// Rows in the outbox of `service` and messages in its stream: equal
    /// when every event was published exactly once.
    pub async fn published_once(&self, service: &str, stream: &str) -> Result<(), String> {
        use sqlx::Connection as _;
        let mut conn =
            sqlx::PgConnection::connect(&self.stack.postgres.url(&format!("shop_{service}")))
                .await
                .map_err(|e| e.to_string())?;
        let (rows, unpublished): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        if unpublished != 0 {
            return Err(format!("{service}: {unpublished} events not yet published"));
        }
        let settings = admin_events(&self.stack);
        let events = shop_events::Events::connect("test", &settings)
            .await
            .map_err(|e| e.to_string())?;
        let messages = events
            .stream_message_count(stream)
            .await
            .map_err(|e| e.to_string())?;
        if messages as i64 != rows {
            return Err(format!(
                "{stream}: {messages} messages for {rows} outbox rows"
            ));
        }
        Ok(())
    }
}
