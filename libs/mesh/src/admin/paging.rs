//! Page sizes and page tokens of `ListUpstreams` and `ListEndpoints`.

use tonic::Status;

/// Page size when a request asks for 0.
const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page size a request may ask for.
const MAX_PAGE_SIZE: usize = 100;

pub(super) fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as usize > MAX_PAGE_SIZE => Err(Status::invalid_argument(format!(
            "page_size must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}, got {n}"
        ))),
        n => Ok(n as usize),
    }
}

/// The sort key of an endpoint (upstream, then address).
pub(super) fn endpoint_key(upstream: &str, address: &str) -> String {
    format!("{upstream}\0{address}")
}

/// A page token: the hex of the last key returned.
pub(super) fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument("page_token is not one this service returned");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(token.get(i..i + 2).ok_or_else(invalid)?, 16).map_err(|_| invalid())
        })
        .collect::<Result<Vec<u8>, Status>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}
