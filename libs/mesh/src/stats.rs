//! What the mesh knows about itself: counters and endpoint states. Every
//! layer reports here; the admin API ([`crate::admin`]) reads it.
//!
//! Counters are plain atomics (relaxed: they are statistics, not
//! synchronisation); endpoint states sit behind a std mutex held only to
//! copy or replace a small value, never across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Everything one process's mesh reports.
#[derive(Debug, Default)]
pub struct MeshStats {
    upstreams: RwLock<BTreeMap<String, Arc<UpstreamStats>>>,
    /// The server side.
    pub server: ServerCounters,
}

impl MeshStats {
    /// The stats of upstream `name`, created on first use.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamStats> {
        if let Some(s) = self.upstreams.read().expect("not poisoned").get(name) {
            return s.clone();
        }
        self.upstreams
            .write()
            .expect("not poisoned")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(UpstreamStats::new(name)))
            .clone()
    }

    /// Every upstream, by name.
    pub fn upstreams(&self) -> Vec<Arc<UpstreamStats>> {
        self.upstreams
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// One upstream: its counters, its endpoints, its retry budget.
#[derive(Debug)]
pub struct UpstreamStats {
    /// The upstream's name (`catalog`).
    pub name: String,
    /// Call and attempt counters.
    pub counters: ClientCounters,
    /// Retries the budget would allow right now (a gauge).
    pub budget_available: AtomicI64,
    /// The throttle's refusal probability as of the last attempt, as `f64`
    /// bits (a gauge).
    pub throttle_probability: AtomicU64,
    /// The client's adaptive concurrency limit as of the last call
    /// ([`crate::concurrency`]; 0 while off; a gauge).
    pub concurrency_limit: AtomicU64,
    /// The OpenTelemetry instruments of this upstream's calls.
    pub metrics: Arc<crate::metrics::ClientMetrics>,
    endpoints: RwLock<BTreeMap<String, Arc<EndpointStats>>>,
}

impl UpstreamStats {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            counters: ClientCounters::default(),
            budget_available: AtomicI64::new(0),
            throttle_probability: AtomicU64::new(0),
            concurrency_limit: AtomicU64::new(0),
            metrics: Arc::new(crate::metrics::ClientMetrics::new(name)),
            endpoints: RwLock::new(BTreeMap::new()),
        }
    }

    /// The stats of endpoint `address`, created on first use.
    pub fn endpoint(&self, address: &str) -> Arc<EndpointStats> {
        if let Some(s) = self.endpoints.read().expect("not poisoned").get(address) {
            return s.clone();
        }
        self.endpoints
            .write()
            .expect("not poisoned")
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(EndpointStats::new(address)))
            .clone()
    }

    /// Forgets an endpoint discovery no longer returns.
    pub fn remove_endpoint(&self, address: &str) {
        self.endpoints
            .write()
            .expect("not poisoned")
            .remove(address);
    }

    /// Every endpoint, by address.
    pub fn endpoints(&self) -> Vec<Arc<EndpointStats>> {
        self.endpoints
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// Client-side counters of one upstream.
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// Calls made (each may have several attempts).
    pub calls: AtomicU64,
    /// Attempts sent, first attempts and retries and hedges.
    pub attempts: AtomicU64,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries not sent because the budget was spent.
    pub budget_exhausted: AtomicU64,
    /// Hedged attempts sent.
    pub hedges: AtomicU64,
    /// Endpoint ejections.
    pub ejections: AtomicU64,
    /// Calls that ran out of time.
    pub deadline_exceeded: AtomicU64,
    /// Calls that failed in the end.
    pub failures: AtomicU64,
    /// Calls delayed by fault injection.
    pub faults_delayed: AtomicU64,
    /// Calls aborted by fault injection.
    pub faults_aborted: AtomicU64,
    /// Attempts refused by the client's own throttle ([`crate::throttle`]).
    pub throttled: AtomicU64,
    /// Calls refused by the client's adaptive concurrency limit
    /// ([`crate::concurrency`]).
    pub limited: AtomicU64,
}

/// Different (method, caller, code) refusals counted apart.
pub const MAX_DENIAL_KEYS: usize = 1024;

/// Server-side counters.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests being served now (a gauge).
    pub in_flight: AtomicI64,
    /// Requests shed by the concurrency limit.
    pub shed: AtomicU64,
    /// Requests refused by a rate limit ([`crate::rate_limit`]).
    pub rate_limited: AtomicU64,
    /// The concurrency limit in force as of the last request (adaptive or
    /// `max_concurrency`; a gauge).
    pub concurrency_limit: AtomicU64,
    /// Requests whose deadline passed before they were answered.
    pub deadline_exceeded: AtomicU64,
    /// Requests delayed by fault injection.
    pub faults_delayed: AtomicU64,
    /// Requests aborted by fault injection.
    pub faults_aborted: AtomicU64,
    /// Requests refused UNAUTHENTICATED (no caller identity).
    pub unauthenticated: AtomicU64,
    /// Requests refused PERMISSION_DENIED (a caller not allowed).
    pub permission_denied: AtomicU64,
    /// Refusals by (method, caller SPIFFE ID or "", gRPC code).
    denials: Mutex<BTreeMap<(String, String, i32), u64>>,
}

impl ServerCounters {
    /// Counts a refused call of `method` by `caller`.
    pub fn denied(&self, method: &str, caller: Option<&str>, code: tonic::Code) {
        incr(match code {
            tonic::Code::Unauthenticated => &self.unauthenticated,
            _ => &self.permission_denied,
        });
        *self
            .denials
            .lock()
            .expect("not poisoned")
            .entry((
                method.to_string(),
                caller.unwrap_or("").to_string(),
                code as i32,
            ))
            .or_default() += 1;
    }

    /// Refusals so far: (method, caller, code) and their count.
    pub fn denials(&self) -> Vec<((String, String, i32), u64)> {
        let denials = self.denials.lock().expect("not poisoned");
        denials.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Adds one to a counter.
pub fn incr(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// `outlier.consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// The failure rate over `outlier.interval` reached the threshold.
    FailureRate,
    /// The endpoint could not be connected to.
    ConnectFailure,
}

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// In the pool.
    Healthy,
    /// Out of the pool until `until`.
    Ejected {
        /// When it was ejected.
        since: SystemTime,
        /// When it is readmitted.
        until: SystemTime,
        /// Why.
        reason: EjectionReason,
        /// How many times it has been ejected (the ejection time grows).
        count: u32,
    },
}

/// One endpoint of an upstream.
#[derive(Debug)]
pub struct EndpointStats {
    /// `http://host:port`.
    pub address: String,
    /// Calls in flight (a gauge).
    pub in_flight: AtomicI64,
    /// Peak-EWMA latency estimate, in microseconds.
    pub ewma_micros: AtomicU64,
    /// Requests sent to it.
    pub requests: AtomicU64,
    /// Of which failed.
    pub failures: AtomicU64,
    state: Mutex<EndpointState>,
    /// The last transport failure reaching it: its kind
    /// ([`crate::transport::TransportError::kind`], or `error` for another
    /// error) and message.
    last_error: Mutex<Option<(&'static str, String)>>,
}

impl EndpointStats {
    /// Records the transport failure that last kept it from answering.
    pub fn set_last_error(&self, kind: &'static str, message: String) {
        *self.last_error.lock().expect("not poisoned") = Some((kind, message));
    }

    /// The transport failure that last kept it from answering.
    pub fn last_error(&self) -> Option<(&'static str, String)> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            in_flight: AtomicI64::new(0),
            ewma_micros: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: Mutex::new(EndpointState::Healthy),
            last_error: Mutex::new(None),
        }
    }

    /// The endpoint's state.
    pub fn state(&self) -> EndpointState {
        *self.state.lock().expect("not poisoned")
    }

    /// Records a new state.
    pub fn set_state(&self, state: EndpointState) {
        *self.state.lock().expect("not poisoned") = state;
    }
}
