//! What makes an upstream policy unusable, named by its key.

use super::{FaultPolicy, HedgePolicy, RetryPolicy, UpstreamPolicy};

impl UpstreamPolicy {
    /// Refuses values that parse but cannot work, naming the key under
    /// `upstreams.<name>`.
    pub fn validate(&self, name: &str) -> Result<(), PolicyError> {
        let key = |k: &str| format!("upstreams.{name}.{k}");
        let err = |k: &str, m: &str| {
            Err(PolicyError {
                key: key(k),
                message: m.into(),
            })
        };
        if self.endpoints.is_empty() && self.dns.is_none() {
            return err("endpoints", "give endpoints or dns");
        }
        if !self.endpoints.is_empty() && self.dns.is_some() {
            return err("dns", "give endpoints or dns, not both");
        }
        if let Some(problem) = self.throttle.problem() {
            return err("throttle", problem);
        }
        if let Some((key, problem)) = self.adaptive_concurrency.problem() {
            return err(&format!("adaptive_concurrency.{key}"), problem);
        }
        for e in &self.endpoints {
            if e.parse::<http::Uri>()
                .map(|u| u.host().is_none())
                .unwrap_or(true)
            {
                return err(
                    "endpoints",
                    &format!("{e:?} is not an http://host:port or https://host:port URI"),
                );
            }
        }
        if let Some(identity) = &self.identity {
            let valid = if identity.starts_with("spiffe://") {
                shop_identity::SpiffeId::parse(identity).is_ok()
            } else {
                shop_identity::spiffe::is_workload(identity)
            };
            if !valid {
                return err(
                    "identity",
                    &format!(
                        "unknown identity {identity:?}: give a workload ({}) or a spiffe:// ID",
                        shop_identity::spiffe::WORKLOADS.join(", ")
                    ),
                );
            }
        }
        if self.timeout.is_zero() {
            return err("timeout", "must be positive");
        }
        if self.keepalive.interval.is_zero() || self.keepalive.timeout.is_zero() {
            return err("keepalive", "interval and timeout must be positive");
        }
        check_retry(&self.retry, &key("retry"))?;
        if let Some(h) = &self.hedge {
            check_hedge(h, &key("hedge"))?;
        }
        for (method, m) in &self.methods {
            if let Some(r) = &m.retry {
                check_retry(
                    &r.with_budget(self.retry.budget),
                    &key(&format!("methods.{method}.retry")),
                )?;
            }
            if let Some(h) = &m.hedge {
                check_hedge(h, &key(&format!("methods.{method}.hedge")))?;
            }
            if let Some(f) = &m.fault {
                check_fault(f, &key(&format!("methods.{method}.fault")))?;
            }
        }
        let o = &self.outlier;
        if o.max_ejected_percent > 100 {
            return err("outlier.max_ejected_percent", "must be 0 to 100");
        }
        if o.failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return err("outlier.failure_rate", "must be between 0 and 1");
        }
        if o.base_ejection.is_zero() || o.max_ejection < o.base_ejection {
            return err(
                "outlier.base_ejection",
                "must be positive and at most max_ejection",
            );
        }
        check_fault(&self.fault, &key("fault"))?;
        if !self.subsets.is_empty() {
            if self.subsets.iter().all(|s| s.weight == 0) {
                return err("subsets", "at least one subset needs a weight above 0");
            }
            for s in &self.subsets {
                if s.endpoints.is_empty() {
                    return err(&format!("subsets.{}", s.name), "has no endpoints");
                }
                if self.dns.is_none() && s.endpoints.iter().any(|e| !self.endpoints.contains(e)) {
                    return err(
                        &format!("subsets.{}.endpoints", s.name),
                        "every subset endpoint must be one of the upstream's endpoints",
                    );
                }
            }
        }
        Ok(())
    }
}

/// Most hedged attempts beyond the first (gRPC caps a hedging policy at 5
/// attempts in all).
pub const MAX_HEDGES: u32 = 4;

fn check_hedge(h: &HedgePolicy, key: &str) -> Result<(), PolicyError> {
    let err = |k: &str, m: String| {
        Err(PolicyError {
            key: format!("{key}.{k}"),
            message: m,
        })
    };
    if h.delay.is_zero() {
        return err("delay", "must be positive".into());
    }
    if h.max_hedges == 0 || h.max_hedges > MAX_HEDGES {
        return err("max_hedges", format!("must be 1 to {MAX_HEDGES}"));
    }
    Ok(())
}

fn check_retry(r: &RetryPolicy, key: &str) -> Result<(), PolicyError> {
    let err = |k: &str, m: &str| {
        Err(PolicyError {
            key: format!("{key}.{k}"),
            message: m.into(),
        })
    };
    if r.max_attempts == 0 || r.max_attempts > 10 {
        return err("max_attempts", "must be 1 to 10");
    }
    if r.per_try_timeout.is_some_and(|t| t.is_zero()) {
        return err("per_try_timeout", "must be positive");
    }
    if !(0.0..=10.0).contains(&r.budget.ratio) {
        return err("budget.ratio", "must be between 0 and 10");
    }
    if r.backoff.base.is_zero() || r.backoff.max < r.backoff.base {
        return err("backoff", "base must be positive and at most max");
    }
    Ok(())
}

fn check_fault(f: &FaultPolicy, key: &str) -> Result<(), PolicyError> {
    for (k, p) in [
        ("delay_percent", f.delay_percent),
        ("abort_percent", f.abort_percent),
    ] {
        if !(0.0..=100.0).contains(&p) {
            return Err(PolicyError {
                key: format!("{key}.{k}"),
                message: "must be 0 to 100".into(),
            });
        }
    }
    Ok(())
}

/// A policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    /// The offending key (`upstreams.catalog.retry.max_attempts`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}
