//! The rules of stock and reservations. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use uuid::Uuid;

/// Most ids in one BatchGetStock.
pub(crate) const MAX_BATCH: usize = 100;

/// Where an order's reservation stands. Stored as text in
/// `reservations.status`.
///
/// ```text
/// OrderPlaced:    (none) -> reserved | rejected
/// OrderConfirmed: reserved -> committed
/// OrderCancelled: reserved | committed -> released; (none) -> released (tombstone)
/// ```
///
/// `rejected` and `released` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReservationStatus {
    Reserved,
    Rejected,
    Committed,
    Released,
}

impl ReservationStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Rejected => "rejected",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "rejected" => Self::Rejected,
            "committed" => Self::Committed,
            "released" => Self::Released,
            _ => return None,
        })
    }
}

/// Why an order could not be reserved. Stored as text in
/// `reservations.rejection_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectionReason {
    /// Some line asks for more than is available.
    InsufficientStock,
    /// Some product has never been stocked.
    UnknownProduct,
}

impl RejectionReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientStock => "insufficient_stock",
            Self::UnknownProduct => "unknown_product",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insufficient_stock" => Self::InsufficientStock,
            "unknown_product" => Self::UnknownProduct,
            _ => return None,
        })
    }
}

/// A product and a positive quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) product_id: Uuid,
    pub(crate) quantity: i64,
}

/// Why an order's lines cannot be reserved at all (as opposed to "not
/// enough stock"): the event is malformed, which orders never publishes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinesError {
    #[error("the order has no lines")]
    Empty,
    #[error("line {index}: product_id {raw:?} is not a UUID")]
    BadProduct { index: usize, raw: String },
    #[error("line {index}: quantity {quantity} is not positive")]
    BadQuantity { index: usize, quantity: i64 },
    #[error("the quantities of product {0} add up past the largest quantity")]
    Overflow(Uuid),
}

/// An order's lines as one line per product, in product id order: the
/// order in which every transaction touches stock rows, so two
/// transactions never wait for each other in a cycle.
pub(crate) fn merge_lines<'a>(
    raw: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result<Vec<Line>, LinesError> {
    let mut merged: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (index, (product, quantity)) in raw.into_iter().enumerate() {
        let product_id = Uuid::parse_str(product).map_err(|_| LinesError::BadProduct {
            index,
            raw: product.to_string(),
        })?;
        if quantity <= 0 {
            return Err(LinesError::BadQuantity { index, quantity });
        }
        let total = merged.entry(product_id).or_insert(0);
        *total = total
            .checked_add(quantity)
            .ok_or(LinesError::Overflow(product_id))?;
    }
    if merged.is_empty() {
        return Err(LinesError::Empty);
    }
    Ok(merged
        .into_iter()
        .map(|(product_id, quantity)| Line {
            product_id,
            quantity,
        })
        .collect())
}

/// How far one line was from being reservable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shortfall {
    pub(crate) product_id: Uuid,
    pub(crate) requested: i64,
    /// 0 for a product never stocked.
    pub(crate) available: i64,
    pub(crate) known: bool,
}

/// Why nothing of an order was reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: RejectionReason,
    pub(crate) detail: String,
    pub(crate) shortfalls: Vec<Shortfall>,
}

/// Whether every line can be reserved from `available` (what is available
/// per stocked product): `None` if so, else the rejection naming every line
/// that falls short. An unknown product outweighs a short one as the reason.
pub(crate) fn assess(lines: &[Line], available: &HashMap<Uuid, i64>) -> Option<Rejection> {
    let shortfalls: Vec<Shortfall> = lines
        .iter()
        .filter_map(|line| match available.get(&line.product_id) {
            None => Some(Shortfall {
                product_id: line.product_id,
                requested: line.quantity,
                available: 0,
                known: false,
            }),
            Some(&have) if have < line.quantity => Some(Shortfall {
                product_id: line.product_id,
                requested: line.quantity,
                available: have,
                known: true,
            }),
            Some(_) => None,
        })
        .collect();
    if shortfalls.is_empty() {
        return None;
    }
    let reason = if shortfalls.iter().any(|s| !s.known) {
        RejectionReason::UnknownProduct
    } else {
        RejectionReason::InsufficientStock
    };
    let detail = ShortfallList(&shortfalls).to_string();
    Some(Rejection {
        reason,
        detail,
        shortfalls,
    })
}

struct ShortfallList<'a>(&'a [Shortfall]);

impl fmt::Display for ShortfallList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if s.known {
                write!(
                    f,
                    "product {}: {} requested, {} available",
                    s.product_id, s.requested, s.available
                )?;
            } else {
                write!(f, "product {}: never stocked", s.product_id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn lines_are_merged_per_product_in_product_order() {
        let (a, b) = (id(1).to_string(), id(2).to_string());
        let lines = merge_lines([(b.as_str(), 2), (a.as_str(), 1), (b.as_str(), 3)]).unwrap();
        assert_eq!(
            lines,
            [
                Line {
                    product_id: id(1),
                    quantity: 1
                },
                Line {
                    product_id: id(2),
                    quantity: 5
                }
            ]
        );
    }

    #[test]
    fn malformed_lines_are_refused() {
        let a = id(1).to_string();
        assert_eq!(merge_lines([]), Err(LinesError::Empty));
        assert!(matches!(
            merge_lines([(a.as_str(), 1), ("nope", 1)]),
            Err(LinesError::BadProduct { index: 1, .. })
        ));
        assert!(matches!(
            merge_lines([(a.as_str(), 0)]),
            Err(LinesError::BadQuantity { index: 0, .. })
        ));
        assert!(matches!(
            merge_lines([(a.as_str(), -3)]),
            Err(LinesError::BadQuantity { .. })
        ));
        assert_eq!(
            merge_lines([(a.as_str(), i64::MAX), (a.as_str(), 1)]),
            Err(LinesError::Overflow(id(1)))
        );
    }

    #[test]
    fn an_order_that_fits_is_not_rejected() {
        let lines = [Line {
            product_id: id(1),
            quantity: 3,
        }];
        assert_eq!(assess(&lines, &HashMap::from([(id(1), 3)])), None);
    }

    #[test]
    fn every_short_line_is_reported_and_unknown_products_win_the_reason() {
        let lines = [
            Line {
                product_id: id(1),
                quantity: 2,
            },
            Line {
                product_id: id(2),
                quantity: 5,
            },
            Line {
                product_id: id(3),
                quantity: 1,
            },
        ];
        let short = assess(&lines, &HashMap::from([(id(1), 9), (id(2), 4), (id(3), 0)])).unwrap();
        assert_eq!(short.reason, RejectionReason::InsufficientStock);
        let report: Vec<_> = short
            .shortfalls
            .iter()
            .map(|s| (s.product_id, s.requested, s.available))
            .collect();
        assert_eq!(report, [(id(2), 5, 4), (id(3), 1, 0)]);

        let unknown = assess(&lines, &HashMap::from([(id(1), 9), (id(2), 4)])).unwrap();
        assert_eq!(unknown.reason, RejectionReason::UnknownProduct);
        assert_eq!(unknown.shortfalls.len(), 2);
        assert!(
            unknown.detail.contains("never stocked"),
            "{}",
            unknown.detail
        );
    }

    #[test]
    fn stored_names_round_trip() {
        for s in [
            ReservationStatus::Reserved,
            ReservationStatus::Rejected,
            ReservationStatus::Committed,
            ReservationStatus::Released,
        ] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
        for r in [
            RejectionReason::InsufficientStock,
            RejectionReason::UnknownProduct,
        ] {
            assert_eq!(RejectionReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(ReservationStatus::parse("pending"), None);
    }
}
