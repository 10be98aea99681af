//! The spans of gRPC calls, named and described by OpenTelemetry's RPC
//! semantic conventions: the span is named `package.Service/Method`, of
//! kind server or client, with `rpc.system`, `rpc.service`, `rpc.method`,
//! and `rpc.grpc.status_code` recorded when the call's status is known (by
//! the metrics layers, which see every answer, trailers included), with the
//! span's status an error as the conventions say ([`is_error`]).

/// The span field a call's gRPC status code is recorded in.
pub const STATUS_CODE: &str = "rpc.grpc.status_code";

/// Whether a call that ended with `code` is an error of its span: any code
/// but OK for a client; for a server only the codes that are its own fault
/// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS), not a caller's mistake.
pub fn is_error(code: tonic::Code, server: bool) -> bool {
    use tonic::Code;
    if !server {
        return code != Code::Ok;
    }
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Records how a call ended on its span.
pub(crate) fn record_end(span: &tracing::Span, code: tonic::Code, server: bool) {
    span.record(STATUS_CODE, code as i64);
    if is_error(code, server) {
        span.record("otel.status_code", "error");
    }
}

/// `("shop.orders.v1.OrderService", "PlaceOrder")` of
/// `/shop.orders.v1.OrderService/PlaceOrder`; a path of another shape is
/// all service.
pub fn rpc_parts(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The span of a call this process answers, from `caller` (its SPIFFE ID,
/// empty over plaintext).
pub fn server(path: &str, caller: &str) -> tracing::Span {
    let (service, method) = rpc_parts(path);
    tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        caller,
    )
}

/// The span of a call this process makes to `upstream`.
pub fn client(path: &str, upstream: &str) -> tracing::Span {
    let (service, method) = rpc_parts(path);
    tracing::info_span!(
        "grpc.client",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        upstream,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_service_and_method() {
        assert_eq!(
            rpc_parts("/shop.orders.v1.OrderService/PlaceOrder"),
            ("shop.orders.v1.OrderService", "PlaceOrder")
        );
        assert_eq!(rpc_parts("/odd"), ("odd", ""));
    }

    #[test]
    fn a_callers_mistake_is_an_error_for_the_client_only() {
        use tonic::Code;
        assert!(is_error(Code::InvalidArgument, false));
        assert!(!is_error(Code::InvalidArgument, true));
        assert!(!is_error(Code::PermissionDenied, true));
        assert!(is_error(Code::Unavailable, true));
        assert!(!is_error(Code::Ok, false));
    }
}
