//! Events in, projections out: [`Projector`], the one handler behind every
//! analytics consumer.

use crate::domain::{Fact, InvalidEvent, Source};
use crate::store;
use anyhow::Context as _;
use shop_events::catalog::{INVENTORY, ORDERS, PAYMENTS, USERS};
use shop_events::{Apply, ConsumerSpec, DomainEvent, On, Received, StreamDef};
use shop_proto::shop::events::v1::{
    OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    StockRejected, StockReleased, StockReserved, UserRegistered,
};
use std::sync::Arc;

/// Applies order, inventory, payment and user events to the projections.
///
/// Idempotent on its own, beside the consumer inbox: an event id already in
/// `applied_events` changes nothing, so a replay into a database that has
/// the events (under another durable consumer name) changes nothing either.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Projector;

/// An event analytics projects: the fact it states.
trait Projected: DomainEvent + Send + 'static {
    fn fact(&self) -> Result<Fact, InvalidEvent>;
}

macro_rules! projected {
    ($($event:ident => $fact:ident),* $(,)?) => {$(
        impl Projected for $event {
            fn fact(&self) -> Result<Fact, InvalidEvent> {
                Fact::$fact(self)
            }
        }
    )*};
}

projected! {
    OrderPlaced => order_placed,
    OrderConfirmed => order_confirmed,
    OrderCancelled => order_cancelled,
    StockReserved => stock_reserved,
    StockRejected => stock_rejected,
    StockReleased => stock_released,
    PaymentCaptured => payment_captured,
    PaymentDeclined => payment_declined,
    PaymentRefunded => payment_refunded,
    UserRegistered => user_registered,
}

/// The consumer `name` of `stream`, every projected event type of the
/// stream registered to `projector`.
pub fn consumer_spec(name: impl Into<String>, stream: StreamDef) -> ConsumerSpec {
    let spec = ConsumerSpec::new(name, stream).batched();
    let p = &Arc::new(Projector);
    match stream.name {
        n if n == ORDERS.name => spec
            .on::<OrderPlaced>(p.clone())
            .on::<OrderConfirmed>(p.clone())
            .on::<OrderCancelled>(p.clone()),
        n if n == INVENTORY.name => spec
            .on::<StockReserved>(p.clone())
            .on::<StockRejected>(p.clone())
            .on::<StockReleased>(p.clone()),
        n if n == PAYMENTS.name => spec
            .on::<PaymentCaptured>(p.clone())
            .on::<PaymentDeclined>(p.clone())
            .on::<PaymentRefunded>(p.clone()),
        n if n == USERS.name => spec.on::<UserRegistered>(p.clone()),
        other => panic!("analytics projects no events of stream {other}"),
    }
}

#[async_trait::async_trait]
impl<E: Projected> On<E> for Projector {
    async fn on(&self, apply: &mut Apply<'_>, e: E, event: &Received) -> anyhow::Result<()> {
        let fact = e
            .fact()
            .with_context(|| format!("{} {}", event.envelope.event_type, event.event_id))?;
        let tx = apply.tx().await?;
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
