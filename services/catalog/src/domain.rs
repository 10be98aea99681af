//! What a valid product is. Pure: no I/O.

use shop_runtime::FieldViolations;

/// Most ids in one BatchGetProducts.
pub(crate) const MAX_BATCH: usize = 100;

pub(crate) fn check_sku(v: &mut FieldViolations, field: &str, sku: &str) {
    let ok = (1..=64).contains(&sku.len())
        && sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    v.check(
        ok,
        field,
        "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
    );
}

pub(crate) fn check_name(v: &mut FieldViolations, field: &str, name: &str) {
    let n = name.trim().chars().count();
    v.check(
        (1..=200).contains(&n) && !name.chars().any(char::is_control),
        field,
        "must be 1 to 200 characters, without control characters",
    );
}

pub(crate) fn check_description(v: &mut FieldViolations, field: &str, description: &str) {
    v.check(
        description.chars().count() <= 5000,
        field,
        "must be at most 5000 characters",
    );
}

/// Categories are slugs: lower-case letters, digits and inner hyphens.
pub(crate) fn is_category_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

pub(crate) fn check_category(v: &mut FieldViolations, field: &str, category: &str) {
    v.check(
        is_category_slug(category),
        field,
        "must be a slug: 1 to 64 lower-case letters, digits or '-' (books, home-garden)",
    );
}

/// A price in integer minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Price {
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
}

pub(crate) fn check_price(
    v: &mut FieldViolations,
    field: &str,
    amount_minor: i64,
    currency: &str,
) -> Option<Price> {
    let before = v.iter().count();
    v.check(
        amount_minor > 0,
        &format!("{field}.amount_minor"),
        "must be greater than zero",
    );
    v.check(
        iso_currency::Currency::from_code(currency).is_some(),
        &format!("{field}.currency_code"),
        "must be an ISO 4217 currency code (USD, EUR, JPY...)",
    );
    (v.iter().count() == before).then(|| Price {
        amount_minor,
        currency: currency.to_string(),
    })
}

/// `name_contains` as a LIKE pattern matching it literally anywhere.
pub(crate) fn contains_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_need_a_positive_amount_and_a_real_currency() {
        let mut v = FieldViolations::new();
        assert!(check_price(&mut v, "price", 1999, "EUR").is_some());
        assert!(check_price(&mut v, "price", 0, "EUR").is_none());
        assert!(check_price(&mut v, "price", -5, "EUR").is_none());
        assert!(check_price(&mut v, "price", 100, "XYZ").is_none());
        assert!(check_price(&mut v, "price", 100, "eur").is_none());
        let fields: Vec<_> = v.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(
            fields,
            [
                "price.amount_minor",
                "price.amount_minor",
                "price.currency_code",
                "price.currency_code"
            ]
        );
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn category_slugs() {
        assert!(is_category_slug("home-garden"));
        assert!(!is_category_slug("Books"));
        assert!(!is_category_slug(""));
        assert!(!is_category_slug("-x"));
    }
}
