//! The error answers and the face's own paths, shared by every HTTP document.

use super::http::JSON;
use serde_json::{Map, Value, json};

/// The error answers operations refer to.
pub(super) fn error_responses() -> Value {
    let status =
        json!({ JSON: { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } });
    let retry_after = json!({ "Retry-After": { "$ref": "#/components/headers/Retry-After" } });
    let answers = [
        (
            "BadRequest",
            "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is not valid (a google.rpc.BadRequest detail names the fields), or does not fit the state it meets (a google.rpc.PreconditionFailure detail says which condition), or the HTTP request itself does not parse.",
            None,
        ),
        (
            "Unauthorized",
            "UNAUTHENTICATED: the access token is missing, expired or not accepted, or names an account that does not exist or was deactivated.",
            Some(
                json!({ "WWW-Authenticate": { "$ref": "#/components/headers/WWW-Authenticate" } }),
            ),
        ),
        (
            "Forbidden",
            "PERMISSION_DENIED: the caller may not do this.",
            None,
        ),
        (
            "NotFound",
            "NOT_FOUND: what the path names does not exist, or is not the caller's.",
            None,
        ),
        (
            "Conflict",
            "ALREADY_EXISTS or ABORTED: the change conflicts with what exists or with a concurrent change.",
            None,
        ),
        (
            "PayloadTooLarge",
            "The body is larger than the server accepts.",
            None,
        ),
        (
            "UnsupportedMediaType",
            "The body is not Content-Type: application/json.",
            None,
        ),
        (
            "TooManyRequests",
            "RESOURCE_EXHAUSTED: a rate or load limit was reached; a google.rpc.RetryInfo detail and Retry-After say when to try again.",
            Some(retry_after.clone()),
        ),
        (
            "InternalError",
            "INTERNAL, UNKNOWN or DATA_LOSS: a fault of the server.",
            None,
        ),
        (
            "Unavailable",
            "UNAVAILABLE: a service the call needs did not answer or refused; Retry-After when the server knows when to try again.",
            Some(retry_after),
        ),
        (
            "GatewayTimeout",
            "DEADLINE_EXCEEDED: the call's deadline (the grpc-timeout header, or the server's default) ran out.",
            None,
        ),
        (
            "Error",
            "Any error, with the HTTP status of its gRPC code (PERMISSION_DENIED 403, CANCELLED 499, UNIMPLEMENTED 501, ...).",
            None,
        ),
    ];
    let mut out = Map::new();
    for (name, description, headers) in answers {
        let mut answer = json!({ "description": description, "content": status.clone() });
        if let Some(headers) = headers {
            answer["headers"] = headers;
        }
        out.insert(name.to_string(), answer);
    }
    Value::Object(out)
}

/// The paths the face serves besides the rules.
pub(super) fn face_paths() -> Vec<(&'static str, Map<String, Value>)> {
    let health = |id: &str, summary: &str, description: &str| {
        let answer = |text: &str| {
            json!({
                "description": text,
                "content": { JSON: { "schema": { "$ref": "#/components/schemas/grpc.health.v1.HealthCheckResponse" } } },
            })
        };
        let mut item = Map::new();
        item.insert(
            "get".to_string(),
            json!({
                "operationId": id,
                "tags": ["Health"],
                "summary": summary,
                "description": description,
                "security": [],
                "responses": {
                    "200": answer("Serving: {\"status\": \"SERVING\"}."),
                    "503": answer("Not serving, or the check failed: {\"status\": \"NOT_SERVING\"} or \"UNKNOWN\"."),
                },
            }),
        );
        item
    };
    let mut document = Map::new();
    document.insert(
        "get".to_string(),
        json!({
            "operationId": "GetOpenApiDocument",
            "tags": ["Documentation"],
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document of this service.",
                    "content": { JSON: { "schema": { "type": "object" } } },
                }
            },
        }),
    );
    vec![
        ("/openapi.json", document),
        (
            "/health/live",
            health(
                "HealthLive",
                "Liveness",
                "Whether the process is alive (the gRPC health check of the \"liveness\" entry); a failing probe means restart it.",
            ),
        ),
        (
            "/health/ready",
            health(
                "HealthReady",
                "Readiness",
                "Whether the server takes calls (the gRPC health check of the overall \"\" entry); a failing probe means send it no traffic.",
            ),
        ),
    ]
}
