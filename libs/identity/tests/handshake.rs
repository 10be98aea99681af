//! Real TLS handshakes over loopback TCP between identities minted here:
//! who gets through, who is refused, and what a reload changes.

use shop_identity::mint::{Authority, Leaf};
use shop_identity::{ClientAuth, Identity, SpiffeId};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::workload("shop.test", "shop", sa).unwrap()
}

fn mint(ca: &Authority, dir: &Path, sa: &str) -> Identity {
    ca.write(dir, &id(sa), &Leaf::local(Duration::from_secs(3600)))
        .unwrap();
    Identity::load(dir, ClientAuth::Required).unwrap()
}

/// A server that answers each connection's first byte with the caller's
/// SPIFFE ID; its address.
async fn serve(identity: Identity) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let caller = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| {
                            shop_identity::material::spiffe_id_of(c)
                                .unwrap()
                                .to_string()
                        })
                        .unwrap_or_default();
                    let mut byte = [0u8; 1];
                    let _ = tls.read_exact(&mut byte).await;
                    let _ = tls.write_all(caller.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Handshakes as `client` expecting `expected`, and returns what the
/// server says the caller is.
async fn call(
    client: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Result<String, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("ignored.invalid").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"?").await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn a_workload_of_the_bundle_is_let_in_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let catalog = mint(&ca, &dir.path().join("catalog"), "catalog");
    let orders = mint(&ca, &dir.path().join("orders"), "orders");
    let addr = serve(catalog).await;
    let answer = call(orders.client_config(&id("catalog")).unwrap(), addr).await;
    assert_eq!(answer.unwrap(), "spiffe://shop.test/ns/shop/sa/orders");
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let impostor = mint(&ca, &dir.path().join("inventory"), "inventory");
    let orders = mint(&ca, &dir.path().join("orders"), "orders");
    let addr = serve(impostor).await;
    let err = call(orders.client_config(&id("catalog")).unwrap(), addr)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("PeerIdentityMismatch")
            && err.to_string().contains("sa/inventory"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_of_a_foreign_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let foreign = Authority::generate("shop.test").unwrap();
    let catalog = mint(&ca, &dir.path().join("catalog"), "catalog");
    let addr = serve(catalog).await;
    // Trusts our CA (so it would accept the server) but holds a
    // certificate of another CA.
    let mallory = dir.path().join("mallory");
    foreign
        .write(
            &mallory,
            &id("operator"),
            &Leaf::local(Duration::from_secs(60)),
        )
        .unwrap();
    std::fs::write(mallory.join("ca.crt"), ca.ca_pem()).unwrap();
    let mallory = Identity::load(&mallory, ClientAuth::Required).unwrap();
    assert!(
        call(mallory.client_config(&id("catalog")).unwrap(), addr)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let catalog = mint(&ca, &dir.path().join("catalog"), "catalog");
    let addr = serve(catalog).await;
    let now = time::OffsetDateTime::now_utc();
    let old = dir.path().join("old");
    ca.write(
        &old,
        &id("orders"),
        &Leaf {
            not_before: now - time::Duration::days(2),
            not_after: now - time::Duration::days(1),
            ..Leaf::local(Duration::ZERO)
        },
    )
    .unwrap();
    let old = Identity::load(&old, ClientAuth::Required).unwrap();
    assert!(
        call(old.client_config(&id("catalog")).unwrap(), addr)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_the_next_handshake_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let catalog_dir = dir.path().join("catalog");
    let catalog = mint(&ca, &catalog_dir, "catalog");
    let orders = mint(&ca, &dir.path().join("orders"), "orders");
    let addr = serve(catalog.clone()).await;
    let before = catalog.server_config();

    ca.write(
        &catalog_dir,
        &id("catalog"),
        &Leaf::local(Duration::from_secs(7200)),
    )
    .unwrap();
    assert!(catalog.reload().unwrap(), "the new files are taken");
    assert!(!Arc::ptr_eq(&before, &catalog.server_config()));
    assert!(!catalog.reload().unwrap(), "nothing changed since");
    call(orders.client_config(&id("catalog")).unwrap(), addr)
        .await
        .unwrap();

    // A key that does not match the certificate: refused, the identity in
    // force stays and still serves.
    let other = ca
        .issue(&id("catalog"), &Leaf::local(Duration::from_secs(60)))
        .unwrap();
    std::fs::write(catalog_dir.join("tls.key"), other.key_pem).unwrap();
    let err = catalog.reload().unwrap_err().to_string();
    assert!(err.contains("catalog"), "{err}");
    call(orders.client_config(&id("catalog")).unwrap(), addr)
        .await
        .unwrap();
}

#[test]
fn a_certificate_without_a_spiffe_id_is_not_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let plain = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), plain.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.ca_pem()).unwrap();
    let err = Identity::load(dir.path(), ClientAuth::Required).unwrap_err();
    assert!(
        err.to_string()
            .contains("tls.crt: the certificate has no spiffe:// URI SAN"),
        "{err}"
    );
}
