//! [`ServerPolicy`]: the policy of the server stack (`[mesh_server]`).

use super::{FaultPolicy, PolicyError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Server-side policy (`[mesh_server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPolicy {
    /// Calls served at once; beyond it calls are shed with
    /// RESOURCE_EXHAUSTED and a pushback.
    #[serde(default = "d_max_concurrency")]
    pub max_concurrency: usize,
    /// Pushback sent with a shed call (`grpc-retry-pushback-ms`).
    #[serde(with = "humantime_serde", default = "d_shed_pushback")]
    pub shed_pushback: Duration,
    /// Fault injection for every method.
    #[serde(default)]
    pub fault: FaultPolicy,
    /// Fault injection per method name.
    #[serde(default)]
    pub methods: BTreeMap<String, FaultPolicy>,
    /// Callers allowed per service or method (see [`crate::authz`]);
    /// enforced on mTLS connections.
    #[serde(default)]
    pub authorization: crate::authz::AuthorizationPolicy,
    /// The largest request message per method
    /// ([`crate::message_size::RequestLimits`]).
    #[serde(default)]
    pub request_limits: crate::message_size::RequestLimits,
    /// Calls per second in all and per caller identity
    /// ([`crate::rate_limit`]); nothing is limited by default.
    #[serde(default)]
    pub rate_limit: crate::rate_limit::RateLimitPolicy,
    /// A concurrency limit that follows latency, under `max_concurrency`
    /// ([`crate::adaptive`]); off by default.
    #[serde(default)]
    pub adaptive_concurrency: crate::adaptive::AdaptivePolicy,
}

impl ServerPolicy {
    /// Refuses values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let limits = &self.request_limits;
        if let Some((key, _)) = std::iter::once(("max_bytes", &limits.max_bytes))
            .chain(limits.methods.iter().map(|(m, b)| (m.as_str(), b)))
            .find(|(_, bytes)| **bytes == 0)
        {
            return Err(PolicyError {
                key: format!("server.mesh.request_limits.{key}"),
                message: "must be positive".into(),
            });
        }
        if let Some((key, message)) = self.adaptive_concurrency.problem() {
            return Err(PolicyError {
                key: format!("server.mesh.adaptive_concurrency.{key}"),
                message: message.into(),
            });
        }
        if let Some(key) = self.rate_limit.invalid_key() {
            return Err(PolicyError {
                key: format!("server.mesh.rate_limit.{key}"),
                message: "rates and bursts must be positive".into(),
            });
        }
        crate::authz::validate(&self.authorization)
    }
}

fn d_max_concurrency() -> usize {
    1024
}
fn d_shed_pushback() -> Duration {
    Duration::from_millis(100)
}

impl Default for ServerPolicy {
    fn default() -> Self {
        Self {
            max_concurrency: d_max_concurrency(),
            shed_pushback: d_shed_pushback(),
            fault: FaultPolicy::default(),
            methods: BTreeMap::new(),
            authorization: BTreeMap::new(),
            request_limits: Default::default(),
            rate_limit: Default::default(),
            adaptive_concurrency: Default::default(),
        }
    }
}
