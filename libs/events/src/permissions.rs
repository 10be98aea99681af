//! What each service may do on NATS, derived from the catalog: least
//! privilege for nats-server's `authorization` block.
//!
//! A service may publish only its own stream's subjects; it may create its
//! own stream and the streams it reads if they do not exist yet, and read
//! their settings, but never change an existing one; on each stream it
//! reads ([`crate::catalog::READS`]) it may create, update, read, pull from
//! and ack one consumer, its own by name
//! ([`crate::catalog::consumer_name`]): notifications, a reader of ORDERS,
//! cannot pull or ack payments' consumer of ORDERS and swallow an
//! OrderCancelled. It receives replies only on its own inbox prefix, so it
//! cannot listen in on another service's deliveries. Anything else is
//! refused by the server.
//!
//! A consumer renamed by `events.consumer.durable_prefix` (a projection
//! rebuilt beside the live one) needs its names granted: NATS wildcards
//! match whole tokens, not the start of a name. A rebuildable service
//! ([`crate::catalog::REBUILDABLE`]: analytics) is granted
//! [`crate::catalog::REBUILD_PREFIX`]'s names besides its own; any other
//! prefix must be granted by the operator.

use crate::catalog::{REBUILD_PREFIX, REBUILDABLE, consumer_name, owned_by, reads};

/// The subjects a NATS user may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// `permissions.publish.allow`
    pub publish: Vec<String>,
    /// `permissions.subscribe.allow`
    pub subscribe: Vec<String>,
}

/// The inbox prefix a service's connection uses for replies and pull
/// deliveries (instead of the shared `_INBOX`).
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

/// The permissions of `service`.
pub fn for_service(service: &str) -> Permissions {
    let mut publish = vec!["$JS.API.INFO".to_string()];
    if let Some(own) = owned_by(service) {
        publish.push(own.subjects.to_string());
        // No UPDATE: an existing stream's settings are the operator's.
        for verb in ["INFO", "CREATE"] {
            publish.push(format!("$JS.API.STREAM.{verb}.{}", own.name));
        }
    }
    for stream in reads(service) {
        let name = stream.name;
        if owned_by(service).map(|s| s.name) != Some(name) {
            publish.push(format!("$JS.API.STREAM.INFO.{name}"));
            publish.push(format!("$JS.API.STREAM.CREATE.{name}"));
        }
        let own = consumer_name(service, stream);
        let mut consumers = vec![own.clone()];
        if REBUILDABLE.contains(&service) {
            consumers.push(format!("{REBUILD_PREFIX}-{own}"));
        }
        for consumer in consumers {
            publish.extend([
                // Created or updated, with or without a filter subject token.
                format!("$JS.API.CONSUMER.CREATE.{name}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{name}.{consumer}.>"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.{consumer}"),
                format!("$JS.API.CONSUMER.INFO.{name}.{consumer}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{name}.{consumer}"),
                format!("$JS.ACK.{name}.{consumer}.>"),
            ]);
        }
    }
    Permissions {
        publish,
        subscribe: vec![format!("{}.>", inbox_prefix(service))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_publishes_its_own_events_only_and_reads_orders() {
        let p = for_service("inventory");
        assert!(p.publish.contains(&"shop.inventory.>".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("shop.payments")));
        assert!(!p.publish.iter().any(|s| s.contains(".PAYMENTS")));
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ORDERS.inventory-orders".to_string())
        );
        assert!(
            p.publish
                .contains(&"$JS.ACK.ORDERS.inventory-orders.>".to_string())
        );
        // Nothing that would reach another service's consumer.
        assert!(!p.publish.iter().any(|s| s.ends_with("ORDERS.>")));
        assert!(
            !p.publish
                .contains(&"$JS.API.STREAM.UPDATE.ORDERS".to_string())
        );
        assert_eq!(p.subscribe, ["_INBOX_inventory.>"]);
    }

    #[test]
    fn analytics_alone_may_rebuild_beside_its_live_consumers() {
        let p = for_service("analytics");
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ORDERS.rebuild-analytics-orders".to_string())
        );
        let p = for_service("payments");
        assert!(!p.publish.iter().any(|s| s.contains("rebuild-")));
    }

    #[test]
    fn a_publisher_that_reads_nothing_cannot_consume() {
        let p = for_service("users");
        assert!(p.publish.contains(&"shop.users.>".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("$JS.API.CONSUMER")));
    }
}
