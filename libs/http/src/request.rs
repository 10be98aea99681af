//! An HTTP request as the method's request message: the JSON body (proto3
//! JSON mapping), then the path's variables, the query string's
//! parameters and the `Idempotency-Key` header.

use crate::rules::{BodyRule, Route, field_path};
use http::StatusCode;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};
use serde::de::DeserializeSeed as _;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// A request refused before the call: its status and, where HTTP has its
/// own, the HTTP status.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: Status,
    pub(crate) http: Option<StatusCode>,
}

impl Refusal {
    fn field(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        Refusal {
            status: Status::with_error_details(
                Code::InvalidArgument,
                format!("{field}: {description}"),
                ErrorDetails::with_bad_request_violation(field, description),
            ),
            http: None,
        }
    }
}

/// What the request carried besides its path.
pub(crate) struct Parts<'a> {
    pub(crate) query: Option<&'a str>,
    pub(crate) body: &'a [u8],
    pub(crate) content_type: Option<&'a str>,
    pub(crate) idempotency_key: Option<&'a str>,
}

/// The request message of `route` from `bound` path variables and `parts`.
pub(crate) fn message(
    route: &Route,
    bound: Vec<(&[String], String)>,
    parts: &Parts<'_>,
) -> Result<DynamicMessage, Refusal> {
    let input = route.rpc.input();
    let mut message = DynamicMessage::new(input.clone());
    let has_body = !parts.body.iter().all(u8::is_ascii_whitespace);
    if has_body {
        let json = parts
            .content_type
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Refusal {
                status: Status::invalid_argument(
                    "the body must be JSON (Content-Type: application/json)",
                ),
                http: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            });
        }
    }
    match (&route.body, has_body) {
        (BodyRule::None, true) => {
            return Err(Refusal::field("body", "this operation takes no body"));
        }
        (BodyRule::None, false) | (BodyRule::All | BodyRule::Field(_), false) => {}
        (BodyRule::All, true) => message = json(&input, parts.body)?,
        (BodyRule::Field(field), true) => {
            let Kind::Message(m) = field.kind() else {
                return Err(Refusal::field(
                    field.name(),
                    "only message fields take a body",
                ));
            };
            message.set_field(field, Value::Message(json(&m, parts.body)?));
        }
    }
    for (path, text) in bound {
        let field = field_path(&input, path).map_err(|e| Refusal::field(&path.join("."), e))?;
        let value = scalar(&field, &text).map_err(|e| Refusal::field(&path.join("."), e))?;
        set_nested(&mut message, path, value);
    }
    if let Some(query) = parts.query.filter(|q| !q.is_empty()) {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key);
            let value = decode(value);
            if matches!(route.body, BodyRule::All) {
                return Err(Refusal::field(
                    &key,
                    "this operation takes its fields from the body, not the query",
                ));
            }
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            let field = field_path(&input, &path).map_err(|e| Refusal::field(&key, e))?;
            let value = scalar(&field, &value).map_err(|e| Refusal::field(&key, e))?;
            if field.is_list() {
                push_nested(&mut message, &path, value);
            } else {
                set_nested(&mut message, &path, value);
            }
        }
    }
    if let Some(key) = parts.idempotency_key
        && let Some(field) = input.get_field_by_name("idempotency_key")
        && field.kind() == Kind::String
    {
        match message.get_field(&field).as_str() {
            Some("") | None => message.set_field(&field, Value::String(key.to_string())),
            Some(same) if same == key => {}
            Some(_) => {
                return Err(Refusal::field(
                    "idempotency_key",
                    "differs from the Idempotency-Key header",
                ));
            }
        }
    }
    Ok(message)
}

fn json(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message = desc
        .clone()
        .deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| Refusal {
            status: Status::invalid_argument(format!(
                "the body is not a valid {}: {e}",
                desc.name()
            )),
            http: None,
        })?;
    Ok(message)
}

/// `+` as space, then percent-decoding (lossy: a bad sequence is text).
fn decode(text: &str) -> String {
    let text = text.replace('+', " ");
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A path or query value as the field's type.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let number = |what: &str| format!("must be {what}");
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_string()),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(number("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| number("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| number("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            text.parse()
                .map_err(|_| number("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            text.parse()
                .map_err(|_| number("an unsigned 64-bit integer"))?,
        ),
        Kind::Float => Value::F32(text.parse().map_err(|_| number("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| number("a number"))?),
        Kind::Bytes => {
            use base64::Engine as _;
            let engine = base64::engine::general_purpose::STANDARD;
            Value::Bytes(engine.decode(text).map_err(|_| number("base64"))?.into())
        }
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => {
                let names: Vec<_> = e.values().map(|v| v.name().to_string()).collect();
                return Err(format!("must be one of {}", names.join(", ")));
            }
        },
        Kind::Message(_) => return Err("cannot be given in the path or query".into()),
    })
}

fn target<'m>(
    message: &'m mut DynamicMessage,
    path: &[String],
) -> Option<(&'m mut DynamicMessage, FieldDescriptor)> {
    let (last, parents) = path.split_last()?;
    let mut current = message;
    for name in parents {
        let field = field_path(&current.descriptor(), std::slice::from_ref(name)).ok()?;
        current = current.get_field_mut(&field).as_message_mut()?;
    }
    let field = field_path(&current.descriptor(), std::slice::from_ref(last)).ok()?;
    Some((current, field))
}

fn set_nested(message: &mut DynamicMessage, path: &[String], value: Value) {
    if let Some((m, field)) = target(message, path) {
        m.set_field(&field, value);
    }
}

fn push_nested(message: &mut DynamicMessage, path: &[String], value: Value) {
    if let Some((m, field)) = target(message, path)
        && let Some(list) = m.get_field_mut(&field).as_list_mut()
    {
        list.push(value);
    }
}
