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
    /// The one service that publishes to it.
    pub owner: &'static str,
}

/// Events published by the orders service.
pub const ORDERS: StreamDef = StreamDef {
    name: "ORDERS",
    subjects: "shop.orders.>",
    owner: "orders",
};
/// Events published by the inventory service.
pub const INVENTORY: StreamDef = StreamDef {
    name: "INVENTORY",
    subjects: "shop.inventory.>",
    owner: "inventory",
};
/// Events published by the payments service.
pub const PAYMENTS: StreamDef = StreamDef {
    name: "PAYMENTS",
    subjects: "shop.payments.>",
    owner: "payments",
};
/// Events published by the users service.
pub const USERS: StreamDef = StreamDef {
    name: "USERS",
    subjects: "shop.users.>",
    owner: "users",
};
/// Events published by the catalog service.
pub const CATALOG: StreamDef = StreamDef {
    name: "CATALOG",
    subjects: "shop.catalog.>",
    owner: "catalog",
};

/// Every stream.
pub const STREAMS: &[StreamDef] = &[ORDERS, INVENTORY, PAYMENTS, USERS, CATALOG];

/// The streams each consuming service reads: what its NATS permissions let
/// it consume ([`crate::permissions`]), and what [`crate::Events::consumer`]
/// checks its consumers against.
pub const READS: &[(&str, &[StreamDef])] = &[
    ("inventory", &[ORDERS]),
    ("orders", &[INVENTORY, PAYMENTS]),
    ("payments", &[INVENTORY, ORDERS]),
    ("notifications", &[ORDERS, USERS]),
    ("analytics", STREAMS),
];

/// The streams `service` reads (none for a service that consumes nothing).
pub fn reads(service: &str) -> &'static [StreamDef] {
    READS
        .iter()
        .find(|(s, _)| *s == service)
        .map_or(&[], |(_, streams)| streams)
}

/// The stream `service` publishes to, if it publishes.
pub fn owned_by(service: &str) -> Option<StreamDef> {
    STREAMS.iter().copied().find(|s| s.owner == service)
}

/// Whether `service` is one of the shop's services (owns or reads a
/// stream), as opposed to a test or a tool.
pub(crate) fn is_service(service: &str) -> bool {
    owned_by(service).is_some() || READS.iter().any(|(s, _)| *s == service)
}

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

/// Sets up the streams `service` needs, on file storage: the one it
/// publishes to is created or updated to the current settings; the ones it
/// reads are created if they do not exist yet (so start order does not
/// matter) and otherwise left to their owner. A process that is not one of
/// the services (a test, a tool) sets up every stream.
pub(crate) async fn ensure_streams(
    js: &jetstream::Context,
    service: &str,
    settings: &EventsSettings,
) -> anyhow::Result<()> {
    let owned = owned_by(service);
    let streams: Vec<StreamDef> = if is_service(service) {
        owned
            .into_iter()
            .chain(reads(service).iter().copied())
            .collect()
    } else {
        STREAMS.to_vec()
    };
    for def in streams {
        let config = jetstream::stream::Config {
            name: def.name.to_string(),
            subjects: vec![def.subjects.to_string()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        };
        let mine = owned == Some(def) || !is_service(service);
        match js.get_stream(def.name).await {
            Ok(_) if mine => {
                js.update_stream(&config)
                    .await
                    .with_context(|| format!("updating stream {}", def.name))?;
            }
            Ok(_) => {}
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

    #[test]
    fn each_stream_has_one_owner_and_owners_do_not_read_their_own() {
        for def in STREAMS {
            assert_eq!(owned_by(def.owner), Some(*def));
            assert_eq!(def.subjects, format!("shop.{}.>", def.owner));
        }
        for (service, streams) in READS {
            if *service != "analytics" {
                assert!(!streams.iter().any(|s| s.owner == *service), "{service}");
            }
        }
        assert_eq!(reads("users"), &[] as &[StreamDef]);
        assert!(is_service("users") && is_service("analytics") && !is_service("test"));
    }
}
