//! Envoy as a REST/JSON front of a gRPC service: its
//! `grpc_json_transcoder` fed the service's descriptor set, in front of the
//! gateway's public gRPC port (HTTP/2 over TLS, trusting the stack's CA),
//! printing JSON as the gateway's own HTTP face does (every field without
//! presence, enums by name, lowerCamelCase) and errors as JSON statuses.
//! Only the `google.api.http` rules are served: what matches none is
//! Envoy's own refusal (unknown query parameters included), and only what
//! it transcoded goes to the gateway (otherwise Envoy would pass a request
//! it cannot transcode on as it came, and the gateway's own REST face would
//! answer it).

use super::{http_filter, loopback, router, typed};
use serde_json::{Value, json};
use std::path::Path;

/// The body of Envoy's answer to what it did not transcode.
pub const NOT_TRANSCODED: &str = "not transcoded: not sent to the gateway";

/// Where the transcoder listens and what it fronts.
#[derive(Debug, Clone, Copy)]
pub struct Transcoder<'a> {
    /// Loopback port of its plaintext HTTP/1.1 and HTTP/2 listener.
    pub listen: u16,
    /// Loopback port of the gRPC server (TLS, HTTP/2).
    pub upstream: u16,
    /// The CA (PEM) the upstream's certificate chains to; it names
    /// `localhost`.
    pub ca: &'a Path,
    /// The encoded `FileDescriptorSet` (with imports, and the
    /// `google.rpc` error details, without which Envoy cannot print an
    /// error's details) written to a file.
    pub descriptors: &'a Path,
    /// The fully qualified gRPC services it transcodes.
    pub services: &'a [&'a str],
}

/// The bootstrap.
pub fn render(t: &Transcoder<'_>) -> Value {
    let transcoder = http_filter(
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        json!({
            "proto_descriptor": t.descriptors.display().to_string(),
            "services": t.services,
            "print_options": {
                "always_print_primitive_fields": true,
                "always_print_enums_as_ints": false,
                "preserve_proto_field_names": false,
            },
            // Errors as a google.rpc.Status JSON body, as the face answers.
            "convert_grpc_status": true,
            // The rules only, no `POST /pkg.Service/Method`; once a request
            // is a gRPC call it is routed again, by the route below.
            "auto_mapping": false,
            "match_incoming_request_route": false,
            "request_validation_options": {
                "reject_unknown_method": true,
                "reject_unknown_query_parameters": true,
            },
        }),
    );
    let manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        json!({
            "stat_prefix": "rest",
            "codec_type": "AUTO",
            "generate_request_id": false,
            "route_config": {
                "name": "rest",
                "virtual_hosts": [{"name": "rest", "domains": ["*"], "routes": [
                    {
                        "match": {"prefix": "/", "headers": [{
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                        }]},
                        "route": {"cluster": "upstream", "timeout": "10s"},
                    },
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 404, "body": {"inline_string": NOT_TRANSCODED}},
                    },
                ]}],
            },
            "http_filters": [transcoder, router()],
        }),
    );
    let listener = json!({
        "name": "rest",
        "address": loopback(t.listen),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": manager,
        }]}],
    });
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            json!({
                "sni": "localhost",
                "common_tls_context": {
                    // The shop's ports speak TLS 1.3 only; Envoy's upstream
                    // default stops at 1.2.
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_3",
                    },
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": {"filename": t.ca.display().to_string()},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": "localhost"}},
                        ],
                    },
                },
            }),
        ),
    });
    let cluster = json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": loopback(t.upstream)}},
        ]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                json!({"explicit_http_config": {"http2_protocol_options": {}}}),
            ),
        },
        // Out of the way: the comparison is of transcoding, not of limits.
        "circuit_breakers": {"thresholds": [{
            "max_connections": 100000, "max_pending_requests": 100000,
            "max_requests": 100000, "max_retries": 0,
        }]},
        "transport_socket": tls,
    });
    json!({
        "admin": {"address": loopback(0)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    })
}
