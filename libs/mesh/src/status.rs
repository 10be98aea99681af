//! gRPC statuses and headers on `http` messages.
//!
//! A failed unary call answered by tonic is "trailers-only": `grpc-status`
//! travels in the response headers. That is what the layers classify on
//! (an OK response carries its status in the trailers, after the body).

use http::{HeaderName, HeaderValue};
use std::time::Duration;
use tonic::Code;

// Header names as `HeaderName` constants: looking one up by `&str` parses
// the name on every call, and these are read or written several times per
// call.

/// `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-retry-pushback-ms` header name.
pub const PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
/// `grpc-status` header (or trailer) name.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The gRPC code in a response's headers: `Some(code)` for a trailers-only
/// response, `None` when the status will come in the trailers (a normal,
/// successful unary response).
pub fn header_code<B>(response: &http::Response<B>) -> Option<Code> {
    response
        .headers()
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Whether a response is a failure for outlier detection and retries: a
/// trailers-only status other than OK, or an HTTP status other than 200.
pub fn is_failure<B>(response: &http::Response<B>) -> bool {
    response.status() != http::StatusCode::OK
        || header_code(response).is_some_and(|c| c != Code::Ok)
}

/// A trailers-only response carrying `status`.
pub fn response(status: tonic::Status) -> crate::Response {
    status.into_http()
}

/// A trailers-only RESOURCE_EXHAUSTED for a call the client refused
/// itself, unsent, with a negative pushback (gRPC's "do not retry"), so
/// the retry layer above does not turn it into more attempts.
pub fn refused_locally(message: String) -> crate::Response {
    let mut response = response(tonic::Status::resource_exhausted(message));
    response
        .headers_mut()
        .insert(PUSHBACK, http::HeaderValue::from_static("-1"));
    response
}

/// What the server said about retrying, through `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry no sooner than after this delay.
    After(Duration),
    /// Do not retry (a negative or malformed value, per the gRPC spec).
    Never,
}

/// The server's pushback, if it sent one.
pub fn pushback<B>(response: &http::Response<B>) -> Option<Pushback> {
    let value = response.headers().get(PUSHBACK)?;
    Some(
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
            _ => Pushback::Never,
        },
    )
}

/// Parses a `grpc-timeout` value (`100m`, `2S`, `500000u`...).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, rounded down to the
/// coarsest unit that still gives at least three significant digits (so
/// the value is at most 1% short, never long, and at most 8 digits, as
/// the spec requires).
///
/// Why not the finest unit: a deadline sent on is a little shorter on
/// every call, and a value that differs on every request is a new HPACK
/// table entry each time, evicting the entries that make the other
/// headers cheap, on both ends of the connection. Calls made with the same
/// budget send the same value this way (a fresh call under a 2 s timeout
/// sends `1999m`), which HPACK indexes once.
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const UNITS: [(u128, char); 5] = [
        (3_600_000_000_000, 'H'),
        (1_000_000_000, 'S'),
        (1_000_000, 'm'),
        (1_000, 'u'),
        (1, 'n'),
    ];
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .map(|&(size, unit)| (nanos / size, unit))
        .find(|&(value, unit)| value >= 100 || unit == 'n')
        .expect("nanoseconds always qualify");
    let value = value.min(MAX);
    thread_local! {
        /// The last value made on this thread: calls made with the same
        /// budget repeat it, and a clone of it allocates nothing.
        static LAST: std::cell::RefCell<Option<(u128, char, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((v, u, header)) if *v == value && *u == unit => header.clone(),
        _ => {
            let text = format!("{value}{unit}");
            let header = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .expect("digits and a unit letter");
            *last = Some((value, unit, header.clone()));
            header
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        for d in [
            Duration::from_millis(300),
            Duration::from_secs(2),
            Duration::from_micros(1500),
            Duration::from_secs(3 * 3600),
        ] {
            let parsed = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            assert!(
                parsed <= d && d - parsed < Duration::from_millis(1),
                "{d:?}"
            );
        }
        assert_eq!(
            parse_grpc_timeout(&HeaderValue::from_static("100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("x")), None);
        // Never more than 8 digits, and never longer than asked.
        let long = parse_grpc_timeout(&format_grpc_timeout(Duration::MAX)).unwrap();
        assert_eq!(long, Duration::from_secs(99_999_999 * 3600));
        assert_eq!(
            parse_grpc_timeout(&HeaderValue::from_static("123456789S")),
            None
        );
    }

    #[test]
    fn grpc_timeouts_are_at_most_one_percent_short_and_repeat() {
        for micros in [
            1,
            99,
            100,
            999,
            1_000,
            12_345,
            299_999,
            1_999_990,
            86_400_000_000,
        ] {
            let d = Duration::from_micros(micros);
            let parsed = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            assert!(parsed <= d, "{d:?} sent as {parsed:?}");
            assert!(
                (d - parsed).as_nanos() * 100 <= d.as_nanos(),
                "{d:?} sent as {parsed:?}"
            );
        }
        let first = format_grpc_timeout(Duration::from_micros(1_999_990));
        let later = format_grpc_timeout(Duration::from_micros(1_999_100));
        assert_eq!(first, "1999m");
        assert_eq!(first, later, "the same budget, the same header value");
    }

    #[test]
    fn failures_are_trailers_only_errors() {
        let ok = http::Response::new(());
        assert!(!is_failure(&ok));
        let err = response(tonic::Status::unavailable("down"));
        assert!(is_failure(&err));
        assert_eq!(header_code(&err), Some(Code::Unavailable));
    }

    #[test]
    fn pushback_is_read_as_the_spec_says() {
        let mut r = http::Response::new(());
        assert_eq!(pushback(&r), None);
        r.headers_mut()
            .insert(PUSHBACK, HeaderValue::from_static("250"));
        assert_eq!(
            pushback(&r),
            Some(Pushback::After(Duration::from_millis(250)))
        );
        r.headers_mut()
            .insert(PUSHBACK, HeaderValue::from_static("-1"));
        assert_eq!(pushback(&r), Some(Pushback::Never));
    }
}
