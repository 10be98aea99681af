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

/// The name of `service`'s durable consumer of `stream`
/// (`payments-orders`): the only consumer of that stream its NATS
/// permissions let it create, pull from and ack ([`crate::permissions`]).
pub fn consumer_name(service: &str, stream: &StreamDef) -> String {
    format!("{service}-{}", stream.name.to_lowercase())
}

/// Services whose consumers only project events (nothing is charged,
/// reserved or sent): a second instance may replay every stream beside the
/// live one, with `events.consumer.durable_prefix` = [`REBUILD_PREFIX`].
pub const REBUILDABLE: &[&str] = &["analytics"];

/// The durable prefix NATS permissions grant a rebuild of a
/// [`REBUILDABLE`] service (`rebuild-analytics-orders`...).
pub const REBUILD_PREFIX: &str = "rebuild";

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

/// A registered domain event: its type, subject and stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDef {
    /// [`DomainEvent::TYPE`]
    pub event_type: &'static str,
    /// [`DomainEvent::SUBJECT`]
    pub subject: &'static str,
    /// [`DomainEvent::STREAM`]
    pub stream: StreamDef,
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
        /// Every domain event, as registered below.
        pub const EVENTS: &[EventDef] = &[$(EventDef {
            event_type: <pb::$ty as DomainEvent>::TYPE,
            subject: $subject,
            stream: $stream,
        }),*];
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

/// Sets up the streams `service` needs: a missing one is created, on file
/// storage, with `events.streams` (limits, replicas) and the
/// de-duplication window; one that exists is checked (it must store the
/// catalog's subjects) and otherwise left as it is, so that what an
/// operator changed since (limits, replicas) stands. Creating streams one
/// reads means start order does not matter. A process that is not one of
/// the services (a test, a tool) sets up every stream.
pub(crate) async fn ensure_streams(
    js: &jetstream::Context,
    service: &str,
    settings: &EventsSettings,
) -> anyhow::Result<()> {
    settings.streams.check_max_age(&settings.consumer)?;
    let streams: Vec<StreamDef> = if is_service(service) {
        owned_by(service)
            .into_iter()
            .chain(reads(service).iter().copied())
            .collect()
    } else {
        STREAMS.to_vec()
    };
    for def in streams {
        match js.get_stream(def.name).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .with_context(|| format!("reading stream {}", def.name))?;
                check_compatible(def, &info.config)?;
                check_age(def, &info.config, settings)?;
            }
            Err(_) => {
                js.get_or_create_stream(stream_config(def, settings))
                    .await
                    .with_context(|| format!("creating stream {}", def.name))?;
                tracing::info!(stream = def.name, "stream created");
            }
        }
    }
    Ok(())
}

/// What a new stream `def` is created with.
pub(crate) fn stream_config(
    def: StreamDef,
    settings: &EventsSettings,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: def.name.to_string(),
        subjects: vec![def.subjects.to_string()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        max_age: settings.streams.effective_max_age().unwrap_or_default(),
        max_bytes: settings.streams.max_bytes.unwrap_or(-1),
        num_replicas: settings.streams.replicas.max(1),
        ..Default::default()
    }
}

/// An existing stream's age limit (the operator's to set) must leave this
/// service's consumers time to apply what it holds; none at all is allowed,
/// and said.
fn check_age(
    def: StreamDef,
    config: &jetstream::stream::Config,
    settings: &EventsSettings,
) -> anyhow::Result<()> {
    if config.max_age.is_zero() {
        tracing::info!(
            stream = def.name,
            "stream keeps its events without an age limit (events.streams.max_age applies to streams created from now on)"
        );
        return Ok(());
    }
    let held = crate::settings::StreamSettings {
        max_age: Some(config.max_age),
        ..settings.streams.clone()
    };
    held.check_max_age(&settings.consumer)
        .with_context(|| format!("stream {} as the server holds it", def.name))
}

/// An existing stream must store `def`'s subjects; anything else about it
/// is the operator's.
fn check_compatible(def: StreamDef, config: &jetstream::stream::Config) -> anyhow::Result<()> {
    if !config.subjects.iter().any(|s| s == def.subjects) {
        anyhow::bail!(
            "stream {} exists with subjects {:?}, not the catalog's {}: it is not the stream this service expects",
            def.name,
            config.subjects,
            def.subjects
        );
    }
    if config.storage != jetstream::stream::StorageType::File {
        tracing::warn!(
            stream = def.name,
            "stream is not on file storage: a restart of NATS loses its events"
        );
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

    #[test]
    fn an_existing_stream_must_store_the_catalogs_subjects() {
        let settings: EventsSettings =
            serde_json::from_value(serde_json::json!({ "nats_url": "nats://127.0.0.1:1" }))
                .unwrap();
        let mut config = stream_config(ORDERS, &settings);
        assert!(check_compatible(ORDERS, &config).is_ok());
        assert_eq!(config.num_replicas, 1);
        assert_eq!(config.max_bytes, -1);
        config.subjects = vec!["orders.>".into()];
        let err = check_compatible(ORDERS, &config).unwrap_err().to_string();
        assert!(err.contains("shop.orders.>"), "{err}");
    }
}
