//! Envoy with its transcoder in front of the gateway's gRPC port.

use http::Method;
use serde_json::Value;
use shop_bench::envoy::Envoy;
use shop_bench::envoy::transcoder::{self, Transcoder};
use shop_testkit::rest::{Rest, Version};
use shop_testkit::{ServiceProcess, eventually};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The gRPC service Envoy transcodes for.
pub(crate) const SERVICE: &str = "shop.gateway.v1.ShopGatewayService";

/// The bootstrap of an Envoy listening on loopback (a port of the
/// kernel's choosing) with the transcoder in front of `gateway`, whose
/// certificate `ca` signed; the descriptors in the file `descriptors`.
///
/// The benches' transcoder front (`shop_bench::envoy::transcoder`: the
/// print options of our mapping, `convert_grpc_status`, HTTP/2 over TLS 1.3
/// to the gateway trusting `ca` for `localhost`; what matches no rule is
/// Envoy's own refusal, and only what it transcoded goes to the gateway),
/// with the settings this comparison relies on checked.
pub(crate) fn envoy_config(gateway: SocketAddr, ca: &Path, descriptors: &Path) -> Value {
    assert!(gateway.ip().is_loopback(), "the front calls 127.0.0.1");
    let mut config = transcoder::render(&Transcoder {
        listen: 0,
        upstream: gateway.port(),
        ca,
        descriptors,
        services: &[SERVICE],
    });
    let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let filter = &mut manager["http_filters"][0];
    assert_eq!(filter["name"], "envoy.filters.http.grpc_json_transcoder");
    let options = &mut filter["typed_config"];
    // docs/http.md's mapping: lowerCamelCase (not the proto names), fields
    // without presence printed at their default, enums by name; errors as
    // google.rpc.Status JSON, from grpc-status-details-bin.
    assert_eq!(
        options["print_options"]["always_print_primitive_fields"],
        true
    );
    assert_eq!(
        options["print_options"]["preserve_proto_field_names"],
        false
    );
    assert_eq!(
        options["print_options"]["always_print_enums_as_ints"],
        false
    );
    assert_eq!(options["convert_grpc_status"], true);
    // Only the google.api.http rules, no `POST /pkg.Service/Method`; only
    // what was transcoded goes on to the gateway.
    assert_eq!(options["auto_mapping"], false);
    assert_eq!(options["match_incoming_request_route"], false);
    assert_eq!(
        options["request_validation_options"]["reject_unknown_query_parameters"],
        true
    );
    let routes = &manager["route_config"]["virtual_hosts"][0]["routes"];
    assert_eq!(
        routes[0]["match"]["headers"][0]["string_match"]["prefix"], "application/grpc",
        "{routes}"
    );
    config
}

/// The CPUs this process may run on (`taskset`'s list), for Envoy's pin.
pub(crate) fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|list| list.trim().to_string())
        })
        .unwrap_or_else(|| "0".into())
}

/// Envoy in front of `gateway`, and a plaintext client of its listener,
/// once a call through it answers.
pub(crate) async fn envoy_in_front_of(
    gateway: &ServiceProcess,
    dir: &Path,
    probe: &str,
) -> (Envoy, Rest) {
    // The descriptors the face transcodes with: the contracts (imports and
    // our google.api annotations included) and google.rpc's error details,
    // which Envoy needs to print the details of an error.
    let pool = shop_http::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET).unwrap();
    let descriptors = dir.join("shop-descriptors.binpb");
    std::fs::write(&descriptors, pool.encode_to_vec()).unwrap();
    let ca = gateway.ca_file().expect("the gateway serves TLS");
    let config = envoy_config(gateway.addr(), &ca, &descriptors);
    let dir = dir.to_path_buf();
    let envoy = tokio::task::spawn_blocking(move || {
        // `--mode validate` first: a refused configuration fails the test
        // with Envoy's own words.
        shop_bench::envoy::process::validate(&dir, "envoy-rest", &config)?;
        Envoy::start(&dir, "envoy-rest", &config, &allowed_cpus())
    })
    .await
    .unwrap()
    .expect("envoy starts");
    // The listener's port, as Envoy reports it on its admin interface.
    let admin = Rest::plaintext(envoy.admin().parse().unwrap(), Version::Http1);
    let port = eventually(Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            let answer = admin
                .send(Method::GET, "/listeners?format=json", &[], None)
                .await
                .map_err(|e| e.to_string())?;
            answer.json["listener_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == "rest")
                .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("no bound listener yet: {}", answer.text))
        }
    })
    .await
    .unwrap();
    let rest = Rest::plaintext(
        SocketAddr::from(([127, 0, 0, 1], port as u16)),
        Version::Http1,
    );
    eventually(Duration::from_secs(20), || {
        let rest = rest.clone();
        async move {
            let answer = rest
                .send(Method::GET, probe, &[], None)
                .await
                .map_err(|e| e.to_string())?;
            if answer.status == 200 {
                Ok(())
            } else {
                Err(format!("{}: {}", answer.status, answer.text))
            }
        }
    })
    .await
    .expect("a call through envoy reaches the gateway");
    (envoy, rest)
}
