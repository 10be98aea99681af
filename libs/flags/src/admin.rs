//! `shop.flags.v1.FlagsAdminService`: what is loaded, and how a flag
//! evaluates for a context (the same resolution the code gets).

use crate::Flags;
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationErrorCode, EvaluationReason,
};
use prost_types::value::Kind;
use shop_proto::shop::flags::v1 as pb;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

pub struct FlagsAdmin {
    pub(crate) flags: Flags,
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A JSON value as protobuf's.
pub(crate) fn to_proto(value: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_proto).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn invalid(field: &str, description: String) -> Status {
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid argument: {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// An attribute as OpenFeature's context value; a list has none.
fn attribute(value: &prost_types::Value) -> Result<Option<EvaluationContextFieldValue>, String> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => None,
        Some(Kind::BoolValue(b)) => Some((*b).into()),
        Some(Kind::StringValue(s)) => Some(s.clone().into()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Some((*n as i64).into())
        }
        Some(Kind::NumberValue(n)) => Some((*n).into()),
        Some(Kind::StructValue(s)) => {
            let json = serde_json::Value::Object(
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json(v)))
                    .collect(),
            );
            crate::provider::to_struct(&json).map(EvaluationContextFieldValue::new_struct)
        }
        Some(Kind::ListValue(_)) => {
            return Err("a list is not an evaluation context value".into());
        }
    })
}

fn to_json(value: &prost_types::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            J::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => J::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// OpenFeature's names for reasons and error codes, as flagd reports them.
fn reason_name(reason: &EvaluationReason) -> String {
    reason.to_string()
}

fn code_name(code: &EvaluationErrorCode) -> String {
    match code {
        // Its detail is in the message.
        EvaluationErrorCode::General(_) => "GENERAL".into(),
        other => other.to_string(),
    }
}

#[tonic::async_trait]
impl pb::flags_admin_service_server::FlagsAdminService for FlagsAdmin {
    async fn list_flags(
        &self,
        _request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let snapshot = self.flags.store.snapshot();
        let sources = snapshot
            .sources
            .iter()
            .map(|s| pb::FlagSource {
                path: s.path.display().to_string(),
                loaded_at: s.loaded_at.map(timestamp),
                sha256: s.sha256.clone(),
                flag_count: u32::try_from(s.flags.len()).unwrap_or(u32::MAX),
                last_error: s
                    .refused
                    .as_ref()
                    .map(|r| r.error.clone())
                    .unwrap_or_default(),
                last_error_at: s.refused.as_ref().map(|r| timestamp(r.at)),
            })
            .collect();
        let mut flags: Vec<pb::Flag> = snapshot
            .flags
            .iter()
            .map(|(key, d)| {
                let counts = self.flags.stats.of(key);
                pb::Flag {
                    key: key.clone(),
                    source: d.source.to_string(),
                    enabled: d.flag.state == "ENABLED",
                    default_variant: d.flag.default_variant.clone(),
                    variants: d
                        .flag
                        .variants
                        .iter()
                        .map(|(k, v)| (k.clone(), to_proto(v)))
                        .collect(),
                    targeting: d.targeting.clone().unwrap_or_default(),
                    evaluations: counts.by_variant.into_iter().collect(),
                    errors: counts.errors,
                    last_error: counts.last_error.unwrap_or_default(),
                    asked_as: counts.asked_as.map(|t| t.to_string()).unwrap_or_default(),
                }
            })
            .collect();
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        let mut undefined: Vec<pb::UndefinedFlag> = self
            .flags
            .stats
            .all()
            .into_iter()
            .filter(|(key, _)| !snapshot.flags.contains_key(key))
            .map(|(key, c)| pb::UndefinedFlag {
                key,
                evaluations: c.errors + c.by_variant.values().sum::<u64>(),
                asked_as: c.asked_as.map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect();
        undefined.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Response::new(pb::ListFlagsResponse {
            sources,
            flags,
            undefined,
        }))
    }

    async fn evaluate_flag(
        &self,
        request: Request<pb::EvaluateFlagRequest>,
    ) -> Result<Response<pb::EvaluateFlagResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(invalid("key", "a flag key is required".into()));
        }
        let mut context = EvaluationContext::default();
        if !req.targeting_key.is_empty() {
            context = context.with_targeting_key(req.targeting_key);
        }
        for (name, value) in req.attributes.map(|a| a.fields).unwrap_or_default() {
            match attribute(&value) {
                Ok(Some(v)) => context.add_custom_field(name, v),
                Ok(None) => {}
                Err(e) => return Err(invalid(&format!("attributes.{name}"), e)),
            }
        }
        let r = self.flags.explain(&req.key, &context);
        Ok(Response::new(pb::EvaluateFlagResponse {
            key: req.key,
            value: r.value.as_ref().map(to_proto),
            variant: r.variant.unwrap_or_default(),
            reason: reason_name(&r.reason),
            error_code: r
                .error
                .as_ref()
                .map(|e| code_name(&e.code))
                .unwrap_or_default(),
            error_message: r.error.and_then(|e| e.message).unwrap_or_default(),
            source: r.source.unwrap_or_default(),
        }))
    }
}
