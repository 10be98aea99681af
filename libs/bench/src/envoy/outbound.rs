//! The client's sidecar: h2c from the application on loopback, one route
//! per method of the upstream's contract carrying that method's effective
//! policy, and one cluster of the server replicas' sidecars.

use super::{
    Certs, Rendered, bootstrap, duration, endpoints, fault, h2_upstream, http_filter, listener,
};
use serde_json::{Value, json};
use shop_identity::SpiffeId;
use shop_mesh::policy::{EffectivePolicy, UpstreamPolicy};
use tonic::Code;

/// The cluster every route sends to.
const CLUSTER: &str = "upstream";

/// What the client's sidecar is for.
#[derive(Debug, Clone)]
pub struct Outbound<'a> {
    /// The loopback port the application sends to.
    pub listen: u16,
    /// The upstream's gRPC service (`shop.catalog.v1.CatalogService`):
    /// each of its methods gets a route with its effective policy.
    pub service: &'a str,
    /// The mesh policy for the upstream.
    pub policy: &'a UpstreamPolicy,
    /// The loopback ports of the replicas (their sidecars, with `tls`).
    pub replicas: &'a [u16],
    /// mTLS to the replicas' sidecars: this side's certificates and the
    /// identity the replicas must present.
    pub tls: Option<(&'a Certs, &'a SpiffeId)>,
}

/// Renders the client sidecar's bootstrap.
pub fn render(out: &Outbound<'_>) -> Rendered {
    let mut unmapped = Vec::new();
    let policy = out.policy;
    let mut routes: Vec<Value> = shop_proto::methods()
        .iter()
        .filter(|m| m.service == out.service)
        .map(|m| {
            route(
                json!({"path": m.path}),
                &policy.effective(&m.path),
                &mut unmapped,
            )
        })
        .collect();
    // Anything else (a method of no contract) gets no retries, as in the
    // mesh.
    let other = format!("/{}/__not_a_method__", out.service);
    routes.push(route(
        json!({"prefix": "/"}),
        &policy.effective(&other),
        &mut unmapped,
    ));
    let faulted = routes
        .iter()
        .any(|r| r.get("typed_per_filter_config").is_some());

    let mut filters = Vec::new();
    if policy.throttle.enabled {
        filters.push(admission_control(policy));
    }
    if faulted {
        filters.push(http_filter(
            "envoy.filters.http.fault",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            json!({}),
        ));
    }
    let listener = listener("outbound", out.listen, routes, filters, None);
    let cluster = cluster(out, &mut unmapped);
    if !policy.subsets.is_empty() {
        unmapped.push("subsets (traffic split: Envoy's weighted_clusters, not rendered)".into());
    }
    if policy.dns.is_some() {
        unmapped.push("dns (the bench uses static endpoints)".into());
    }
    if policy.adaptive_concurrency.enabled {
        unmapped.push(
            "adaptive_concurrency (the caller's limit: Envoy's adaptive concurrency filter measures one hop, and sits in the inbound sidecar, rendered from the server's policy)"
                .into(),
        );
    }
    if policy.hedge.is_some_and(|h| h.max_hedges > 1) {
        unmapped.push("hedge.max_hedges above 1 (Envoy hedges once per per-try timeout)".into());
    }
    unmapped
        .push("ewma_decay (Envoy's LEAST_REQUEST counts requests in flight, not latency)".into());
    unmapped.sort();
    unmapped.dedup();
    Rendered {
        config: bootstrap(listener, vec![cluster]),
        unmapped,
    }
}

/// Envoy's name for a retriable gRPC code, if it has one.
fn retry_on(code: Code) -> Option<&'static str> {
    Some(match code {
        Code::Cancelled => "cancelled",
        Code::DeadlineExceeded => "deadline-exceeded",
        Code::Internal => "internal",
        Code::ResourceExhausted => "resource-exhausted",
        Code::Unavailable => "unavailable",
        _ => return None,
    })
}

/// One route: the effective policy's deadline, retries (only where the
/// contract allows), hedging and faults.
fn route(matcher: Value, effective: &EffectivePolicy, unmapped: &mut Vec<String>) -> Value {
    let mut action = json!({
        "cluster": CLUSTER,
        "timeout": duration(effective.timeout),
        // The caller's grpc-timeout is its deadline when sooner.
        "max_stream_duration": {"grpc_timeout_header_max": duration(effective.timeout)},
    });
    let retry = &effective.retry;
    let hedge = effective.hedge;
    if retry.max_attempts > 1 || hedge.is_some() {
        let mut on: Vec<&str> = Vec::new();
        for code in &retry.on {
            match retry_on(code.0) {
                Some(name) => on.push(name),
                None => unmapped.push(format!("retry.on {:?}", code.0)),
            }
        }
        if retry.on.iter().any(|c| c.0 == Code::Unavailable) {
            on.extend(["reset", "connect-failure", "refused-stream"]);
        }
        let retries = retry
            .max_attempts
            .saturating_sub(1)
            .max(hedge.map_or(0, |h| h.max_hedges));
        let mut policy = json!({
            "retry_on": on.join(","),
            "num_retries": retries,
            "retry_back_off": {
                "base_interval": duration(retry.backoff.base),
                "max_interval": duration(retry.backoff.max),
            },
            // The mesh's balancer sends a retry to an endpoint the call has
            // not tried while one is ready (balance::Tried): Envoy's
            // previous_hosts, with a few picks to find one.
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                },
            }],
            "host_selection_retry_max_attempts": 3,
        });
        let per_try = match (hedge, retry.per_try_timeout) {
            (Some(h), Some(t)) => Some(h.delay.min(t)),
            (Some(h), None) => Some(h.delay),
            (None, t) => t,
        };
        if let Some(per_try) = per_try {
            policy["per_try_timeout"] = duration(per_try);
        }
        action["retry_policy"] = policy;
        if hedge.is_some() {
            action["hedge_policy"] = json!({"hedge_on_per_try_timeout": true});
            if retry.per_try_timeout.is_some() {
                unmapped.push(
                    "hedge with retry.per_try_timeout (Envoy has one per-try timeout: the hedge delay)"
                        .into(),
                );
            }
        }
    }
    let mut route = json!({"match": matcher, "route": action});
    if effective.fault.is_active() {
        route["typed_per_filter_config"] =
            json!({"envoy.filters.http.fault": fault(&effective.fault)});
    }
    route
}

/// Client-side throttling: Envoy's admission control is the SRE book's
/// formula with `sr_threshold` = 1/k; what the mesh counts as a refusal
/// (RESOURCE_EXHAUSTED) is its failure, every other status a success.
fn admission_control(policy: &UpstreamPolicy) -> Value {
    let success: Vec<i32> = (0..=16)
        .filter(|c| *c != Code::ResourceExhausted as i32)
        .collect();
    http_filter(
        "envoy.filters.http.admission_control",
        "envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
        json!({
            "enabled": {"default_value": true, "runtime_key": "admission_control.enabled"},
            "sampling_window": duration(policy.throttle.window),
            "aggression": {"default_value": 1.0, "runtime_key": "admission_control.aggression"},
            "sr_threshold": {
                "default_value": {"value": 100.0 / policy.throttle.k},
                "runtime_key": "admission_control.sr_threshold",
            },
            "max_rejection_probability": {
                "default_value": {"value": 100.0},
                "runtime_key": "admission_control.max_rejection_probability",
            },
            "success_criteria": {"grpc_criteria": {"grpc_success_status": success}},
        }),
    )
}

/// The replicas: least request over two choices, ejection, the retry
/// budget, keepalive and mTLS.
fn cluster(out: &Outbound<'_>, unmapped: &mut Vec<String>) -> Value {
    let policy = out.policy;
    let outlier = &policy.outlier;
    let mut detection = json!({
        "consecutive_5xx": outlier.consecutive_failures,
        "enforcing_consecutive_5xx": if outlier.consecutive_failures > 0 { 100 } else { 0 },
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "interval": duration(outlier.interval),
        "base_ejection_time": duration(outlier.base_ejection),
        "max_ejection_time": duration(outlier.max_ejection),
        "max_ejection_percent": outlier.max_ejected_percent,
    });
    if let Some(rate) = outlier.failure_rate {
        detection["failure_percentage_threshold"] = json!((rate * 100.0).round() as u32);
        detection["failure_percentage_request_volume"] = json!(outlier.failure_rate_min_requests);
        detection["failure_percentage_minimum_hosts"] = json!(1);
        detection["enforcing_failure_percentage"] = json!(100);
    }
    let budget = &policy.retry.budget;
    let big = 1_000_000;
    let mut cluster = json!({
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": duration(policy.connect_timeout),
        "lb_policy": "LEAST_REQUEST",
        "least_request_lb_config": {"choice_count": 2},
        "load_assignment": endpoints(CLUSTER, out.replicas),
        "typed_extension_protocol_options": h2_upstream(Some((
            policy.keepalive.interval,
            policy.keepalive.timeout,
        ))),
        "outlier_detection": detection,
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": big,
            "max_pending_requests": big,
            "max_requests": big,
            "retry_budget": {
                "budget_percent": {"value": budget.ratio * 100.0},
                "min_retry_concurrency": budget.min_per_second,
            },
        }]},
    });
    unmapped.push(format!(
        "retry.budget.min_per_second ({} retries a second; Envoy: {} retries in flight)",
        budget.min_per_second, budget.min_per_second
    ));
    unmapped.push(format!(
        "retry.budget.ttl ({:?}; Envoy's budget counts requests in flight, not a window)",
        budget.ttl
    ));
    if let Some((certs, server)) = out.tls {
        cluster["transport_socket"] = certs.upstream(server);
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_mesh::policy::HedgePolicy;
    use std::time::Duration;

    const SERVICE: &str = "shop.catalog.v1.CatalogService";

    fn policy() -> UpstreamPolicy {
        let mut p = shop_mesh::client::bench_policy("http://127.0.0.1:1");
        p.timeout = Duration::from_secs(2);
        p.retry.per_try_timeout = Some(Duration::from_millis(300));
        p
    }

    fn render_with(policy: &UpstreamPolicy) -> Rendered {
        render(&Outbound {
            listen: 7000,
            service: SERVICE,
            policy,
            replicas: &[7001, 7002, 7003],
            tls: None,
        })
    }

    fn route_for<'a>(rendered: &'a Rendered, path: &str) -> &'a Value {
        rendered.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["match"]["path"] == path)
            .unwrap_or_else(|| panic!("no route for {path}"))
    }

    fn method(idempotency: shop_proto::Idempotency) -> String {
        shop_proto::methods()
            .iter()
            .find(|m| m.service == SERVICE && m.idempotency == idempotency)
            .map(|m| m.path.clone())
            .expect("the catalog has a method of each kind")
    }

    #[test]
    fn only_methods_safe_to_retry_get_a_retry_policy() {
        let rendered = render_with(&policy());
        let read = route_for(&rendered, &method(shop_proto::Idempotency::NoSideEffects));
        let retry = &read["route"]["retry_policy"];
        assert_eq!(retry["num_retries"], 2);
        assert_eq!(retry["per_try_timeout"], "0.300000000s");
        assert_eq!(
            retry["retry_on"],
            "unavailable,reset,connect-failure,refused-stream"
        );
        assert_eq!(
            retry["retry_host_predicate"][0]["name"],
            "envoy.retry_host_predicates.previous_hosts"
        );
        assert_eq!(read["route"]["timeout"], "2.000000000s");
        let write = route_for(&rendered, &method(shop_proto::Idempotency::Unknown));
        assert!(write["route"].get("retry_policy").is_none(), "{write}");
    }

    #[test]
    fn ejection_budget_and_balancing_follow_the_policy() {
        let mut p = policy();
        p.outlier.consecutive_failures = 3;
        p.outlier.failure_rate = Some(0.25);
        p.outlier.max_ejected_percent = 34;
        p.retry.budget.ratio = 0.1;
        let rendered = render_with(&p);
        let cluster = &rendered.config["static_resources"]["clusters"][0];
        assert_eq!(cluster["lb_policy"], "LEAST_REQUEST");
        let od = &cluster["outlier_detection"];
        assert_eq!(od["consecutive_5xx"], 3);
        assert_eq!(od["failure_percentage_threshold"], 25);
        assert_eq!(od["max_ejection_percent"], 34);
        assert_eq!(od["enforcing_success_rate"], 0);
        let budget = &cluster["circuit_breakers"]["thresholds"][0]["retry_budget"];
        assert_eq!(budget["budget_percent"]["value"], 10.0);
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn hedging_is_on_the_per_try_timeout_of_reads_only() {
        let mut p = policy();
        p.hedge = Some(HedgePolicy {
            delay: Duration::from_millis(50),
            max_hedges: 1,
        });
        let rendered = render_with(&p);
        let read = route_for(&rendered, &method(shop_proto::Idempotency::NoSideEffects));
        assert_eq!(
            read["route"]["hedge_policy"]["hedge_on_per_try_timeout"],
            true
        );
        assert_eq!(
            read["route"]["retry_policy"]["per_try_timeout"],
            "0.050000000s"
        );
        let write = route_for(&rendered, &method(shop_proto::Idempotency::Unknown));
        assert!(write["route"].get("hedge_policy").is_none());
        assert!(
            rendered
                .unmapped
                .iter()
                .any(|u| u.starts_with("hedge with"))
        );
    }

    #[test]
    fn codes_envoy_cannot_retry_on_are_reported() {
        let mut p = policy();
        p.retry.on.push(shop_mesh::policy::GrpcCode(Code::Aborted));
        let rendered = render_with(&p);
        assert!(
            rendered.unmapped.iter().any(|u| u.contains("Aborted")),
            "{:?}",
            rendered.unmapped
        );
    }

    #[test]
    fn mtls_checks_the_servers_spiffe_id() {
        let p = policy();
        let certs = Certs::new(std::path::Path::new("/pki/client"));
        let server = SpiffeId::workload("bench.local", "bench", "catalog").unwrap();
        let rendered = render(&Outbound {
            listen: 7000,
            service: SERVICE,
            policy: &p,
            replicas: &[7001],
            tls: Some((&certs, &server)),
        });
        let tls = &rendered.config["static_resources"]["clusters"][0]["transport_socket"];
        let san = &tls["typed_config"]["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
            [0];
        assert_eq!(san["matcher"]["exact"], server.as_str());
        assert_eq!(
            tls["typed_config"]["common_tls_context"]["tls_certificates"][0]["private_key"]["filename"],
            "/pki/client/tls.key"
        );
    }
}
