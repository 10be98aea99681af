//! Paging of list RPCs, one way for every service: `page_size` bounds and
//! opaque `page_token`s.
//!
//! A token is URL-safe base64 of a version byte, the id of the last item
//! of the page (the list is keyset-paged on it) and an 8-byte fingerprint
//! of the list's scope (its filters, or the user it lists for). A token
//! that was not made here, or is replayed with another scope, is refused
//! with a field violation on `page_token` rather than answered with a
//! wrong page.

use crate::FieldViolations;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// Items per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// Items per page at most.
pub const MAX_PAGE_SIZE: i64 = 100;

const TOKEN_VERSION: u8 = 2;
const TOKEN_LEN: usize = 1 + 16 + 8;

/// The page size a request asks for: 0 means [`DEFAULT_PAGE_SIZE`]; a
/// negative one or one above [`MAX_PAGE_SIZE`] is a violation on
/// `page_size` (and the default is returned so checking can go on).
pub fn page_size(v: &mut FieldViolations, requested: i32) -> i64 {
    match i64::from(requested) {
        0 => DEFAULT_PAGE_SIZE,
        n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        _ => {
            v.add(
                "page_size",
                format!("must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
            );
            DEFAULT_PAGE_SIZE
        }
    }
}

/// The token of the page after the one ending at `last_id`, in `scope`
/// (the parts that must be the same when the token comes back: a list's
/// name and filters).
pub fn next_page_token(last_id: Uuid, scope: &[&[u8]]) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_LEN);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(last_id.as_bytes());
    bytes.extend_from_slice(&fingerprint(scope));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Where a request's page starts: `None` for the first page (no token),
/// the last id of the previous page for a token made by
/// [`next_page_token`] with the same `scope`; anything else is a violation
/// on `page_token`.
pub fn page_start(v: &mut FieldViolations, token: &str, scope: &[&[u8]]) -> Option<Uuid> {
    if token.is_empty() {
        return None;
    }
    let bytes = match URL_SAFE_NO_PAD.decode(token) {
        Ok(b) if b.len() == TOKEN_LEN && b[0] == TOKEN_VERSION => b,
        _ => {
            v.add("page_token", "is not a page token this service issued");
            return None;
        }
    };
    if bytes[17..] != fingerprint(scope) {
        v.add(
            "page_token",
            "was issued for other filters; repeat the first request's filters",
        );
        return None;
    }
    Some(Uuid::from_slice(&bytes[1..17]).expect("16 bytes"))
}

fn fingerprint(scope: &[&[u8]]) -> [u8; 8] {
    let mut hash = Sha256::new();
    for part in scope {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize()[..8]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violated(f: impl FnOnce(&mut FieldViolations)) -> bool {
        let mut v = FieldViolations::new();
        f(&mut v);
        v.into_result().is_err()
    }

    #[test]
    fn page_sizes_are_bounded() {
        let mut v = FieldViolations::new();
        assert_eq!(page_size(&mut v, 0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(&mut v, 1), 1);
        assert_eq!(page_size(&mut v, 100), 100);
        assert!(v.into_result().is_ok());
        assert!(violated(|v| {
            page_size(v, 101);
        }));
        assert!(violated(|v| {
            page_size(v, -1);
        }));
    }

    #[test]
    fn a_token_round_trips_in_its_scope_only() {
        let id = Uuid::now_v7();
        let token = next_page_token(id, &[b"catalog/list", b"books", b""]);
        let mut v = FieldViolations::new();
        assert_eq!(
            page_start(&mut v, &token, &[b"catalog/list", b"books", b""]),
            Some(id)
        );
        assert_eq!(page_start(&mut v, "", &[b"anything"]), None);
        assert!(v.into_result().is_ok());

        assert!(violated(|v| {
            page_start(v, &token, &[b"catalog/list", b"book", b"s"]);
        }));
        assert!(violated(|v| {
            page_start(v, "not base64!", &[]);
        }));
        assert!(violated(|v| {
            page_start(v, &URL_SAFE_NO_PAD.encode(id.as_bytes()), &[]);
        }));
    }
}
