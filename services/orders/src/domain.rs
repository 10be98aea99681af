//! What a valid order request is. Pure: no I/O.

use sha2::{Digest, Sha256};
use shop_runtime::FieldViolations;
use uuid::Uuid;

/// Most lines in one order.
pub(crate) const MAX_LINES: usize = 100;
/// Most units of one product in one order.
pub(crate) const MAX_QUANTITY: i64 = 10_000;

/// A PlaceOrder request that passed every check that needs no I/O.
#[derive(Debug, Clone)]
pub(crate) struct OrderRequest {
    pub(crate) user_id: Uuid,
    pub(crate) lines: Vec<(Uuid, i64)>,
    pub(crate) payment_token: String,
    pub(crate) idempotency_key: Uuid,
    /// Identifies the request body, to tell a retry from a different order
    /// sent with the same idempotency key.
    pub(crate) fingerprint: String,
}

pub(crate) fn validate(
    user_id: &str,
    lines: &[(String, i64)],
    payment_token: &str,
    idempotency_key: &str,
) -> Result<OrderRequest, FieldViolations> {
    let mut v = FieldViolations::new();
    let user = Uuid::parse_str(user_id)
        .map_err(|_| v.add("user_id", "must be a UUID"))
        .ok();
    if lines.is_empty() {
        v.add("lines", "must have at least one line");
    }
    if lines.len() > MAX_LINES {
        v.add("lines", format!("must have at most {MAX_LINES} lines"));
    }
    let mut parsed = Vec::with_capacity(lines.len());
    let mut seen = std::collections::HashSet::new();
    for (i, (product_id, quantity)) in lines.iter().enumerate() {
        match Uuid::parse_str(product_id) {
            Ok(id) if !seen.insert(id) => v.add(
                format!("lines[{i}].product_id"),
                "repeats a product of an earlier line",
            ),
            Ok(id) => parsed.push((id, *quantity)),
            Err(_) => v.add(format!("lines[{i}].product_id"), "must be a UUID"),
        }
        if !(1..=MAX_QUANTITY).contains(quantity) {
            v.add(
                format!("lines[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            );
        }
    }
    let token = payment_token.trim();
    v.check(
        !token.is_empty() && token.len() <= 200,
        "payment_token",
        "must be 1 to 200 characters",
    );
    let key = Uuid::parse_str(idempotency_key)
        .map_err(|_| v.add("idempotency_key", "must be a UUID"))
        .ok();
    if !v.is_empty() {
        return Err(v);
    }
    let user_id = user.expect("checked");
    let idempotency_key = key.expect("checked");
    let fingerprint = fingerprint(user_id, &parsed, token);
    Ok(OrderRequest {
        user_id,
        lines: parsed,
        payment_token: token.to_string(),
        idempotency_key,
        fingerprint,
    })
}

fn fingerprint(user_id: Uuid, lines: &[(Uuid, i64)], token: &str) -> String {
    let mut h = Sha256::new();
    h.update(user_id.as_bytes());
    for (product, quantity) in lines {
        h.update(product.as_bytes());
        h.update(quantity.to_be_bytes());
    }
    h.update(token.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A line priced from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PricedLine {
    pub(crate) product_id: Uuid,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
}

/// What the catalog knows of one product.
pub(crate) struct CatalogPrice {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
}

/// Prices every line; refuses unknown products and mixed currencies.
/// Returns the lines, the total and its currency.
pub(crate) fn price(
    lines: &[(Uuid, i64)],
    lookup: impl Fn(&Uuid) -> Option<CatalogPrice>,
) -> Result<(Vec<PricedLine>, i64, String), FieldViolations> {
    let mut v = FieldViolations::new();
    let mut priced = Vec::with_capacity(lines.len());
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    for (i, (product_id, quantity)) in lines.iter().enumerate() {
        let Some(p) = lookup(product_id) else {
            v.add(
                format!("lines[{i}].product_id"),
                "no such product in the catalog",
            );
            continue;
        };
        match &currency {
            None => currency = Some(p.currency.clone()),
            Some(c) if *c != p.currency => v.add(
                format!("lines[{i}].product_id"),
                format!("is priced in {}, the order in {c}", p.currency),
            ),
            Some(_) => {}
        }
        match p
            .amount_minor
            .checked_mul(*quantity)
            .and_then(|t| total.checked_add(t))
        {
            Some(t) => total = t,
            None => v.add(format!("lines[{i}].quantity"), "makes the total too large"),
        }
        priced.push(PricedLine {
            product_id: *product_id,
            sku: p.sku,
            name: p.name,
            quantity: *quantity,
            unit_price_minor: p.amount_minor,
        });
    }
    if v.is_empty() {
        Ok((priced, total, currency.expect("at least one line")))
    } else {
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> String {
        Uuid::now_v7().to_string()
    }

    #[test]
    fn every_problem_is_named() {
        let p = id();
        let v = validate(
            "nope",
            &[(p.clone(), 0), (p, 1), ("x".into(), 1)],
            " ",
            "key",
        )
        .unwrap_err();
        let fields: Vec<_> = v.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(
            fields,
            [
                "user_id",
                "lines[0].quantity",
                "lines[1].product_id",
                "lines[2].product_id",
                "payment_token",
                "idempotency_key"
            ]
        );
        let v = validate(&id(), &[], "tok", &id()).unwrap_err();
        assert_eq!(v.iter().next().unwrap().0, "lines");
    }

    #[test]
    fn the_fingerprint_tells_a_retry_from_another_order() {
        let (u, p, k) = (id(), id(), id());
        let a = validate(&u, &[(p.clone(), 2)], "tok_approve", &k).unwrap();
        let b = validate(&u, &[(p.clone(), 2)], "tok_approve", &k).unwrap();
        let c = validate(&u, &[(p, 3)], "tok_approve", &k).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn pricing_refuses_unknown_products_mixed_currencies_and_overflow() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let lookup = |p: &Uuid| {
            let currency = if *p == b { "USD" } else { "EUR" };
            (*p != c).then(|| CatalogPrice {
                sku: "S".into(),
                name: "N".into(),
                amount_minor: 250,
                currency: currency.into(),
            })
        };
        let (lines, total, currency) = price(&[(a, 4)], lookup).unwrap();
        assert_eq!((lines.len(), total, currency.as_str()), (1, 1000, "EUR"));
        let v = price(&[(a, 1), (b, 1), (c, 1)], lookup).unwrap_err();
        let fields: Vec<_> = v.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(fields, ["lines[1].product_id", "lines[2].product_id"]);
        let huge = |_: &Uuid| {
            Some(CatalogPrice {
                sku: "S".into(),
                name: "N".into(),
                amount_minor: i64::MAX / 2,
                currency: "EUR".into(),
            })
        };
        assert!(price(&[(a, 3)], huge).is_err());
    }
}
