//! What the projections record: the checked facts each event states, and
//! the figures the reports are made of. Pure: no I/O.

use chrono::{DateTime, Utc};
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::events::v1 as ev;
use uuid::Uuid;

/// An event that cannot be projected: retrying will not help, so the
/// consumer dead-letters it after its last attempt.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub(crate) struct InvalidEvent {
    field: String,
    problem: String,
}

fn invalid(field: &str, problem: impl Into<String>) -> InvalidEvent {
    InvalidEvent {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Which event a fact comes from: the tie-breaker when two events claim the
/// same fact (the earliest `(occurred_at, event_id)` wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) event_id: Uuid,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// An amount in minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Amount {
    pub(crate) minor: i64,
    pub(crate) currency: String,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
}

/// What every order event carries about the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderHeader {
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) total: Amount,
    pub(crate) lines: Vec<Line>,
}

/// Where an order event moves the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Milestone {
    Placed,
    Confirmed,
    Cancelled { reason: i32, detail: String },
}

/// The fact one event states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fact {
    Order {
        header: OrderHeader,
        milestone: Milestone,
    },
    StockReserved {
        order_id: Uuid,
        units: i64,
    },
    StockRejected {
        order_id: Uuid,
        reason: i32,
    },
    StockReleased {
        order_id: Uuid,
        units: i64,
        was_committed: bool,
    },
    PaymentCaptured {
        payment_id: Uuid,
        order_id: Uuid,
        amount: Amount,
    },
    PaymentDeclined {
        payment_id: Uuid,
        order_id: Uuid,
        amount: Amount,
        reason: i32,
    },
    PaymentRefunded {
        refund_id: Uuid,
        payment_id: Uuid,
        order_id: Uuid,
        amount: Amount,
    },
    UserRegistered {
        user_id: Uuid,
    },
}

fn uuid(field: &str, raw: &str) -> Result<Uuid, InvalidEvent> {
    Uuid::parse_str(raw).map_err(|_| invalid(field, format!("{raw:?} is not a UUID")))
}

fn amount(field: &str, money: Option<&Money>) -> Result<Amount, InvalidEvent> {
    let money = money.ok_or_else(|| invalid(field, "is missing"))?;
    if money.amount_minor < 0 {
        return Err(invalid(field, "is negative"));
    }
    let code = &money.currency_code;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid(
            field,
            format!("{code:?} is not an ISO 4217 currency code"),
        ));
    }
    Ok(Amount {
        minor: money.amount_minor,
        currency: code.clone(),
    })
}

fn units(field: &str, quantities: impl Iterator<Item = i64>) -> Result<i64, InvalidEvent> {
    let mut total = 0i64;
    for (i, q) in quantities.enumerate() {
        if q < 1 {
            return Err(invalid(&format!("{field}[{i}].quantity"), "is below 1"));
        }
        total = total
            .checked_add(q)
            .ok_or_else(|| invalid(field, "too many units"))?;
    }
    Ok(total)
}

fn header(
    order_id: &str,
    user_id: &str,
    total: Option<&Money>,
    lines: &[ev::OrderLine],
) -> Result<OrderHeader, InvalidEvent> {
    let total = amount("total", total)?;
    let mut parsed = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let price = amount(&format!("lines[{i}].unit_price"), line.unit_price.as_ref())?;
        if price.currency != total.currency {
            return Err(invalid(
                &format!("lines[{i}].unit_price"),
                "is not in the currency of the total",
            ));
        }
        parsed.push(Line {
            product_id: uuid(&format!("lines[{i}].product_id"), &line.product_id)?,
            quantity: line.quantity,
            unit_price_minor: price.minor,
        });
    }
    units("lines", parsed.iter().map(|l| l.quantity))?;
    Ok(OrderHeader {
        order_id: uuid("order_id", order_id)?,
        user_id: uuid("user_id", user_id)?,
        total,
        lines: parsed,
    })
}

impl Fact {
    pub(crate) fn order_placed(e: &ev::OrderPlaced) -> Result<Self, InvalidEvent> {
        Ok(Fact::Order {
            header: header(&e.order_id, &e.user_id, e.total.as_ref(), &e.lines)?,
            milestone: Milestone::Placed,
        })
    }

    pub(crate) fn order_confirmed(e: &ev::OrderConfirmed) -> Result<Self, InvalidEvent> {
        Ok(Fact::Order {
            header: header(&e.order_id, &e.user_id, e.total.as_ref(), &e.lines)?,
            milestone: Milestone::Confirmed,
        })
    }

    pub(crate) fn order_cancelled(e: &ev::OrderCancelled) -> Result<Self, InvalidEvent> {
        Ok(Fact::Order {
            header: header(&e.order_id, &e.user_id, e.total.as_ref(), &e.lines)?,
            milestone: Milestone::Cancelled {
                reason: e.reason,
                detail: e.detail.clone(),
            },
        })
    }

    pub(crate) fn stock_reserved(e: &ev::StockReserved) -> Result<Self, InvalidEvent> {
        Ok(Fact::StockReserved {
            order_id: uuid("order_id", &e.order_id)?,
            units: units("lines", e.lines.iter().map(|l| l.quantity))?,
        })
    }

    pub(crate) fn stock_rejected(e: &ev::StockRejected) -> Result<Self, InvalidEvent> {
        Ok(Fact::StockRejected {
            order_id: uuid("order_id", &e.order_id)?,
            reason: e.reason,
        })
    }

    pub(crate) fn stock_released(e: &ev::StockReleased) -> Result<Self, InvalidEvent> {
        Ok(Fact::StockReleased {
            order_id: uuid("order_id", &e.order_id)?,
            units: units("lines", e.lines.iter().map(|l| l.quantity))?,
            was_committed: e.was_committed,
        })
    }

    pub(crate) fn payment_captured(e: &ev::PaymentCaptured) -> Result<Self, InvalidEvent> {
        Ok(Fact::PaymentCaptured {
            payment_id: uuid("payment_id", &e.payment_id)?,
            order_id: uuid("order_id", &e.order_id)?,
            amount: amount("amount", e.amount.as_ref())?,
        })
    }

    pub(crate) fn payment_declined(e: &ev::PaymentDeclined) -> Result<Self, InvalidEvent> {
        Ok(Fact::PaymentDeclined {
            payment_id: uuid("payment_id", &e.payment_id)?,
            order_id: uuid("order_id", &e.order_id)?,
            amount: amount("amount", e.amount.as_ref())?,
            reason: e.reason,
        })
    }

    pub(crate) fn payment_refunded(e: &ev::PaymentRefunded) -> Result<Self, InvalidEvent> {
        Ok(Fact::PaymentRefunded {
            refund_id: uuid("refund_id", &e.refund_id)?,
            payment_id: uuid("payment_id", &e.payment_id)?,
            order_id: uuid("order_id", &e.order_id)?,
            amount: amount("amount", e.amount.as_ref())?,
        })
    }

    pub(crate) fn user_registered(e: &ev::UserRegistered) -> Result<Self, InvalidEvent> {
        Ok(Fact::UserRegistered {
            user_id: uuid("user_id", &e.user_id)?,
        })
    }
}

/// Orders counted by where they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcomes {
    pub(crate) placed: i64,
    pub(crate) confirmed: i64,
    pub(crate) cancelled: i64,
    pub(crate) pending: i64,
    /// (reason number, count), ordered by reason number.
    pub(crate) cancelled_by_reason: Vec<(i32, i64)>,
}

/// Money flows in one currency, in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revenue {
    pub(crate) currency: String,
    pub(crate) confirmed_total: i64,
    pub(crate) captured: i64,
    pub(crate) refunded: i64,
}

impl Revenue {
    /// Captured minus refunded.
    pub(crate) fn net_captured(&self) -> i64 {
        self.captured - self.refunded
    }
}

/// Units of one product in orders whose latest state is CONFIRMED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProductSales {
    pub(crate) product_id: Uuid,
    pub(crate) units_sold: i64,
    pub(crate) order_count: i64,
}

/// How many distinct events the projections hold, and the latest one's
/// time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) applied_events: i64,
    pub(crate) last_event_time: Option<DateTime<Utc>>,
}

/// Time from OrderPlaced to the first terminal event over ended sagas, in
/// microseconds; percentiles are nearest-rank (a duration that occurred).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SagaDurations {
    pub(crate) median_micros: Option<i64>,
    pub(crate) p99_micros: Option<i64>,
    pub(crate) max_micros: Option<i64>,
}

/// Compensation and failure counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SagaCounts {
    pub(crate) stock_rejected: i64,
    pub(crate) payment_declined: i64,
    pub(crate) stock_released: i64,
    pub(crate) payment_refunded: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: i64) -> Option<Money> {
        Some(Money {
            amount_minor: minor,
            currency_code: "EUR".into(),
        })
    }

    #[test]
    fn an_order_event_becomes_its_header_and_milestone() {
        let (order, user, product) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let fact = Fact::order_cancelled(&ev::OrderCancelled {
            order_id: order.to_string(),
            user_id: user.to_string(),
            reason: 2,
            detail: "out".into(),
            lines: vec![ev::OrderLine {
                product_id: product.to_string(),
                quantity: 3,
                unit_price: eur(100),
            }],
            total: eur(300),
        })
        .unwrap();
        assert_eq!(
            fact,
            Fact::Order {
                header: OrderHeader {
                    order_id: order,
                    user_id: user,
                    total: Amount {
                        minor: 300,
                        currency: "EUR".into()
                    },
                    lines: vec![Line {
                        product_id: product,
                        quantity: 3,
                        unit_price_minor: 100
                    }],
                },
                milestone: Milestone::Cancelled {
                    reason: 2,
                    detail: "out".into()
                },
            }
        );
    }

    #[test]
    fn malformed_events_name_the_field() {
        let bad = |e: ev::OrderPlaced| Fact::order_placed(&e).unwrap_err().to_string();
        let good = ev::OrderPlaced {
            order_id: Uuid::now_v7().to_string(),
            user_id: Uuid::now_v7().to_string(),
            lines: vec![ev::OrderLine {
                product_id: Uuid::now_v7().to_string(),
                quantity: 1,
                unit_price: eur(100),
            }],
            total: eur(100),
            payment_token: String::new(),
            sealed_payment_token: Vec::new(),
        };
        assert!(Fact::order_placed(&good).is_ok());
        let mut e = good.clone();
        e.order_id = "x".into();
        assert!(bad(e).starts_with("order_id:"));
        let mut e = good.clone();
        e.total = None;
        assert!(bad(e).starts_with("total:"));
        let mut e = good.clone();
        e.lines[0].quantity = 0;
        assert!(bad(e).starts_with("lines[0].quantity:"));
        let mut e = good.clone();
        e.lines[0].unit_price = Some(Money {
            amount_minor: 100,
            currency_code: "usd".into(),
        });
        assert!(bad(e).starts_with("lines[0].unit_price:"));
    }

    #[test]
    fn net_captured_is_captured_minus_refunded() {
        let r = Revenue {
            currency: "EUR".into(),
            confirmed_total: 100,
            captured: 250,
            refunded: 150,
        };
        assert_eq!(r.net_captured(), 100);
    }
}
