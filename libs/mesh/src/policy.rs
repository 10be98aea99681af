//! Mesh policy as configuration, in the shape people know from Istio's
//! VirtualService/DestinationRule:
//!
//! ```toml
//! [upstreams.catalog]
//! endpoints = ["http://127.0.0.1:7102"]   # or dns = "catalog.shop.svc.cluster.local:7000"
//! timeout = "2s"
//! [upstreams.catalog.retry]
//! max_attempts = 3
//! per_try_timeout = "300ms"
//! on = ["unavailable", "resource_exhausted"]
//! backoff = { base = "20ms", max = "200ms" }
//! budget = { ratio = 0.2, min_per_second = 10 }
//! [upstreams.catalog.outlier]
//! consecutive_failures = 5
//! base_ejection = "10s"
//! max_ejected_percent = 50
//! [upstreams.catalog.methods.ListProducts]
//! timeout = "500ms"
//! ```
//!
//! Every struct denies unknown keys; [`UpstreamPolicy::validate`] refuses
//! values that parse but make no sense, naming the key.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Policy for calls to one upstream service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// Static endpoints (`http://host:port`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// A DNS name with port (`catalog.shop.svc.cluster.local:7000`),
    /// re-resolved every `dns_refresh`; one endpoint per address (a
    /// headless Kubernetes Service gives one per pod).
    #[serde(default)]
    pub dns: Option<String>,
    /// How often `dns` is resolved again.
    #[serde(with = "humantime_serde", default = "d_dns_refresh")]
    pub dns_refresh: Duration,
    /// Overall deadline of a call (all attempts), unless the caller's own
    /// deadline is sooner.
    #[serde(with = "humantime_serde", default = "d_timeout")]
    pub timeout: Duration,
    /// TCP connect timeout per endpoint.
    #[serde(with = "humantime_serde", default = "d_connect_timeout")]
    pub connect_timeout: Duration,
    /// Decay of the peak-EWMA latency estimate.
    #[serde(with = "humantime_serde", default = "d_ewma_decay")]
    pub ewma_decay: Duration,
    /// Retries (only ever for methods whose contract says they are safe).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Hedging of NO_SIDE_EFFECTS methods; off unless set.
    #[serde(default)]
    pub hedge: Option<HedgePolicy>,
    /// Outlier ejection per endpoint.
    #[serde(default)]
    pub outlier: OutlierPolicy,
    /// Weighted subsets of the endpoints (traffic split); empty: one pool.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Fault injection; off unless set.
    #[serde(default)]
    pub fault: FaultPolicy,
    /// Per-method overrides, by method name (`ListProducts`).
    #[serde(default)]
    pub methods: BTreeMap<String, MethodPolicy>,
    /// HTTP/2 PINGs that find a peer gone silent (half-open).
    #[serde(default)]
    pub keepalive: KeepalivePolicy,
    /// Client-side adaptive throttling ([`crate::throttle`]).
    #[serde(default)]
    pub throttle: crate::throttle::ThrottlePolicy,
    /// The identity the upstream's endpoints must present over mTLS: a
    /// workload name of this service's trust domain and namespace, or a
    /// full SPIFFE ID; the upstream's name when unset.
    #[serde(default)]
    pub identity: Option<String>,
}

/// `keepalive`: a PING every `interval`; a connection whose PONG takes
/// longer than `timeout` is closed (its calls fail over at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePolicy {
    /// Time between PINGs.
    #[serde(with = "humantime_serde", default = "d_keepalive_interval")]
    pub interval: Duration,
    /// Time a PONG may take.
    #[serde(with = "humantime_serde", default = "d_keepalive_timeout")]
    pub timeout: Duration,
}

fn d_keepalive_interval() -> Duration {
    Duration::from_secs(1)
}
fn d_keepalive_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Default for KeepalivePolicy {
    fn default() -> Self {
        Self {
            interval: d_keepalive_interval(),
            timeout: d_keepalive_timeout(),
        }
    }
}

fn d_dns_refresh() -> Duration {
    Duration::from_secs(5)
}
fn d_timeout() -> Duration {
    Duration::from_secs(2)
}
fn d_connect_timeout() -> Duration {
    Duration::from_millis(500)
}
fn d_ewma_decay() -> Duration {
    Duration::from_secs(10)
}

/// `retry`: which failures are retried, how often and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: u32,
    /// Deadline of each attempt; none: only the overall deadline.
    #[serde(with = "humantime_serde", default)]
    pub per_try_timeout: Option<Duration>,
    /// gRPC codes that are retried (`unavailable`, `resource_exhausted`...).
    #[serde(default = "d_retry_on")]
    pub on: Vec<GrpcCode>,
    /// Exponential backoff with full jitter.
    #[serde(default)]
    pub backoff: BackoffPolicy,
    /// Retries allowed: `ratio` of calls plus `min_per_second`.
    #[serde(default)]
    pub budget: BudgetPolicy,
    /// Largest request body buffered for replay; larger requests are sent
    /// once, never retried.
    #[serde(default = "d_max_buffered")]
    pub max_buffered_bytes: usize,
}

/// `methods.<Method>.retry`: a method's own retries. The budget is the
/// upstream's (one budget for every method: it bounds the load retries add
/// to that upstream), so there is no `budget` here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodRetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: u32,
    /// Deadline of each attempt; none: only the overall deadline.
    #[serde(with = "humantime_serde", default)]
    pub per_try_timeout: Option<Duration>,
    /// gRPC codes that are retried.
    #[serde(default = "d_retry_on")]
    pub on: Vec<GrpcCode>,
    /// Exponential backoff with full jitter.
    #[serde(default)]
    pub backoff: BackoffPolicy,
    /// Largest request body buffered for replay.
    #[serde(default = "d_max_buffered")]
    pub max_buffered_bytes: usize,
}

impl MethodRetryPolicy {
    /// The whole retry policy, under the upstream's `budget`.
    pub fn with_budget(&self, budget: BudgetPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            per_try_timeout: self.per_try_timeout,
            on: self.on.clone(),
            backoff: self.backoff,
            budget,
            max_buffered_bytes: self.max_buffered_bytes,
        }
    }
}

fn d_max_attempts() -> u32 {
    3
}
fn d_retry_on() -> Vec<GrpcCode> {
    vec![GrpcCode(tonic::Code::Unavailable)]
}
fn d_max_buffered() -> usize {
    64 * 1024
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: d_max_attempts(),
            per_try_timeout: None,
            on: d_retry_on(),
            backoff: BackoffPolicy::default(),
            budget: BudgetPolicy::default(),
            max_buffered_bytes: d_max_buffered(),
        }
    }
}

/// `retry.backoff`: exponential, `base * 2^n` capped at `max`, full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffPolicy {
    /// Delay before the first retry (before jitter).
    #[serde(with = "humantime_serde", default = "d_backoff_base")]
    pub base: Duration,
    /// Largest delay.
    #[serde(with = "humantime_serde", default = "d_backoff_max")]
    pub max: Duration,
}

fn d_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn d_backoff_max() -> Duration {
    Duration::from_millis(250)
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: d_backoff_base(),
            max: d_backoff_max(),
        }
    }
}

/// `retry.budget`: retries stay within `ratio` of recent calls plus a floor
/// of `min_per_second`, so a failing upstream is not hammered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Retries per call allowed (0.2: one retry per five calls).
    #[serde(default = "d_ratio")]
    pub ratio: f64,
    /// Retries per second allowed whatever the ratio.
    #[serde(default = "d_min_per_second")]
    pub min_per_second: u32,
    /// Window over which calls are counted.
    #[serde(with = "humantime_serde", default = "d_ttl")]
    pub ttl: Duration,
}

fn d_ratio() -> f64 {
    0.2
}
fn d_min_per_second() -> u32 {
    10
}
fn d_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: d_ratio(),
            min_per_second: d_min_per_second(),
            ttl: d_ttl(),
        }
    }
}

/// `hedge`: for NO_SIDE_EFFECTS methods, a second attempt sent after
/// `delay` if the first has not answered; the first answer wins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgePolicy {
    /// How long to wait before hedging.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Extra attempts at most.
    #[serde(default = "d_max_hedges")]
    pub max_hedges: u32,
}

fn d_max_hedges() -> u32 {
    1
}

/// `outlier`: when an endpoint is taken out of the pool, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierPolicy {
    /// Eject after this many failures in a row (0: never for this reason).
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// Eject when the failure rate over `interval` reaches this (0..1).
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// Requests in `interval` before the failure rate is judged.
    #[serde(default = "d_rate_min")]
    pub failure_rate_min_requests: u32,
    /// Window of the failure rate.
    #[serde(with = "humantime_serde", default = "d_interval")]
    pub interval: Duration,
    /// First ejection time; the n-th ejection lasts n times as long.
    #[serde(with = "humantime_serde", default = "d_base_ejection")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "humantime_serde", default = "d_max_ejection")]
    pub max_ejection: Duration,
    /// Never eject more than this share of the endpoints.
    #[serde(default = "d_max_ejected")]
    pub max_ejected_percent: u32,
}

fn d_consecutive() -> u32 {
    5
}
fn d_rate_min() -> u32 {
    20
}
fn d_interval() -> Duration {
    Duration::from_secs(10)
}
fn d_base_ejection() -> Duration {
    Duration::from_secs(10)
}
fn d_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn d_max_ejected() -> u32 {
    50
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: d_consecutive(),
            failure_rate: None,
            failure_rate_min_requests: d_rate_min(),
            interval: d_interval(),
            base_ejection: d_base_ejection(),
            max_ejection: d_max_ejection(),
            max_ejected_percent: d_max_ejected(),
        }
    }
}

/// `[[subsets]]`: a named, weighted share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// Name (`v1`, `canary`).
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Its endpoints (each must also be in `endpoints`).
    pub endpoints: Vec<String>,
}

/// `fault`: injected delays and aborts, by percentage of calls.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPolicy {
    /// Share of calls delayed, 0 to 100.
    #[serde(default)]
    pub delay_percent: f64,
    /// How long.
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    /// Share of calls aborted, 0 to 100.
    #[serde(default)]
    pub abort_percent: f64,
    /// With which code.
    #[serde(default = "d_abort_code")]
    pub abort_code: GrpcCode,
}

fn d_abort_code() -> GrpcCode {
    GrpcCode(tonic::Code::Unavailable)
}

impl FaultPolicy {
    /// Whether any fault can be injected.
    pub fn is_active(&self) -> bool {
        self.delay_percent > 0.0 || self.abort_percent > 0.0
    }
}

/// `[methods.<Name>]`: overrides for one method.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodPolicy {
    /// Overall deadline.
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    /// Retries (under the upstream's budget).
    #[serde(default)]
    pub retry: Option<MethodRetryPolicy>,
    /// Hedging.
    #[serde(default)]
    pub hedge: Option<HedgePolicy>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<FaultPolicy>,
}

/// The policy that applies to one call: upstream policy with the method's
/// overrides applied, and what the contract says about retrying.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectivePolicy {
    /// Overall deadline.
    pub timeout: Duration,
    /// Retries; `max_attempts` is 1 when the method is not safe to retry.
    pub retry: RetryPolicy,
    /// Hedging, only for NO_SIDE_EFFECTS methods.
    pub hedge: Option<HedgePolicy>,
    /// Fault injection.
    pub fault: FaultPolicy,
    /// The contract's idempotency level (`None`: not in any contract).
    pub idempotency: Option<shop_proto::Idempotency>,
}

impl UpstreamPolicy {
    /// The policy for the method at HTTP/2 `path`
    /// (`/shop.catalog.v1.CatalogService/ListProducts`).
    pub fn effective(&self, path: &str) -> EffectivePolicy {
        let name = path.rsplit('/').next().unwrap_or("");
        let over = self.methods.get(name);
        let idempotency = shop_proto::idempotency_level(path);
        let mut retry = over
            .and_then(|m| m.retry.as_ref())
            .map(|r| r.with_budget(self.retry.budget))
            .unwrap_or_else(|| self.retry.clone());
        if !idempotency.is_some_and(|i| i.is_retry_safe()) {
            retry.max_attempts = 1;
        }
        let hedge = over
            .and_then(|m| m.hedge)
            .or(self.hedge)
            .filter(|_| idempotency == Some(shop_proto::Idempotency::NoSideEffects));
        EffectivePolicy {
            timeout: over.and_then(|m| m.timeout).unwrap_or(self.timeout),
            retry,
            hedge,
            fault: over.and_then(|m| m.fault).unwrap_or(self.fault),
            idempotency,
        }
    }

    /// What of `next` a client built with `self` applies while it runs,
    /// and the keys of `next` it cannot apply (they need a restart, and
    /// MeshAdmin reports them as pending instead of in force).
    ///
    /// Fixed when a client is built: its endpoints or DNS name, its connect
    /// timeout and keepalive, and its set of subsets with their endpoints. Everything
    /// else (timeouts, retries, hedging, outlier, faults, per-method
    /// overrides, EWMA decay, subset weights) comes from `next`; a subset
    /// `next` drops gets weight 0.
    pub fn reloadable(&self, next: &UpstreamPolicy) -> (UpstreamPolicy, Vec<String>) {
        let mut in_force = next.clone();
        let mut pending = Vec::new();
        if next.endpoints != self.endpoints {
            pending.push("endpoints".to_string());
            in_force.endpoints = self.endpoints.clone();
        }
        if next.dns != self.dns {
            pending.push("dns".to_string());
            in_force.dns = self.dns.clone();
        }
        if next.connect_timeout != self.connect_timeout {
            pending.push("connect_timeout".to_string());
            in_force.connect_timeout = self.connect_timeout;
        }
        if next.keepalive != self.keepalive {
            pending.push("keepalive".to_string());
            in_force.keepalive = self.keepalive;
        }
        if next.identity != self.identity {
            pending.push("identity".to_string());
            in_force.identity = self.identity.clone();
        }
        for subset in &next.subsets {
            match self.subsets.iter().find(|s| s.name == subset.name) {
                None => pending.push(format!("subsets.{}", subset.name)),
                Some(running) if running.endpoints != subset.endpoints => {
                    pending.push(format!("subsets.{}.endpoints", subset.name))
                }
                Some(_) => {}
            }
        }
        in_force.subsets = self
            .subsets
            .iter()
            .map(|running| Subset {
                weight: next
                    .subsets
                    .iter()
                    .find(|s| s.name == running.name)
                    .map_or(0, |s| s.weight),
                ..running.clone()
            })
            .collect();
        (in_force, pending)
    }

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

/// A gRPC status code, written in configuration as its lower-case name
/// (`unavailable`, `resource_exhausted`, `deadline_exceeded`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub tonic::Code);

const CODES: &[(&str, tonic::Code)] = &[
    ("ok", tonic::Code::Ok),
    ("cancelled", tonic::Code::Cancelled),
    ("unknown", tonic::Code::Unknown),
    ("invalid_argument", tonic::Code::InvalidArgument),
    ("deadline_exceeded", tonic::Code::DeadlineExceeded),
    ("not_found", tonic::Code::NotFound),
    ("already_exists", tonic::Code::AlreadyExists),
    ("permission_denied", tonic::Code::PermissionDenied),
    ("resource_exhausted", tonic::Code::ResourceExhausted),
    ("failed_precondition", tonic::Code::FailedPrecondition),
    ("aborted", tonic::Code::Aborted),
    ("out_of_range", tonic::Code::OutOfRange),
    ("unimplemented", tonic::Code::Unimplemented),
    ("internal", tonic::Code::Internal),
    ("unavailable", tonic::Code::Unavailable),
    ("data_loss", tonic::Code::DataLoss),
    ("unauthenticated", tonic::Code::Unauthenticated),
];

impl Default for GrpcCode {
    /// `unavailable`, the usual code of an injected abort.
    fn default() -> Self {
        GrpcCode(tonic::Code::Unavailable)
    }
}

impl GrpcCode {
    /// The configuration name of the code.
    pub fn name(self) -> &'static str {
        CODES
            .iter()
            .find(|(_, c)| *c == self.0)
            .map_or("unknown", |(n, _)| n)
    }
}

impl Serialize for GrpcCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CODES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, c)| GrpcCode(*c))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown gRPC code {name:?}; expected one of {}",
                    CODES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }
}

/// Effective policies per method for one policy version: the layers look
/// one up on every call, and working it out (two map lookups, a clone of
/// the retry policy) costs more than the lookup.
///
/// A new policy version (a different `Arc`, after a reload) empties the
/// cache; it holds at most [`EffectiveCache::CAPACITY`] methods (paths come
/// from generated clients, but nothing bounds what a caller sends).
#[derive(Debug, Default)]
pub struct EffectiveCache {
    inner: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    version: Option<Arc<UpstreamPolicy>>,
    by_path: HashMap<Box<str>, Arc<EffectivePolicy>>,
}

impl EffectiveCache {
    /// Methods remembered at most; the cache starts over past it.
    pub const CAPACITY: usize = 256;

    /// `policy.effective(path)`, remembered.
    pub fn get(&self, policy: &Arc<UpstreamPolicy>, path: &str) -> Arc<EffectivePolicy> {
        let mut state = self.inner.lock().expect("not poisoned");
        if !state
            .version
            .as_ref()
            .is_some_and(|v| Arc::ptr_eq(v, policy))
        {
            state.version = Some(policy.clone());
            state.by_path.clear();
        }
        if let Some(found) = state.by_path.get(path) {
            return found.clone();
        }
        if state.by_path.len() >= Self::CAPACITY {
            state.by_path.clear();
        }
        let effective = Arc::new(policy.effective(path));
        state.by_path.insert(path.into(), effective.clone());
        effective
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_is_a_valid_policy() {
        #[derive(Deserialize)]
        struct Example {
            upstreams: BTreeMap<String, UpstreamPolicy>,
            server: Server,
        }
        #[derive(Deserialize)]
        struct Server {
            mesh: ServerPolicy,
        }
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("[upstreams.catalog]                      # orders.toml")
            .expect("the README's policy example");
        let block = &readme[start..];
        let block = &block[..block.find("```").expect("the end of the block")];
        let example: Example = toml::from_str(block).unwrap();
        for (name, upstream) in &example.upstreams {
            upstream.validate(name).unwrap();
        }
        example.server.mesh.validate().unwrap();
        assert!(example.server.mesh.rate_limit.identity.is_some());
    }

    fn policy() -> UpstreamPolicy {
        UpstreamPolicy {
            keepalive: KeepalivePolicy::default(),
            throttle: Default::default(),
            identity: None,
            endpoints: vec!["http://127.0.0.1:7102".into()],
            dns: None,
            dns_refresh: d_dns_refresh(),
            timeout: d_timeout(),
            connect_timeout: d_connect_timeout(),
            ewma_decay: d_ewma_decay(),
            retry: RetryPolicy::default(),
            hedge: Some(HedgePolicy {
                delay: Duration::from_millis(50),
                max_hedges: 1,
            }),
            outlier: OutlierPolicy::default(),
            subsets: vec![],
            fault: FaultPolicy::default(),
            methods: BTreeMap::from([(
                "ListProducts".to_string(),
                MethodPolicy {
                    timeout: Some(Duration::from_millis(500)),
                    ..MethodPolicy::default()
                },
            )]),
        }
    }

    #[test]
    fn only_methods_the_contract_marks_safe_are_retried_or_hedged() {
        let p = policy();
        let read = p.effective("/shop.catalog.v1.CatalogService/GetProduct");
        assert_eq!(read.retry.max_attempts, 3);
        assert!(read.hedge.is_some());
        let idempotent = p.effective("/shop.catalog.v1.CatalogService/UpdateProduct");
        assert_eq!(idempotent.retry.max_attempts, 3);
        assert!(idempotent.hedge.is_none(), "hedging is for reads only");
        let create = p.effective("/shop.catalog.v1.CatalogService/CreateProduct");
        assert_eq!(create.retry.max_attempts, 1);
        let unknown = p.effective("/other.v1.Other/Do");
        assert_eq!(unknown.retry.max_attempts, 1);
    }

    #[test]
    fn the_cache_follows_policy_versions() {
        let cache = EffectiveCache::default();
        let path = "/shop.catalog.v1.CatalogService/ListProducts";
        let first = Arc::new(policy());
        let a = cache.get(&first, path);
        assert!(Arc::ptr_eq(&a, &cache.get(&first, path)), "remembered");
        assert_eq!(*a, first.effective(path));
        let mut changed = policy();
        changed.methods.clear();
        let second = Arc::new(changed);
        assert_eq!(cache.get(&second, path).timeout, Duration::from_secs(2));
        for i in 0..EffectiveCache::CAPACITY + 10 {
            cache.get(&second, &format!("/x.v1.X/M{i}"));
        }
        assert!(cache.inner.lock().unwrap().by_path.len() <= EffectiveCache::CAPACITY);
    }

    #[test]
    fn method_overrides_apply() {
        let p = policy();
        assert_eq!(
            p.effective("/shop.catalog.v1.CatalogService/ListProducts")
                .timeout,
            Duration::from_millis(500)
        );
        assert_eq!(
            p.effective("/shop.catalog.v1.CatalogService/GetProduct")
                .timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn invalid_policies_name_the_key() {
        let mut p = policy();
        p.retry.max_attempts = 0;
        assert_eq!(
            p.validate("catalog").unwrap_err().key,
            "upstreams.catalog.retry.max_attempts"
        );
        let mut p = policy();
        p.outlier.max_ejected_percent = 150;
        assert_eq!(
            p.validate("catalog").unwrap_err().key,
            "upstreams.catalog.outlier.max_ejected_percent"
        );
        let mut p = policy();
        p.endpoints = vec!["not a uri".into()];
        assert_eq!(
            p.validate("catalog").unwrap_err().key,
            "upstreams.catalog.endpoints"
        );
        assert!(policy().validate("catalog").is_ok());
    }

    #[test]
    fn a_reload_applies_what_a_running_client_can_and_names_the_rest() {
        let mut running = policy();
        running.endpoints = vec!["http://10.0.0.1:7000".into(), "http://10.0.0.2:7000".into()];
        running.subsets = vec![
            Subset {
                name: "v1".into(),
                weight: 90,
                endpoints: vec!["http://10.0.0.1:7000".into()],
            },
            Subset {
                name: "v2".into(),
                weight: 10,
                endpoints: vec!["http://10.0.0.2:7000".into()],
            },
        ];
        let mut next = running.clone();
        next.timeout = Duration::from_millis(700);
        next.endpoints.push("http://10.0.0.3:7000".into());
        next.connect_timeout = Duration::from_secs(3);
        next.subsets[0].weight = 50;
        next.subsets[1].endpoints = vec!["http://10.0.0.3:7000".into()];
        next.subsets.push(Subset {
            name: "v3".into(),
            weight: 5,
            endpoints: vec!["http://10.0.0.3:7000".into()],
        });

        let (in_force, pending) = running.reloadable(&next);
        assert_eq!(
            pending,
            [
                "endpoints",
                "connect_timeout",
                "subsets.v2.endpoints",
                "subsets.v3"
            ]
        );
        assert_eq!(in_force.timeout, Duration::from_millis(700), "applied live");
        assert_eq!(in_force.endpoints, running.endpoints, "kept");
        assert_eq!(in_force.connect_timeout, running.connect_timeout, "kept");
        let weights: Vec<(&str, u32)> = in_force
            .subsets
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect();
        assert_eq!(weights, [("v1", 50), ("v2", 10)]);
        assert_eq!(in_force.subsets[1].endpoints, running.subsets[1].endpoints);

        let (_, none) = running.reloadable(&running);
        assert!(none.is_empty());
        let mut dropped = running.clone();
        dropped.subsets.truncate(1);
        let (in_force, pending) = running.reloadable(&dropped);
        assert!(pending.is_empty());
        assert_eq!(
            in_force.subsets[1].weight, 0,
            "a dropped subset gets no traffic"
        );
    }

    #[test]
    fn hedging_is_bounded_and_a_method_has_no_budget_of_its_own() {
        let mut p = policy();
        p.hedge = Some(HedgePolicy {
            delay: Duration::from_millis(20),
            max_hedges: MAX_HEDGES + 1,
        });
        assert_eq!(
            p.validate("catalog").unwrap_err().key,
            "upstreams.catalog.hedge.max_hedges"
        );
        let mut p = policy();
        p.methods.insert(
            "GetProduct".into(),
            MethodPolicy {
                hedge: Some(HedgePolicy {
                    delay: Duration::ZERO,
                    max_hedges: 1,
                }),
                ..MethodPolicy::default()
            },
        );
        assert_eq!(
            p.validate("catalog").unwrap_err().key,
            "upstreams.catalog.methods.GetProduct.hedge.delay"
        );

        // A method's retry runs under the upstream's budget; a budget
        // written under a method is refused, not silently ignored.
        let mut p = policy();
        p.retry.budget.ratio = 0.5;
        p.methods.insert(
            "GetProduct".into(),
            MethodPolicy {
                retry: Some(MethodRetryPolicy {
                    max_attempts: 5,
                    per_try_timeout: None,
                    on: d_retry_on(),
                    backoff: BackoffPolicy::default(),
                    max_buffered_bytes: d_max_buffered(),
                }),
                ..MethodPolicy::default()
            },
        );
        let effective = p.effective("/shop.catalog.v1.CatalogService/GetProduct");
        assert_eq!(effective.retry.max_attempts, 5);
        assert_eq!(effective.retry.budget.ratio, 0.5);
        let refused =
            serde_json::from_str::<MethodPolicy>(r#"{"retry": {"budget": {"ratio": 1.0}}}"#);
        assert!(refused.unwrap_err().to_string().contains("budget"));
    }

    #[test]
    fn codes_are_written_by_name() {
        let code: GrpcCode = serde_json_like("\"resource_exhausted\"");
        assert_eq!(code.0, tonic::Code::ResourceExhausted);
    }

    fn serde_json_like(s: &str) -> GrpcCode {
        use serde::de::IntoDeserializer;
        let name = s.trim_matches('"').to_string();
        let d: serde::de::value::StringDeserializer<serde::de::value::Error> =
            name.into_deserializer();
        GrpcCode::deserialize(d).unwrap()
    }
}
