//! The spans of gRPC calls, named and described by OpenTelemetry's RPC
//! semantic conventions: the span is named `package.Service/Method`, of
//! kind server or client, with `rpc.system`, `rpc.service`, `rpc.method`,
//! and `rpc.grpc.status_code` recorded when the call's status is known (by
//! the metrics layers, which see every answer, trailers included).

/// The span field a call's gRPC status code is recorded in.
pub const STATUS_CODE: &str = "rpc.grpc.status_code";

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
}
