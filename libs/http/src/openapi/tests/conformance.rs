//! What the face answers (successes and errors, printed by the face's own
//! code) fits the document's schemas: checked by a small validator of the
//! JSON Schema keywords the generator writes, which fails on any other.

use super::super::schema::{BASE64, INT64, UINT64, reference};
use super::super::*;
use super::{gateway, pool, resolve};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use serde_json::{Value, json};

/// A small validator of the keywords the generator uses; any other
/// keyword fails the test, so that nothing is silently left unchecked.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("{at}: {what} (value {value}, schema {schema})"));
    let Some(schema) = schema.as_object() else {
        return fail("a schema that is not an object".into());
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "description" | "deprecated" | "contentEncoding" => {}
            "$ref" => {
                let target = resolve(doc, rule.as_str().unwrap()).ok_or("a dangling $ref")?;
                validate(doc, target, value, at)?;
            }
            "type" => {
                let ok = match rule.as_str().unwrap() {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    other => return fail(format!("type {other}")),
                };
                if !ok {
                    return fail("wrong type".into());
                }
            }
            "format" => match (rule.as_str().unwrap(), value.as_str()) {
                ("date-time", Some(text)) => {
                    let ok = text.len() >= 20
                        && text.as_bytes()[10] == b'T'
                        && text.ends_with('Z')
                        && text[..4].bytes().all(|b| b.is_ascii_digit());
                    if !ok {
                        return fail("not an RFC 3339 date-time".into());
                    }
                }
                ("int32" | "double" | "float", None) => {}
                (other, _) => return fail(format!("format {other}")),
            },
            "pattern" => {
                let text = value.as_str().unwrap_or_default();
                let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
                let ok = match rule.as_str().unwrap() {
                    INT64 => digits(text.strip_prefix('-').unwrap_or(text)),
                    UINT64 => digits(text),
                    BASE64 => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .is_ok()
                    }
                    "^-?[0-9]+(\\.[0-9]{1,9})?s$" => {
                        let t = text.strip_suffix('s').unwrap_or("x");
                        let t = t.strip_prefix('-').unwrap_or(t);
                        match t.split_once('.') {
                            Some((whole, frac)) => digits(whole) && digits(frac) && frac.len() <= 9,
                            None => digits(t),
                        }
                    }
                    other => return fail(format!("pattern {other}")),
                };
                if !ok {
                    return fail("does not match the pattern".into());
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(value) {
                    return fail("not one of the enum".into());
                }
            }
            "minimum" | "maximum" => {
                let (Some(n), Some(bound)) = (value.as_f64(), rule.as_f64()) else {
                    continue;
                };
                if (keyword == "minimum" && n < bound) || (keyword == "maximum" && n > bound) {
                    return fail(format!("out of {keyword}"));
                }
            }
            "anyOf" => {
                let any = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| validate(doc, s, value, at).is_ok());
                if !any {
                    return fail("no branch of anyOf".into());
                }
            }
            "required" => {
                for name in rule.as_array().unwrap() {
                    if value.get(name.as_str().unwrap()).is_none() {
                        return fail(format!("{name} missing"));
                    }
                }
            }
            "properties" | "additionalProperties" | "propertyNames" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                let properties = schema.get("properties").and_then(Value::as_object);
                for (name, item) in object {
                    let at = format!("{at}.{name}");
                    match (keyword.as_str(), properties.and_then(|p| p.get(name))) {
                        ("properties", Some(s)) => validate(doc, s, item, &at)?,
                        ("additionalProperties", None) => validate(doc, rule, item, &at)?,
                        ("propertyNames", _) => validate(doc, rule, &json!(name), &at)?,
                        _ => {}
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    validate(doc, rule, item, &format!("{at}[{i}]"))?;
                }
            }
            other => return fail(format!("keyword {other} is not checked")),
        }
    }
    Ok(())
}

/// A value of every kind for a field, far from the defaults.
fn sample(pool: &DescriptorPool, kind: &Kind, depth: usize) -> Option<prost_reflect::Value> {
    use prost_reflect::Value as V;
    Some(match kind {
        Kind::Double => V::F64(-1.5e300),
        Kind::Float => V::F32(f32::NAN),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => V::I32(i32::MIN),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => V::I64(i64::MIN),
        Kind::Uint32 | Kind::Fixed32 => V::U32(u32::MAX),
        Kind::Uint64 | Kind::Fixed64 => V::U64(u64::MAX),
        Kind::Bool => V::Bool(true),
        Kind::String => V::String("x \"é\"".to_string()),
        Kind::Bytes => V::Bytes(vec![0xff, 0, 0xfe, 1].into()),
        Kind::Enum(e) => V::EnumNumber(e.values().last()?.number()),
        Kind::Message(m) => V::Message(filled(pool, m, depth.checked_sub(1)?)),
    })
}

/// `message` with every field set (one item per list and map).
fn filled(
    pool: &DescriptorPool,
    message: &MessageDescriptor,
    depth: usize,
) -> prost_reflect::DynamicMessage {
    use prost_reflect::{DynamicMessage, MapKey, Value as V};
    let mut out = DynamicMessage::new(message.clone());
    match message.full_name() {
        "google.protobuf.Timestamp" => {
            out.set_field_by_name("seconds", V::I64(1_700_000_000));
            out.set_field_by_name("nanos", V::I32(5_000));
            return out;
        }
        "google.protobuf.Duration" => {
            out.set_field_by_name("seconds", V::I64(-1));
            out.set_field_by_name("nanos", V::I32(-500_000_000));
            return out;
        }
        "google.protobuf.Any" => {
            let detail = pool.get_message_by_name("google.rpc.RetryInfo").unwrap();
            let packed = filled(pool, &detail, depth);
            out.set_field_by_name(
                "type_url",
                V::String("type.googleapis.com/google.rpc.RetryInfo".into()),
            );
            out.set_field_by_name(
                "value",
                V::Bytes(prost::Message::encode_to_vec(&packed).into()),
            );
            return out;
        }
        "google.protobuf.Value" => {
            out.set_field_by_name("string_value", V::String("v".into()));
            return out;
        }
        _ => {}
    }
    for field in message.fields() {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let key = match entry.map_entry_key_field().kind() {
                Kind::String => MapKey::String("k".into()),
                Kind::Bool => MapKey::Bool(true),
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(-3),
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(-3),
                Kind::Uint32 | Kind::Fixed32 => MapKey::U32(3),
                _ => MapKey::U64(3),
            };
            if let Some(value) = sample(pool, &entry.map_entry_value_field().kind(), depth) {
                out.set_field(&field, V::Map([(key, value)].into_iter().collect()));
            }
        } else if let Some(value) = sample(pool, &field.kind(), depth) {
            let value = if field.is_list() {
                V::List(vec![value])
            } else {
                value
            };
            out.set_field(&field, value);
        }
    }
    out
}

#[test]
fn what_the_face_answers_fits_the_schemas() {
    let pool = pool();
    for (name, bytes) in shop::documents().unwrap() {
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let mut checked = 0;
        for schema_name in doc["components"]["schemas"].as_object().unwrap().keys() {
            let Some(message) = pool.get_message_by_name(schema_name) else {
                continue;
            };
            let schema = reference(schema_name);
            for (what, value) in [
                (
                    "default",
                    prost_reflect::DynamicMessage::new(message.clone()),
                ),
                ("filled", filled(&pool, &message, 4)),
            ] {
                let json: Value = serde_json::from_slice(&crate::service::to_json(&value)).unwrap();
                // (to_json answers {} should serializing fail.)
                let empty = json.as_object().is_none_or(|o| o.is_empty());
                assert!(
                    !(what == "filled" && empty && message.fields().len() > 0),
                    "{schema_name} {what}: {json}"
                );
                if let Err(e) = validate(&doc, &schema, &json, schema_name) {
                    panic!("{name}: {what} {schema_name}: {e}");
                }
            }
            checked += 1;
        }
        assert!(checked > 5, "{name}");
    }
    // The validator does refuse what does not fit.
    let doc = gateway();
    let item = reference("shop.gateway.v1.CatalogItem");
    for wrong in [
        json!({ "availableQuantity": 5 }),
        json!({ "availableQuantity": "5x" }),
        json!({ "product": { "createTime": "yesterday" } }),
        json!({ "product": { "price": { "amountMinor": true } } }),
    ] {
        assert!(validate(&doc, &item, &wrong, "wrong").is_err(), "{wrong}");
    }
    let part = reference("shop.gateway.v1.MissingPart");
    assert!(validate(&doc, &part, &json!({ "part": "PART_NONE" }), "wrong").is_err());
}

#[test]
fn error_bodies_fit_the_status_schema() {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let doc = gateway();
    let schema = reference("google.rpc.Status");
    let mut details = ErrorDetails::with_bad_request_violation("email", "must not be empty");
    details.set_retry_info(Some(std::time::Duration::from_millis(1500)));
    details.add_precondition_failure_violation("minimum", "order", "under the minimum");
    details.set_error_info("REASON", "shop", [("k".to_string(), "v".to_string())]);
    let rich =
        tonic::Status::with_error_details(tonic::Code::ResourceExhausted, "slow down", details);
    for status in [rich, tonic::Status::not_found("order 1 not found")] {
        let json: Value =
            serde_json::from_slice(&crate::status::status_json(&pool(), &status)).unwrap();
        validate(&doc, &schema, &json, "status").unwrap();
    }
}
