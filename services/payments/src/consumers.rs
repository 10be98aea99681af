//! The two consumers: charges on StockReserved, refunds on OrderCancelled.
//!
//! They run concurrently, so each takes the order's advisory lock first
//! in its transaction: for one order, one handler at a time, and the second
//! sees what the first committed. That is what makes the race between a
//! capture and a cancellation come out right in either arrival order:
//!
//! - StockReserved first: the payment is captured; OrderCancelled then finds
//!   it captured and refunds it.
//! - OrderCancelled first: the order is recorded in `cancelled_orders`;
//!   StockReserved then finds it there and charges nothing.
//!
//! Both call the card processor first, outside any transaction or lock of
//! ours, under the order's idempotency key (see `processor`); the processor
//! settles a charge racing a cancellation (the cancellation voids the key
//! or refunds the capture), and a StockReserved that finds the order
//! cancelled records the refund the processor already made.
//!
//! Every effect and the events it publishes are written in the transaction
//! that also records the event in the inbox (see `shop_events::inbox`).

use crate::domain::{self, Charge, DeclineReason};
use crate::processor::{Answer, ChargeRequest, Processor};
use crate::store::{self, NewPayment, PaymentRow};
use anyhow::Context as _;
use shop_events::{Apply, ConsumerSpec, On, Received, catalog, outbox};
use shop_proto::shop::common::v1::{CancellationReason, Money, PaymentDeclineReason};
use shop_proto::shop::events::v1::{
    OrderCancelled, PaymentCaptured, PaymentDeclined, PaymentRefunded, StockReserved,
};
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

/// The publisher name on outgoing envelopes.
const SERVICE: &str = "payments";

/// `payments-inventory`: StockReserved from the INVENTORY stream.
pub(crate) fn charges_spec(charges: Charges) -> ConsumerSpec {
    ConsumerSpec::new("payments-inventory", catalog::INVENTORY)
        .on::<StockReserved>(Arc::new(charges))
}

/// `payments-orders`: OrderCancelled from the ORDERS stream (refunds are
/// compensations).
pub(crate) fn refunds_spec(refunds: Refunds) -> ConsumerSpec {
    ConsumerSpec::new("payments-orders", catalog::ORDERS)
        .compensation::<OrderCancelled>(Arc::new(refunds))
}

pub(crate) fn decline_reason_to_proto(r: DeclineReason) -> PaymentDeclineReason {
    match r {
        DeclineReason::CardDeclined => PaymentDeclineReason::CardDeclined,
        DeclineReason::InvalidToken => PaymentDeclineReason::InvalidToken,
        DeclineReason::ProcessorUnavailable => PaymentDeclineReason::ProcessorUnavailable,
    }
}

// === impl Charges ===

/// Charges an order once its stock is reserved.
pub(crate) struct Charges {
    pub(crate) processor: Processor,
    /// Open the payment tokens orders sealed.
    pub(crate) tokens: std::sync::Arc<shop_events::sealed::SealingKeys>,
}

/// The payment token of `reserved`: opened from its seal, or, for an event
/// published before tokens were sealed, as it came. `Err` when a seal does
/// not open (forged, or for another order): nothing can be charged.
fn payment_token(
    tokens: &shop_events::sealed::SealingKeys,
    reserved: &StockReserved,
) -> Result<String, shop_events::sealed::OpenError> {
    if reserved.sealed_payment_token.is_empty() {
        return Ok(reserved.payment_token.clone());
    }
    tokens.open(&reserved.sealed_payment_token, &reserved.order_id)
}

#[async_trait::async_trait]
impl On<StockReserved> for Charges {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        reserved: StockReserved,
        event: &Received,
    ) -> anyhow::Result<()> {
        let request = domain::charge_request(
            &reserved.order_id,
            &reserved.user_id,
            reserved
                .total
                .as_ref()
                .map(|m| (m.amount_minor, m.currency_code.as_str())),
        )
        .map_err(|e| anyhow::anyhow!("malformed StockReserved: {e}"))?;
        let order_id = request.order_id;
        let token = match payment_token(&self.tokens, &reserved) {
            Ok(token) => token,
            // A key payments does not hold yet: retried (and dead-lettered
            // if it never comes), as a transient failure.
            Err(e @ shop_events::sealed::OpenError::UnknownKey(_)) => {
                anyhow::bail!("opening the payment token: {e}")
            }
            // Forged or another order's: declined as a token the processor
            // would not know, so the saga cancels the order.
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "payment token does not open");
                String::new()
            }
        };

        // The processor is another system: called before our transaction
        // opens and with no lock of ours held, so a slow card holds nothing
        // but its own order. The order id is the idempotency key: a
        // redelivery (after a crash right after the capture, say) gets the
        // original charge back, and no second one.
        let answer = self
            .processor
            .charge(ChargeRequest {
                key: order_id,
                token: &token,
                amount_minor: request.amount_minor,
                currency: &request.currency,
                attempt: event.delivered,
            })
            .await
            .context("calling the card processor")?;
        fail::fail_point!("payments::charge::after-processor", |_| {
            // A crash at exactly this place, for the crash test: the
            // processor answered, nothing of ours is committed.
            tracing::error!(%order_id, "fail point: aborting after the processor answered");
            std::process::abort()
        });
        let (status, amount_minor, decline) = match answer {
            // Nothing written: the delivery is nak'ed and JetStream delivers
            // the event again after a backoff.
            Answer::Charge(Charge::RetryLater(why)) => anyhow::bail!("{why}"),
            // What the processor captured, which orders reconciles with the
            // order's total (an issuer may approve less).
            Answer::Charge(Charge::Captured { amount_minor }) => ("captured", amount_minor, None),
            Answer::Charge(Charge::Declined { reason, detail }) => {
                ("declined", request.amount_minor, Some((reason, detail)))
            }
            Answer::Voided => {
                apply.tx().await?;
                tracing::info!(%order_id, "order was cancelled before it was charged; nothing charged");
                return Ok(());
            }
        };

        let tx = apply.tx().await?;
        store::lock_order(tx, &domain::order_lock_key(order_id)).await?;
        let payment = store::insert_payment(
            tx,
            NewPayment {
                payment_id: Uuid::now_v7(),
                order_id,
                user_id: request.user_id,
                amount_minor,
                currency: &request.currency,
                token: &token,
                status,
                decline_reason: decline.as_ref().map(|(r, _)| r.as_str()),
                detail: decline.as_ref().map_or("", |(_, d)| d.as_str()),
                attempt_count: i32::try_from(event.delivered).unwrap_or(i32::MAX).max(1),
            },
        )
        .await
        .context("storing the payment")?;
        let Some(payment) = payment else {
            tracing::info!(%order_id, "order already has a payment; nothing to record");
            return Ok(());
        };

        let payment_id = payment.payment_id.to_string();
        let amount = Some(Money {
            amount_minor: payment.amount_minor,
            currency_code: payment.currency.clone(),
        });
        match decline {
            None => {
                outbox::enqueue(
                    tx,
                    SERVICE,
                    &payment_id,
                    &PaymentCaptured {
                        payment_id: payment_id.clone(),
                        order_id: order_id.to_string(),
                        user_id: payment.user_id.to_string(),
                        amount,
                    },
                    Some(&event.envelope),
                )
                .await?;
                tracing::info!(%order_id, %payment_id, "payment captured");
                // Cancelled while the processor was charging: the
                // cancellation refunded the capture at the processor and
                // found nothing of ours to refund, so the refund is recorded
                // here.
                if store::is_cancelled(tx, order_id).await? {
                    record_refund(
                        tx,
                        &payment,
                        "order cancelled while it was being charged",
                        event,
                    )
                    .await?;
                }
            }
            Some((reason, detail)) => {
                outbox::enqueue(
                    tx,
                    SERVICE,
                    &payment_id,
                    &PaymentDeclined {
                        payment_id: payment_id.clone(),
                        order_id: order_id.to_string(),
                        user_id: payment.user_id.to_string(),
                        amount,
                        reason: decline_reason_to_proto(reason) as i32,
                        detail,
                    },
                    Some(&event.envelope),
                )
                .await?;
                tracing::info!(%order_id, %payment_id, reason = reason.as_str(), "payment declined");
            }
        }
        Ok(())
    }
}

/// Refunds `payment` in full and publishes PaymentRefunded, caused by
/// `event`.
async fn record_refund(
    tx: &mut PgConnection,
    payment: &PaymentRow,
    reason: &str,
    event: &Received,
) -> anyhow::Result<()> {
    let refund_id = Uuid::now_v7();
    store::refund(tx, refund_id, payment, reason)
        .await
        .context("storing the refund")?;
    let payment_id = payment.payment_id.to_string();
    outbox::enqueue(
        tx,
        SERVICE,
        &payment_id,
        &PaymentRefunded {
            refund_id: refund_id.to_string(),
            payment_id: payment_id.clone(),
            order_id: payment.order_id.to_string(),
            user_id: payment.user_id.to_string(),
            amount: Some(Money {
                amount_minor: payment.amount_minor,
                currency_code: payment.currency.clone(),
            }),
        },
        Some(&event.envelope),
    )
    .await?;
    tracing::info!(order_id = %payment.order_id, %payment_id, %refund_id, "payment refunded");
    Ok(())
}

// === impl Refunds ===

/// Remembers cancelled orders and refunds what was captured for them.
pub(crate) struct Refunds {
    pub(crate) processor: Processor,
}

fn refund_reason(cancelled: &OrderCancelled) -> String {
    let why = match CancellationReason::try_from(cancelled.reason) {
        Ok(CancellationReason::UserRequested) => "user requested",
        Ok(CancellationReason::OutOfStock) => "out of stock",
        Ok(CancellationReason::PaymentDeclined) => "payment declined",
        Ok(CancellationReason::SagaTimeout) => "saga timeout",
        Ok(CancellationReason::PaymentMismatch) => "payment did not match the order",
        Ok(CancellationReason::Unspecified) | Err(_) => "unspecified reason",
    };
    if cancelled.detail.is_empty() {
        format!("order cancelled: {why}")
    } else {
        format!("order cancelled: {why} ({})", cancelled.detail)
    }
}

#[async_trait::async_trait]
impl On<OrderCancelled> for Refunds {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        cancelled: OrderCancelled,
        event: &Received,
    ) -> anyhow::Result<()> {
        let order_id = Uuid::parse_str(&cancelled.order_id).with_context(|| {
            format!(
                "malformed OrderCancelled: order_id {:?} is not a UUID",
                cancelled.order_id
            )
        })?;
        // At the processor first, outside our transaction: a capture under
        // the order's key is refunded, or the key is voided so that a
        // charge still in flight captures nothing.
        let at_processor = self
            .processor
            .cancel(order_id)
            .await
            .context("cancelling at the card processor")?;

        let tx = apply.tx().await?;
        store::lock_order(tx, &domain::order_lock_key(order_id)).await?;
        store::mark_cancelled(tx, order_id).await?;
        let Some(payment) = store::captured_payment(tx, order_id).await? else {
            tracing::info!(%order_id, ?at_processor, "order cancelled; nothing of ours captured to refund");
            return Ok(());
        };
        record_refund(tx, &payment, &refund_reason(&cancelled), event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_reasons_name_the_cancellation() {
        let c = OrderCancelled {
            reason: CancellationReason::UserRequested as i32,
            ..Default::default()
        };
        assert_eq!(refund_reason(&c), "order cancelled: user requested");
        let c = OrderCancelled {
            reason: CancellationReason::SagaTimeout as i32,
            detail: "no progress in 30s".into(),
            ..Default::default()
        };
        assert_eq!(
            refund_reason(&c),
            "order cancelled: saga timeout (no progress in 30s)"
        );
    }
}
