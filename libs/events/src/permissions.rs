//! What each service may do on NATS, derived from the catalog: least
//! privilege for nats-server's `authorization` block.
//!
//! A service may publish only its own stream's subjects; it may create its
//! own stream and the streams it reads if they do not exist yet, and read
//! their settings, but never change an existing one; it may create, read and pull from consumers only
//! on the streams it reads ([`crate::catalog::READS`]), and ack only their
//! messages; it receives replies only on its own inbox prefix, so it cannot
//! listen in on another service's deliveries. Anything else is refused by
//! the server.

use crate::catalog::{owned_by, reads};

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
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{name}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.>"),
            format!("$JS.API.CONSUMER.INFO.{name}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{name}.>"),
            format!("$JS.ACK.{name}.>"),
        ]);
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
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ORDERS.>".to_string())
        );
        assert!(
            !p.publish
                .contains(&"$JS.API.STREAM.UPDATE.ORDERS".to_string())
        );
        assert_eq!(p.subscribe, ["_INBOX_inventory.>"]);
    }

    #[test]
    fn a_publisher_that_reads_nothing_cannot_consume() {
        let p = for_service("users");
        assert!(p.publish.contains(&"shop.users.>".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("$JS.API.CONSUMER")));
    }
}
