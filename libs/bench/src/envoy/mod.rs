//! Envoy configuration rendered from the mesh's own policy, so that the
//! benchmarks compare two data planes running one policy.
//!
//! Envoy sits where Istio puts it: beside the client an outbound sidecar
//! ([`outbound`]: h2c from the application on loopback, mTLS to the
//! servers' sidecars, the upstream's retry, timeout, balancing and
//! ejection policy), beside each server replica an inbound sidecar
//! ([`inbound`]: mTLS from the client's sidecar, authorization by the
//! caller's SPIFFE ID, h2c to the application on loopback). [`Envoy`]
//! runs one.
//!
//! What maps to what (client side, from [`UpstreamPolicy::effective`] for
//! every method of the contract, one route per method):
//!
//! | mesh | Envoy |
//! |---|---|
//! | `timeout` (and the caller's `grpc-timeout`, if sooner) | route `timeout`, `max_stream_duration.grpc_timeout_header_max` |
//! | retries only where the contract says the method is safe | a `retry_policy` only on those methods' routes |
//! | `retry.max_attempts` | `num_retries` = attempts - 1 |
//! | `retry.per_try_timeout` | `per_try_timeout` |
//! | `retry.on` (gRPC codes) | `retry_on` (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`; with `unavailable`, also `reset`, `connect-failure`, `refused-stream`, which the mesh sees as UNAVAILABLE) |
//! | `retry.backoff` | `retry_back_off` (Envoy also jitters) |
//! | `retry.budget.ratio` | `circuit_breakers.retry_budget.budget_percent` |
//! | `retry.budget.min_per_second` | `retry_budget.min_retry_concurrency` (retries in flight, not per second) |
//! | `hedge` (NO_SIDE_EFFECTS only) | `hedge_on_per_try_timeout`, with `per_try_timeout` = the hedge delay |
//! | p2c over peak-EWMA latency | `LEAST_REQUEST`, `choice_count` 2 (in-flight counts, no latency) |
//! | `outlier.consecutive_failures` | `consecutive_5xx` (gRPC statuses count as Envoy maps them to HTTP) |
//! | `outlier.failure_rate`, `failure_rate_min_requests` | `failure_percentage_threshold`, `failure_percentage_request_volume`, `failure_percentage_minimum_hosts` 1 |
//! | `outlier.interval`, `base_ejection`, `max_ejection`, `max_ejected_percent` | the same names |
//! | (none) | success-rate ejection: off (`enforcing_success_rate` 0) |
//! | `connect_timeout`, `keepalive` | `connect_timeout`, HTTP/2 `connection_keepalive` |
//! | `throttle` (the SRE book's client-side throttling) | `admission_control` (`sr_threshold` 1/k, `aggression` 1, `sampling_window` the window) |
//! | `fault` | the `fault` filter, per route |
//! | mTLS, the server's SPIFFE ID checked | `UpstreamTlsContext`, `match_typed_subject_alt_names` URI |
//! | (no limit on requests in flight) | circuit-breaker thresholds raised out of the way |
//!
//! Server side, from [`ServerPolicy`]:
//!
//! | mesh | Envoy |
//! |---|---|
//! | mTLS, client certificate required | `DownstreamTlsContext`, `require_client_certificate` |
//! | `authorization` (per service or method, by workload name or SPIFFE ID) | the `rbac` filter, one ALLOW policy per rule, a method's rule taking its paths out of its service's |
//! | `max_concurrency` | the local cluster's `max_requests` (beyond: 503, UNAVAILABLE, where the mesh answers RESOURCE_EXHAUSTED with pushback) |
//! | `adaptive_concurrency` | the `adaptive_concurrency` filter (gradient controller; its own sampling, no latency floor) |
//! | `rate_limit.total` | the `local_ratelimit` filter's token bucket |
//! | `fault` | the `fault` filter |
//!
//! What has no equivalent is listed in [`Rendered::unmapped`] (per caller
//! identity rate limits, per-method message size limits, gRPC codes Envoy
//! cannot retry on, traffic split subsets, DNS discovery), so a report can
//! say what the Envoy side does not do.
//!
//! [`UpstreamPolicy::effective`]: shop_mesh::policy::UpstreamPolicy::effective
//! [`ServerPolicy`]: shop_mesh::policy::ServerPolicy

pub mod inbound;
pub mod outbound;
pub mod process;
mod tls;
pub mod transcoder;

pub use process::Envoy;
pub use tls::Certs;

use serde_json::{Value, json};
use std::time::Duration;

/// An Envoy bootstrap and what of the policy it could not express.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The bootstrap (JSON, which Envoy reads from a `.json` file).
    pub config: Value,
    /// Policy settings with no Envoy equivalent, by key.
    pub unmapped: Vec<String>,
}

/// A protobuf `Duration` in its JSON form (`"0.250000000s"`).
fn duration(d: Duration) -> Value {
    Value::String(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
}

/// A `socket_address` on loopback.
fn loopback(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// A typed config's `@type`.
fn typed(kind: &str, mut body: Value) -> Value {
    body["@type"] = Value::String(format!("type.googleapis.com/{kind}"));
    body
}

/// A named HTTP filter.
fn http_filter(name: &str, kind: &str, body: Value) -> Value {
    json!({"name": name, "typed_config": typed(kind, body)})
}

/// The router, last in every filter chain.
fn router() -> Value {
    http_filter(
        "envoy.filters.http.router",
        "envoy.extensions.filters.http.router.v3.Router",
        json!({}),
    )
}

/// A listener on loopback `port` whose one filter chain is an HTTP/2
/// connection manager with `routes` and `filters` (router appended).
fn listener(
    name: &str,
    port: u16,
    routes: Vec<Value>,
    mut filters: Vec<Value>,
    tls: Option<Value>,
) -> Value {
    filters.push(router());
    let manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        json!({
            "stat_prefix": name,
            "codec_type": "HTTP2",
            // Istio's sidecars keep request ids for tracing; the mesh has
            // trace context of its own and does not make one per call.
            "generate_request_id": false,
            "http2_protocol_options": {"max_concurrent_streams": 1024},
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": filters,
        }),
    );
    let mut chain = json!({"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": manager,
    }]});
    if let Some(tls) = tls {
        chain["transport_socket"] = tls;
    }
    json!({"name": name, "address": loopback(port), "filter_chains": [chain]})
}

/// HTTP/2 to a cluster's endpoints, with `keepalive` when given.
fn h2_upstream(keepalive: Option<(Duration, Duration)>) -> Value {
    let mut h2 = json!({});
    if let Some((interval, timeout)) = keepalive {
        h2["connection_keepalive"] = json!({
            "interval": duration(interval),
            "timeout": duration(timeout),
        });
    }
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        json!({"explicit_http_config": {"http2_protocol_options": h2}}),
    )})
}

/// The endpoints of a cluster, on loopback.
fn endpoints(cluster: &str, ports: &[u16]) -> Value {
    let lb: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": loopback(*p)}}))
        .collect();
    json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": lb}]})
}

/// A whole bootstrap: its admin interface on a loopback port of the
/// kernel's choosing (Envoy writes it to `--admin-address-path`).
fn bootstrap(listener: Value, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": loopback(0)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    })
}

/// A percentage (0 to 100) as a `FractionalPercent` per million.
fn per_million(percent: f64) -> Value {
    json!({
        "numerator": (percent * 10_000.0).round() as u64,
        "denominator": "MILLION",
    })
}

/// The fault filter's per-route (or filter-wide) configuration.
fn fault(policy: &shop_mesh::policy::FaultPolicy) -> Value {
    let mut body = json!({});
    if policy.delay_percent > 0.0 {
        body["delay"] = json!({
            "fixed_delay": duration(policy.delay),
            "percentage": per_million(policy.delay_percent),
        });
    }
    if policy.abort_percent > 0.0 {
        body["abort"] = json!({
            "grpc_status": policy.abort_code.0 as i32,
            "percentage": per_million(policy.abort_percent),
        });
    }
    typed("envoy.extensions.filters.http.fault.v3.HTTPFault", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_protobuf_json() {
        assert_eq!(duration(Duration::from_millis(250)), "0.250000000s");
        assert_eq!(duration(Duration::from_secs(2)), "2.000000000s");
    }

    #[test]
    fn percentages_are_per_million() {
        assert_eq!(per_million(20.0)["numerator"], 200_000);
        assert_eq!(per_million(0.5)["numerator"], 5_000);
    }
}
