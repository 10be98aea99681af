//! The document of a service with HTTP rules: its operations.

use super::errors::{error_responses, face_paths};
use super::schema::{Generator, tag_object};
use super::text::{join_paragraphs, summary};
use super::well_known::well_known;
use super::{Info, OPENAPI_VERSION, OpenApiError};
use crate::rules::{BodyRule, Route};
use prost_reflect::{
    FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ServiceDescriptor,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

// === HTTP documents ===

/// The media type of every body.
pub(super) const JSON: &str = "application/json";

pub(super) fn http_document(
    walk: &mut Generator<'_>,
    svc: &ServiceDescriptor,
    routes: &[Route],
    info: &Info,
) -> Result<Value, OpenApiError> {
    let tag = svc.name().to_string();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    for route in routes {
        let count = operation_ids
            .entry(route.rpc.name().to_string())
            .or_default();
        *count += 1;
        let id = match *count {
            1 => route.rpc.name().to_string(),
            n => format!("{}_{n}", route.rpc.name()),
        };
        let operation = http_operation(walk, route, &id, &tag)?;
        paths
            .entry(route.template.to_string())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    for (path, item) in face_paths() {
        paths.insert(path.to_string(), item);
    }
    walk.schemas.insert(
        "grpc.health.v1.HealthCheckResponse".to_string(),
        json!({
            "type": "object",
            "description": "The answer of /health/live and /health/ready: the serving status of the gRPC health check (grpc.health.v1.HealthCheckResponse in the proto3 JSON mapping). UNKNOWN also when the check could not be made.",
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"],
                }
            },
            "required": ["status"],
        }),
    );
    let description = join_paragraphs([
        walk.comment(&svc.parent_file(), svc.path()),
        Some(HTTP_FACE.to_string()),
    ]);
    Ok(json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": info.title,
            "version": info.version,
            "description": description,
        },
        "tags": [
            tag_object(&tag, walk.comment(&svc.parent_file(), svc.path()).as_deref()),
            { "name": "Health", "description": "Probes of the server, answered from its gRPC health service." },
            { "name": "Documentation", "description": "This document." },
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from LogIn, as \"Authorization: Bearer <token>\". Operations that need it say so; the others take none.",
                }
            },
            "responses": error_responses(),
            "headers": {
                "Retry-After": {
                    "description": "Whole seconds to wait before retrying (rounded up from the google.rpc.RetryInfo detail); present when the error carries one.",
                    "schema": { "type": "integer", "minimum": 1 },
                },
                "WWW-Authenticate": {
                    "description": "The bearer challenge (RFC 6750), e.g. Bearer realm=\"shop\", error=\"invalid_token\".",
                    "schema": { "type": "string" },
                },
            },
        },
    }))
}

/// What every HTTP document says about the face, after the service's own
/// comment.
pub(super) const HTTP_FACE: &str = "Requests and answers are JSON in the proto3 JSON mapping: field names in lowerCamelCase, 64-bit integers as strings, enums by name, timestamps in RFC 3339. Answers print every field without presence, even at its default; fields with presence (messages, `optional` scalars) are left out when unset. Unknown fields in a request are refused. Operations without a body take the request's other fields from the query string (`?pageSize=10`, dotted names for nested fields, a repeated field by repeating it).\n\nErrors answer with the HTTP status of their gRPC code and a google.rpc.Status body whose details are typed (google.rpc.BadRequest, RetryInfo, PreconditionFailure, ...). A path the server does not know is 404; a known path with another method is 405 with an Allow header.";

/// Whether the method's comment marks it as needing the bearer token.
pub(super) fn authenticated(
    walk: &Generator<'_>,
    method: &MethodDescriptor,
) -> Result<bool, OpenApiError> {
    let comment = walk
        .comment(&method.parent_file(), method.path())
        .unwrap_or_default();
    needs_token(&comment).ok_or_else(|| OpenApiError::Access {
        method: method.full_name().to_string(),
    })
}

/// `Some(true)` for a comment that says "Authenticated.", `Some(false)`
/// for one that says "Public.", `None` for one that says neither or both.
pub(super) fn needs_token(comment: &str) -> Option<bool> {
    let said = |marker: &str| comment.split_whitespace().any(|word| word == marker);
    match (said("Authenticated."), said("Public.")) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

pub(super) fn http_operation(
    walk: &mut Generator<'_>,
    route: &Route,
    id: &str,
    tag: &str,
) -> Result<Value, OpenApiError> {
    let method = &route.rpc;
    let input = method.input();
    let comment = walk.comment(&method.parent_file(), method.path());
    let authenticated = authenticated(walk, method)?;

    // The fields the path binds, as field chains.
    let bound: Vec<Vec<FieldDescriptor>> = route
        .template
        .variables()
        .filter_map(|variable| field_chain(&input, variable))
        .collect();
    let mut parameters = Vec::new();
    for chain in &bound {
        let leaf = chain.last().expect("a chain has a field");
        let name: Vec<&str> = chain.iter().map(|f| f.name()).collect();
        let mut parameter = json!({
            "name": name.join("."),
            "in": "path",
            "required": true,
            "schema": walk.field_schema(leaf),
        });
        if let Some(text) = walk.field_comment(leaf) {
            parameter["description"] = Value::String(text);
        }
        parameters.push(parameter);
    }
    let body_field = match &route.body {
        BodyRule::Field(field) => Some(field.clone()),
        BodyRule::None | BodyRule::All => None,
    };
    if !matches!(route.body, BodyRule::All) {
        let mut visiting = vec![input.full_name().to_string()];
        query_parameters(
            walk,
            &input,
            &mut Vec::new(),
            &bound,
            body_field.as_ref(),
            &mut visiting,
            &mut parameters,
        );
    }
    if let Some(field) = input.get_field_by_name("idempotency_key")
        && field.kind() == Kind::String
        && !field.is_list()
    {
        parameters.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "description": format!("Fills {} when the request leaves it empty; when both are given they must be equal.", field.json_name()),
            "schema": { "type": "string" },
        }));
    }

    let security = if authenticated {
        json!([{ "bearerAuth": [] }])
    } else {
        json!([])
    };
    let mut operation = json!({
        "operationId": id,
        "tags": [tag],
        "x-grpc-method": route.grpc_path,
        "security": security,
    });
    describe_operation(&mut operation, comment.as_deref(), method);
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    let body = match &route.body {
        BodyRule::None => None,
        BodyRule::All => Some(walk.body_schema(&input, &bound)),
        BodyRule::Field(field) => Some(walk.field_schema(field)),
    };
    let has_body = body.is_some();
    if let Some(schema) = body {
        // Not required: the face reads a missing body as the empty message
        // (what proto3 JSON makes of `{}`), and the handler then names the
        // fields it needs.
        operation["requestBody"] = json!({
            "required": false,
            "content": { JSON: { "schema": schema } },
        });
    }

    let output = method.output();
    let shown = match &route.response_body {
        Some(field) => match field.kind() {
            Kind::Message(message) if !field.is_list() && !field.is_map() => message,
            _ => output,
        },
        None => output,
    };
    let mut responses = Map::new();
    responses.insert(
        "200".to_string(),
        json!({
            "description": walk.message_summary(&shown).unwrap_or_else(|| "OK".to_string()),
            "content": { JSON: { "schema": walk.message_schema(&shown) } },
        }),
    );
    // The error answers an operation lists: those every call may meet, and
    // those its shape or its comment make likely. `default` covers the rest.
    let named = |code: &str| {
        comment.as_deref().is_some_and(|text| {
            text.split(|c: char| !c.is_ascii_uppercase() && c != '_')
                .any(|word| word == code)
        })
    };
    let side_effects = !matches!(idempotency_level(method), Some(1));
    let mut errors = BTreeMap::from([
        ("400", "BadRequest"),
        ("429", "TooManyRequests"),
        ("500", "InternalError"),
        ("503", "Unavailable"),
        ("504", "GatewayTimeout"),
        ("default", "Error"),
    ]);
    if authenticated || named("UNAUTHENTICATED") {
        errors.insert("401", "Unauthorized");
    }
    if named("PERMISSION_DENIED") {
        errors.insert("403", "Forbidden");
    }
    if !bound.is_empty() || named("NOT_FOUND") {
        errors.insert("404", "NotFound");
    }
    if side_effects || named("ALREADY_EXISTS") || named("ABORTED") {
        errors.insert("409", "Conflict");
    }
    if has_body {
        errors.insert("413", "PayloadTooLarge");
        errors.insert("415", "UnsupportedMediaType");
    }
    for (code, name) in errors {
        responses.insert(
            code.to_string(),
            json!({ "$ref": format!("#/components/responses/{name}") }),
        );
    }
    operation["responses"] = Value::Object(responses);
    Ok(operation)
}

/// The method's `idempotency_level` option, when set (1 is
/// `NO_SIDE_EFFECTS`, 2 `IDEMPOTENT`).
pub(super) fn idempotency_level(method: &MethodDescriptor) -> Option<i32> {
    method
        .method_descriptor_proto()
        .options
        .as_ref()
        .and_then(|o| o.idempotency_level)
}

/// Summary, description and `deprecated` of an operation from its method.
pub(super) fn describe_operation(
    operation: &mut Value,
    comment: Option<&str>,
    method: &MethodDescriptor,
) {
    if let Some(text) = summary(comment) {
        operation["summary"] = Value::String(text);
    }
    if let Some(text) = comment {
        operation["description"] = Value::String(text.to_string());
    }
    let deprecated = method
        .method_descriptor_proto()
        .options
        .as_ref()
        .and_then(|o| o.deprecated)
        .unwrap_or(false);
    if deprecated {
        operation["deprecated"] = Value::Bool(true);
    }
}

/// The fields of a template variable, by proto or JSON name as the face
/// resolves them.
pub(super) fn field_chain(
    message: &MessageDescriptor,
    path: &[String],
) -> Option<Vec<FieldDescriptor>> {
    let mut current = message.clone();
    let mut chain = Vec::new();
    for name in path {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))?;
        if let Kind::Message(next) = field.kind() {
            current = next;
        }
        chain.push(field);
    }
    Some(chain)
}

pub(super) fn same_chain(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.full_name() == y.full_name())
}

/// Query parameters: every field the path and the body leave, that the face
/// can take from a query string (scalars, enums, repeated ones), by JSON
/// name, through singular message fields with dotted names.
pub(super) fn query_parameters(
    walk: &mut Generator<'_>,
    message: &MessageDescriptor,
    prefix: &mut Vec<FieldDescriptor>,
    bound: &[Vec<FieldDescriptor>],
    body: Option<&FieldDescriptor>,
    visiting: &mut Vec<String>,
    out: &mut Vec<Value>,
) {
    for field in message.fields() {
        if prefix.is_empty() && body.is_some_and(|b| b.full_name() == field.full_name()) {
            continue;
        }
        prefix.push(field.clone());
        let skip = bound.iter().any(|chain| same_chain(chain, prefix)) || field.is_map();
        if !skip {
            match field.kind() {
                Kind::Message(nested) => {
                    let expand = !field.is_list()
                        && well_known(&nested).is_none()
                        && !visiting.iter().any(|v| v == nested.full_name());
                    if expand {
                        visiting.push(nested.full_name().to_string());
                        query_parameters(walk, &nested, prefix, bound, None, visiting, out);
                        visiting.pop();
                    }
                }
                _ => {
                    let name: Vec<&str> = prefix.iter().map(|f| f.json_name()).collect();
                    let mut parameter = json!({
                        "name": name.join("."),
                        "in": "query",
                        "schema": walk.field_schema(&field),
                    });
                    if let Some(text) = walk.field_comment(&field) {
                        parameter["description"] = Value::String(text);
                    }
                    out.push(parameter);
                }
            }
        }
        prefix.pop();
    }
}
