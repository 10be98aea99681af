//! Conversions every service's API edge needs: times to protobuf
//! timestamps, and ids from request fields.

use crate::ServiceError;
use uuid::Uuid;

/// A UTC time as a `google.protobuf.Timestamp`.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A UUID from request field `field`, or `INVALID_ARGUMENT` naming it.
pub fn parse_uuid(field: &str, raw: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(raw).map_err(|_| ServiceError::invalid(field, "must be a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_nanoseconds() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }

    #[test]
    fn malformed_ids_name_the_field() {
        let err = parse_uuid("order_id", "42").unwrap_err();
        assert!(
            matches!(err, ServiceError::InvalidArgument(ref v) if v.iter().next().unwrap().0 == "order_id")
        );
        assert!(parse_uuid("order_id", &Uuid::now_v7().to_string()).is_ok());
    }
}
