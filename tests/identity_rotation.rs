//! Certificates rotated on disk under steady load: the services take the
//! new ones without a restart (the next handshake presents them), and no
//! call fails, neither on the mesh's long-lived connections (orders to
//! three catalog replicas) nor on connections opened during the rotation.

mod common;

use common::mesh::{Mesh, REPLICAS, load};
use shop_identity::{ClientAuth, Identity, files};
use shop_proto::shop::catalog::v1::GetProductRequest;
use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_testkit::eventually;
use shop_testkit::identities::Identities;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Code;

/// The leaf certificate `addr` presents to a new connection, as DER.
async fn presented(addr: std::net::SocketAddr, operator: &Identity) -> Vec<u8> {
    let config = operator.client_config(&Identities::id("catalog")).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_on_disk(dir: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(dir.join(files::CERT)).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_under_load_drop_no_call() {
    let mesh = Mesh::start(vec![]).await;
    let operator_dir = Identities::dir_in(mesh.stack.dir(), "operator");
    let operator = Identity::load(&operator_dir, ClientAuth::Required).unwrap();
    let catalog_dir = Identities::dir_in(mesh.stack.dir(), "catalog");
    let before = presented(mesh.stack.service("catalog").addr(), &operator).await;
    assert_eq!(before, leaf_on_disk(&catalog_dir));

    // Callers opening a new connection for every call, all through the
    // rotation: each handshake is with whichever certificate is in force.
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = {
        let stop = stop.clone();
        let targets: Vec<_> = REPLICAS.iter().map(|r| mesh.stack.service(r)).collect();
        let mut channels = Vec::new();
        for _ in 0..40 {
            for target in &targets {
                channels.push((target.url(), target.name().to_string()));
            }
        }
        let product_id = mesh.product_id.clone();
        let tls = shop_testkit::identities::client_tls(&operator_dir).unwrap();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for (url, name) in channels.into_iter().cycle().take(2_000) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .tls_config(tls.clone())
                    .unwrap()
                    .connect()
                    .await;
                let code = match channel {
                    Err(e) => Err(format!("{name}: connect: {e}")),
                    Ok(channel) => CatalogServiceClient::new(channel)
                        .get_product(GetProductRequest {
                            product_id: product_id.clone(),
                        })
                        .await
                        .map(drop)
                        .map_err(|s| format!("{name}: {s:?}")),
                };
                outcomes.push(code);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };

    let rotate = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // New keys and certificates for the servers, the mesh client
        // (orders) and the callers.
        for workload in ["catalog", "orders", "operator"] {
            mesh.stack.identities().mint(workload).unwrap();
        }
        let rotated = leaf_on_disk(&catalog_dir);
        assert_ne!(rotated, before);
        // Every replica presents the new certificate to the next
        // handshake, without a restart.
        for replica in REPLICAS {
            let addr = mesh.stack.service(replica).addr();
            let operator = &operator;
            let rotated = &rotated;
            eventually(Duration::from_secs(10), || async move {
                operator.reload().map_err(|e| e.to_string())?;
                if presented(addr, operator).await == *rotated {
                    Ok(())
                } else {
                    Err(format!("{replica} still presents the old certificate"))
                }
            })
            .await
            .unwrap();
        }
        // Each logs the reload just after it takes the new certificate, and
        // orders (the mesh client) reloads on its own watch: waited for.
        for process in REPLICAS.iter().chain(&["orders"]) {
            let service = mesh.stack.service(process);
            eventually(Duration::from_secs(10), || async {
                if service.log().contains("identity reloaded") {
                    Ok(())
                } else {
                    Err(format!("{process} has not logged the reload"))
                }
            })
            .await
            .unwrap();
        }
    };

    let (outcomes, ()) = tokio::join!(load(&mesh, 4, Duration::from_secs(8), 10_000), rotate);
    stop.store(true, Ordering::Relaxed);
    let fresh = fresh.await.unwrap();

    let failed: Vec<_> = outcomes.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(
        outcomes.len() > 100,
        "steady load: {} calls",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} mesh calls failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    let fresh_failed: Vec<_> = fresh.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(fresh.len() > 50, "fresh connections: {}", fresh.len());
    assert!(
        fresh_failed.is_empty(),
        "{} of {} fresh-connection calls failed: {fresh_failed:?}",
        fresh_failed.len(),
        fresh.len()
    );
}
