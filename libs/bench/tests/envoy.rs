//! The Envoy configuration the benchmarks render from the mesh's policy is
//! one Envoy accepts: every sidecar, plaintext and mTLS, with every part
//! of the policy switched on, checked by Envoy itself (`--mode validate`).

use shop_bench::envoy::inbound::{self, Inbound};
use shop_bench::envoy::outbound::{self, Outbound};
use shop_bench::envoy::{Certs, process};
use shop_identity::SpiffeId;
use shop_mesh::policy::{FaultPolicy, GrpcCode, HedgePolicy, ServerPolicy};
use std::collections::BTreeMap;
use std::time::Duration;

const SERVICE: &str = "shop.catalog.v1.CatalogService";

#[test]
fn envoy_accepts_every_rendered_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let ca = shop_identity::mint::Authority::generate("bench.local").unwrap();
    let leaf = shop_identity::mint::Leaf::local(Duration::from_secs(3600));
    let id = |sa| SpiffeId::workload("bench.local", "bench", sa).unwrap();
    let (server, client) = (id("catalog"), id("gateway"));
    ca.write(&dir.path().join("catalog"), &server, &leaf)
        .unwrap();
    ca.write(&dir.path().join("gateway"), &client, &leaf)
        .unwrap();
    let server_certs = Certs::new(&dir.path().join("catalog"));
    let client_certs = Certs::new(&dir.path().join("gateway"));

    let mut upstream = shop_mesh::client::bench_policy("http://127.0.0.1:1");
    upstream.retry.per_try_timeout = Some(Duration::from_millis(300));
    upstream
        .retry
        .on
        .push(GrpcCode(tonic::Code::ResourceExhausted));
    upstream.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(40),
        max_hedges: 1,
    });
    upstream.outlier.failure_rate = Some(0.3);
    upstream.fault = FaultPolicy {
        delay_percent: 1.0,
        delay: Duration::from_millis(5),
        abort_percent: 0.5,
        abort_code: GrpcCode(tonic::Code::Unavailable),
    };
    let mut server_policy = ServerPolicy {
        max_concurrency: 256,
        authorization: BTreeMap::from([
            (SERVICE.to_string(), vec!["gateway".to_string()]),
            (
                format!("{SERVICE}/CreateProduct"),
                vec!["operator".to_string(), "*".to_string()],
            ),
        ]),
        fault: FaultPolicy {
            delay_percent: 2.0,
            delay: Duration::from_millis(10),
            ..FaultPolicy::default()
        },
        ..ServerPolicy::default()
    };
    server_policy.adaptive_concurrency.enabled = true;
    server_policy.rate_limit.total = Some(shop_mesh::rate_limit::Rate {
        requests_per_second: 1000,
        burst: Some(100),
    });

    for (name, tls) in [
        ("outbound", None),
        ("outbound-tls", Some((&client_certs, &server))),
    ] {
        let rendered = outbound::render(&Outbound {
            listen: 17000,
            service: SERVICE,
            policy: &upstream,
            replicas: &[17001, 17002, 17003],
            tls,
        });
        process::validate(dir.path(), name, &rendered.config).unwrap();
    }
    for (name, tls) in [
        ("inbound", None),
        ("inbound-tls", Some((&server_certs, &server))),
    ] {
        let rendered = inbound::render(&Inbound {
            listen: 17001,
            app: 17101,
            policy: &server_policy,
            tls,
        });
        process::validate(dir.path(), name, &rendered.config).unwrap();
    }

    // And Envoy does refuse what it cannot run, so the checks above mean
    // something: a route to a cluster that does not exist.
    let mut broken = outbound::render(&Outbound {
        listen: 17000,
        service: SERVICE,
        policy: &upstream,
        replicas: &[17001],
        tls: None,
    })
    .config;
    broken["static_resources"]["clusters"][0]["name"] = "elsewhere".into();
    let refused = process::validate(dir.path(), "broken", &broken).unwrap_err();
    assert!(refused.to_string().contains("upstream"), "{refused}");
}
