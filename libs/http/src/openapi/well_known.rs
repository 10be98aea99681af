//! The JSON forms of well-known types, and the google.rpc types' descriptions.

use super::schema::scalar_schema;
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Value, json};

/// The JSON form of a well-known type, which the mapping gives its own
/// shape.
pub(super) fn well_known(message: &MessageDescriptor) -> Option<Value> {
    let wrapped = |kind: Kind| {
        let mut schema = scalar_schema(&kind);
        schema["description"] = Value::String(format!(
            "{}: the wrapped value itself.",
            message.full_name()
        ));
        schema
    };
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "A duration in seconds with an s suffix, e.g. \"1.5s\".",
        }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "description": "A message of the type \"@type\" names (type.googleapis.com/<full name>), with that type's fields beside it.",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
        }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({ "description": "Any JSON value." }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Field paths in lowerCamelCase, separated by commas.",
        }),
        "google.protobuf.DoubleValue" => wrapped(Kind::Double),
        "google.protobuf.FloatValue" => wrapped(Kind::Float),
        "google.protobuf.Int64Value" => wrapped(Kind::Int64),
        "google.protobuf.UInt64Value" => wrapped(Kind::Uint64),
        "google.protobuf.Int32Value" => wrapped(Kind::Int32),
        "google.protobuf.UInt32Value" => wrapped(Kind::Uint32),
        "google.protobuf.BoolValue" => wrapped(Kind::Bool),
        "google.protobuf.StringValue" => wrapped(Kind::String),
        "google.protobuf.BytesValue" => wrapped(Kind::Bytes),
        _ => return None,
    })
}

/// Descriptions of the `google.rpc` types, whose descriptors (from
/// tonic-types) carry no comments; abridged from their `.proto` files.
pub(super) const GOOGLE_RPC: &[(&str, &str)] = &[
    (
        "google.rpc.Status",
        "An error: its gRPC status code, a message for developers, and typed details.",
    ),
    (
        "google.rpc.Status.code",
        "The gRPC status code (google.rpc.Code): 3 INVALID_ARGUMENT, 5 NOT_FOUND, 9 FAILED_PRECONDITION, 14 UNAVAILABLE, ... Left out when 0.",
    ),
    (
        "google.rpc.Status.message",
        "A message for developers, in English; not meant to be shown to end users.",
    ),
    (
        "google.rpc.Status.details",
        "Typed details, each with \"@type\" naming it: type.googleapis.com/google.rpc.BadRequest, RetryInfo, PreconditionFailure, ErrorInfo, QuotaFailure, ResourceInfo, Help, LocalizedMessage, RequestInfo or DebugInfo (their schemas are among these components).",
    ),
    (
        "google.rpc.BadRequest",
        "Which fields of the request are not valid, and why.",
    ),
    (
        "google.rpc.BadRequest.field_violations",
        "One entry per field that is not valid.",
    ),
    (
        "google.rpc.BadRequest.FieldViolation",
        "A field that is not valid.",
    ),
    (
        "google.rpc.BadRequest.FieldViolation.field",
        "The field's path, e.g. \"lines[0].quantity\".",
    ),
    (
        "google.rpc.BadRequest.FieldViolation.description",
        "Why it is not valid.",
    ),
    (
        "google.rpc.RetryInfo",
        "When the client may retry: not before retryDelay has passed.",
    ),
    (
        "google.rpc.RetryInfo.retry_delay",
        "How long to wait before retrying.",
    ),
    (
        "google.rpc.PreconditionFailure",
        "Conditions of the system that the request does not meet.",
    ),
    (
        "google.rpc.PreconditionFailure.Violation",
        "A condition that is not met.",
    ),
    (
        "google.rpc.PreconditionFailure.Violation.type",
        "The kind of condition, specific to the service.",
    ),
    (
        "google.rpc.PreconditionFailure.Violation.subject",
        "What it applies to.",
    ),
    (
        "google.rpc.PreconditionFailure.Violation.description",
        "How it fails.",
    ),
    (
        "google.rpc.ErrorInfo",
        "The error's cause as a machine-readable reason, with its domain and metadata.",
    ),
    ("google.rpc.QuotaFailure", "Which quota checks failed."),
    (
        "google.rpc.ResourceInfo",
        "The resource the error is about.",
    ),
    ("google.rpc.Help", "Links to documentation about the error."),
    (
        "google.rpc.LocalizedMessage",
        "A message about the error that can be shown to end users.",
    ),
    (
        "google.rpc.RequestInfo",
        "The request the error belongs to, for reports.",
    ),
    (
        "google.rpc.DebugInfo",
        "Debugging information from the server.",
    ),
];
