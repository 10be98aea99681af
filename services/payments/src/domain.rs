//! The simulated card processor, what a chargeable StockReserved is, and the
//! listing's page token. Pure: no I/O, apart from the processor's injectable
//! delay for slow approvals.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use shop_runtime::FieldViolations;
use std::time::Duration;
use uuid::Uuid;

/// Page size when the request leaves it at 0.
pub(crate) const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page a caller may ask for.
pub(crate) const MAX_PAGE_SIZE: i64 = 100;

// === The simulated card processor ===

/// The test tokens the simulated processor understands, as card processors'
/// test tokens do. Kept in step with the comment of `PaymentService` in
/// `proto/shop/payments/v1/payments.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestToken {
    /// `tok_approve`: captured at once.
    Approve,
    /// `tok_decline`: declined by the issuer ([`DeclineReason::CardDeclined`]).
    Decline,
    /// `tok_fail_transient`: the processor fails transiently while the event
    /// has been delivered at most [`TRANSIENT_FAILURES`] times, then captures.
    FailTransient,
    /// `tok_approve_slow`: captured after the configured `slow_delay`.
    ApproveSlow,
    /// Any other token: declined ([`DeclineReason::InvalidToken`]).
    Unknown,
}

/// How many deliveries of a StockReserved a `tok_fail_transient` charge fails
/// before it is captured (on delivery `TRANSIENT_FAILURES + 1`).
pub(crate) const TRANSIENT_FAILURES: i64 = 2;

impl TestToken {
    pub(crate) fn parse(token: &str) -> Self {
        match token {
            "tok_approve" => Self::Approve,
            "tok_decline" => Self::Decline,
            "tok_fail_transient" => Self::FailTransient,
            "tok_approve_slow" => Self::ApproveSlow,
            _ => Self::Unknown,
        }
    }
}

/// Why the processor refused a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclineReason {
    /// The issuer declined (`tok_decline`).
    CardDeclined,
    /// A token the processor does not know.
    InvalidToken,
    /// Transient failures until the last delivery the consumer allows.
    ProcessorUnavailable,
}

impl DeclineReason {
    /// The value stored in `payments.decline_reason`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::CardDeclined => "card_declined",
            Self::InvalidToken => "invalid_token",
            Self::ProcessorUnavailable => "processor_unavailable",
        }
    }

    /// The inverse of [`DeclineReason::as_str`].
    pub(crate) fn from_stored(s: &str) -> Option<Self> {
        [
            Self::CardDeclined,
            Self::InvalidToken,
            Self::ProcessorUnavailable,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// What the processor answered to one charge attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Charge {
    /// The amount was captured.
    Captured,
    /// Refused for good; nothing was captured.
    Declined {
        reason: DeclineReason,
        detail: String,
    },
    /// A transient failure: ask again later (the consumer fails the
    /// delivery, so JetStream redelivers the event after a backoff).
    RetryLater(String),
}

/// The processor's answer to `token` on attempt number `attempt` (1-based,
/// the event's delivery count) when at most `max_attempts` are allowed.
///
/// A transient failure on the last allowed attempt becomes a decline
/// ([`DeclineReason::ProcessorUnavailable`]), so the order is cancelled
/// instead of the event being dead-lettered with the saga left hanging.
pub(crate) fn answer(token: TestToken, attempt: i64, max_attempts: i64) -> Charge {
    match token {
        TestToken::Approve | TestToken::ApproveSlow => Charge::Captured,
        TestToken::Decline => Charge::Declined {
            reason: DeclineReason::CardDeclined,
            detail: "the card issuer declined the charge".into(),
        },
        TestToken::Unknown => Charge::Declined {
            reason: DeclineReason::InvalidToken,
            detail: "the payment token is not one the processor knows".into(),
        },
        TestToken::FailTransient if attempt <= TRANSIENT_FAILURES => {
            if attempt >= max_attempts {
                Charge::Declined {
                    reason: DeclineReason::ProcessorUnavailable,
                    detail: format!("the processor failed transiently {attempt} times"),
                }
            } else {
                Charge::RetryLater(format!(
                    "processor unavailable (transient failure {attempt} of {TRANSIENT_FAILURES})"
                ))
            }
        }
        TestToken::FailTransient => Charge::Captured,
    }
}

/// The simulated processor: [`answer`], plus the wait of slow approvals.
#[derive(Debug, Clone)]
pub(crate) struct Processor {
    /// How long `tok_approve_slow` takes.
    pub(crate) slow_delay: Duration,
    /// Attempts the consumer allows (its `max_deliver`).
    pub(crate) max_attempts: i64,
}

impl Processor {
    /// Charges `token`; see [`answer`]. Slow approvals wait `slow_delay`
    /// (a `tokio::time` sleep, so tests can pause time).
    pub(crate) async fn charge(&self, token: &str, attempt: i64) -> Charge {
        let token = TestToken::parse(token);
        if token == TestToken::ApproveSlow {
            tokio::time::sleep(self.slow_delay).await;
        }
        answer(token, attempt, self.max_attempts)
    }
}

// === What may be charged ===

/// A charge request from a StockReserved, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChargeRequest {
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
}

/// Checks the fields of a StockReserved; the error lists what is wrong.
pub(crate) fn charge_request(
    order_id: &str,
    user_id: &str,
    total: Option<(i64, &str)>,
) -> Result<ChargeRequest, String> {
    let mut v = FieldViolations::new();
    let order = Uuid::parse_str(order_id).ok();
    v.check(order.is_some(), "order_id", "must be a UUID");
    let user = Uuid::parse_str(user_id).ok();
    v.check(user.is_some(), "user_id", "must be a UUID");
    match total {
        Some((amount, currency)) => {
            v.check(
                amount > 0,
                "total.amount_minor",
                "must be greater than zero",
            );
            v.check(
                currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()),
                "total.currency_code",
                "must be an upper-case ISO 4217 code",
            );
        }
        None => v.add("total", "is required"),
    }
    match (order, user, total) {
        (Some(order_id), Some(user_id), Some((amount_minor, currency))) if v.is_empty() => {
            Ok(ChargeRequest {
                order_id,
                user_id,
                amount_minor,
                currency: currency.to_string(),
            })
        }
        _ => Err(v.to_string()),
    }
}

/// The advisory lock key text for an order: its canonical UUID form, so the
/// two consumers always lock the same key for the same order.
pub(crate) fn order_lock_key(order_id: Uuid) -> String {
    order_id.to_string()
}

// === Listing ===

/// Page size from the request: 0 means the default; out of range is refused.
pub(crate) fn page_size(v: &mut FieldViolations, requested: i32) -> i64 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n if (1..=MAX_PAGE_SIZE as i32).contains(&n) => i64::from(n),
        _ => {
            v.add(
                "page_size",
                format!("must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
            );
            DEFAULT_PAGE_SIZE
        }
    }
}

/// Where the next page of payments starts: after `last_id`, for the same
/// order filter.
///
/// URL-safe base64 of a version byte, the last payment id seen and a
/// fingerprint of the filter, so a token is refused when it was not made by
/// us or is replayed with another filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageToken {
    pub(crate) last_id: Uuid,
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 1 + 16 + 8;

fn filter_fingerprint(order_id: &str) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(b"payments/list/")
        .chain_update(order_id.as_bytes())
        .finalize();
    digest[..8]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

impl PageToken {
    pub(crate) fn encode(&self, order_id: &str) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(self.last_id.as_bytes());
        bytes.extend_from_slice(&filter_fingerprint(order_id));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn decode(token: &str, order_id: &str) -> Result<Self, &'static str> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| "is not a page token this service issued")?;
        if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
            return Err("is not a page token this service issued");
        }
        if bytes[17..] != filter_fingerprint(order_id) {
            return Err("was issued for another order_id; repeat the first request's filter");
        }
        let last_id = Uuid::from_slice(&bytes[1..17]).expect("16 bytes");
        Ok(Self { last_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tokens_decide_the_outcome() {
        let approve = TestToken::parse("tok_approve");
        assert_eq!(answer(approve, 1, 5), Charge::Captured);
        assert_eq!(
            answer(TestToken::parse("tok_approve_slow"), 1, 5),
            Charge::Captured
        );
        assert!(matches!(
            answer(TestToken::parse("tok_decline"), 1, 5),
            Charge::Declined {
                reason: DeclineReason::CardDeclined,
                ..
            }
        ));
        for other in ["", "tok_APPROVE", "4242424242424242", "tok_approve "] {
            assert!(
                matches!(
                    answer(TestToken::parse(other), 1, 5),
                    Charge::Declined {
                        reason: DeclineReason::InvalidToken,
                        ..
                    }
                ),
                "{other:?}"
            );
        }
    }

    #[test]
    fn transient_failures_last_two_deliveries_then_capture() {
        let t = TestToken::parse("tok_fail_transient");
        assert!(matches!(answer(t, 1, 5), Charge::RetryLater(_)));
        assert!(matches!(answer(t, 2, 5), Charge::RetryLater(_)));
        assert_eq!(answer(t, 3, 5), Charge::Captured);
        assert_eq!(answer(t, 4, 5), Charge::Captured);
    }

    #[test]
    fn a_transient_failure_on_the_last_allowed_attempt_is_a_decline() {
        let t = TestToken::parse("tok_fail_transient");
        assert!(matches!(
            answer(t, 2, 2),
            Charge::Declined {
                reason: DeclineReason::ProcessorUnavailable,
                ..
            }
        ));
        assert_eq!(answer(t, 3, 3), Charge::Captured);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_approvals_take_the_configured_delay() {
        let processor = Processor {
            slow_delay: Duration::from_secs(7),
            max_attempts: 5,
        };
        let start = tokio::time::Instant::now();
        assert_eq!(processor.charge("tok_approve", 1).await, Charge::Captured);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            processor.charge("tok_approve_slow", 1).await,
            Charge::Captured
        );
        assert!(start.elapsed() >= Duration::from_secs(7));
    }

    #[test]
    fn decline_reasons_round_trip_through_storage() {
        for r in [
            DeclineReason::CardDeclined,
            DeclineReason::InvalidToken,
            DeclineReason::ProcessorUnavailable,
        ] {
            assert_eq!(DeclineReason::from_stored(r.as_str()), Some(r));
        }
        assert_eq!(DeclineReason::from_stored("nope"), None);
    }

    #[test]
    fn charge_requests_need_ids_and_a_positive_total() {
        let order = Uuid::now_v7().to_string();
        let user = Uuid::now_v7().to_string();
        let ok = charge_request(&order, &user, Some((1999, "EUR"))).unwrap();
        assert_eq!(ok.amount_minor, 1999);
        let err = charge_request("x", &user, Some((0, "eur"))).unwrap_err();
        assert!(err.contains("order_id"), "{err}");
        assert!(err.contains("total.amount_minor"), "{err}");
        assert!(err.contains("total.currency_code"), "{err}");
        assert!(
            charge_request(&order, "", None)
                .unwrap_err()
                .contains("total")
        );
    }

    #[test]
    fn page_tokens_round_trip_for_the_same_filter_only() {
        let t = PageToken {
            last_id: Uuid::now_v7(),
        };
        let order = Uuid::now_v7().to_string();
        let s = t.encode(&order);
        assert_eq!(PageToken::decode(&s, &order), Ok(t));
        assert!(PageToken::decode(&s, "").is_err());
        for forged in ["", "abc", "not base64!", &URL_SAFE_NO_PAD.encode([2u8; 25])] {
            assert!(PageToken::decode(forged, "").is_err(), "{forged:?}");
        }
    }

    #[test]
    fn page_size_bounds() {
        let mut v = FieldViolations::new();
        assert_eq!(page_size(&mut v, 0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(&mut v, 100), 100);
        assert!(v.is_empty());
        page_size(&mut v, 101);
        page_size(&mut v, -1);
        assert_eq!(v.iter().count(), 2);
    }
}
