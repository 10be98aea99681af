//! Errors over HTTP: the gRPC code as an HTTP status (the mapping of
//! `google.rpc.Code`'s documentation, which Envoy and grpc-gateway use),
//! and a `google.rpc.Status` JSON body with its details.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;
use tonic_types::StatusExt as _;

/// The HTTP status of a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The response for `status`: its HTTP status (or `http`, when the
/// refusal is HTTP's own: 405, 413, 415), `Content-Type:
/// application/json`, the `google.rpc.Status` as JSON with its details,
/// `Retry-After` from a `RetryInfo`, and `WWW-Authenticate` when the call
/// carried one.
pub(crate) fn error_response(
    pool: &DescriptorPool,
    status: &tonic::Status,
    http: Option<StatusCode>,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        status_json(pool, status),
    )));
    *response.status_mut() = http.unwrap_or_else(|| http_status(status.code()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        // Whole seconds, rounded up: never "retry now" for a short delay.
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if let Some(challenge) = status.metadata().get("www-authenticate")
        && let Ok(value) = HeaderValue::from_bytes(challenge.as_bytes())
    {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `status` as `google.rpc.Status` JSON, printed as answers are (every
/// field without presence, `"details": []` and a violation's `"reason": ""`
/// included, as Envoy's transcoder prints them): from its encoded details
/// when it has them (they carry the code, message and details), else from
/// its code and message.
pub(crate) fn status_json(pool: &DescriptorPool, status: &tonic::Status) -> Bytes {
    let Some(desc) = pool.get_message_by_name("google.rpc.Status") else {
        return Bytes::from(
            serde_json::json!({ "code": status.code() as i32, "message": status.message() })
                .to_string(),
        );
    };
    let decoded = Some(status.details())
        .filter(|d| !d.is_empty())
        .and_then(|d| DynamicMessage::decode(desc.clone(), d).ok());
    let message = decoded.unwrap_or_else(|| {
        let mut message = DynamicMessage::new(desc);
        message.set_field_by_name("code", prost_reflect::Value::I32(status.code() as i32));
        message.set_field_by_name(
            "message",
            prost_reflect::Value::String(status.message().to_string()),
        );
        message
    });
    crate::service::to_json(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn pool() -> DescriptorPool {
        let mut pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).unwrap();
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .unwrap();
        pool
    }

    #[test]
    fn codes_map_to_the_documented_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), 400);
        assert_eq!(http_status(Code::Unauthenticated), 401);
        assert_eq!(http_status(Code::PermissionDenied), 403);
        assert_eq!(http_status(Code::NotFound), 404);
        assert_eq!(http_status(Code::AlreadyExists), 409);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::Unavailable), 503);
        assert_eq!(http_status(Code::DeadlineExceeded), 504);
    }

    #[test]
    fn details_become_json_and_retry_info_a_retry_after() {
        let mut details = ErrorDetails::with_bad_request_violation("email", "must not be empty");
        details.set_retry_info(Some(std::time::Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "bad", details);
        let response = error_response(&pool(), &status, None);
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["retry-after"], "2");
        let json: serde_json::Value =
            serde_json::from_slice(&status_json(&pool(), &status)).unwrap();
        assert_eq!(json["code"], 3);
        assert_eq!(json["message"], "bad");
        let bad = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .unwrap();
        assert_eq!(bad["fieldViolations"][0]["field"], "email");

        let plain = tonic::Status::not_found("order 1 not found");
        let json: serde_json::Value =
            serde_json::from_slice(&status_json(&pool(), &plain)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": 5, "message": "order 1 not found", "details": []})
        );
    }
}
