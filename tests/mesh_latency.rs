//! One replica of three slowed by 200 ms: the slow replica does not set the
//! callers' tail. Two parts of the mesh see to it: the balancer sends it
//! few reads once its latency estimate grows (often none in the measured
//! phase), and orders hedges catalog reads after 20 ms, so the reads it does
//! hold are answered by another replica. Round robin without hedging would
//! make a third of the calls wait the whole delay. The test asserts the
//! p99 grew by less than half the injected delay over the healthy p99
//! measured in the same test: a bound far from the outcome (about the hedge
//! delay at most), so a loaded machine does not decide it; speed itself is
//! `just bench`'s. It prints how many reads the slow replica held and how
//! many were hedged. Its own test binary, so no other suite loads the
//! machine while it measures.

mod common;

use common::mesh::{Mesh, load, p99};
use shop_proto::shop::mesh::v1::GetStatsRequest;
use std::time::Duration;
use tonic::Code;

/// The delay injected on one catalog replica.
const DELAY: Duration = Duration::from_millis(200);

/// Requests the slow replica has delayed since start.
async fn delayed(mesh: &Mesh) -> i64 {
    mesh.admin("catalog-3")
        .await
        .get_stats(GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .server
        .map_or(0, |s| s.faults_delayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_barely_moves_the_callers_p99() {
    // Reads are hedged after 20 ms: the mesh's answer to a slow replica
    // (peak-EWMA alone lets the slow one be tried again as its estimate
    // decays).
    let mesh = Mesh::start(vec![(
        "SHOP_ORDERS__UPSTREAMS__CATALOG__HEDGE__DELAY".to_string(),
        "20ms".to_string(),
    )])
    .await;
    let _ = load(&mesh, 2, Duration::from_secs(30), 50).await;
    let healthy = load(&mesh, 4, Duration::from_secs(60), 250).await;
    let failed: Vec<_> = healthy.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        healthy.len()
    );

    mesh.set_server_policy(
        "catalog-3",
        &format!(
            "[server.mesh.fault]\ndelay_percent = 100.0\ndelay = \"{}ms\"",
            DELAY.as_millis()
        ),
    )
    .await;
    let _ = load(&mesh, 2, Duration::from_secs(30), 50).await;
    let (hedges_before, delayed_before) =
        (mesh.catalog_counters().await.hedges, delayed(&mesh).await);
    let slowed = load(&mesh, 4, Duration::from_secs(60), 250).await;
    let hedges = mesh.catalog_counters().await.hedges - hedges_before;
    let delayed = delayed(&mesh).await - delayed_before;

    let failed: Vec<_> = slowed.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        slowed.len()
    );
    let (healthy_p99, slowed_p99) = (p99(&healthy), p99(&slowed));
    eprintln!(
        "p99 healthy {healthy_p99:?}, one replica slowed {DELAY:?} {slowed_p99:?}; \
         {delayed} reads held by the slow replica, {hedges} hedges, in {} calls",
        slowed.len()
    );
    assert!(
        slowed_p99 < healthy_p99 + DELAY / 2,
        "p99 {slowed_p99:?} with a replica slowed {DELAY:?} vs {healthy_p99:?} healthy: \
         the slow replica sets the tail"
    );
}
