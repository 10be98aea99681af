//! `bench-server`: the same gRPC services on two ports of one process: the
//! first bare tonic, the second behind the mesh's server stack (deadline,
//! concurrency limit with shedding, fault injection off). The benchmarked
//! method is `shop.mesh.v1.MeshAdminService/ListUpstreams` (the real admin
//! service; this process calls no upstream, so the answer is small),
//! which its contract marks NO_SIDE_EFFECTS: the mesh client retries it, so
//! its whole retry path (body buffered for replay, budget) is measured.
//! `grpc.health.v1.Health` is served too. Prints `bare=<addr> mesh=<addr>`
//! once both listen. With `--tls <identity dir>` it serves two more ports
//! under mutual TLS with that identity: bare tonic with its own TLS
//! (`ServerTlsConfig`, client certificates required) and the mesh port as a
//! service runs it (the runtime's TLS listener, caller identities,
//! authorization), printed as `bare_tls=<addr> mesh_tls=<addr>`. The mesh's metrics are recorded into an OpenTelemetry
//! SDK meter provider, as in a service exporting them (aggregated, never
//! collected here).

use std::sync::Arc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _meters = shop_bench::install_meter_provider();
    let tls_dir = match std::env::args().nth(1).as_deref() {
        Some("--tls") => Some(std::path::PathBuf::from(
            std::env::args().nth(2).expect("--tls needs a directory"),
        )),
        Some(other) => anyhow::bail!("unknown argument {other}"),
        None => None,
    };
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let meshed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_tls = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let meshed_tls = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut line = format!("bare={} mesh={}", bare.local_addr()?, meshed.local_addr()?);
    if tls_dir.is_some() {
        line += &format!(
            " bare_tls={} mesh_tls={}",
            bare_tls.local_addr()?,
            meshed_tls.local_addr()?
        );
    }
    println!("{line}");

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let stats = Arc::new(shop_mesh::stats::MeshStats::default());
    let (_policy_tx, policy_rx) =
        tokio::sync::watch::channel(Arc::new(shop_mesh::policy::ServerPolicy::default()));
    let admin = shop_proto::shop::mesh::v1::mesh_admin_service_server::MeshAdminServiceServer::new(
        shop_mesh::admin::MeshAdmin::new(stats.clone(), policy_rx.clone()),
    );
    let layer = shop_mesh::server::ServerLayer::new(policy_rx, stats);

    let a = tonic::transport::Server::builder()
        .add_service(health.clone())
        .add_service(admin.clone())
        .serve_with_incoming(nodelay(bare));
    let b = tonic::transport::Server::builder()
        .layer(layer.clone())
        .add_service(health.clone())
        .add_service(admin.clone())
        .serve_with_incoming(shop_runtime::listener::incoming(
            meshed,
            None,
            shop_runtime::listener::ConnectionLimits::default(),
        ));
    let Some(dir) = tls_dir else {
        tokio::try_join!(a, b)?;
        return Ok(());
    };
    let read = |name: &str| std::fs::read(dir.join(name));
    let tonic_tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(shop_identity::files::CERT)?,
            read(shop_identity::files::KEY)?,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            shop_identity::files::CA,
        )?));
    let c = tonic::transport::Server::builder()
        .tls_config(tonic_tls)?
        .add_service(health.clone())
        .add_service(admin.clone())
        .serve_with_incoming(nodelay(bare_tls));
    let identity = shop_identity::Identity::load(&dir, shop_identity::ClientAuth::Required)?;
    let d = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health)
        .add_service(admin)
        .serve_with_incoming(shop_runtime::listener::incoming(
            meshed_tls,
            Some(identity),
            shop_runtime::listener::ConnectionLimits::default(),
        ));
    tokio::try_join!(a, b, c, d)?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off, as tonic's own
/// `Server::serve` and the runtime's listener (which the mesh ports use)
/// have them: with it on, a response written in pieces can wait for the
/// client's delayed ACK (40 ms).
fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
