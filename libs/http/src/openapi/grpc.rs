//! The document of a gRPC-only service.

use super::http::{JSON, describe_operation};
use super::schema::{Generator, tag_object};
use super::text::join_paragraphs;
use super::{Info, OPENAPI_VERSION};
use prost_reflect::ServiceDescriptor;
use serde_json::{Map, Value, json};

// === gRPC-only documents ===

/// What every gRPC-only document says, after the service's own comment.
pub(super) const GRPC_ONLY: &str = "This service is gRPC only: it is not served over HTTP/JSON, and the paths here are not HTTP endpoints. This document only shows its methods and messages: each method is listed as POST /<package>.<Service>/<Method>, the path gRPC calls it by, with its request and response messages in the proto3 JSON mapping, the JSON that grpcurl takes (-d) and prints. An error is a gRPC status, shown as the google.rpc.Status that grpcurl -format-error prints.";

pub(super) fn grpc_document(
    walk: &mut Generator<'_>,
    svc: &ServiceDescriptor,
    info: &Info,
) -> Value {
    let tag = svc.name().to_string();
    let mut paths = Map::new();
    for method in svc.methods() {
        let comment = walk.comment(&method.parent_file(), method.path());
        let mut operation = json!({
            "operationId": method.name(),
            "tags": [tag],
        });
        describe_operation(&mut operation, comment.as_deref(), &method);
        let streaming = match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => None,
            (true, false) => Some("Client streaming: the request is a stream of these messages."),
            (false, true) => Some("Server streaming: the answer is a stream of these messages."),
            (true, true) => {
                Some("Bidirectional streaming: requests and answers are streams of these messages.")
            }
        };
        if let Some(note) = streaming {
            let text = join_paragraphs([comment.clone(), Some(note.to_string())]);
            operation["description"] = Value::String(text);
        }
        operation["requestBody"] = json!({
            "required": true,
            "content": { JSON: { "schema": walk.message_schema(&method.input()) } },
        });
        operation["responses"] = json!({
            "200": {
                "description": walk.message_summary(&method.output()).unwrap_or_else(|| "OK".to_string()),
                "content": { JSON: { "schema": walk.message_schema(&method.output()) } },
            },
            "default": {
                "description": "A gRPC error: its status code, message and typed details.",
                "content": { JSON: { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
            },
        });
        let mut item = Map::new();
        item.insert("post".to_string(), operation);
        paths.insert(
            format!("/{}/{}", svc.full_name(), method.name()),
            Value::Object(item),
        );
    }
    let description = join_paragraphs([
        walk.comment(&svc.parent_file(), svc.path()),
        Some(GRPC_ONLY.to_string()),
    ]);
    json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": info.title,
            "version": info.version,
            "description": description,
        },
        "x-grpc-only": true,
        "tags": [tag_object(&tag, walk.comment(&svc.parent_file(), svc.path()).as_deref())],
        "paths": paths,
        "components": {},
    })
}
