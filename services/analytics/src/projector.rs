//! Events in, projections out: [`Projector`], the one handler behind every
//! analytics consumer.

use crate::domain::{Fact, Source};
use crate::store;
use anyhow::Context as _;
use shop_events::{Apply, Handler, Received};
use shop_proto::shop::events::v1::{
    OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    StockRejected, StockReleased, StockReserved, UserRegistered,
};

/// Applies order, inventory, payment and user events to the projections;
/// ignores other event types.
///
/// Idempotent on its own, beside the consumer inbox: an event id already in
/// `applied_events` changes nothing, so a replay into a database that has
/// the events (under another durable consumer name) changes nothing either.
#[derive(Debug, Clone, Copy, Default)]
pub struct Projector;

/// The fact `event` states, or `None` for an event type analytics does not
/// project.
fn fact(event: &Received) -> anyhow::Result<Option<Fact>> {
    let fact = if event.is::<OrderPlaced>() {
        Fact::order_placed(&event.decode()?)
    } else if event.is::<OrderConfirmed>() {
        Fact::order_confirmed(&event.decode()?)
    } else if event.is::<OrderCancelled>() {
        Fact::order_cancelled(&event.decode()?)
    } else if event.is::<StockReserved>() {
        Fact::stock_reserved(&event.decode()?)
    } else if event.is::<StockRejected>() {
        Fact::stock_rejected(&event.decode()?)
    } else if event.is::<StockReleased>() {
        Fact::stock_released(&event.decode()?)
    } else if event.is::<PaymentCaptured>() {
        Fact::payment_captured(&event.decode()?)
    } else if event.is::<PaymentDeclined>() {
        Fact::payment_declined(&event.decode()?)
    } else if event.is::<PaymentRefunded>() {
        Fact::payment_refunded(&event.decode()?)
    } else if event.is::<UserRegistered>() {
        Fact::user_registered(&event.decode()?)
    } else {
        return Ok(None);
    };
    fact.map(Some)
        .with_context(|| format!("{} {}", event.envelope.event_type, event.event_id))
}

#[async_trait::async_trait]
impl Handler for Projector {
    async fn handle(&self, apply: &mut Apply<'_>, event: &Received) -> anyhow::Result<()> {
        let tx = apply.tx().await?;
        let Some(fact) = fact(event)? else {
            tracing::debug!(event_type = %event.envelope.event_type, "not projected");
            return Ok(());
        };
        // The event's own time, never the clock: a rebuild must see the
        // same times as the live run.
        let occurred_at = event
            .envelope
            .occur_time
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
            .with_context(|| format!("event {} has no valid occur_time", event.event_id))?;
        let source = Source {
            event_id: event.event_id,
            occurred_at,
        };
        if !store::record_event(&mut *tx, source, &event.envelope.event_type).await? {
            tracing::debug!("already projected");
            return Ok(());
        }
        store::apply(tx, source, &fact).await?;
        Ok(())
    }
}
