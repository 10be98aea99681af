//! The envelope every event travels in, and an event as a consumer sees it.

use crate::catalog::DomainEvent;
use anyhow::{Context as _, bail};
use shop_proto::shop::events::v1::Envelope;
use uuid::Uuid;

/// Wraps `event` for `aggregate_id`. `cause`, when the event is a reaction
/// to another one, links the two (causation and correlation ids), so a
/// saga's events can be followed end to end. A flow is named by the
/// aggregate its first event is about: every event of an order's saga
/// carries the order id as its correlation id, also a cancellation that
/// starts from the API or the timeout sweeper, which is what consumers
/// order their work by.
pub fn wrap<E: DomainEvent>(
    producer: &str,
    aggregate_id: &str,
    event: &E,
    cause: Option<&Envelope>,
) -> Envelope {
    let event_id = Uuid::now_v7().to_string();
    let now = chrono::Utc::now();
    let (causation_id, correlation_id) = match cause {
        Some(c) => (
            c.event_id.clone(),
            if c.correlation_id.is_empty() {
                c.event_id.clone()
            } else {
                c.correlation_id.clone()
            },
        ),
        None => (String::new(), aggregate_id.to_string()),
    };
    Envelope {
        event_id,
        event_type: E::TYPE.to_string(),
        aggregate_id: aggregate_id.to_string(),
        aggregate_type: E::AGGREGATE.to_string(),
        occur_time: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: now.timestamp_subsec_nanos() as i32,
        }),
        causation_id,
        correlation_id,
        payload: event.encode_to_vec(),
        producer: producer.to_string(),
    }
}

/// An event delivered to a consumer.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope, payload still encoded.
    pub envelope: Envelope,
    /// The event's id.
    pub event_id: Uuid,
    /// The subject it was published on.
    pub subject: String,
    /// Its sequence number in the stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered, this time included.
    pub delivered: i64,
}

impl Received {
    /// Whether the event is an `E`.
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.envelope.event_type == E::TYPE
    }

    /// The payload as an `E`.
    pub fn decode<E: DomainEvent>(&self) -> anyhow::Result<E> {
        if !self.is::<E>() {
            bail!(
                "event {} is a {}, not a {}",
                self.event_id,
                self.envelope.event_type,
                E::TYPE
            );
        }
        E::decode(self.envelope.payload.as_slice())
            .with_context(|| format!("decoding {} payload of {}", E::TYPE, self.event_id))
    }

    /// When the producer says the event happened.
    pub fn occurred_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.envelope
            .occur_time
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_proto::shop::events::v1::{OrderConfirmed, OrderPlaced};

    #[test]
    fn reactions_carry_causation_and_correlation() {
        let placed = wrap(
            "orders",
            "o-1",
            &OrderPlaced {
                order_id: "o-1".into(),
                ..Default::default()
            },
            None,
        );
        // A flow is named by the aggregate its first event is about.
        assert_eq!(placed.correlation_id, "o-1");
        let confirmed = wrap("orders", "p-1", &OrderConfirmed::default(), Some(&placed));
        assert_eq!(confirmed.causation_id, placed.event_id);
        assert_eq!(confirmed.correlation_id, "o-1");
        assert_eq!(confirmed.event_type, "shop.events.v1.OrderConfirmed");
    }

    #[test]
    fn decoding_checks_the_type() {
        let envelope = wrap(
            "orders",
            "o-1",
            &OrderPlaced {
                order_id: "o-1".into(),
                ..Default::default()
            },
            None,
        );
        let received = Received {
            event_id: envelope.event_id.parse().unwrap(),
            envelope,
            subject: "shop.orders.order_placed".into(),
            stream_sequence: 1,
            delivered: 1,
        };
        assert_eq!(received.decode::<OrderPlaced>().unwrap().order_id, "o-1");
        assert!(received.decode::<OrderConfirmed>().is_err());
    }
}
