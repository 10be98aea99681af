//! [`UpstreamPolicy`]: the policy of the calls to one upstream, its parts
//! and their defaults, and what of a reloaded policy a running client can
//! apply.

use super::GrpcCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// The caller's adaptive concurrency limit ([`crate::concurrency`]);
    /// off unless enabled.
    #[serde(default)]
    pub adaptive_concurrency: crate::adaptive::AdaptivePolicy,
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

pub(super) fn d_dns_refresh() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn d_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn d_connect_timeout() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn d_ewma_decay() -> Duration {
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
pub(super) fn d_retry_on() -> Vec<GrpcCode> {
    vec![GrpcCode(tonic::Code::Unavailable)]
}
pub(super) fn d_max_buffered() -> usize {
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

impl UpstreamPolicy {
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
}
