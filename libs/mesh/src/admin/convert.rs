//! Policies and stats as `shop.mesh.v1` messages.

use super::MeshAdmin;
use super::descriptors::{descriptors, method_name};
use crate::policy::{self, FaultPolicy, UpstreamPolicy};
use crate::stats::{self, EjectionReason, EndpointState, EndpointStats};
use shop_proto::shop::mesh::v1 as pb;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

impl MeshAdmin {
    /// The server policy in force, listing every method this process serves.
    pub(super) fn server_policy(&self) -> pb::ServerPolicy {
        let policy = self.server.borrow().clone();
        let served = self.served.read().expect("not poisoned");
        let mut methods: Vec<(String, &str)> = served
            .iter()
            .flat_map(|service| descriptors().services.get(service).into_iter().flatten())
            .map(|path| (path.clone(), method_name(path)))
            .collect();
        for name in policy.methods.keys() {
            if !methods.iter().any(|(_, m)| m == name) {
                methods.push((name.clone(), name));
            }
        }
        methods.sort();
        let authorizer = crate::authz::Authorizer::new(&policy.authorization);
        let identity = self.identities.read().expect("not poisoned").own.clone();
        pb::ServerPolicy {
            max_concurrency: saturate(policy.max_concurrency),
            shed_pushback: duration(policy.shed_pushback),
            methods: methods
                .into_iter()
                .map(|(path, name)| pb::ServerMethodPolicy {
                    fault: fault(policy.methods.get(name).unwrap_or(&policy.fault)),
                    allowed_callers: authorizer.allowed(&path).to_vec(),
                    method: path,
                })
                .collect(),
            authorization_enforced: identity.is_some(),
            identity: identity.unwrap_or_default(),
        }
    }

    /// Upstream `name`: its endpoints by state, its retry budget and counters.
    pub(super) fn upstream_status(&self, name: &str) -> pb::UpstreamStatus {
        let stats = self.stats.upstream(name);
        let policy = self.upstream_policy(name);
        let now = SystemTime::now();
        let endpoints = stats.endpoints();
        let ejected = endpoints
            .iter()
            .filter(|e| matches!(live_state(e.state(), now), EndpointState::Ejected { .. }))
            .count();
        let budget = policy.as_ref().map(|p| p.retry.budget).unwrap_or_default();
        pb::UpstreamStatus {
            upstream: name.to_string(),
            endpoint_count: saturate(endpoints.len()),
            healthy_endpoint_count: saturate(endpoints.len() - ejected),
            ejected_endpoint_count: saturate(ejected),
            retry_budget: Some(pb::RetryBudgetStatus {
                ratio: budget.ratio,
                min_per_second: saturate(budget.min_per_second as usize),
                available_retries: stats.budget_available.load(Ordering::Relaxed),
            }),
            counters: Some(client_counters(&stats.counters)),
            last_resolve_time: None,
            discovery_error: String::new(),
            throttle_probability: f64::from_bits(
                stats.throttle_probability.load(Ordering::Relaxed),
            ),
            concurrency_limit: i64::try_from(stats.concurrency_limit.load(Ordering::Relaxed))
                .unwrap_or(i64::MAX),
        }
    }
}

// === policies as messages ===

pub(super) fn upstream_policy(name: &str, p: &UpstreamPolicy) -> pb::UpstreamPolicy {
    use pb::discovery::Source;
    let source = match &p.dns {
        Some(dns) => Source::Dns(pb::DnsDiscovery {
            name: dns.clone(),
            refresh_interval: duration(p.dns_refresh),
        }),
        None => Source::StaticList(pb::StaticDiscovery {
            endpoints: p.endpoints.clone(),
        }),
    };
    let o = &p.outlier;
    pb::UpstreamPolicy {
        upstream: name.to_string(),
        discovery: Some(pb::Discovery {
            source: Some(source),
        }),
        connect_timeout: duration(p.connect_timeout),
        retry_budget: Some(pb::RetryBudgetPolicy {
            ratio: p.retry.budget.ratio,
            min_per_second: saturate(p.retry.budget.min_per_second as usize),
            ttl: duration(p.retry.budget.ttl),
        }),
        outlier: Some(pb::OutlierPolicy {
            consecutive_failures: saturate(o.consecutive_failures as usize),
            failure_rate_threshold: o.failure_rate.unwrap_or(0.0),
            failure_rate_min_requests: saturate(o.failure_rate_min_requests as usize),
            interval: duration(o.interval),
            base_ejection: duration(o.base_ejection),
            max_ejection: duration(o.max_ejection),
            max_ejected_percent: saturate(o.max_ejected_percent as usize),
        }),
        subsets: p
            .subsets
            .iter()
            .map(|s| pb::Subset {
                name: s.name.clone(),
                weight: s.weight,
                endpoints: s.endpoints.clone(),
            })
            .collect(),
        ewma_decay: duration(p.ewma_decay),
        methods: upstream_methods(name, p)
            .iter()
            .map(|path| method_policy(path, p))
            .collect(),
        identity: String::new(),
        pending_restart: Vec::new(),
    }
}

/// The method paths of upstream `name`: its package's methods plus any
/// other method its policy names (see the docs of [`crate::admin`]).
fn upstream_methods(name: &str, p: &UpstreamPolicy) -> Vec<String> {
    let services = descriptors().packages.get(name);
    let mut paths: BTreeSet<String> = services
        .into_iter()
        .flatten()
        .flat_map(|s| descriptors().services[s].iter().cloned())
        .collect();
    for method in p.methods.keys() {
        if paths.iter().any(|path| method_name(path) == method) {
            continue;
        }
        match services {
            Some(services) => {
                paths.extend(services.iter().map(|s| format!("/{s}/{method}")));
            }
            None => {
                paths.insert(method.clone());
            }
        }
    }
    paths.into_iter().collect()
}

fn method_policy(path: &str, p: &UpstreamPolicy) -> pb::MethodPolicy {
    let effective = p.effective(path);
    let over = p.methods.get(method_name(path));
    // The configured retry (shown even where the contract disables it).
    let retry = over
        .and_then(|m| m.retry.as_ref())
        .map_or_else(|| p.retry.clone(), |r| r.with_budget(p.retry.budget));
    let hedge = over.and_then(|m| m.hedge).or(p.hedge);
    use pb::IdempotencyLevel as L;
    let level = match effective.idempotency {
        None => L::Unspecified,
        Some(shop_proto::Idempotency::Unknown) => L::Unknown,
        Some(shop_proto::Idempotency::NoSideEffects) => L::NoSideEffects,
        Some(shop_proto::Idempotency::Idempotent) => L::Idempotent,
    };
    pb::MethodPolicy {
        method: path.to_string(),
        idempotency_level: level as i32,
        timeout: duration(effective.timeout),
        retry: (retry.max_attempts > 1).then(|| pb::RetryPolicy {
            max_attempts: saturate(retry.max_attempts as usize),
            per_try_timeout: retry.per_try_timeout.and_then(duration),
            retry_on: retry.on.iter().map(|c| c.name().to_string()).collect(),
            backoff: Some(pb::Backoff {
                base: duration(retry.backoff.base),
                max: duration(retry.backoff.max),
            }),
        }),
        retry_enabled: effective.retry.max_attempts > 1,
        hedge: hedge.map(|h| pb::HedgePolicy {
            delay: duration(h.delay),
            max_hedges: saturate(h.max_hedges as usize),
        }),
        hedge_enabled: effective.hedge.is_some(),
        fault: fault(&effective.fault),
    }
}

/// A fault policy as a message; `None` when it is off.
fn fault(f: &FaultPolicy) -> Option<pb::FaultPolicy> {
    f.is_active().then(|| pb::FaultPolicy {
        delay_percent: f.delay_percent,
        delay: duration(f.delay),
        abort_percent: f.abort_percent,
        abort_code: f.abort_code.name().to_string(),
    })
}

// === stats as messages ===

/// The state as the balancer sees it: an ejection whose time has run out
/// is over, whether or not the outlier layer has written so yet.
fn live_state(state: EndpointState, now: SystemTime) -> EndpointState {
    match state {
        EndpointState::Ejected { until, .. } if until <= now => EndpointState::Healthy,
        s => s,
    }
}

pub(super) fn endpoint_status(
    upstream: &str,
    policy: Option<&UpstreamPolicy>,
    e: &EndpointStats,
) -> pb::Endpoint {
    let subset = policy
        .and_then(|p| p.subsets.iter().find(|s| s.endpoints.contains(&e.address)))
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut out = pb::Endpoint {
        upstream: upstream.to_string(),
        address: e.address.clone(),
        subset,
        state: pb::EndpointState::Healthy as i32,
        ewma_latency: duration(Duration::from_micros(e.ewma_micros.load(Ordering::Relaxed))),
        in_flight: e.in_flight.load(Ordering::Relaxed),
        attempts: count(&e.requests),
        failures: count(&e.failures),
        ..Default::default()
    };
    if let Some((kind, message)) = e.last_error() {
        out.last_transport_error_kind = kind.to_string();
        out.last_transport_error = message;
    }
    let raw = e.state();
    match live_state(raw, SystemTime::now()) {
        EndpointState::Healthy => {
            if let EndpointState::Ejected { until, .. } = raw {
                out.state_change_time = Some(until.into());
            }
        }
        EndpointState::Ejected {
            since,
            until,
            reason,
            count,
        } => {
            out.state = pb::EndpointState::Ejected as i32;
            out.state_change_time = Some(since.into());
            out.ejection_end_time = Some(until.into());
            out.ejection_count = saturate(count as usize);
            out.ejection_reason = match reason {
                EjectionReason::ConsecutiveFailures => pb::EjectionReason::ConsecutiveFailures,
                EjectionReason::FailureRate => pb::EjectionReason::FailureRate,
                EjectionReason::ConnectFailure => pb::EjectionReason::ConnectFailure,
            } as i32;
            out.ejection_detail = ejection_detail(reason, count, policy.map(|p| &p.outlier));
            if reason == EjectionReason::ConnectFailure
                && let Some((kind, _)) = e.last_error()
            {
                out.ejection_detail = format!("{}; last: {kind}", out.ejection_detail);
            }
        }
    }
    out
}

fn ejection_detail(
    reason: EjectionReason,
    count: u32,
    o: Option<&policy::OutlierPolicy>,
) -> String {
    let why = match (reason, o) {
        (EjectionReason::ConsecutiveFailures, Some(o)) => {
            format!("{} consecutive failures", o.consecutive_failures)
        }
        (EjectionReason::ConsecutiveFailures, None) => "consecutive failures".to_string(),
        (EjectionReason::FailureRate, Some(o)) => format!(
            "failure rate at or above {}% over {:?}",
            o.failure_rate.unwrap_or(0.0) * 100.0,
            o.interval
        ),
        (EjectionReason::FailureRate, None) => "failure rate above the threshold".to_string(),
        (EjectionReason::ConnectFailure, _) => "could not connect".to_string(),
    };
    format!("{why} (ejection {count})")
}

pub(super) fn client_counters(c: &stats::ClientCounters) -> pb::ClientCounters {
    pb::ClientCounters {
        calls: count(&c.calls),
        attempts: count(&c.attempts),
        retries: count(&c.retries),
        budget_exhausted: count(&c.budget_exhausted),
        hedges: count(&c.hedges),
        ejections: count(&c.ejections),
        deadline_exceeded: count(&c.deadline_exceeded),
        failures: count(&c.failures),
        faults_delayed: count(&c.faults_delayed),
        faults_aborted: count(&c.faults_aborted),
        throttled: count(&c.throttled),
        limited: count(&c.limited),
    }
}
// === helpers ===

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

pub(super) fn count(c: &std::sync::atomic::AtomicU64) -> i64 {
    i64::try_from(stats::read(c)).unwrap_or(i64::MAX)
}

fn saturate(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
