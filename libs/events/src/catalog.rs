//! Every domain event: its protobuf type, its subject, its stream.
//!
//! Streams are laid out per publishing service: `ORDERS` holds
//! `shop.orders.>`, `INVENTORY` holds `shop.inventory.>`, and so on. A
//! subject is `shop.<service>.<event_in_snake_case>`.

use crate::settings::EventsSettings;
use anyhow::Context as _;
use async_nats::jetstream;
use shop_proto::shop::events::v1 as pb;

/// A JetStream stream and the subjects it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDef {
    /// Stream name (`ORDERS`).
    pub name: &'static str,
    /// Subject filter (`shop.orders.>`).
    pub subjects: &'static str,
}

/// Events published by the orders service.
pub const ORDERS: StreamDef = StreamDef {
    name: "ORDERS",
    subjects: "shop.orders.>",
};
/// Events published by the inventory service.
pub const INVENTORY: StreamDef = StreamDef {
    name: "INVENTORY",
    subjects: "shop.inventory.>",
};
/// Events published by the payments service.
pub const PAYMENTS: StreamDef = StreamDef {
    name: "PAYMENTS",
    subjects: "shop.payments.>",
};
/// Events published by the users service.
pub const USERS: StreamDef = StreamDef {
    name: "USERS",
    subjects: "shop.users.>",
};
/// Events published by the catalog service.
pub const CATALOG: StreamDef = StreamDef {
    name: "CATALOG",
    subjects: "shop.catalog.>",
};

/// Every stream, created (or updated) by every service at start.
pub const STREAMS: &[StreamDef] = &[ORDERS, INVENTORY, PAYMENTS, USERS, CATALOG];

/// A protobuf message that is a domain event.
pub trait DomainEvent: prost::Message + Default + Sized {
    /// Full protobuf name, the envelope's `event_type`.
    const TYPE: &'static str;
    /// Subject it is published on.
    const SUBJECT: &'static str;
    /// The stream that stores it.
    const STREAM: StreamDef;
    /// What kind of thing `aggregate_id` names (`order`, `payment`...).
    const AGGREGATE: &'static str;
}

macro_rules! domain_events {
    ($($ty:ident => $stream:ident, $subject:literal, $aggregate:literal;)*) => {
        $(
            impl DomainEvent for pb::$ty {
                const TYPE: &'static str = concat!("shop.events.v1.", stringify!($ty));
                const SUBJECT: &'static str = $subject;
                const STREAM: StreamDef = $stream;
                const AGGREGATE: &'static str = $aggregate;
            }
        )*
    };
}

domain_events! {
    OrderPlaced => ORDERS, "shop.orders.order_placed", "order";
    OrderConfirmed => ORDERS, "shop.orders.order_confirmed", "order";
    OrderCancelled => ORDERS, "shop.orders.order_cancelled", "order";
    StockReserved => INVENTORY, "shop.inventory.stock_reserved", "order";
    StockRejected => INVENTORY, "shop.inventory.stock_rejected", "order";
    StockReleased => INVENTORY, "shop.inventory.stock_released", "order";
    PaymentCaptured => PAYMENTS, "shop.payments.payment_captured", "payment";
    PaymentDeclined => PAYMENTS, "shop.payments.payment_declined", "payment";
    PaymentRefunded => PAYMENTS, "shop.payments.payment_refunded", "payment";
    UserRegistered => USERS, "shop.users.user_registered", "user";
    ProductChanged => CATALOG, "shop.catalog.product_changed", "product";
}

/// Creates every stream of [`STREAMS`] on file storage, or updates it to the
/// current settings.
pub(crate) async fn ensure_streams(
    js: &jetstream::Context,
    settings: &EventsSettings,
) -> anyhow::Result<()> {
    for def in STREAMS {
        let config = jetstream::stream::Config {
            name: def.name.to_string(),
            subjects: vec![def.subjects.to_string()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        };
        match js.get_stream(def.name).await {
            Ok(_) => {
                js.update_stream(&config)
                    .await
                    .with_context(|| format!("updating stream {}", def.name))?;
            }
            Err(_) => {
                js.get_or_create_stream(config)
                    .await
                    .with_context(|| format!("creating stream {}", def.name))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_belong_to_their_streams() {
        fn check<E: DomainEvent>() {
            let prefix = E::STREAM.subjects.trim_end_matches('>');
            assert!(E::SUBJECT.starts_with(prefix), "{}", E::SUBJECT);
        }
        check::<pb::OrderPlaced>();
        check::<pb::StockRejected>();
        check::<pb::PaymentRefunded>();
        check::<pb::UserRegistered>();
        check::<pb::ProductChanged>();
        assert_eq!(pb::OrderPlaced::TYPE, "shop.events.v1.OrderPlaced");
    }
}
