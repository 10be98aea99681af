//! `shop.orders.v1.OrderService`.

use crate::catalog::Catalog;
use crate::domain::{self, CatalogPrice, OrderRequest};
use crate::saga;
use crate::store::{self, NewOrder, OrderRow};
use chrono::SubsecRound as _;
use shop_events::{Events, outbox};
use shop_proto::shop::common::v1::{CancellationReason, Money};
use shop_proto::shop::events::v1::{OrderLine as EventLine, OrderPlaced};
use shop_proto::shop::orders::v1::order_service_server::OrderService;
use shop_proto::shop::orders::v1::{
    CancelOrderRequest, CancelOrderResponse, GetOrderRequest, GetOrderResponse,
    ListDeadLettersRequest, ListDeadLettersResponse, ListOrdersRequest, ListOrdersResponse, Order,
    OrderLine, OrderStatus, PlaceOrderRequest, PlaceOrderResponse, SagaStep, SagaStepStatus,
    SagaStepType,
};
use shop_runtime::convert::timestamp;
use shop_runtime::paging;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

pub(crate) struct OrdersApi {
    pool: PgPool,
    catalog: Catalog,
    events: Events,
    saga_timeout: Duration,
    flags: shop_flags::Flags,
    /// Seals payment tokens for payments' eyes only.
    sealing: std::sync::Arc<shop_events::sealed::SealingKeys>,
}

/// The release rollout of a minimum order value: an integer flag, in minor
/// units of the order's currency, by user (0: no minimum, the code's
/// default). Rolled out with a `fractional` rule, so a user in the rollout
/// stays in it.
pub(crate) const MINIMUM_ORDER_VALUE: &str = "orders.minimum-order-value";

impl OrdersApi {
    pub(crate) fn new(
        pool: PgPool,
        catalog: Catalog,
        events: Events,
        saga_timeout: Duration,
        flags: shop_flags::Flags,
        sealing: std::sync::Arc<shop_events::sealed::SealingKeys>,
    ) -> Self {
        Self {
            pool,
            catalog,
            events,
            saga_timeout,
            flags,
            sealing,
        }
    }

    async fn load(&self, order_id: Uuid) -> Result<Order, ServiceError> {
        let mut conn = self.pool.acquire().await?;
        load_in(&mut conn, order_id).await
    }

    /// A repeated PlaceOrder: the same body gets the same order back.
    /// The order's lines priced by the catalog, its total and currency,
    /// or why it cannot be placed (unknown products, mixed currencies,
    /// below the minimum order value).
    async fn price(
        &self,
        order: &OrderRequest,
    ) -> Result<(Vec<domain::PricedLine>, i64, String), Status> {
        // Prices come from the catalog, never from the client.
        let products = self
            .catalog
            .products(order.lines.iter().map(|(p, _)| p.to_string()).collect())
            .await?;
        let by_id: HashMap<Uuid, _> = products
            .into_iter()
            .filter_map(|p| Uuid::parse_str(&p.product_id).ok().map(|id| (id, p)))
            .collect();
        let (priced, total, currency) = domain::price(&order.lines, |id| {
            by_id.get(id).and_then(|p| {
                p.price.as_ref().map(|m| CatalogPrice {
                    sku: p.sku.clone(),
                    name: p.name.clone(),
                    amount_minor: m.amount_minor,
                    currency: m.currency_code.clone(),
                })
            })
        })
        .map_err(ServiceError::InvalidArgument)?;
        let minimum = self
            .flags
            .int(
                MINIMUM_ORDER_VALUE,
                0,
                &shop_flags::user(order.user_id.to_string())
                    .with_custom_field("currency", currency.clone()),
            )
            .await;
        if total < minimum {
            // Nothing is stored: the same request, with more in the basket,
            // may be made again (with the same idempotency key too).
            let description = format!(
                "the minimum order value is {minimum} minor units of {currency}; this order totals {total}"
            );
            return Err(Status::with_error_details(
                tonic::Code::FailedPrecondition,
                description.clone(),
                tonic_types::ErrorDetails::with_precondition_failure_violation(
                    "MINIMUM_ORDER_VALUE",
                    "total",
                    description,
                ),
            ));
        }
        Ok((priced, total, currency))
    }

    /// The order placed before under `request`'s idempotency key, if any
    /// (`ALREADY_EXISTS` when the key was used for another order).
    async fn placed_before(&self, request: &OrderRequest) -> Result<Option<Order>, Status> {
        match store::find_by_key(&self.pool, request.idempotency_key)
            .await
            .map_err(ServiceError::from)?
        {
            Some(existing) => Ok(Some(self.replay(existing, request).await?)),
            None => Ok(None),
        }
    }

    async fn replay(
        &self,
        existing: OrderRow,
        request: &OrderRequest,
    ) -> Result<Order, ServiceError> {
        if existing.request_fingerprint != request.fingerprint {
            return Err(ServiceError::AlreadyExists(
                "this idempotency_key was already used for a different order".into(),
            ));
        }
        self.load(existing.order_id).await
    }
}

async fn load_in(conn: &mut PgConnection, order_id: Uuid) -> Result<Order, ServiceError> {
    let full = store::get_full(conn, order_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("order", order_id))?;
    Ok(order_proto(full.order, full.lines, full.steps))
}

fn status_of(row: &OrderRow) -> OrderStatus {
    match row.status.as_str() {
        "pending" => OrderStatus::Pending,
        "confirmed" => OrderStatus::Confirmed,
        "cancelled" => OrderStatus::Cancelled,
        _ => OrderStatus::Unspecified,
    }
}

fn order_proto(row: OrderRow, lines: Vec<store::LineRow>, steps: Vec<store::StepRow>) -> Order {
    let money = |amount_minor: i64| Money {
        amount_minor,
        currency_code: row.currency.clone(),
    };
    let lines = lines
        .into_iter()
        .map(|l| OrderLine {
            product_id: l.product_id.to_string(),
            quantity: l.quantity,
            unit_price: Some(money(l.unit_price_minor)),
            line_total: Some(money(l.unit_price_minor * l.quantity)),
            sku: l.sku,
            product_name: l.product_name,
        })
        .collect();
    let timeline = steps
        .into_iter()
        .map(|s| SagaStep {
            step: i32::from(s.step),
            status: i32::from(s.status),
            reason: s.reason,
            occur_time: Some(timestamp(s.occurred_at)),
            event_id: s.event_id.map(|e| e.to_string()).unwrap_or_default(),
        })
        .collect();
    Order {
        order_id: row.order_id.to_string(),
        user_id: row.user_id.to_string(),
        status: status_of(&row) as i32,
        lines,
        total: Some(money(row.total_minor)),
        idempotency_key: row.idempotency_key.to_string(),
        cancellation_reason: row.cancel_reason.map_or(0, i32::from),
        cancellation_detail: row.cancel_detail.clone(),
        timeline,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

fn parse_order_id(raw: &str) -> Result<Uuid, ServiceError> {
    shop_runtime::convert::parse_uuid("order_id", raw)
}

#[tonic::async_trait]
impl OrderService for OrdersApi {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        let lines: Vec<(String, i64)> = req
            .lines
            .iter()
            .map(|l| (l.product_id.clone(), l.quantity))
            .collect();
        let order = domain::validate(
            &req.user_id,
            &lines,
            &req.payment_token,
            &req.idempotency_key,
        )
        .map_err(ServiceError::InvalidArgument)?;
        // The idempotency key is checked when it matters only: when the
        // insert conflicts, or when something refuses the order (a retry
        // of one placed before is answered as placed, whatever the catalog
        // and the flags say now).
        let (priced, total, currency) = match self.price(&order).await {
            Ok(priced) => priced,
            Err(refused) => {
                return match self.placed_before(&order).await? {
                    Some(placed) => Ok(Response::new(PlaceOrderResponse {
                        order: Some(placed),
                    })),
                    None => Err(refused),
                };
            }
        };

        let order_id = Uuid::now_v7();
        // As the database keeps it (microseconds), so the answer shows the
        // time a later read will.
        let now = chrono::Utc::now().trunc_subsecs(6);
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let inserted = store::insert(
            &mut tx,
            &NewOrder {
                order_id,
                user_id: order.user_id,
                total_minor: total,
                currency: &currency,
                idempotency_key: order.idempotency_key,
                fingerprint: &order.fingerprint,
                deadline: now + self.saga_timeout,
            },
        )
        .await
        .map_err(ServiceError::from)?;
        let Some(row) = inserted else {
            // The same key won a race with us: answer as a retry would.
            tx.rollback().await.map_err(ServiceError::from)?;
            let placed = self
                .placed_before(&order)
                .await?
                .ok_or_else(|| ServiceError::Internal(anyhow::anyhow!("order vanished")))?;
            return Ok(Response::new(PlaceOrderResponse {
                order: Some(placed),
            }));
        };
        store::insert_lines(&mut tx, order_id, &priced)
            .await
            .map_err(ServiceError::from)?;
        let event = OrderPlaced {
            order_id: order_id.to_string(),
            user_id: order.user_id.to_string(),
            lines: priced
                .iter()
                .map(|l| EventLine {
                    product_id: l.product_id.to_string(),
                    quantity: l.quantity,
                    unit_price: Some(Money {
                        amount_minor: l.unit_price_minor,
                        currency_code: currency.clone(),
                    }),
                })
                .collect(),
            total: Some(Money {
                amount_minor: total,
                currency_code: currency.clone(),
            }),
            // Sealed for payments, bound to this order: inventory passes
            // it on unread, and streams and dead letters hold ciphertext.
            payment_token: String::new(),
            sealed_payment_token: self
                .sealing
                .seal(&order.payment_token, &order_id.to_string()),
        };
        let envelope = outbox::enqueue(&mut tx, "orders", &order_id.to_string(), &event, None)
            .await
            .map_err(ServiceError::from)?;
        let placed = store::StepRow {
            step: SagaStepType::PlaceOrder as i16,
            status: SagaStepStatus::Succeeded as i16,
            reason: String::new(),
            event_id: envelope.event_id.parse().ok(),
            occurred_at: now,
        };
        store::add_step(
            &mut tx,
            order_id,
            i32::from(placed.step),
            i32::from(placed.status),
            &placed.reason,
            placed.event_id,
            placed.occurred_at,
        )
        .await
        .map_err(ServiceError::from)?;
        shop_runtime::db::commit(tx)
            .await
            .map_err(ServiceError::from)?;
        self.events.wake_relay();
        tracing::info!(order_id = %order_id, total, currency = %currency, "order placed");
        // The answer is the order as this transaction wrote it: read after
        // the commit, the saga may already have moved it on.
        let lines = priced.into_iter().map(store::LineRow::from).collect();
        Ok(Response::new(PlaceOrderResponse {
            order: Some(order_proto(row, lines, vec![placed])),
        }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let id = parse_order_id(&request.get_ref().order_id)?;
        let order = self.load(id).await?;
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let user_id = Uuid::parse_str(&req.user_id)
            .map_err(|_| v.add("user_id", "must be a UUID"))
            .ok();
        let limit = paging::page_size(&mut v, req.page_size);
        let status = match OrderStatus::try_from(req.status) {
            Ok(OrderStatus::Unspecified) => None,
            Ok(OrderStatus::Pending) => Some("pending"),
            Ok(OrderStatus::Confirmed) => Some("confirmed"),
            Ok(OrderStatus::Cancelled) => Some("cancelled"),
            Err(_) => {
                v.add("status", "is not an OrderStatus");
                None
            }
        };
        // A token is bound to the user and the status filter; it is only
        // checked against a valid user_id (a bad one is the thing to fix).
        const LIST: &[u8] = b"orders/ListOrders";
        let status_filter = req.status.to_be_bytes();
        let before = match &user_id {
            Some(user_id) => paging::page_start(
                &mut v,
                &req.page_token,
                &[LIST, user_id.as_bytes(), &status_filter],
            ),
            None => None,
        };
        v.into_result()?;
        let user_id = user_id.expect("checked");
        let mut rows = store::list_full(&self.pool, user_id, status, before, limit + 1)
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            let last_id = rows.last().expect("limit >= 1").order.order_id;
            paging::next_page_token(last_id, &[LIST, user_id.as_bytes(), &status_filter])
        } else {
            String::new()
        };
        let orders = rows
            .into_iter()
            .map(|full| order_proto(full.order, full.lines, full.steps))
            .collect();
        Ok(Response::new(ListOrdersResponse {
            orders,
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let req = request.into_inner();
        let id = parse_order_id(&req.order_id)?;
        let detail = req.detail.trim();
        if detail.chars().count() > 500 {
            return Err(ServiceError::invalid("detail", "must be at most 500 characters").into());
        }
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let order = store::lock(&mut tx, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::not_found("order", id))?;
        if order.status != "cancelled" {
            saga::cancel(
                &mut tx,
                &order,
                CancellationReason::UserRequested,
                detail,
                None,
                chrono::Utc::now(),
            )
            .await
            .map_err(|e| match e.downcast::<sqlx::Error>() {
                Ok(db) => ServiceError::from(db),
                Err(e) => ServiceError::Internal(e),
            })?;
        }
        shop_runtime::db::commit(tx)
            .await
            .map_err(ServiceError::from)?;
        self.events.wake_relay();
        let order = self.load(id).await?;
        Ok(Response::new(CancelOrderResponse { order: Some(order) }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let (dead_letters, next_page_token) =
            shop_events::dead_letters::list(&self.pool, req.page_size, &req.page_token).await?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }
}
