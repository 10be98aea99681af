//! Typed handlers: what a consumer does with an event of one type.
//!
//! A service implements [`On<E>`] once per event type it handles and
//! registers it with [`crate::ConsumerSpec::on`]. The registration is the
//! dispatch: the consumer decodes the payload as `E` and calls that
//! implementation, so an event type registered without a handler does not
//! compile, and no handler matches event types by hand.
//!
//! ```compile_fail,E0277
//! use shop_events::{Apply, ConsumerSpec, On, Received, catalog::ORDERS};
//! use shop_proto::shop::events::v1::{OrderCancelled, OrderPlaced};
//! use std::sync::Arc;
//!
//! struct Reserve;
//!
//! #[async_trait::async_trait]
//! impl On<OrderPlaced> for Reserve {
//!     async fn on(&self, _: &mut Apply<'_>, _: OrderPlaced, _: &Received) -> anyhow::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! // `Reserve` handles OrderPlaced only: registering it for OrderCancelled
//! // is refused by the compiler, not dead-lettered at run time.
//! let _ = ConsumerSpec::new("inventory-orders", ORDERS)
//!     .on::<OrderPlaced>(Arc::new(Reserve))
//!     .on::<OrderCancelled>(Arc::new(Reserve));
//! ```
//!
//! The same registration with the missing implementation added compiles:
//!
//! ```
//! use shop_events::{Apply, ConsumerSpec, On, Received, catalog::ORDERS};
//! use shop_proto::shop::events::v1::{OrderCancelled, OrderPlaced};
//! use std::sync::Arc;
//!
//! struct Reserve;
//!
//! #[async_trait::async_trait]
//! impl On<OrderPlaced> for Reserve {
//!     async fn on(&self, _: &mut Apply<'_>, _: OrderPlaced, _: &Received) -> anyhow::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! #[async_trait::async_trait]
//! impl On<OrderCancelled> for Reserve {
//!     async fn on(&self, _: &mut Apply<'_>, _: OrderCancelled, _: &Received) -> anyhow::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! let _ = ConsumerSpec::new("inventory-orders", ORDERS)
//!     .on::<OrderPlaced>(Arc::new(Reserve))
//!     .on::<OrderCancelled>(Arc::new(Reserve));
//! ```

use crate::catalog::DomainEvent;
use crate::envelope::Received;
use crate::inbox::{Apply, Handler};
use std::marker::PhantomData;
use std::sync::Arc;

/// Applies events of type `E`.
#[async_trait::async_trait]
pub trait On<E: DomainEvent>: Send + Sync + 'static {
    /// Applies `event` (decoded from `received`'s payload), writing
    /// through [`Apply::tx`]. Errors are handled as for [`Handler::handle`].
    async fn on(&self, apply: &mut Apply<'_>, event: E, received: &Received) -> anyhow::Result<()>;
}

/// `H`'s handling of `E`, as the consumer calls any handler.
pub(crate) struct Typed<E, H> {
    handler: Arc<H>,
    event: PhantomData<fn() -> E>,
}

impl<E, H> Typed<E, H> {
    pub(crate) fn new(handler: Arc<H>) -> Self {
        Self {
            handler,
            event: PhantomData,
        }
    }
}

#[async_trait::async_trait]
impl<E, H> Handler for Typed<E, H>
where
    E: DomainEvent + Send + 'static,
    H: On<E>,
{
    async fn handle(&self, apply: &mut Apply<'_>, received: &Received) -> anyhow::Result<()> {
        // A payload that does not decode fails the attempt like any handler
        // error (dead-lettered after `max_deliver`).
        let event = received.decode::<E>()?;
        self.handler.on(apply, event, received).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsumerSpec;
    use crate::catalog::ORDERS;
    use shop_proto::shop::events::v1::{OrderCancelled, OrderPlaced};

    struct Both;

    #[async_trait::async_trait]
    impl On<OrderPlaced> for Both {
        async fn on(&self, _: &mut Apply<'_>, _: OrderPlaced, _: &Received) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl On<OrderCancelled> for Both {
        async fn on(
            &self,
            _: &mut Apply<'_>,
            _: OrderCancelled,
            _: &Received,
        ) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_handler_of_both_types_registers_for_both() {
        let both = Arc::new(Both);
        let spec = ConsumerSpec::new("inventory-orders", ORDERS)
            .on::<OrderPlaced>(both.clone())
            .compensation::<OrderCancelled>(both);
        assert_eq!(spec.subjects().len(), 2);
    }
}
