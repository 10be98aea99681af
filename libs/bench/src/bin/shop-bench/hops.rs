//! The proxies between the load generator and the server: HAProxy hops and
//! Envoy sidecars.

use crate::pki::Pki;
use crate::procs::{Proc, pinned};
use anyhow::{Context as _, bail};
use std::process::Stdio;
use std::time::Duration;

/// How an HAProxy hop speaks on each side.
pub(crate) enum HopTls<'a> {
    /// h2c in and out.
    None,
    /// Accepts mTLS (its certificate and key in one PEM, the CA to verify
    /// clients with), forwards h2c: the server-side sidecar.
    Accept {
        pem: &'a std::path::Path,
        ca: &'a std::path::Path,
    },
    /// Accepts h2c, forwards over mTLS: the client-side sidecar.
    Originate {
        pem: &'a std::path::Path,
        ca: &'a std::path::Path,
    },
}

pub(crate) fn haproxy_hop(
    listen: u16,
    upstream: &str,
    dir: &std::path::Path,
    name: &str,
    tls: HopTls<'_>,
) -> anyhow::Result<Proc> {
    let (bind, server) = match tls {
        HopTls::None => (" proto h2".to_string(), " proto h2".to_string()),
        HopTls::Accept { pem, ca } => (
            format!(
                " ssl crt {} ca-file {} verify required alpn h2",
                pem.display(),
                ca.display()
            ),
            " proto h2".to_string(),
        ),
        HopTls::Originate { pem, ca } => (
            " proto h2".to_string(),
            format!(
                " ssl crt {} ca-file {} verify required alpn h2",
                pem.display(),
                ca.display()
            ),
        ),
    };
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{listen}{bind}\n  default_backend be\n\
             backend be\n  server s1 {upstream}{server}\n"
        ),
    )?;
    let child = pinned("1", std::path::Path::new("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    Ok(Proc(child))
}

/// Two Envoy sidecars in front of the server's bare port, as Istio places
/// them, from the same policy the mesh variants run: the server's inbound
/// sidecar and the client's outbound one (mTLS between them when `tls`
/// gives the PKI and the server's identity). The outbound one comes with
/// its port.
pub(crate) fn envoy_pair(
    dir: &std::path::Path,
    name: &str,
    app: &str,
    tls: Option<(&Pki, &shop_identity::SpiffeId)>,
) -> anyhow::Result<(shop_bench::envoy::Envoy, (shop_bench::envoy::Envoy, u16))> {
    use shop_bench::envoy::{Certs, Envoy, inbound, outbound};
    let app: u16 = app
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("bare address")?;
    let (inbound_port, outbound_port) = (shop_bench::free_port()?, shop_bench::free_port()?);
    let server_certs = tls.map(|(pki, _)| Certs::new(&pki.server));
    let client_certs = tls.map(|(pki, _)| Certs::new(&pki.client));
    let server_id = tls.map(|(_, id)| id);
    let server_policy = shop_mesh::policy::ServerPolicy::default();
    let inbound = inbound::render(&inbound::Inbound {
        listen: inbound_port,
        app,
        policy: &server_policy,
        tls: server_certs.as_ref().zip(server_id),
    });
    let upstream = shop_mesh::client::bench_policy("http://127.0.0.1:1");
    let outbound = outbound::render(&outbound::Outbound {
        listen: outbound_port,
        service: "shop.mesh.v1.MeshAdminService",
        policy: &upstream,
        replicas: &[inbound_port],
        tls: client_certs.as_ref().zip(server_id),
    });
    let server_side = Envoy::start(dir, &format!("{name}-inbound"), &inbound.config, "1")?;
    let client_side = Envoy::start(dir, &format!("{name}-outbound"), &outbound.config, "1")?;
    Ok((server_side, (client_side, outbound_port)))
}

pub(crate) async fn wait_port(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} never accepted a connection")
}
