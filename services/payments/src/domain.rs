//! The simulated card processor's test tokens and answers, what a
//! chargeable StockReserved is, and the listing's page token. Pure: no I/O
//! (the processor itself, with its ledger, is `processor`).

use shop_runtime::FieldViolations;
use uuid::Uuid;

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
    /// `tok_approve_partial`: the issuer approves half the amount (rounded
    /// down, at least one minor unit), as issuers do for a prepaid card
    /// short of funds: a capture that does not match the order's total.
    ApprovePartial,
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
            "tok_approve_partial" => Self::ApprovePartial,
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
    /// This amount was captured (what was asked, unless the issuer
    /// approved less).
    Captured { amount_minor: i64 },
    /// Refused for good; nothing was captured.
    Declined {
        reason: DeclineReason,
        detail: String,
    },
    /// A transient failure: ask again later (the consumer fails the
    /// delivery, so JetStream redelivers the event after a backoff).
    RetryLater(String),
}

/// The processor's answer to a charge of `amount_minor` to `token` on
/// attempt number `attempt` (1-based, the event's delivery count) when at
/// most `max_attempts` are allowed.
///
/// A transient failure on the last allowed attempt becomes a decline
/// ([`DeclineReason::ProcessorUnavailable`]), so the order is cancelled
/// instead of the event being dead-lettered with the saga left hanging.
pub(crate) fn answer(
    token: TestToken,
    amount_minor: i64,
    attempt: i64,
    max_attempts: i64,
) -> Charge {
    match token {
        TestToken::Approve | TestToken::ApproveSlow => Charge::Captured { amount_minor },
        TestToken::ApprovePartial => Charge::Captured {
            amount_minor: (amount_minor / 2).max(1),
        },
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
        TestToken::FailTransient => Charge::Captured { amount_minor },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_approval_captures_half_and_never_nothing() {
        let partial = TestToken::parse("tok_approve_partial");
        assert_eq!(
            answer(partial, 1001, 1, 5),
            Charge::Captured { amount_minor: 500 }
        );
        assert_eq!(
            answer(partial, 1, 1, 5),
            Charge::Captured { amount_minor: 1 }
        );
    }

    #[test]
    fn test_tokens_decide_the_outcome() {
        let approve = TestToken::parse("tok_approve");
        assert_eq!(
            answer(approve, 100, 1, 5),
            Charge::Captured { amount_minor: 100 }
        );
        assert_eq!(
            answer(TestToken::parse("tok_approve_slow"), 100, 1, 5),
            Charge::Captured { amount_minor: 100 }
        );
        assert!(matches!(
            answer(TestToken::parse("tok_decline"), 100, 1, 5),
            Charge::Declined {
                reason: DeclineReason::CardDeclined,
                ..
            }
        ));
        for other in ["", "tok_APPROVE", "4242424242424242", "tok_approve "] {
            assert!(
                matches!(
                    answer(TestToken::parse(other), 100, 1, 5),
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
        assert!(matches!(answer(t, 100, 1, 5), Charge::RetryLater(_)));
        assert!(matches!(answer(t, 100, 2, 5), Charge::RetryLater(_)));
        assert_eq!(answer(t, 100, 3, 5), Charge::Captured { amount_minor: 100 });
        assert_eq!(answer(t, 100, 4, 5), Charge::Captured { amount_minor: 100 });
    }

    #[test]
    fn a_transient_failure_on_the_last_allowed_attempt_is_a_decline() {
        let t = TestToken::parse("tok_fail_transient");
        assert!(matches!(
            answer(t, 100, 2, 2),
            Charge::Declined {
                reason: DeclineReason::ProcessorUnavailable,
                ..
            }
        ));
        assert_eq!(answer(t, 100, 3, 3), Charge::Captured { amount_minor: 100 });
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
}
