//! Comments as descriptions, and documents as sorted JSON text.

use serde_json::Value;

// === Text ===

/// A comment without the space after `//`, surrounding blank lines and
/// trailing spaces.
pub(super) fn clean_comment(raw: &str) -> Option<String> {
    let lines: Vec<&str> = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let text = lines.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The first sentence of a comment, without its period.
pub(super) fn summary(comment: Option<&str>) -> Option<String> {
    let first = comment?.split("\n\n").next()?.replace('\n', " ");
    let sentence = match first.find(". ") {
        Some(i) => &first[..i],
        None => first.strip_suffix('.').unwrap_or(&first),
    };
    Some(sentence.trim().to_string()).filter(|s| !s.is_empty())
}

pub(super) fn join_paragraphs<const N: usize>(parts: [Option<String>; N]) -> String {
    parts.into_iter().flatten().collect::<Vec<_>>().join("\n\n")
}

/// A JSON value that serializes objects with sorted keys, whether or not
/// serde_json keeps insertion order (its `preserve_order` feature may be on
/// through another crate of the workspace).
pub(super) struct Sorted<'a>(pub(super) &'a Value);

impl serde::Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Sorted(value))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}
