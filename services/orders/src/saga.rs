//! The order saga, seen from the orders service: the handlers of inventory's
//! and payments' events, the confirm and cancel transitions, and the sweeper
//! that cancels sagas that stopped making progress.
//!
//! State machine of an order (every change under the order's row lock, in
//! the same transaction as the step it records and the event it emits):
//!
//! ```text
//! PENDING --StockReserved--> PENDING (step recorded, deadline pushed back)
//! PENDING --PaymentCaptured--> CONFIRMED            (emits OrderConfirmed)
//! PENDING --StockRejected | PaymentDeclined | timeout | user--> CANCELLED
//! CONFIRMED --user--> CANCELLED                     (emits OrderCancelled)
//! CANCELLED --anything--> CANCELLED (steps recorded; payments refunds a
//!                                    capture that lands late)
//! ```

use crate::store::{self, OrderRow};
use chrono::{DateTime, Utc};
use shop_events::{Apply, Events, On, Received, outbox};
use shop_proto::shop::common::v1::{CancellationReason, Money};
use shop_proto::shop::events::v1::{
    Envelope, OrderCancelled, OrderConfirmed, OrderLine, PaymentCaptured, PaymentDeclined,
    PaymentRefunded, StockRejected, StockReserved,
};
use shop_proto::shop::orders::v1::{SagaStepStatus, SagaStepType};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PRODUCER: &str = "orders";

/// The lines and total of an order, as events carry them.
async fn event_lines(
    conn: &mut PgConnection,
    order: &OrderRow,
) -> sqlx::Result<(Vec<OrderLine>, Money)> {
    let lines = store::lines(conn, order.order_id)
        .await?
        .into_iter()
        .map(|l| OrderLine {
            product_id: l.product_id.to_string(),
            quantity: l.quantity,
            unit_price: Some(Money {
                amount_minor: l.unit_price_minor,
                currency_code: order.currency.clone(),
            }),
        })
        .collect();
    let total = Money {
        amount_minor: order.total_minor,
        currency_code: order.currency.clone(),
    };
    Ok((lines, total))
}

fn reason_text(reason: CancellationReason) -> &'static str {
    match reason {
        CancellationReason::UserRequested => "cancelled at the user's request",
        CancellationReason::OutOfStock => "out of stock",
        CancellationReason::PaymentDeclined => "payment declined",
        CancellationReason::SagaTimeout => "the saga made no progress in time",
        CancellationReason::PaymentMismatch => "the payment did not match the order's total",
        CancellationReason::Unspecified => "cancelled",
    }
}

/// Cancels `order` (which must be locked and not cancelled) and emits
/// OrderCancelled: inventory releases, payments refunds.
pub(crate) async fn cancel(
    conn: &mut PgConnection,
    order: &OrderRow,
    reason: CancellationReason,
    detail: &str,
    cause: Option<&Envelope>,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    store::set_cancelled(conn, order.order_id, reason as i32, detail).await?;
    let (lines, total) = event_lines(conn, order).await?;
    let envelope = outbox::enqueue(
        conn,
        PRODUCER,
        &order.order_id.to_string(),
        &OrderCancelled {
            order_id: order.order_id.to_string(),
            user_id: order.user_id.to_string(),
            reason: reason as i32,
            detail: detail.to_string(),
            lines,
            total: Some(total),
        },
        cause,
    )
    .await?;
    let text = if detail.is_empty() {
        reason_text(reason).to_string()
    } else {
        format!("{}: {detail}", reason_text(reason))
    };
    store::add_step(
        conn,
        order.order_id,
        SagaStepType::CancelOrder as i32,
        SagaStepStatus::Succeeded as i32,
        &text,
        envelope.event_id.parse().ok(),
        at,
    )
    .await?;
    tracing::info!(order_id = %order.order_id, reason = reason.as_str_name(), "order cancelled");
    Ok(())
}

/// How `captured` differs from `order`'s total, if it does.
fn capture_mismatch(captured: &PaymentCaptured, order: &OrderRow) -> Option<String> {
    let (amount, currency) = captured
        .amount
        .as_ref()
        .map_or((0, ""), |m| (m.amount_minor, m.currency_code.as_str()));
    (amount != order.total_minor || currency != order.currency).then(|| {
        format!(
            "captured {amount} {currency}, the order totals {} {}",
            order.total_minor, order.currency
        )
    })
}

/// Handles inventory's and payments' events for the saga: each event type
/// it is registered for is a step, succeeded or failed.
pub(crate) struct SagaHandler {
    pub(crate) timeout: Duration,
}

/// What one event says about an order's saga.
struct Step {
    order_id: String,
    step: SagaStepType,
    status: SagaStepStatus,
    reason: String,
}

impl Step {
    fn succeeded(order_id: String, step: SagaStepType) -> Self {
        Self {
            order_id,
            step,
            status: SagaStepStatus::Succeeded,
            reason: String::new(),
        }
    }

    /// A failed step, with the event's detail, else its reason's name.
    fn failed(order_id: String, step: SagaStepType, detail: String, reason: &str) -> Self {
        Self {
            order_id,
            step,
            status: SagaStepStatus::Failed,
            reason: if detail.is_empty() {
                reason.to_string()
            } else {
                detail
            },
        }
    }
}

fn parse_order_id(raw: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| anyhow::anyhow!("event names order {raw:?}, not a UUID"))
}

#[async_trait::async_trait]
impl On<StockReserved> for SagaHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: StockReserved,
        event: &Received,
    ) -> anyhow::Result<()> {
        let step = Step::succeeded(e.order_id, SagaStepType::ReserveStock);
        self.advance(apply.tx().await?, event, step, None).await
    }
}

#[async_trait::async_trait]
impl On<StockRejected> for SagaHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: StockRejected,
        event: &Received,
    ) -> anyhow::Result<()> {
        let reason = e.reason().as_str_name();
        let step = Step::failed(e.order_id, SagaStepType::ReserveStock, e.detail, reason);
        self.advance(apply.tx().await?, event, step, None).await
    }
}

#[async_trait::async_trait]
impl On<PaymentCaptured> for SagaHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: PaymentCaptured,
        event: &Received,
    ) -> anyhow::Result<()> {
        let step = Step::succeeded(e.order_id.clone(), SagaStepType::CapturePayment);
        self.advance(apply.tx().await?, event, step, Some(&e)).await
    }
}

#[async_trait::async_trait]
impl On<PaymentDeclined> for SagaHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: PaymentDeclined,
        event: &Received,
    ) -> anyhow::Result<()> {
        let reason = e.reason().as_str_name();
        let step = Step::failed(e.order_id, SagaStepType::CapturePayment, e.detail, reason);
        self.advance(apply.tx().await?, event, step, None).await
    }
}

#[async_trait::async_trait]
impl On<PaymentRefunded> for SagaHandler {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: PaymentRefunded,
        event: &Received,
    ) -> anyhow::Result<()> {
        let step = Step::succeeded(e.order_id, SagaStepType::RefundPayment);
        self.advance(apply.tx().await?, event, step, None).await
    }
}

impl SagaHandler {
    /// Records `step` on its order's timeline and moves a pending saga on
    /// (`captured` is the capture a succeeded payment step reports).
    async fn advance(
        &self,
        tx: &mut PgConnection,
        event: &Received,
        step: Step,
        captured: Option<&PaymentCaptured>,
    ) -> anyhow::Result<()> {
        let at = event.occurred_at();
        let cause = Some(&event.envelope);
        let deadline = Utc::now() + self.timeout;
        let Step {
            order_id,
            step,
            status,
            reason,
        } = step;
        let order_id = parse_order_id(&order_id)?;
        let Some(order) = store::lock(tx, order_id).await? else {
            anyhow::bail!("event {} names unknown order {order_id}", event.event_id);
        };
        let recorded = store::NewStep {
            step: step as i16,
            status: status as i16,
            reason: &reason,
            event_id: Some(event.event_id),
            occurred_at: at,
        };
        if !order.is_pending() {
            // Late news for a finished saga: recorded on the timeline only.
            // (A capture that lands after a cancellation is refunded by
            // payments when it sees OrderCancelled.)
            store::record(tx, order_id, &recorded).await?;
            return Ok(());
        }
        match (step, status, captured) {
            (SagaStepType::ReserveStock, SagaStepStatus::Succeeded, _) => {
                store::progressed(tx, order_id, deadline, &[recorded]).await?;
            }
            (SagaStepType::ReserveStock, SagaStepStatus::Failed, _) => {
                store::record(tx, order_id, &recorded).await?;
                cancel(
                    tx,
                    &order,
                    CancellationReason::OutOfStock,
                    &reason,
                    cause,
                    at,
                )
                .await?;
            }
            (SagaStepType::CapturePayment, SagaStepStatus::Succeeded, Some(captured)) => {
                confirm(tx, &order, captured, recorded, cause, at).await?;
            }
            (SagaStepType::CapturePayment, SagaStepStatus::Failed, _) => {
                store::record(tx, order_id, &recorded).await?;
                cancel(
                    tx,
                    &order,
                    CancellationReason::PaymentDeclined,
                    &reason,
                    cause,
                    at,
                )
                .await?;
            }
            _ => store::record(tx, order_id, &recorded).await?,
        }
        Ok(())
    }
}

/// Confirms `order` (locked, pending) on `captured`, or cancels it when the
/// capture is not the order's total.
async fn confirm(
    tx: &mut PgConnection,
    order: &OrderRow,
    captured: &PaymentCaptured,
    capture: store::NewStep<'_>,
    cause: Option<&Envelope>,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let order_id = order.order_id;
    if let Some(mismatch) = capture_mismatch(captured, order) {
        // Never confirmed on money that is not the order's: cancelled, and
        // payments refunds what it captured.
        tracing::error!(
            order_id = %order_id,
            payment_id = %captured.payment_id,
            %mismatch,
            "capture does not match the order; cancelling"
        );
        store::record(tx, order_id, &capture).await?;
        return cancel(
            tx,
            order,
            CancellationReason::PaymentMismatch,
            &mismatch,
            cause,
            at,
        )
        .await;
    }
    let payment_id = Uuid::parse_str(&captured.payment_id)
        .map_err(|_| anyhow::anyhow!("payment id {:?}", captured.payment_id))?;
    let (lines, total) = event_lines(tx, order).await?;
    let envelope = outbox::enqueue(
        tx,
        PRODUCER,
        &order_id.to_string(),
        &OrderConfirmed {
            order_id: order_id.to_string(),
            user_id: order.user_id.to_string(),
            lines,
            total: Some(total),
            payment_id: payment_id.to_string(),
        },
        cause,
    )
    .await?;
    let confirmed = store::NewStep {
        step: SagaStepType::ConfirmOrder as i16,
        status: SagaStepStatus::Succeeded as i16,
        reason: "",
        event_id: envelope.event_id.parse().ok(),
        occurred_at: at,
    };
    store::set_confirmed(tx, order_id, payment_id, &[capture, confirmed]).await?;
    tracing::info!(order_id = %order_id, "order confirmed");
    Ok(())
}

/// Cancels PENDING sagas whose deadline passed.
pub(crate) struct Sweeper {
    pub(crate) pool: PgPool,
    pub(crate) events: Events,
    pub(crate) interval: Duration,
}

impl Sweeper {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(cancelled = n, "timed-out sagas cancelled");
                    self.events.wake_relay();
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "saga timeout sweep failed"),
            }
        }
    }

    async fn sweep(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let overdue = store::lock_overdue(&mut tx, 100).await?;
        for order_id in &overdue {
            let order = store::lock(&mut tx, *order_id)
                .await?
                .expect("locked rows exist");
            cancel(
                &mut tx,
                &order,
                CancellationReason::SagaTimeout,
                "",
                None,
                Utc::now(),
            )
            .await?;
        }
        shop_runtime::db::commit(tx).await?;
        Ok(overdue.len())
    }
}
