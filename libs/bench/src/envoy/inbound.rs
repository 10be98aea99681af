//! A server replica's sidecar: mTLS from the callers' sidecars, the
//! server policy's authorization, limits and faults, h2c to the
//! application on loopback.

use super::{
    Certs, Rendered, bootstrap, duration, endpoints, fault, h2_upstream, http_filter, listener,
};
use serde_json::{Value, json};
use shop_identity::SpiffeId;
use shop_mesh::authz::{ANY_WORKLOAD, Authorizer, PUBLIC};
use shop_mesh::policy::ServerPolicy;

/// The cluster of the local application.
const APP: &str = "app";

/// What a replica's sidecar is for.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The loopback port callers' sidecars reach it on.
    pub listen: u16,
    /// The application's plaintext (h2c) loopback port.
    pub app: u16,
    /// The server policy the application would run in the mesh.
    pub policy: &'a ServerPolicy,
    /// mTLS: this replica's certificates and its own identity (a workload
    /// name in `authorization` means a workload of its trust domain and
    /// namespace).
    pub tls: Option<(&'a Certs, &'a SpiffeId)>,
}

/// Renders the replica sidecar's bootstrap.
pub fn render(inbound: &Inbound<'_>) -> Rendered {
    let policy = inbound.policy;
    let mut unmapped = Vec::new();
    let mut filters = Vec::new();
    if let Some((_, own)) = inbound.tls {
        filters.push(rbac(&Authorizer::new(&policy.authorization), own));
    }
    if let Some(total) = policy.rate_limit.total {
        filters.push(http_filter(
            "envoy.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            json!({
                "stat_prefix": "inbound_rate_limit",
                "token_bucket": {
                    "max_tokens": total.burst.unwrap_or(total.requests_per_second),
                    "tokens_per_fill": total.requests_per_second,
                    "fill_interval": "1s",
                },
                "filter_enabled": {
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                    "runtime_key": "local_rate_limit.enabled",
                },
                "filter_enforced": {
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                    "runtime_key": "local_rate_limit.enforced",
                },
            }),
        ));
    }
    if policy.rate_limit.identity.is_some() || !policy.rate_limit.overrides.is_empty() {
        unmapped.push(
            "server.mesh.rate_limit per identity (Envoy needs descriptors from a rate limit service)"
                .into(),
        );
    }
    let adaptive = &policy.adaptive_concurrency;
    if adaptive.enabled {
        filters.push(http_filter(
            "envoy.filters.http.adaptive_concurrency",
            "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            json!({
                "gradient_controller_config": {
                    "sample_aggregate_percentile": {"value": 50.0},
                    "concurrency_limit_params": {
                        "max_concurrency_limit": policy.max_concurrency,
                        "concurrency_update_interval": duration(adaptive.sample_interval),
                    },
                    "min_rtt_calc_params": {
                        "interval": duration(adaptive.sample_interval * adaptive.long_window),
                        "request_count": 50,
                        "buffer": {"value": ((adaptive.tolerance - 1.0) * 100.0).clamp(0.0, 100.0)},
                        "min_concurrency": adaptive.min_limit,
                    },
                },
                "enabled": {"default_value": true, "runtime_key": "adaptive_concurrency.enabled"},
            }),
        ));
        unmapped.push(
            "server.mesh.adaptive_concurrency: Envoy measures its minimum latency by dropping \
             to min_concurrency every interval, where the mesh follows a long-term average"
                .into(),
        );
    }
    if policy.fault.is_active() {
        filters.push(http_filter(
            "envoy.filters.http.fault",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            fault(&policy.fault),
        ));
    }
    if !policy.methods.is_empty() {
        unmapped.push("server.mesh.methods (per-method faults)".into());
    }
    if !policy.request_limits.methods.is_empty() {
        unmapped.push("server.mesh.request_limits per method".into());
    }
    unmapped.push(
        "server.mesh.shed_pushback (Envoy's overflow is 503, UNAVAILABLE, without pushback)".into(),
    );
    let route = json!({
        "match": {"prefix": "/"},
        // Istio's inbound routes have no timeout: the caller's side owns it.
        "route": {"cluster": APP, "timeout": "0s"},
    });
    let tls = inbound.tls.map(|(certs, _)| certs.downstream());
    let listener = listener("inbound", inbound.listen, vec![route], filters, tls);
    let big = 1_000_000;
    let cluster = json!({
        "name": APP,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": endpoints(APP, &[inbound.app]),
        "typed_extension_protocol_options": h2_upstream(None),
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": big,
            "max_pending_requests": big,
            "max_requests": policy.max_concurrency,
        }]},
    });
    Rendered {
        config: bootstrap(listener, vec![cluster]),
        unmapped,
    }
}

/// Istio's AuthorizationPolicy as Envoy runs it: one ALLOW policy per
/// rule of the mesh's authorizer (its defaults included). A method's rule
/// wins over its service's, as in the mesh, so a service's policy leaves
/// out the methods that have rules of their own.
fn rbac(authz: &Authorizer, own: &SpiffeId) -> Value {
    let rules: Vec<(&str, &[String])> = authz.rules().collect();
    let mut policies = serde_json::Map::new();
    for (key, callers) in &rules {
        let permission = if key.starts_with('/') {
            json!({"url_path": {"path": {"exact": key}}})
        } else {
            let prefix = format!("/{key}/");
            let own_rules: Vec<Value> = rules
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| json!({"url_path": {"path": {"exact": k}}}))
                .collect();
            let service = json!({"url_path": {"path": {"prefix": prefix}}});
            if own_rules.is_empty() {
                service
            } else {
                json!({"and_rules": {"rules": [
                    service,
                    {"not_rule": {"or_rules": {"rules": own_rules}}},
                ]}})
            }
        };
        let principals: Vec<Value> = callers
            .iter()
            .map(|caller| match caller.as_str() {
                PUBLIC => json!({"any": true}),
                ANY_WORKLOAD => json!({"authenticated": {}}),
                id if id.starts_with("spiffe://") => {
                    json!({"authenticated": {"principal_name": {"exact": id}}})
                }
                name => {
                    let id = SpiffeId::workload(
                        own.trust_domain(),
                        own.namespace().unwrap_or_default(),
                        name,
                    )
                    .map(|id| id.as_str().to_string())
                    .unwrap_or_default();
                    json!({"authenticated": {"principal_name": {"exact": id}}})
                }
            })
            .collect();
        policies.insert(
            key.to_string(),
            json!({"permissions": [permission], "principals": principals}),
        );
    }
    http_filter(
        "envoy.filters.http.rbac",
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        json!({"rules": {"action": "ALLOW", "policies": policies}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn own() -> SpiffeId {
        SpiffeId::workload("bench.local", "bench", "catalog").unwrap()
    }

    fn rendered(policy: &ServerPolicy) -> Rendered {
        let certs = Certs::new(std::path::Path::new("/pki/catalog"));
        let own = own();
        render(&Inbound {
            listen: 7001,
            app: 7101,
            policy,
            tls: Some((&certs, &own)),
        })
    }

    fn filters(rendered: &Rendered) -> &Vec<Value> {
        rendered.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn authorization_becomes_rbac_with_methods_taken_out_of_their_service() {
        let policy = ServerPolicy {
            authorization: BTreeMap::from([
                (
                    "shop.catalog.v1.CatalogService".to_string(),
                    vec!["gateway".to_string()],
                ),
                (
                    "shop.catalog.v1.CatalogService/CreateProduct".to_string(),
                    vec!["operator".to_string()],
                ),
            ]),
            ..ServerPolicy::default()
        };
        let rendered = rendered(&policy);
        let rbac = &filters(&rendered)[0]["typed_config"]["rules"]["policies"];
        let service = &rbac["shop.catalog.v1.CatalogService"];
        assert_eq!(
            service["principals"][0]["authenticated"]["principal_name"]["exact"],
            "spiffe://bench.local/ns/bench/sa/gateway"
        );
        let excluded = &service["permissions"][0]["and_rules"]["rules"][1]["not_rule"]["or_rules"]
            ["rules"][0]["url_path"]["path"]["exact"];
        assert_eq!(excluded, "/shop.catalog.v1.CatalogService/CreateProduct");
        // The mesh's defaults come along: health is public, MeshAdmin the operator's.
        assert_eq!(rbac["grpc.health.v1.Health"]["principals"][0]["any"], true);
        assert!(rbac.get("shop.mesh.v1.MeshAdminService").is_some());
    }

    #[test]
    fn limits_become_filters_and_the_app_clusters_threshold() {
        let mut policy = ServerPolicy {
            max_concurrency: 200,
            ..ServerPolicy::default()
        };
        policy.adaptive_concurrency.enabled = true;
        policy.rate_limit.total = Some(shop_mesh::rate_limit::Rate {
            requests_per_second: 500,
            burst: None,
        });
        let rendered = rendered(&policy);
        let names: Vec<&str> = filters(&rendered)
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.rbac",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.adaptive_concurrency",
                "envoy.filters.http.router"
            ]
        );
        let cluster = &rendered.config["static_resources"]["clusters"][0];
        assert_eq!(
            cluster["circuit_breakers"]["thresholds"][0]["max_requests"],
            200
        );
    }

    #[test]
    fn plaintext_has_no_rbac_as_the_mesh_checks_no_plaintext_caller() {
        let rendered = render(&Inbound {
            listen: 7001,
            app: 7101,
            policy: &ServerPolicy::default(),
            tls: None,
        });
        let names: Vec<&str> = filters(&rendered)
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["envoy.filters.http.router"]);
    }
}
