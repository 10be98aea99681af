//! The OpenFeature hook every evaluation by a service's code passes
//! through: it counts evaluations per flag and variant (FlagsAdmin's
//! ListFlags shows them) and logs them at debug, errors at warn (once per
//! distinct error of a flag: a hot path does not flood the log).

use open_feature::{
    EvaluationDetails, EvaluationError, EvaluationErrorCode, Hook, HookContext, HookHints, Type,
    Value,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Evaluations of one flag since start.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// By variant; `""` for evaluations that fell back to the code's
    /// default (a disabled flag).
    pub(crate) by_variant: BTreeMap<String, u64>,
    pub(crate) errors: u64,
    /// What the newest failed evaluation said.
    pub(crate) last_error: Option<String>,
    /// The type the code asked for, at its newest evaluation.
    pub(crate) asked_as: Option<Type>,
}

/// Counts of every flag evaluated, by key.
#[derive(Debug, Default)]
pub(crate) struct Stats(Mutex<HashMap<String, Counts>>);

impl Stats {
    pub(crate) fn of(&self, key: &str) -> Counts {
        self.0
            .lock()
            .expect("flag stats lock")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Every flag evaluated so far, with its counts.
    pub(crate) fn all(&self) -> Vec<(String, Counts)> {
        let all = self.0.lock().expect("flag stats lock");
        all.iter().map(|(k, c)| (k.clone(), c.clone())).collect()
    }

    fn count<T>(&self, key: &str, f: impl FnOnce(&mut Counts) -> T) -> T {
        let mut all = self.0.lock().expect("flag stats lock");
        match all.get_mut(key) {
            Some(counts) => f(counts),
            None => f(all.entry(key.to_string()).or_default()),
        }
    }
}

pub(crate) struct Counting(pub(crate) Arc<Stats>);

#[open_feature::async_trait]
impl Hook for Counting {
    async fn before<'a>(
        &self,
        _context: &HookContext<'a>,
        _hints: Option<&'a HookHints>,
    ) -> Result<Option<open_feature::EvaluationContext>, EvaluationError> {
        Ok(None)
    }

    async fn after<'a>(
        &self,
        context: &HookContext<'a>,
        details: &EvaluationDetails<Value>,
        _hints: Option<&'a HookHints>,
    ) -> Result<(), EvaluationError> {
        let variant = details.variant.clone().unwrap_or_default();
        tracing::debug!(
            flag = context.flag_key,
            variant = %variant,
            reason = ?details.reason,
            targeting_key = context.evaluation_context.targeting_key.as_deref().unwrap_or(""),
            "flag evaluated"
        );
        self.0.count(context.flag_key, |c| {
            *c.by_variant.entry(variant).or_default() += 1;
            c.asked_as = Some(context.flag_type.clone());
        });
        Ok(())
    }

    async fn error<'a>(
        &self,
        context: &HookContext<'a>,
        error: &EvaluationError,
        _hints: Option<&'a HookHints>,
    ) {
        let message = error.message.as_deref().unwrap_or("");
        let text = format!("{}: {message}", error.code);
        // Logged when it changes, not on every call of a hot path.
        let new = self.0.count(context.flag_key, |c| {
            c.errors += 1;
            c.asked_as = Some(context.flag_type.clone());
            let new = c.last_error.as_deref() != Some(text.as_str());
            c.last_error = Some(text.clone());
            new
        });
        if !new {
            return;
        }
        if error.code == EvaluationErrorCode::FlagNotFound {
            // Code that asks for a flag no file defines yet: its default.
            tracing::debug!(
                flag = context.flag_key,
                message,
                "flag not defined; the code's default applies"
            );
        } else {
            tracing::warn!(flag = context.flag_key, code = ?error.code, message, "flag evaluation failed; the code's default applies (logged again when the error changes)");
        }
    }

    async fn finally<'a>(
        &self,
        _context: &HookContext<'a>,
        _details: &EvaluationDetails<Value>,
        _hints: Option<&'a HookHints>,
    ) {
    }
}
