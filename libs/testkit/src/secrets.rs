//! The Secrets the Kubernetes manifests reference and do not create
//! (`k8s/secrets.provided.txt`), minted for a kind cluster (`just kind-up`
//! runs `shop-secrets`) or for a test booting services from the rendered
//! manifests: one directory per Secret, one file per key, as
//! `kubectl create secret generic <name> --from-file=<dir>` takes them.
//!
//! - `<workload>-identity`: `tls.crt`, `tls.key`, `ca.crt`, the workload's
//!   SPIFFE ID (`spiffe://shop.local/ns/shop/sa/<workload>`) and its cluster
//!   DNS names, for every service, `nats` and `postgres` (and
//!   `operator-identity`, for grpcurl: no workload mounts it);
//! - `nats-users`: one password per NATS user (`admin` and each service
//!   with events);
//! - `<service>-database`: `password` and `url` for each service with a
//!   database, and `postgres-admin`: the superuser's `password`;
//! - `users-signing-key` (`<kid>.pem`) and `gateway-public-keys`
//!   (`<kid>.pem`): the token key pair;
//! - `payment-token-keys` (`<kid>.key`): the key orders seals payment
//!   tokens with and payments opens them with.

use crate::identities::{NAMESPACE, TRUST_DOMAIN};
use crate::stack::{NO_EVENTS, SERVICES, STATELESS};
use shop_identity::SpiffeId;
use shop_identity::mint::{Authority, Leaf};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long minted certificates are valid (a kind cluster is short-lived;
/// production identities come from cert-manager and rotate).
const LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The identity of people and tests calling internal services: minted
/// beside the Secrets, mounted by no workload.
pub const OPERATOR: &str = "operator";
/// The key id of the token key pair.
pub const KID: &str = "k1";

/// Minted Secrets, in `dir`.
#[derive(Debug)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// Mints every Secret into `dir` (created; existing files replaced).
    pub fn mint(dir: &Path) -> anyhow::Result<Self> {
        let ca = Authority::generate(TRUST_DOMAIN)?;
        let secrets = Self {
            dir: dir.to_path_buf(),
        };
        let workloads = SERVICES
            .iter()
            .copied()
            .chain(["nats", "postgres", OPERATOR]);
        for workload in workloads {
            secrets.identity(&ca, workload)?;
        }
        let password = || uuid::Uuid::new_v4().simple().to_string();
        for user in std::iter::once(crate::nats::ADMIN)
            .chain(SERVICES.iter().copied().filter(|s| !NO_EVENTS.contains(s)))
        {
            secrets.write("nats-users", user, &password())?;
        }
        for service in SERVICES.iter().filter(|s| !STATELESS.contains(s)) {
            let pw = password();
            let url = format!(
                "postgres://{service}:{pw}@postgres.{NAMESPACE}.svc.cluster.local:5432/shop_{service}\
                 ?sslmode=verify-full&sslrootcert=/var/run/shop/identity/ca.crt"
            );
            secrets.write(&format!("{service}-database"), "password", &pw)?;
            secrets.write(&format!("{service}-database"), "url", &url)?;
        }
        secrets.write("postgres-admin", "password", &password())?;
        let pair = shop_auth::KeyPair::generate();
        let key = format!("{KID}.pem");
        secrets.write("users-signing-key", &key, &pair.private_pem)?;
        secrets.write("gateway-public-keys", &key, &pair.public_pem)?;
        shop_events::sealed::SealingKeys::generate(&secrets.dir("payment-token-keys"), KID)?;
        Ok(secrets)
    }

    /// The directory of Secret `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every Secret minted, by name.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// Key `key` of Secret `name`.
    pub fn get(&self, name: &str, key: &str) -> anyhow::Result<String> {
        let path = self.dir(name).join(key);
        std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("Secret {name} has no key {key} ({e})"))
    }

    /// Sets key `key` of Secret `name` (a test putting its own database's
    /// address in place).
    pub fn write(&self, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.dir(name);
        private_dir(&dir)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(key))?
            .write_all(value.as_bytes())?;
        Ok(())
    }

    fn identity(&self, ca: &Authority, workload: &str) -> anyhow::Result<()> {
        let id = SpiffeId::workload(TRUST_DOMAIN, NAMESPACE, workload)?;
        // The names clients dial: the Service, each pod of a StatefulSet
        // behind its headless Service (NATS routes), and loopback for a
        // test on one machine.
        let names = [
            workload.to_string(),
            format!("{workload}.{NAMESPACE}"),
            format!("{workload}.{NAMESPACE}.svc"),
            format!("{workload}.{NAMESPACE}.svc.cluster.local"),
            format!("*.{workload}-headless.{NAMESPACE}.svc.cluster.local"),
            "localhost".to_string(),
        ];
        let dns: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = Leaf::named(&dns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], LIFETIME);
        let dir = self.dir(&format!("{workload}-identity"));
        private_dir(&dir)?;
        ca.write(&dir, &id, &leaf)?;
        // Keys readable by their owner alone, as a mounted Secret's are to
        // the pod.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.join(shop_identity::files::KEY),
            std::fs::Permissions::from_mode(0o600),
        )?;
        Ok(())
    }
}

/// `dir` (and the Secrets' root above it), created readable by their owner
/// alone.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}
