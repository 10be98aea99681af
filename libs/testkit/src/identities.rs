//! Workload identities for a local stack: a CA made fresh for it and a
//! certificate per service account (`spiffe://shop.local/ns/shop/sa/<name>`),
//! each in its own directory in the layout of a cert-manager Secret
//! (`tls.crt`, `tls.key`, `ca.crt`), plus `operator` for people and tests
//! calling internal services.

use shop_identity::SpiffeId;
use shop_identity::mint::{Authority, Leaf};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The local stack's trust domain.
pub const TRUST_DOMAIN: &str = "shop.local";
/// The local stack's namespace.
pub const NAMESPACE: &str = "shop";
/// How long minted certificates are valid.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The CA of a stack and where it writes identities.
pub struct Identities {
    ca: Authority,
    root: PathBuf,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Identities {
    /// A fresh CA writing under `stack_dir/identity/`.
    pub fn create(stack_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            ca: Authority::generate(TRUST_DOMAIN)?,
            root: Self::root(stack_dir),
        })
    }

    fn root(stack_dir: &Path) -> PathBuf {
        stack_dir.join("identity")
    }

    /// The directory of workload `name`'s identity in the stack at
    /// `stack_dir` (whether or not it was minted yet).
    pub fn dir_in(stack_dir: &Path, name: &str) -> PathBuf {
        Self::root(stack_dir).join(name)
    }

    /// The SPIFFE ID of workload `name`.
    pub fn id(name: &str) -> SpiffeId {
        SpiffeId::workload(TRUST_DOMAIN, NAMESPACE, name).expect("a valid workload name")
    }

    /// Mints (or mints again: a rotation) workload `name`'s identity; its
    /// directory.
    pub fn mint(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name);
        self.ca
            .write(&dir, &Self::id(name), &Leaf::local(LIFETIME))?;
        Ok(dir)
    }

    /// Mints an identity valid as `leaf` says into `dir` (an expired one, a
    /// foreign one...), for attack tests.
    pub fn mint_into(&self, dir: &Path, id: &SpiffeId, leaf: &Leaf<'_>) -> anyhow::Result<()> {
        self.ca.write(dir, id, leaf)?;
        Ok(())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }
}

/// A client identity for tonic channels: the CA to trust and the
/// certificate to present.
pub fn client_tls(dir: &Path) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use shop_identity::files;
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.join(name).display()))
    };
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(files::CA)?))
        .identity(tonic::transport::Identity::from_pem(
            read(files::CERT)?,
            read(files::KEY)?,
        ))
        // Local certificates name localhost and 127.0.0.1 besides their
        // SPIFFE ID.
        .domain_name("localhost"))
}

/// TLS trusting the CA in `dir`, without a client certificate.
pub fn server_only_tls(dir: &Path) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let ca = dir.join(shop_identity::files::CA);
    let ca = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost"))
}

/// grpcurl's flags to call as the identity in `dir` (`-cacert`, `-cert`,
/// `-key`).
pub fn grpcurl_args(dir: &Path) -> Vec<String> {
    use shop_identity::files;
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "-cacert".into(),
        p(files::CA),
        "-cert".into(),
        p(files::CERT),
        "-key".into(),
        p(files::KEY),
    ]
}
