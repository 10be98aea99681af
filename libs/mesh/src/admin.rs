//! `shop.mesh.v1.MeshAdminService`: the mesh seen from inside, answered by
//! every service (`grpcurl -plaintext host:port shop.mesh.v1.MeshAdminService/ListEndpoints`).
//!
//! [`MeshAdmin`] reads three things and owns none of them: the counters and
//! endpoint states in [`MeshStats`], each upstream's policy watch, and the
//! server policy watch. What it answers is computed on each call, so it is
//! always the live state.
//!
//! # Which methods an upstream has
//!
//! An upstream is named after the package segment of the contract it
//! serves: upstream `catalog` calls the services of `shop.catalog.*`
//! (`shop.catalog.v1.CatalogService`), found in
//! [`shop_proto::FILE_DESCRIPTOR_SET`]. Its effective policy lists every
//! method of those services, plus any method its `methods` table names that
//! no service defines (a typo worth seeing), shown under each of the
//! package's services, or by bare name if the package is unknown.
//!
//! # What it cannot answer yet
//!
//! The stats hold no per-method client counters, no consecutive-failure
//! run and no discovery times or errors; those fields are left at their
//! defaults.

use crate::policy::{self, FaultPolicy, ServerPolicy, UpstreamPolicy};
use crate::stats::{self, EjectionReason, EndpointState, EndpointStats, MeshStats};
use shop_proto::shop::mesh::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Page size when a request asks for 0.
const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page size a request may ask for.
const MAX_PAGE_SIZE: usize = 100;

/// The admin service. Build it at start-up (its creation time is the
/// `start_time` of GetStats), register each upstream's policy, then serve it
/// with `MeshAdminServiceServer::from_arc`.
#[derive(Debug)]
pub struct MeshAdmin {
    stats: Arc<MeshStats>,
    server: watch::Receiver<Arc<ServerPolicy>>,
    upstreams: RwLock<BTreeMap<String, watch::Receiver<Arc<UpstreamPolicy>>>>,
    /// Per upstream, the configured keys its running client does not apply
    /// (they need a restart).
    pending: RwLock<BTreeMap<String, Vec<String>>>,
    /// Services this process serves (`shop.orders.v1.OrderService`).
    served: RwLock<BTreeSet<String>>,
    version: Mutex<PolicyVersion>,
    start_time: SystemTime,
    /// This server's SPIFFE ID (None: plaintext, nothing enforced), and
    /// each upstream's expected one.
    identities: RwLock<Identities>,
}

#[derive(Debug, Default)]
struct Identities {
    own: Option<String>,
    upstreams: BTreeMap<String, String>,
}

/// Which version of the policy is in force.
#[derive(Debug, Clone)]
struct PolicyVersion {
    generation: i64,
    load_time: SystemTime,
    source: String,
}

// === impl MeshAdmin ===

impl MeshAdmin {
    /// An admin over `stats` and the server policy `server`; the policy as
    /// it is now is generation 1.
    pub fn new(stats: Arc<MeshStats>, server: watch::Receiver<Arc<ServerPolicy>>) -> Self {
        let now = SystemTime::now();
        Self {
            stats,
            server,
            upstreams: RwLock::default(),
            pending: RwLock::default(),
            served: RwLock::default(),
            version: Mutex::new(PolicyVersion {
                generation: 1,
                load_time: now,
                source: String::new(),
            }),
            start_time: now,
            identities: RwLock::default(),
        }
    }

    /// Records this server's SPIFFE ID: it serves mTLS, and authorization
    /// is enforced.
    pub fn set_identity(&self, id: &str) {
        self.identities.write().expect("not poisoned").own = Some(id.to_string());
    }

    /// Records the SPIFFE ID `upstream`'s endpoints must present.
    pub fn set_upstream_identity(&self, upstream: &str, id: &str) {
        self.identities
            .write()
            .expect("not poisoned")
            .upstreams
            .insert(upstream.to_string(), id.to_string());
    }

    /// Names where the policy was loaded from (the config file path).
    pub fn with_source(self, source: impl Into<String>) -> Self {
        self.version.lock().expect("not poisoned").source = source.into();
        self
    }

    /// Adds upstream `name` (`catalog`), whose policy `policy` follows.
    pub fn register_upstream(&self, name: &str, policy: watch::Receiver<Arc<UpstreamPolicy>>) {
        self.upstreams
            .write()
            .expect("not poisoned")
            .insert(name.to_string(), policy);
    }

    /// Adds a service this process serves, by its full name
    /// (`shop.orders.v1.OrderService`, tonic's `NamedService::NAME`), so the
    /// server policy lists its methods.
    pub fn register_service(&self, name: &str) {
        self.served
            .write()
            .expect("not poisoned")
            .insert(name.to_string());
    }

    /// Records a successful policy reload: the generation goes up by one.
    pub fn policy_reloaded(&self) {
        let mut version = self.version.lock().expect("not poisoned");
        version.generation += 1;
        version.load_time = SystemTime::now();
    }

    /// Records the keys of `upstream`'s configuration that its running
    /// client does not apply (empty: none).
    pub fn set_pending_restart(&self, upstream: &str, keys: Vec<String>) {
        self.pending
            .write()
            .expect("not poisoned")
            .insert(upstream.to_string(), keys);
    }

    /// The keys of `upstream`'s configuration pending a restart.
    pub fn pending_restart(&self, upstream: &str) -> Vec<String> {
        self.pending
            .read()
            .expect("not poisoned")
            .get(upstream)
            .cloned()
            .unwrap_or_default()
    }

    fn upstream_policy(&self, name: &str) -> Option<Arc<UpstreamPolicy>> {
        self.upstreams
            .read()
            .expect("not poisoned")
            .get(name)
            .map(|rx| rx.borrow().clone())
    }

    /// Every upstream name, registered or seen by the stats, in order.
    fn upstream_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .upstreams
            .read()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        names.extend(self.stats.upstreams().iter().map(|u| u.name.clone()));
        names
    }

    fn server_policy(&self) -> pb::ServerPolicy {
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
}

#[tonic::async_trait]
impl pb::mesh_admin_service_server::MeshAdminService for MeshAdmin {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let request = request.into_inner();
        let method = match request.method.as_str() {
            "" => None,
            m if is_method_path(m) => Some(m),
            m => {
                return Err(Status::invalid_argument(format!(
                    "method {m:?} is not a gRPC method path like /shop.catalog.v1.CatalogService/GetProduct"
                )));
            }
        };
        let names: Vec<String> = if request.upstream.is_empty() {
            self.upstreams
                .read()
                .expect("not poisoned")
                .keys()
                .cloned()
                .collect()
        } else {
            vec![request.upstream.clone()]
        };
        let mut upstreams = Vec::with_capacity(names.len());
        for name in names {
            let policy = self
                .upstream_policy(&name)
                .ok_or_else(|| Status::not_found(format!("no upstream named {name:?}")))?;
            let mut upstream = upstream_policy(&name, &policy);
            upstream.pending_restart = self.pending_restart(&name);
            upstream.identity = self
                .identities
                .read()
                .expect("not poisoned")
                .upstreams
                .get(&name)
                .cloned()
                .unwrap_or_default();
            if let Some(method) = method {
                upstream.methods.retain(|m| m.method == method);
                if upstream.methods.is_empty() && !request.upstream.is_empty() {
                    return Err(Status::not_found(format!(
                        "upstream {name:?} has no method {method:?}"
                    )));
                }
            }
            upstreams.push(upstream);
        }
        let version = self.version.lock().expect("not poisoned").clone();
        Ok(Response::new(pb::GetPolicyResponse {
            generation: version.generation,
            load_time: Some(version.load_time.into()),
            source: version.source,
            server: Some(self.server_policy()),
            upstreams,
        }))
    }

    async fn list_upstreams(
        &self,
        request: Request<pb::ListUpstreamsRequest>,
    ) -> Result<Response<pb::ListUpstreamsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let names: Vec<String> = self
            .upstream_names()
            .into_iter()
            .filter(|n| after.as_ref().is_none_or(|a| n > a))
            .collect();
        let more = names.len() > size;
        let upstreams: Vec<pb::UpstreamStatus> = names
            .iter()
            .take(size)
            .map(|name| self.upstream_status(name))
            .collect();
        let next_page_token = match upstreams.last() {
            Some(last) if more => encode_token(&last.upstream),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUpstreamsResponse {
            upstreams,
            next_page_token,
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let names = self.upstream_names();
        let names: Vec<&String> = if request.upstream.is_empty() {
            names.iter().collect()
        } else if let Some(name) = names.get(&request.upstream) {
            vec![name]
        } else {
            return Err(Status::not_found(format!(
                "no upstream named {:?}",
                request.upstream
            )));
        };

        let mut endpoints = Vec::new();
        let mut more = false;
        'upstreams: for name in names {
            let policy = self.upstream_policy(name);
            for endpoint in self.stats.upstream(name).endpoints() {
                let key = endpoint_key(name, &endpoint.address);
                if after.as_ref().is_some_and(|a| &key <= a) {
                    continue;
                }
                if endpoints.len() == size {
                    more = true;
                    break 'upstreams;
                }
                endpoints.push(endpoint_status(name, policy.as_deref(), &endpoint));
            }
        }
        let next_page_token = match endpoints.last() {
            Some(last) if more => encode_token(&endpoint_key(&last.upstream, &last.address)),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints,
            next_page_token,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let s = &self.stats.server;
        let server = pb::ServerCounters {
            requests: count(&s.requests),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            shed: count(&s.shed),
            rate_limited: count(&s.rate_limited),
            concurrency_limit: count(&s.concurrency_limit),
            deadline_exceeded: count(&s.deadline_exceeded),
            unauthenticated: count(&s.unauthenticated),
            permission_denied: count(&s.permission_denied),
            faults_delayed: count(&s.faults_delayed),
            faults_aborted: count(&s.faults_aborted),
        };
        let upstreams = self
            .upstream_names()
            .into_iter()
            .map(|name| pb::UpstreamStats {
                counters: Some(client_counters(&self.stats.upstream(&name).counters)),
                upstream: name,
                methods: vec![],
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse {
            start_time: Some(self.start_time.into()),
            server: Some(server),
            upstreams,
            denials: s
                .denials()
                .into_iter()
                .map(|((method, caller, code), n)| pb::AuthorizationDenial {
                    method,
                    caller,
                    code,
                    count: i64::try_from(n).unwrap_or(i64::MAX),
                })
                .collect(),
        }))
    }
}

impl MeshAdmin {
    fn upstream_status(&self, name: &str) -> pb::UpstreamStatus {
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
        }
    }
}

// === policies as messages ===

fn upstream_policy(name: &str, p: &UpstreamPolicy) -> pb::UpstreamPolicy {
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
/// other method its policy names (see the module docs).
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

fn endpoint_status(
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

fn client_counters(c: &stats::ClientCounters) -> pb::ClientCounters {
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
    }
}

// === helpers ===

/// The methods of every service in the descriptor set (`shop_proto::methods`),
/// by service and by package.
struct Descriptors {
    /// Package segment (`catalog`) -> full service names.
    packages: BTreeMap<String, Vec<String>>,
    /// Full service name -> method paths.
    services: BTreeMap<String, Vec<String>>,
}

fn descriptors() -> &'static Descriptors {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        let mut d = Descriptors {
            packages: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        for method in shop_proto::methods() {
            let paths = d.services.entry(method.service.clone()).or_default();
            let first_of_service = paths.is_empty();
            paths.push(method.path.clone());
            let segment = method
                .package
                .strip_prefix("shop.")
                .and_then(|p| p.split('.').next());
            if let (Some(segment), true) = (segment, first_of_service) {
                d.packages
                    .entry(segment.to_string())
                    .or_default()
                    .push(method.service.clone());
            }
        }
        d
    })
}

fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// `/package.Service/Method`.
fn is_method_path(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some(service), Some(method), None) if !service.is_empty() && !method.is_empty()
    )
}

fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as usize > MAX_PAGE_SIZE => Err(Status::invalid_argument(format!(
            "page_size must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}, got {n}"
        ))),
        n => Ok(n as usize),
    }
}

/// The sort key of an endpoint (upstream, then address).
fn endpoint_key(upstream: &str, address: &str) -> String {
    format!("{upstream}\0{address}")
}

/// A page token: the hex of the last key returned.
fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument("page_token is not one this service returned");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(token.get(i..i + 2).ok_or_else(invalid)?, 16).map_err(|_| invalid())
        })
        .collect::<Result<Vec<u8>, Status>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn count(c: &std::sync::atomic::AtomicU64) -> i64 {
    i64::try_from(stats::read(c)).unwrap_or(i64::MAX)
}

fn saturate(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{GrpcCode, HedgePolicy, MethodPolicy};
    use pb::mesh_admin_service_server::MeshAdminService as _;

    const GET: &str = "/shop.catalog.v1.CatalogService/GetProduct";
    const CREATE: &str = "/shop.catalog.v1.CatalogService/CreateProduct";

    fn catalog_policy() -> UpstreamPolicy {
        UpstreamPolicy {
            keepalive: crate::policy::KeepalivePolicy::default(),
            throttle: Default::default(),
            identity: None,
            endpoints: vec!["http://10.0.0.1:7000".into(), "http://10.0.0.2:7000".into()],
            dns: None,
            dns_refresh: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            ewma_decay: Duration::from_secs(10),
            retry: Default::default(),
            hedge: Some(HedgePolicy {
                delay: Duration::from_millis(50),
                max_hedges: 1,
            }),
            outlier: Default::default(),
            subsets: vec![],
            fault: FaultPolicy::default(),
            methods: [(
                "ListProducts".to_string(),
                MethodPolicy {
                    fault: Some(FaultPolicy {
                        abort_percent: 5.0,
                        abort_code: GrpcCode(tonic::Code::Unavailable),
                        ..FaultPolicy::default()
                    }),
                    ..MethodPolicy::default()
                },
            )]
            .into(),
        }
    }

    /// An admin with upstream `catalog`: 10.0.0.1 healthy, 10.0.0.2
    /// ejected for consecutive failures since `since`.
    fn admin(since: SystemTime) -> (MeshAdmin, watch::Sender<Arc<UpstreamPolicy>>) {
        let stats = Arc::new(MeshStats::default());
        let catalog = stats.upstream("catalog");
        catalog.endpoint("http://10.0.0.1:7000");
        catalog
            .endpoint("http://10.0.0.2:7000")
            .set_state(EndpointState::Ejected {
                since,
                until: since + Duration::from_secs(600),
                reason: EjectionReason::ConsecutiveFailures,
                count: 2,
            });
        stats::incr(&catalog.counters.ejections);
        let (_server_tx, server_rx) = watch::channel(Arc::new(ServerPolicy::default()));
        let admin = MeshAdmin::new(stats, server_rx);
        let (tx, rx) = watch::channel(Arc::new(catalog_policy()));
        admin.register_upstream("catalog", rx);
        (admin, tx)
    }

    #[tokio::test]
    async fn an_ejected_endpoint_shows_as_ejected_with_its_reason_and_since() {
        let since = SystemTime::now() - Duration::from_secs(3);
        let (admin, _tx) = admin(since);

        let rsp = admin
            .list_endpoints(Request::new(pb::ListEndpointsRequest {
                upstream: "catalog".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();

        assert_eq!(rsp.endpoints.len(), 2);
        assert!(rsp.next_page_token.is_empty());
        let healthy = &rsp.endpoints[0];
        assert_eq!(healthy.address, "http://10.0.0.1:7000");
        assert_eq!(healthy.state(), pb::EndpointState::Healthy);
        assert_eq!(healthy.ejection_reason(), pb::EjectionReason::Unspecified);
        let ejected = &rsp.endpoints[1];
        assert_eq!(ejected.address, "http://10.0.0.2:7000");
        assert_eq!(ejected.state(), pb::EndpointState::Ejected);
        assert_eq!(
            ejected.ejection_reason(),
            pb::EjectionReason::ConsecutiveFailures
        );
        assert_eq!(ejected.state_change_time, Some(since.into()));
        assert_eq!(
            ejected.ejection_end_time,
            Some((since + Duration::from_secs(600)).into())
        );
        assert_eq!(ejected.ejection_count, 2);
        assert_eq!(
            ejected.ejection_detail,
            "5 consecutive failures (ejection 2)"
        );

        let upstreams = admin
            .list_upstreams(Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(upstreams.upstreams.len(), 1);
        let catalog = &upstreams.upstreams[0];
        assert_eq!(
            (
                catalog.endpoint_count,
                catalog.healthy_endpoint_count,
                catalog.ejected_endpoint_count
            ),
            (2, 1, 1)
        );
        assert_eq!(catalog.counters.as_ref().unwrap().ejections, 1);
        assert_eq!(catalog.retry_budget.as_ref().unwrap().ratio, 0.2);
    }

    #[tokio::test]
    async fn an_ejection_whose_time_has_passed_shows_as_healthy() {
        let (admin, _tx) = admin(SystemTime::now() - Duration::from_secs(3600));
        let rsp = admin
            .list_endpoints(Request::new(Default::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(
            rsp.endpoints
                .iter()
                .all(|e| e.state() == pb::EndpointState::Healthy)
        );
    }

    #[tokio::test]
    async fn get_policy_of_an_unknown_upstream_is_not_found() {
        let (admin, _tx) = admin(SystemTime::now());
        let err = admin
            .get_policy(Request::new(pb::GetPolicyRequest {
                upstream: "nope".into(),
                method: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        let err = admin
            .get_policy(Request::new(pb::GetPolicyRequest {
                upstream: "catalog".into(),
                method: "GetProduct".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn get_policy_lists_every_method_of_the_upstream_with_its_effective_policy() {
        let (admin, tx) = admin(SystemTime::now());
        let get = |upstream: &str, method: &str| {
            admin.get_policy(Request::new(pb::GetPolicyRequest {
                upstream: upstream.into(),
                method: method.into(),
            }))
        };

        let rsp = get("catalog", "").await.unwrap().into_inner();
        assert_eq!(rsp.generation, 1);
        let catalog = &rsp.upstreams[0];
        let paths: Vec<&str> = catalog.methods.iter().map(|m| m.method.as_str()).collect();
        for m in [
            "GetProduct",
            "CreateProduct",
            "UpdateProduct",
            "ListProducts",
            "BatchGetProducts",
        ] {
            assert!(
                paths.contains(&format!("/shop.catalog.v1.CatalogService/{m}").as_str()),
                "{m} missing from {paths:?}"
            );
        }
        let by_path = |p: &str| {
            catalog
                .methods
                .iter()
                .find(|m| m.method == p)
                .unwrap()
                .clone()
        };
        let read = by_path(GET);
        assert_eq!(
            read.idempotency_level(),
            pb::IdempotencyLevel::NoSideEffects
        );
        assert!(read.retry_enabled && read.hedge_enabled);
        let create = by_path(CREATE);
        assert_eq!(create.idempotency_level(), pb::IdempotencyLevel::Unknown);
        assert!(!create.retry_enabled && !create.hedge_enabled);
        assert_eq!(
            create.retry.as_ref().unwrap().max_attempts,
            3,
            "configured, not enabled"
        );
        let list = by_path("/shop.catalog.v1.CatalogService/ListProducts");
        assert_eq!(list.fault.as_ref().unwrap().abort_percent, 5.0);
        assert!(read.fault.is_none());

        let one = get("catalog", GET).await.unwrap().into_inner();
        assert_eq!(one.upstreams[0].methods.len(), 1);

        let mut changed = catalog_policy();
        changed.hedge = None;
        tx.send(Arc::new(changed)).unwrap();
        let after = get("catalog", GET).await.unwrap().into_inner();
        assert!(
            !after.upstreams[0].methods[0].hedge_enabled,
            "the live policy is shown"
        );

        let err = get("catalog", "/shop.catalog.v1.CatalogService/Nope")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn endpoints_page_in_order_and_page_sizes_are_checked() {
        let (admin, _tx) = admin(SystemTime::now());
        let list = |page_size: i32, page_token: String| {
            admin.list_endpoints(Request::new(pb::ListEndpointsRequest {
                page_size,
                page_token,
                upstream: String::new(),
            }))
        };
        let first = list(1, String::new()).await.unwrap().into_inner();
        assert_eq!(first.endpoints[0].address, "http://10.0.0.1:7000");
        assert!(!first.next_page_token.is_empty());
        let second = list(1, first.next_page_token).await.unwrap().into_inner();
        assert_eq!(second.endpoints[0].address, "http://10.0.0.2:7000");
        assert!(second.next_page_token.is_empty());

        for bad in [-1, 101] {
            let err = list(bad, String::new()).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        let err = list(0, "zz".into()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = admin
            .list_endpoints(Request::new(pb::ListEndpointsRequest {
                upstream: "nope".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn stats_report_server_and_upstream_counters() {
        let (admin, _tx) = admin(SystemTime::now());
        stats::incr(&admin.stats.server.shed);
        let rsp = admin
            .get_stats(Request::new(pb::GetStatsRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rsp.server.unwrap().shed, 1);
        assert_eq!(rsp.upstreams[0].upstream, "catalog");
        assert_eq!(rsp.upstreams[0].counters.as_ref().unwrap().ejections, 1);
        assert!(rsp.start_time.is_some());
    }

    #[test]
    fn the_descriptor_set_yields_every_method_of_every_service() {
        let d = descriptors();
        assert_eq!(
            d.services["shop.mesh.v1.MeshAdminService"],
            [
                "/shop.mesh.v1.MeshAdminService/GetPolicy",
                "/shop.mesh.v1.MeshAdminService/ListUpstreams",
                "/shop.mesh.v1.MeshAdminService/ListEndpoints",
                "/shop.mesh.v1.MeshAdminService/GetStats",
            ]
        );
        assert_eq!(d.packages["catalog"], ["shop.catalog.v1.CatalogService"]);
        for path in d.services.values().flatten() {
            assert!(
                shop_proto::idempotency_level(path).is_some(),
                "{path} is not a method the contracts define"
            );
        }
    }
}
