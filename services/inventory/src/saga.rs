//! Inventory's part of the order saga: the `inventory-orders` consumer.
//!
//! Each event is applied in the consumer's transaction (which also records
//! it in the inbox), together with the events it causes (outbox). Beyond the
//! inbox, every effect checks the reservation's state first, so an event
//! applied twice, or out of order, changes nothing the second time.

use crate::domain::{self, Line, ReservationStatus};
use crate::store::{self, Move};
use anyhow::Context as _;
use shop_events::{Apply, ConsumerSpec, On, Received, catalog, outbox};
use shop_proto::shop::common::v1::StockRejectionReason;
use shop_proto::shop::events::v1::{
    OrderCancelled, OrderConfirmed, OrderPlaced, StockLine, StockRejected, StockReleased,
    StockReserved, StockShortfall,
};
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

/// Name of this service as a producer of events.
const PRODUCER: &str = "inventory";

/// The durable consumer of the orders stream: reservations on OrderPlaced,
/// commits on OrderConfirmed, releases (a compensation) on OrderCancelled.
pub fn consumer_spec() -> ConsumerSpec {
    let handler = Arc::new(OrderEventHandler);
    ConsumerSpec::new("inventory-orders", catalog::ORDERS)
        .on::<OrderPlaced>(handler.clone())
        .on::<OrderConfirmed>(handler.clone())
        .compensation::<OrderCancelled>(handler)
        .batched()
}

/// Reserves stock on OrderPlaced, commits it on OrderConfirmed, releases it
/// on OrderCancelled.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderEventHandler;

#[async_trait::async_trait]
impl On<OrderPlaced> for OrderEventHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: OrderPlaced,
        event: &Received,
    ) -> anyhow::Result<()> {
        placed(apply.tx().await?, event, e).await
    }
}

#[async_trait::async_trait]
impl On<OrderConfirmed> for OrderEventHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: OrderConfirmed,
        _: &Received,
    ) -> anyhow::Result<()> {
        confirmed(apply.tx().await?, e).await
    }
}

#[async_trait::async_trait]
impl On<OrderCancelled> for OrderEventHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: OrderCancelled,
        event: &Received,
    ) -> anyhow::Result<()> {
        cancelled(apply.tx().await?, event, e).await
    }
}

fn parse_id(what: &str, raw: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(raw).with_context(|| format!("{what} {raw:?} is not a UUID"))
}

fn stock_lines(lines: &[Line]) -> Vec<StockLine> {
    lines
        .iter()
        .map(|l| StockLine {
            product_id: l.product_id.to_string(),
            quantity: l.quantity,
        })
        .collect()
}

/// All lines or none. A malformed event (which orders never publishes) is
/// an error, so it ends in the dead letters rather than being guessed at.
async fn placed(
    tx: &mut PgConnection,
    event: &Received,
    placed: OrderPlaced,
) -> anyhow::Result<()> {
    let order_id = parse_id("order_id", &placed.order_id)?;
    let user_id = parse_id("user_id", &placed.user_id)?;
    let lines = domain::merge_lines(
        placed
            .lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity)),
    )
    .with_context(|| format!("OrderPlaced for order {order_id}"))?;
    if !store::claim_reservation(tx, order_id, user_id).await? {
        // Reserved, rejected, or cancelled before it got here: nothing to do.
        tracing::debug!(%order_id, "order already has a reservation");
        return Ok(());
    }
    store::insert_lines(tx, order_id, &lines).await?;
    let aggregate = order_id.to_string();

    // Fast path: one conditional update per line, in product order; the
    // first line that does not fit undoes the ones before it (a one-line
    // order has nothing to undo).
    let undo = lines.len() > 1;
    if undo {
        store::savepoint(tx).await?;
    }
    let mut all_fit = true;
    for line in &lines {
        if !store::try_reserve(tx, line).await? {
            all_fit = false;
            break;
        }
    }
    if !all_fit {
        if undo {
            store::rollback_to_savepoint(tx).await?;
        }
        // Decide on locked rows, so the shortfalls reported are the ones
        // that held; if stock arrived in the meantime, reserve after all.
        let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
        let available = store::lock_available(tx, &ids).await?;
        if let Some(rejection) = domain::assess(&lines, &available) {
            store::mark_rejected(tx, order_id, rejection.reason, &rejection.detail).await?;
            let reason = match rejection.reason {
                domain::RejectionReason::InsufficientStock => {
                    StockRejectionReason::InsufficientStock
                }
                domain::RejectionReason::UnknownProduct => StockRejectionReason::UnknownProduct,
            };
            let rejected = StockRejected {
                order_id: aggregate.clone(),
                user_id: user_id.to_string(),
                reason: reason as i32,
                detail: rejection.detail.clone(),
                shortfalls: rejection
                    .shortfalls
                    .iter()
                    .map(|s| StockShortfall {
                        product_id: s.product_id.to_string(),
                        requested_quantity: s.requested,
                        available_quantity: s.available,
                    })
                    .collect(),
            };
            outbox::enqueue(tx, PRODUCER, &aggregate, &rejected, Some(&event.envelope)).await?;
            tracing::info!(%order_id, detail = %rejection.detail, "stock rejected");
            return Ok(());
        }
        for line in &lines {
            anyhow::ensure!(
                store::try_reserve(tx, line).await?,
                "a locked stock row changed under us"
            );
        }
    }

    let reserved = StockReserved {
        order_id: aggregate.clone(),
        user_id: user_id.to_string(),
        lines: stock_lines(&lines),
        total: placed.total.clone(),
        // Sealed for payments; inventory cannot read it. (A clear token
        // only comes in events published before tokens were sealed.)
        payment_token: placed.payment_token.clone(),
        sealed_payment_token: placed.sealed_payment_token.clone(),
    };
    outbox::enqueue(tx, PRODUCER, &aggregate, &reserved, Some(&event.envelope)).await?;
    tracing::info!(%order_id, lines = lines.len(), "stock reserved");
    Ok(())
}

/// reserved -> committed: the quantities move from `reserved` to `sold`.
async fn confirmed(tx: &mut PgConnection, confirmed: OrderConfirmed) -> anyhow::Result<()> {
    let order_id = parse_id("order_id", &confirmed.order_id)?;
    if store::commit_reservation(tx, order_id).await? {
        tracing::info!(%order_id, "reservation committed");
        return Ok(());
    }
    match store::lock_reservation(tx, order_id).await? {
        Some((status, _)) => {
            tracing::debug!(%order_id, ?status, "OrderConfirmed for a reservation not held; nothing to do");
        }
        None => {
            tracing::warn!(%order_id, "OrderConfirmed for an order inventory never reserved");
        }
    }
    Ok(())
}

/// Returns whatever the order holds to `available`; an order not seen yet
/// gets a tombstone so that its OrderPlaced, when it comes, reserves
/// nothing.
async fn cancelled(
    tx: &mut PgConnection,
    event: &Received,
    cancelled: OrderCancelled,
) -> anyhow::Result<()> {
    let order_id = parse_id("order_id", &cancelled.order_id)?;
    let (movement, was_committed, user_id) = match store::lock_reservation(tx, order_id).await? {
        Some((ReservationStatus::Reserved, user_id)) => (Move::ReleaseReserved, false, user_id),
        Some((ReservationStatus::Committed, user_id)) => (Move::ReleaseSold, true, user_id),
        Some((status, _)) => {
            tracing::debug!(%order_id, ?status, "OrderCancelled for a reservation not held; nothing to do");
            return Ok(());
        }
        None => {
            let user_id = parse_id("user_id", &cancelled.user_id)?;
            store::insert_tombstone(tx, order_id, user_id).await?;
            tracing::info!(%order_id, "order cancelled before it was placed here; tombstone");
            return Ok(());
        }
    };
    let lines = store::lines_of(tx, order_id).await?;
    store::move_lines(tx, &lines, movement).await?;
    store::set_status(tx, order_id, ReservationStatus::Released).await?;
    let aggregate = order_id.to_string();
    let released = StockReleased {
        order_id: aggregate.clone(),
        user_id: user_id.to_string(),
        lines: stock_lines(&lines),
        was_committed,
    };
    outbox::enqueue(tx, PRODUCER, &aggregate, &released, Some(&event.envelope)).await?;
    tracing::info!(%order_id, was_committed, "stock released");
    Ok(())
}
