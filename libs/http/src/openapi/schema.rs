//! Schemas of the messages and enums an operation reaches.

use super::OpenApiError;
use super::text::{clean_comment, join_paragraphs, summary};
use super::well_known::{GOOGLE_RPC, well_known};
use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

// === Schemas ===

/// Walks messages and enums from the operations, collecting a schema per
/// message and enum they reach, keyed by full name.
pub(super) struct Generator<'a> {
    pool: &'a DescriptorPool,
    comments: HashMap<String, HashMap<Vec<i32>, String>>,
    pub(super) schemas: BTreeMap<String, Value>,
    /// Named but not yet described.
    pending: Vec<Named>,
    named: BTreeSet<String>,
}

pub(super) enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl<'a> Generator<'a> {
    pub(super) fn new(pool: &'a DescriptorPool) -> Self {
        let mut comments = HashMap::new();
        for file in pool.files() {
            let mut by_path = HashMap::new();
            if let Some(info) = &file.file_descriptor_proto().source_code_info {
                for location in &info.location {
                    let text = location
                        .leading_comments
                        .as_deref()
                        .or(location.trailing_comments.as_deref())
                        .and_then(clean_comment);
                    if let Some(text) = text {
                        by_path.insert(location.path.clone(), text);
                    }
                }
            }
            comments.insert(file.name().to_string(), by_path);
        }
        Generator {
            pool,
            comments,
            schemas: BTreeMap::new(),
            pending: Vec::new(),
            named: BTreeSet::new(),
        }
    }

    pub(super) fn comment(&self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        self.comments.get(file.name())?.get(path).cloned()
    }

    /// The comment of `message`, or ours for the google.rpc types (their
    /// descriptors come without comments).
    fn message_comment(&self, message: &MessageDescriptor) -> Option<String> {
        self.comment(&message.parent_file(), message.path())
            .or_else(|| {
                GOOGLE_RPC
                    .iter()
                    .find(|(name, _)| *name == message.full_name())
                    .map(|(_, text)| text.to_string())
            })
    }

    pub(super) fn field_comment(&self, field: &FieldDescriptor) -> Option<String> {
        let own = self
            .comment(&field.parent_file(), field.path())
            .or_else(|| {
                GOOGLE_RPC
                    .iter()
                    .find(|(name, _)| *name == field.full_name())
                    .map(|(_, text)| text.to_string())
            });
        let oneof = field
            .containing_oneof()
            .filter(|oneof| !oneof.is_synthetic())
            .map(|oneof| {
                let members: Vec<String> = oneof
                    .fields()
                    .map(|f| format!("`{}`", f.json_name()))
                    .collect();
                format!(
                    "One of `{}`: at most one of {} is set.",
                    oneof.name(),
                    members.join(", ")
                )
            });
        match (own, oneof) {
            (None, None) => None,
            (own, oneof) => Some(join_paragraphs([own, oneof])),
        }
    }

    pub(super) fn message_summary(&self, message: &MessageDescriptor) -> Option<String> {
        summary(self.message_comment(message).as_deref())
    }

    /// The error body and the detail types it may carry.
    pub(super) fn error_schemas(&mut self) -> Result<(), OpenApiError> {
        let status = self
            .pool
            .get_message_by_name("google.rpc.Status")
            .ok_or(OpenApiError::MissingType("google.rpc.Status"))?;
        self.message_schema(&status);
        let details: Vec<MessageDescriptor> = self
            .pool
            .all_messages()
            .filter(|m| m.package_name() == "google.rpc" && m.parent_message().is_none())
            .collect();
        for message in details {
            self.message_schema(&message);
        }
        Ok(())
    }

    /// A message's schema: inline for well-known types, else a reference to
    /// its component.
    pub(super) fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        if self.named.insert(message.full_name().to_string()) {
            self.pending.push(Named::Message(message.clone()));
        }
        reference(message.full_name())
    }

    fn enum_schema(&mut self, e: &EnumDescriptor) -> Value {
        if e.full_name() == "google.protobuf.NullValue" {
            return json!({ "type": "null" });
        }
        if self.named.insert(e.full_name().to_string()) {
            self.pending.push(Named::Enum(e.clone()));
        }
        reference(e.full_name())
    }

    /// A request body of every field of `message` less those the path binds.
    pub(super) fn body_schema(
        &mut self,
        message: &MessageDescriptor,
        bound: &[Vec<FieldDescriptor>],
    ) -> Value {
        let top: Vec<&str> = bound
            .iter()
            .filter(|chain| chain.len() == 1)
            .map(|chain| chain[0].full_name())
            .collect();
        if top.is_empty() {
            return self.message_schema(message);
        }
        let fields: Vec<FieldDescriptor> = message
            .fields()
            .filter(|f| !top.contains(&f.full_name()))
            .collect();
        let mut schema = self.object_schema(&fields);
        let note = format!(
            "The fields of {} that the path does not give.",
            message.full_name()
        );
        schema["description"] =
            Value::String(join_paragraphs([self.message_comment(message), Some(note)]));
        schema
    }

    fn object_schema(&mut self, fields: &[FieldDescriptor]) -> Value {
        let mut properties = Map::new();
        for field in fields {
            let mut schema = self.field_schema(field);
            if let Some(text) = self.field_comment(field) {
                schema["description"] = Value::String(text);
            }
            let deprecated = field
                .field_descriptor_proto()
                .options
                .as_ref()
                .and_then(|o| o.deprecated)
                .unwrap_or(false);
            if deprecated {
                schema["deprecated"] = Value::Bool(true);
            }
            properties.insert(field.json_name().to_string(), schema);
        }
        let mut schema = json!({ "type": "object" });
        if !properties.is_empty() {
            schema["properties"] = Value::Object(properties);
        }
        schema
    }

    /// A field's value: repeated ones as arrays, maps as objects.
    pub(super) fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            let key = entry.map_entry_key_field();
            let value = entry.map_entry_value_field();
            let mut schema = json!({
                "type": "object",
                "additionalProperties": self.value_schema(&value.kind()),
            });
            match key.kind() {
                Kind::Bool => schema["propertyNames"] = json!({ "enum": ["true", "false"] }),
                Kind::String => {}
                _ => schema["propertyNames"] = json!({ "pattern": "^-?[0-9]+$" }),
            }
            return schema;
        }
        let value = self.value_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": value })
        } else {
            value
        }
    }

    fn value_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(message) => self.message_schema(message),
            Kind::Enum(e) => self.enum_schema(e),
            scalar => scalar_schema(scalar),
        }
    }

    /// Describes every named type reached, and those they reach.
    pub(super) fn finish(&mut self) {
        while let Some(named) = self.pending.pop() {
            let (name, schema) = match named {
                Named::Message(message) => {
                    let fields: Vec<FieldDescriptor> = message.fields().collect();
                    let mut schema = self.object_schema(&fields);
                    if let Some(text) = self.message_comment(&message) {
                        schema["description"] = Value::String(text);
                    }
                    (message.full_name().to_string(), schema)
                }
                Named::Enum(e) => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                    let values: Vec<String> = e
                        .values()
                        .map(|v| match self.comment(&v.parent_file(), v.path()) {
                            Some(text) => format!("- `{}`: {}", v.name(), text.replace('\n', " ")),
                            None => format!("- `{}`", v.name()),
                        })
                        .collect();
                    let description = join_paragraphs([
                        self.comment(&e.parent_file(), e.path()),
                        Some(values.join("\n")),
                    ]);
                    (
                        e.full_name().to_string(),
                        json!({ "type": "string", "enum": names, "description": description }),
                    )
                }
            };
            self.schemas.insert(name, schema);
        }
    }
}

/// A tag with the first sentence of the service's comment.
pub(super) fn tag_object(name: &str, comment: Option<&str>) -> Value {
    let mut tag = json!({ "name": name });
    if let Some(text) = summary(comment) {
        tag["description"] = Value::String(text);
    }
    tag
}

pub(super) fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A 64-bit integer: a decimal string in the JSON mapping.
pub(super) const INT64: &str = "^-?[0-9]+$";
pub(super) const UINT64: &str = "^[0-9]+$";
/// Standard base64 with padding, as bytes are printed.
pub(super) const BASE64: &str = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

pub(super) fn scalar_schema(kind: &Kind) -> Value {
    let float = |format: &str| {
        json!({ "anyOf": [
            { "type": "number", "format": format },
            { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] },
        ] })
    };
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "pattern": INT64 })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "pattern": UINT64 }),
        Kind::Double => float("double"),
        Kind::Float => float("float"),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => {
            json!({ "type": "string", "contentEncoding": "base64", "pattern": BASE64 })
        }
        Kind::Message(_) | Kind::Enum(_) => json!({}),
    }
}
