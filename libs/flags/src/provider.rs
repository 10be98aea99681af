//! The OpenFeature provider: flags resolved from the definitions in force
//! by flagd's evaluation engine, in process.
//!
//! Resolution follows flagd's in-process providers: a flag without
//! targeting is its default variant (STATIC); targeting that names a
//! variant gives it (TARGETING_MATCH); targeting that gives nothing falls
//! back to the default variant (DEFAULT). A missing flag is an error
//! (FLAG_NOT_FOUND). A DISABLED flag is reason DISABLED with no variant:
//! OpenFeature's Rust API does not pass the code's default to a provider,
//! so the value is the type's zero and [`crate::Flags`] answers the code's
//! default instead.

use crate::store::Store;
use flagd_evaluation_engine::Operator;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, StructValue, Type,
};
use serde_json::Value;
use std::sync::Arc;

/// How one flag resolved for one context (untyped unless made
/// typed as the code asks for the flag).
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The variant's value; `None` when the code's default applies.
    pub value: Option<Value>,
    /// The variant chosen; `None` when the code's default applies.
    pub variant: Option<String>,
    /// OpenFeature's reason.
    pub reason: EvaluationReason,
    /// What failed, when `reason` is ERROR.
    pub error: Option<EvaluationError>,
    /// The file defining the flag; `None` when it is missing.
    pub source: Option<String>,
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

impl Resolution {
    fn failed(e: EvaluationError, source: Option<String>) -> Self {
        Self {
            value: None,
            variant: None,
            reason: EvaluationReason::Error,
            error: Some(e),
            source,
        }
    }
}

/// Evaluates flags from a [`Store`].
pub(crate) struct FileProvider {
    metadata: ProviderMetadata,
    store: Arc<Store>,
    engine: Operator,
}

impl FileProvider {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self {
            metadata: ProviderMetadata::new("shop-flagd-file"),
            store,
            engine: Operator::new(),
        }
    }

    /// Resolves `key` for `context` as every typed call does.
    pub(crate) fn resolve(&self, key: &str, context: &EvaluationContext) -> Resolution {
        let snapshot = self.store.snapshot();
        let Some(definition) = snapshot.flags.get(key) else {
            return Resolution::failed(
                error(
                    EvaluationErrorCode::FlagNotFound,
                    format!("no flag {key:?} is defined"),
                ),
                None,
            );
        };
        let source = Some(definition.source.to_string());
        let flag = &definition.flag;
        if flag.state == "DISABLED" {
            return Resolution {
                value: None,
                variant: None,
                reason: EvaluationReason::Disabled,
                error: None,
                source,
            };
        }
        let (variant, reason) = match &definition.targeting {
            None => (flag.default_variant.clone(), EvaluationReason::Static),
            Some(rule) => match self.engine.apply(key, rule, context) {
                Ok(Some(variant)) => (variant, EvaluationReason::TargetingMatch),
                Ok(None) => (flag.default_variant.clone(), EvaluationReason::Default),
                Err(e) => {
                    return Resolution::failed(
                        error(
                            EvaluationErrorCode::ParseError,
                            format!("targeting of {key:?} failed: {e}"),
                        ),
                        source,
                    );
                }
            },
        };
        match flag.variants.get(&variant) {
            Some(value) => Resolution {
                value: Some(value.clone()),
                variant: Some(variant),
                reason,
                error: None,
                source,
            },
            None => Resolution::failed(
                error(
                    EvaluationErrorCode::General("targeting gave no variant".into()),
                    format!(
                        "targeting of {key:?} gave {variant:?}, which is not one of its variants"
                    ),
                ),
                source,
            ),
        }
    }

    fn typed<T: Default>(
        &self,
        key: &str,
        context: &EvaluationContext,
        kind: &Type,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Result<ResolutionDetails<T>, EvaluationError> {
        let r = self.resolve(key, context);
        if let Some(e) = r.error {
            return Err(e);
        }
        let value = match &r.value {
            None => T::default(),
            Some(v) => {
                convert(v).ok_or_else(|| type_mismatch(key, r.variant.as_deref(), v, kind))?
            }
        };
        Ok(ResolutionDetails {
            value,
            variant: r.variant,
            reason: Some(r.reason),
            flag_metadata: None,
        })
    }
}

fn type_mismatch(key: &str, variant: Option<&str>, value: &Value, kind: &Type) -> EvaluationError {
    let variant = variant
        .map(|v| format!(" (variant {v:?})"))
        .unwrap_or_default();
    error(
        EvaluationErrorCode::TypeMismatch,
        format!("flag {key:?} is {value}{variant}, and the code asks for it as {kind}"),
    )
}

impl Resolution {
    /// This resolution as code asking for a `kind` flag gets it: a variant
    /// of another type is its TYPE_MISMATCH error (and the code's default).
    pub(crate) fn typed_as(self, key: &str, kind: &Type) -> Self {
        let Some(value) = &self.value else {
            return self;
        };
        let fits = match kind {
            Type::Bool => value.is_boolean(),
            Type::Int => whole(value).is_some(),
            Type::Float => value.is_number(),
            Type::String => value.is_string(),
            Type::Array => value.is_array(),
            Type::Struct => to_struct(value).is_some(),
        };
        if fits {
            return self;
        }
        Self::failed(
            type_mismatch(key, self.variant.as_deref(), value, kind),
            self.source,
        )
    }
}

/// An integer, also when written with a fraction of zero (`1000.0`).
fn whole(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| {
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                i
            })
    })
}

/// A JSON object as OpenFeature's struct value.
pub(crate) fn to_struct(value: &Value) -> Option<StructValue> {
    fn convert(v: &Value) -> Option<open_feature::Value> {
        Some(match v {
            Value::Bool(b) => open_feature::Value::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => open_feature::Value::Int(i),
                None => open_feature::Value::Float(n.as_f64()?),
            },
            Value::String(s) => open_feature::Value::String(s.clone()),
            Value::Array(items) => {
                open_feature::Value::Array(items.iter().map(convert).collect::<Option<_>>()?)
            }
            Value::Object(_) => open_feature::Value::Struct(to_struct(v)?),
            Value::Null => return None,
        })
    }
    let fields = value
        .as_object()?
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| Some((k.clone(), convert(v)?)))
        .collect::<Option<_>>()?;
    Some(StructValue { fields })
}

#[open_feature::async_trait]
impl FeatureProvider for FileProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> Result<ResolutionDetails<bool>, EvaluationError> {
        self.typed(flag_key, evaluation_context, &Type::Bool, Value::as_bool)
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> Result<ResolutionDetails<i64>, EvaluationError> {
        // A whole number written as 1000.0 is an integer too.
        self.typed(flag_key, evaluation_context, &Type::Int, whole)
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> Result<ResolutionDetails<f64>, EvaluationError> {
        self.typed(flag_key, evaluation_context, &Type::Float, Value::as_f64)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> Result<ResolutionDetails<String>, EvaluationError> {
        self.typed(flag_key, evaluation_context, &Type::String, |v| {
            v.as_str().map(str::to_string)
        })
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> Result<ResolutionDetails<StructValue>, EvaluationError> {
        self.typed(flag_key, evaluation_context, &Type::Struct, to_struct)
    }
}
