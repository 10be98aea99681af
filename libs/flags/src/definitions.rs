//! Reading one flagd flag-definition file: parsed by the flagd evaluation
//! engine (which resolves `$ref`s to `$evaluators`), and checked before
//! anything is put in force, so that a mistake is refused at load time
//! with the flag and the reason named rather than found by a user.
//!
//! Checked: every flag has a `state` of ENABLED or DISABLED, at least one
//! variant, variants of one type (boolean, string, number or object), a
//! `defaultVariant` that is one of them; its targeting uses only
//! operators the evaluator knows (JSONLogic's and flagd's `fractional`,
//! `sem_ver`, `starts_with`, `ends_with`), and every `fractional` bucket
//! names a variant of the flag with a non-negative integer weight.

use flagd_evaluation_engine::{FeatureFlag, FlagParser, FlagdEvaluationError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The operators flagd adds to JSONLogic, evaluated by the engine.
const FLAGD_OPERATORS: &[&str] = &["fractional", "sem_ver", "starts_with", "ends_with"];

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON (the position is in the message).
    #[error("{path}: not valid JSON: {message}")]
    Json {
        /// The file.
        path: String,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The file is JSON but not a flag-definition document.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// One flag is wrong.
    #[error("{path}: flag {key:?}: {message}")]
    Flag {
        /// The file.
        path: String,
        /// The flag's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A setting of `[server.flags]` that cannot work.
    #[error("{key}: {message}")]
    Settings {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// Two files define the same flag.
    #[error("flag {key:?} is defined in {first} and again in {second}")]
    Duplicate {
        /// The flag's key.
        key: String,
        /// The file that defined it first.
        first: String,
        /// The file that defined it again.
        second: String,
    },
}

/// Parses and checks the flags of `text`, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, FeatureFlag>, DefinitionError> {
    let path_text = path.display().to_string();
    let file = |message: String| DefinitionError::File {
        path: path_text.clone(),
        message,
    };
    let flag_error = |key: &str, message: String| DefinitionError::Flag {
        path: path_text.clone(),
        key: key.to_string(),
        message,
    };
    let root: Value = serde_json::from_str(text).map_err(|e| DefinitionError::Json {
        path: path_text.clone(),
        message: e.to_string(),
    })?;
    let Some(root) = root.as_object() else {
        return Err(file("the document is not a JSON object".into()));
    };
    let Some(raw_flags) = root.get("flags").and_then(Value::as_object) else {
        return Err(file("no \"flags\" object".into()));
    };
    let evaluators = match root.get("$evaluators") {
        None => Map::new(),
        Some(Value::Object(e)) => e.clone(),
        Some(_) => return Err(file("\"$evaluators\" is not an object".into())),
    };
    for (key, raw) in raw_flags {
        check_shape(raw).map_err(|m| flag_error(key, m))?;
        if let Some(targeting) = raw.get("targeting") {
            check_refs(targeting, &evaluators, &mut Vec::new()).map_err(|m| flag_error(key, m))?;
        }
    }
    // The engine's own reading (it resolves `$ref`s); what it still
    // refuses (a circular reference) names the evaluator.
    let parsed = FlagParser::parse_string(text).map_err(|e| match e {
        FlagdEvaluationError::Json(e) => DefinitionError::Json {
            path: path_text.clone(),
            message: e.to_string(),
        },
        other => file(other.to_string()),
    })?;
    let mut flags = BTreeMap::new();
    for (key, flag) in parsed.flags {
        if let Some(targeting) = &flag.targeting
            && !is_empty_rule(targeting)
        {
            check_rule(targeting, &flag, "targeting").map_err(|m| flag_error(&key, m))?;
        }
        flags.insert(key, flag);
    }
    Ok(flags)
}

/// No targeting: absent, null or `{}`.
pub(crate) fn is_empty_rule(rule: &Value) -> bool {
    rule.is_null() || rule.as_object().is_some_and(Map::is_empty)
}

/// The JSON kind of a variant's value, for "one type per flag".
fn kind(value: &Value) -> Option<&'static str> {
    match value {
        Value::Bool(_) => Some("boolean"),
        Value::String(_) => Some("string"),
        Value::Number(_) => Some("number"),
        Value::Object(_) => Some("object"),
        Value::Null | Value::Array(_) => None,
    }
}

fn check_shape(raw: &Value) -> Result<(), String> {
    let Some(flag) = raw.as_object() else {
        return Err("is not an object".into());
    };
    match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED" | "DISABLED") => {}
        Some(other) => return Err(format!("state {other:?} is neither ENABLED nor DISABLED")),
        None => return Err("has no \"state\" (ENABLED or DISABLED)".into()),
    }
    let Some(variants) = flag.get("variants").and_then(Value::as_object) else {
        return Err("has no \"variants\" object".into());
    };
    if variants.is_empty() {
        return Err("has no variants".into());
    }
    let mut kinds = variants.iter().map(|(name, v)| {
        kind(v).ok_or_else(|| {
            format!(
                "variant {name:?} is {v}: a variant is a boolean, a string, a number or an object"
            )
        })
    });
    let first = kinds.next().expect("not empty")?;
    for k in kinds {
        if k? != first {
            return Err(format!(
                "variants of different types ({first} and others): a flag's variants share one type"
            ));
        }
    }
    let names = || variants.keys().cloned().collect::<Vec<_>>().join(", ");
    match flag.get("defaultVariant") {
        Some(Value::String(d)) if variants.contains_key(d) => Ok(()),
        Some(Value::String(d)) => Err(format!(
            "defaultVariant {d:?} is not one of its variants ({})",
            names()
        )),
        _ => Err(format!(
            "has no \"defaultVariant\" naming one of its variants ({})",
            names()
        )),
    }
}

/// Every `$ref` of `rule`, and of the evaluators it names (`stack`: the
/// evaluators being followed), names an evaluator, with no cycle.
fn check_refs(
    rule: &Value,
    evaluators: &Map<String, Value>,
    stack: &mut Vec<String>,
) -> Result<(), String> {
    match rule {
        Value::Object(o) => {
            if let Some(name) = o.get("$ref") {
                let Some(name) = name.as_str() else {
                    return Err(format!("$ref {name} is not an evaluator's name"));
                };
                let Some(body) = evaluators.get(name) else {
                    return Err(format!("$ref {name:?}: no such entry in \"$evaluators\""));
                };
                if stack.iter().any(|n| n == name) {
                    return Err(format!("$ref {name:?} refers back to itself"));
                }
                stack.push(name.to_string());
                check_refs(body, evaluators, stack)?;
                stack.pop();
            }
            o.values()
                .try_for_each(|v| check_refs(v, evaluators, stack))
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_refs(v, evaluators, stack)),
        _ => Ok(()),
    }
}

/// Whether the evaluator knows `op`: one of JSONLogic's (as the engine's
/// JSONLogic implementation lists them) or one of flagd's.
fn known_operator(op: &str) -> bool {
    use std::sync::OnceLock;
    static BUILTIN: OnceLock<Vec<&'static str>> = OnceLock::new();
    FLAGD_OPERATORS.contains(&op)
        || BUILTIN
            .get_or_init(|| {
                datalogic_rs::Engine::new()
                    .builtin_operator_names()
                    .collect()
            })
            .contains(&op)
}

/// Checks one JSONLogic expression at `at` (a path for the message).
fn check_rule(rule: &Value, flag: &FeatureFlag, at: &str) -> Result<(), String> {
    match rule {
        Value::Object(o) => {
            if o.len() != 1 {
                return Err(format!(
                    "{at}: an object with {} keys is not a JSONLogic operation (one operator, its arguments)",
                    o.len()
                ));
            }
            let (op, args) = o.iter().next().expect("one entry");
            if !known_operator(op) {
                return Err(format!(
                    "{at}: unknown operator {op:?} (JSONLogic's, or flagd's {})",
                    FLAGD_OPERATORS.join(", ")
                ));
            }
            if op == "fractional" {
                check_fractional(args, flag, &format!("{at}.fractional"))?;
            }
            match args {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, v)| check_rule(v, flag, &format!("{at}.{op}[{i}]"))),
                other => check_rule(other, flag, &format!("{at}.{op}")),
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_rule(v, flag, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

/// `fractional`'s arguments: an optional bucketing expression, then
/// `[variant, weight]` buckets (the weight may be left out: 1).
fn check_fractional(args: &Value, flag: &FeatureFlag, at: &str) -> Result<(), String> {
    let Some(args) = args.as_array() else {
        return Err(format!("{at}: its arguments are not a list"));
    };
    let is_bucket = |v: &Value| {
        v.as_array()
            .is_some_and(|b| b.first().is_some_and(Value::is_string))
    };
    let buckets: Vec<&Value> = match args.first() {
        Some(first) if !is_bucket(first) => args[1..].iter().collect(),
        _ => args.iter().collect(),
    };
    if buckets.is_empty() {
        return Err(format!("{at}: no buckets"));
    }
    let mut total: u64 = 0;
    for bucket in buckets {
        let b = bucket.as_array().filter(|b| !b.is_empty() && b.len() <= 2);
        let Some(b) = b else {
            return Err(format!("{at}: bucket {bucket} is not [variant, weight]"));
        };
        let Some(variant) = b[0].as_str() else {
            return Err(format!(
                "{at}: bucket {bucket} does not start with a variant's name"
            ));
        };
        if !flag.variants.contains_key(variant) {
            return Err(format!(
                "{at}: bucket variant {variant:?} is not one of the flag's variants"
            ));
        }
        // flagd's other providers refuse fractions (and then give every
        // key the default variant): integers only.
        let weight = match b.get(1) {
            None => 1,
            Some(w) => w.as_u64().ok_or_else(|| {
                format!("{at}: bucket {bucket}: the weight is not a non-negative integer")
            })?,
        };
        total = total.saturating_add(weight);
        // The engine sums weights as 32-bit integers (flagd's limit too).
        if total > u64::from(i32::MAX.unsigned_abs()) {
            return Err(format!(
                "{at}: the weights add up to more than {}",
                i32::MAX
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<BTreeMap<String, FeatureFlag>, DefinitionError> {
        parse(Path::new("flags.json"), text)
    }

    fn refused(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn a_file_with_shared_evaluators_and_flagd_operators_is_read() {
        let flags = parse_text(
            r#"{
              "$schema": "https://flagd.dev/schema/v0/flags.json",
              "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@shop.example"]}},
              "flags": {
                "a": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                      "targeting": {"if": [{"$ref": "staff"}, "on",
                                    {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["on", 20], ["off", 80]]}]}},
                "b": {"state": "DISABLED", "variants": {"x": "x"}, "defaultVariant": "x"},
                "c": {"state": "ENABLED", "variants": {"new": 1, "old": 0}, "defaultVariant": "old",
                      "targeting": {"if": [{"sem_ver": [{"var": "version"}, ">=", "2.0.0"]}, "new", null]}}
              }
            }"#,
        )
        .unwrap();
        assert_eq!(flags.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        // The reference is resolved by the engine's parser.
        let a = flags["a"].targeting.as_ref().unwrap().to_string();
        assert!(a.contains("ends_with") && !a.contains("$ref"), "{a}");
    }

    #[test]
    fn bad_json_is_refused_with_its_position() {
        let e = refused("{\"flags\": {\"a\": }}");
        assert!(
            e.starts_with("flags.json: not valid JSON: ") && e.contains("line 1 column"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_operator_is_refused_naming_the_flag_and_where() {
        let e = refused(
            r#"{"flags": {"rollout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"starts_width": [{"var": "email"}, "a"]}, "on", "off"]}}}}"#,
        );
        assert!(
            e.contains("flag \"rollout\"")
                && e.contains("unknown operator \"starts_width\"")
                && e.contains("targeting.if[0]"),
            "{e}"
        );
        // Even in a branch no context reaches.
        let e = refused(
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [false, {"nope": []}, "off"]}}}}"#,
        );
        assert!(e.contains("unknown operator \"nope\""), "{e}");
    }

    #[test]
    fn variants_that_do_not_match_the_default_are_refused() {
        let e = refused(
            r#"{"flags": {"kill": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "yes"}}}"#,
        );
        assert_eq!(
            e,
            "flags.json: flag \"kill\": defaultVariant \"yes\" is not one of its variants (off, on)"
        );
        let e = refused(
            r#"{"flags": {"kill": {"state": "ENABLED", "variants": {"on": true, "off": "no"}, "defaultVariant": "on"}}}"#,
        );
        assert!(
            e.contains("flag \"kill\": variants of different types"),
            "{e}"
        );
        let e = refused(r#"{"flags": {"kill": {"state": "ENABLED", "variants": {"on": true}}}}"#);
        assert!(
            e.contains("flag \"kill\": has no \"defaultVariant\""),
            "{e}"
        );
    }

    #[test]
    fn other_mistakes_name_the_flag() {
        for (text, want) in [
            (
                r#"{"flags": {"f": {"state": "ON", "variants": {"a": 1}, "defaultVariant": "a"}}}"#,
                "state \"ON\"",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {}, "defaultVariant": "a"}}}"#,
                "has no variants",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "gone"}}}}"#,
                "$ref \"gone\"",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50], ["c", 50]]}}}}"#,
                "bucket variant \"c\"",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", -5], ["b", 50]]}}}}"#,
                "non-negative",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [true, "a"], "x": 1}}}}"#,
                "2 keys",
            ),
            (
                r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 2000000000], ["b", 2000000000]]}}}}"#,
                "add up to more than",
            ),
            (
                r#"{"$evaluators": {"x": {"$ref": "y"}}, "flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "x"}}}}"#,
                "$ref \"y\": no such entry",
            ),
            (
                r#"{"$evaluators": {"x": {"!": {"$ref": "x"}}}, "flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "x"}}}}"#,
                "refers back to itself",
            ),
        ] {
            let e = refused(text);
            assert!(e.contains("flag \"f\"") && e.contains(want), "{want}: {e}");
        }
        assert!(refused("[]").contains("not a JSON object"));
        assert!(refused("{}").contains("no \"flags\" object"));
    }
}
