//! The mesh end to end: three real catalog replicas behind a real orders
//! service, faults made for real (`kill -9`, live policy reloads that make
//! a replica slow or failing), load from concurrent clients calling
//! PlaceOrder, which reads prices from the catalog through the mesh.

mod common;

use common::mesh::{Mesh, REPLICAS, load};
use shop_proto::shop::mesh::v1::GetStatsRequest;
use shop_testkit::{eventually, tools};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_everything_is_ejected_and_almost_every_call_succeeds() {
    let mesh = Mesh::start(vec![]).await;
    mesh.set_server_policy(
        "catalog-3",
        "[server.mesh.fault]\nabort_percent = 100.0\nabort_code = \"unavailable\"",
    )
    .await;

    let outcomes = load(&mesh, 4, Duration::from_secs(60), 300).await;

    let ok = outcomes.iter().filter(|o| o.code == Code::Ok).count();
    assert_eq!(outcomes.len(), 1200);
    assert!(
        ok * 1000 >= outcomes.len() * 999,
        "{ok} of {} succeeded",
        outcomes.len()
    );

    // MeshAdmin, through the real grpcurl, shows the replica ejected and why.
    let catalog3 = mesh.stack.service("catalog-3").url();
    let out = std::process::Command::new(tools::find("grpcurl").unwrap())
        .args(mesh.stack.operator_grpcurl_args())
        .args([
            "-d",
            r#"{"upstream":"catalog"}"#,
            &mesh.stack.service("orders").addr().to_string(),
            "shop.mesh.v1.MeshAdminService/ListEndpoints",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The failing replica was ejected: it saw a handful of attempts, all
    // failed, while the others took the load. (Whether it is still ejected
    // when the load ends depends on how long the load took: an ejection
    // lasts `base_ejection`, then the replica is tried again.)
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let endpoints = listing["endpoints"].as_array().unwrap();
    let number =
        |e: &serde_json::Value, key: &str| e[key].as_str().map_or(0, |n| n.parse::<u64>().unwrap());
    let failing = endpoints
        .iter()
        .find(|e| e["address"] == catalog3.as_str())
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(number(failing, "attempts") >= 1, "{listing}");
    assert_eq!(
        number(failing, "failures"),
        number(failing, "attempts"),
        "{listing}"
    );
    let total: u64 = endpoints.iter().map(|e| number(e, "attempts")).sum();
    assert!(
        number(failing, "attempts") * 20 < total,
        "it took little of the load: {listing}"
    );
    let counters = mesh.catalog_counters().await;
    assert!(counters.ejections >= 1, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_failing_make_calls_fail_fast_within_the_retry_budget() {
    let mesh = Mesh::start(vec![]).await;
    for replica in REPLICAS {
        mesh.set_server_policy(
            replica,
            "[server.mesh.fault]\nabort_percent = 100.0\nabort_code = \"unavailable\"",
        )
        .await;
    }

    let started = Instant::now();
    let outcomes = load(&mesh, 4, Duration::from_secs(60), 50).await;
    let elapsed = started.elapsed();
    assert!(
        outcomes.iter().all(|o| o.code == Code::Unavailable),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| o.latency < Duration::from_secs(1)),
        "fail fast: {:?}",
        outcomes.iter().map(|o| o.latency).max()
    );
    let counters = mesh.catalog_counters().await;
    let allowed = counters.calls as f64 * 0.2 + 10.0 * (elapsed.as_secs_f64() + 10.0);
    assert!(
        (counters.retries as f64) <= allowed,
        "{} retries for {} calls in {elapsed:?}",
        counters.retries,
        counters.calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_given_at_the_edge_is_honoured_across_every_hop() {
    let mesh = Mesh::start(vec![]).await;
    // Warm up first (orders' database pool and its connections to the
    // replicas): on a loaded machine a cold first call could spend the whole
    // edge deadline before orders reaches a replica, and then no replica has
    // a deadline to see pass.
    for _ in 0..3 {
        mesh.orders()
            .await
            .place_order(mesh.request())
            .await
            .unwrap();
    }
    for replica in REPLICAS {
        mesh.set_server_policy(
            replica,
            "[server.mesh.fault]\ndelay_percent = 100.0\ndelay = \"3s\"",
        )
        .await;
    }

    // The deadline as the edge client sends it (`grpc-timeout`).
    let mut request = tonic::Request::new(mesh.request());
    request
        .metadata_mut()
        .insert("grpc-timeout", "1000m".parse().unwrap());
    let t = Instant::now();
    let err = mesh.orders().await.place_order(request).await.unwrap_err();

    // tonic's channel enforces the same grpc-timeout on the client side, so
    // the caller sees its own timer (CANCELLED "Timeout expired") or the
    // server's DEADLINE_EXCEEDED, whichever lands first.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // The replicas orders called gave up too: each attempt carried what was
    // left of the edge's deadline (or less: the per-try timeout).
    eventually(Duration::from_secs(10), || async {
        let mut seen = 0;
        for replica in REPLICAS {
            seen += mesh
                .admin(replica)
                .await
                .get_stats(GetStatsRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .server
                .map_or(0, |s| s.deadline_exceeded);
        }
        if seen > 0 {
            Ok(())
        } else {
            Err("no replica saw the deadline pass".to_string())
        }
    })
    .await
    .unwrap();
}
