//! What a valid product is, and the listing's page token. Pure: no I/O.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use shop_runtime::FieldViolations;
use uuid::Uuid;

/// Page size when the request leaves it at 0.
pub(crate) const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page a caller may ask for.
pub(crate) const MAX_PAGE_SIZE: i64 = 100;
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

/// Where the next page starts: after `last_id`, for the same filters.
///
/// Encoded as URL-safe base64 of a version byte, the last product id seen
/// and a fingerprint of the filters, so a token is refused when it was not
/// made by us or is replayed with other filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageToken {
    pub(crate) last_id: Uuid,
}

const TOKEN_VERSION: u8 = 1;

fn filter_fingerprint(category: &str, name_contains: &str) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(category.as_bytes())
        .chain_update([0u8])
        .chain_update(name_contains.as_bytes())
        .finalize();
    digest[..8]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

impl PageToken {
    pub(crate) fn encode(&self, category: &str, name_contains: &str) -> String {
        let mut bytes = Vec::with_capacity(25);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(self.last_id.as_bytes());
        bytes.extend_from_slice(&filter_fingerprint(category, name_contains));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn decode(
        token: &str,
        category: &str,
        name_contains: &str,
    ) -> Result<Self, &'static str> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| "is not a page token this service issued")?;
        if bytes.len() != 25 || bytes[0] != TOKEN_VERSION {
            return Err("is not a page token this service issued");
        }
        if bytes[17..] != filter_fingerprint(category, name_contains) {
            return Err("was issued for other filters; repeat the first request's filters");
        }
        let last_id = Uuid::from_slice(&bytes[1..17]).expect("16 bytes");
        Ok(Self { last_id })
    }
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
    fn page_tokens_round_trip_for_the_same_filters_only() {
        let t = PageToken {
            last_id: Uuid::now_v7(),
        };
        let s = t.encode("books", "rust");
        assert_eq!(PageToken::decode(&s, "books", "rust"), Ok(t));
        assert!(PageToken::decode(&s, "books", "go").is_err());
        assert!(PageToken::decode(&s, "", "rust").is_err());
    }

    #[test]
    fn forged_tokens_are_refused() {
        for forged in [
            "",
            "abc",
            "not base64 at all!",
            &URL_SAFE_NO_PAD.encode([2u8; 25]),
        ] {
            assert!(PageToken::decode(forged, "", "").is_err(), "{forged:?}");
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
