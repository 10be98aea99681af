//! Postgres, NATS and a set of services, started together, one database per
//! service, stopped together (services first) when dropped. Every service
//! gets a workload identity from a CA made for the stack, so every hop is
//! mutual TLS and authorized by identity, as deployed; tests call the
//! services as `operator` ([`ServiceProcess::channel`]).

use crate::identities::Identities;
use crate::{Nats, Postgres, ServiceProcess};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// How to start a [`Stack`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Services to start, in order (`users`, `catalog`...).
    pub services: Vec<String>,
    /// Fixed listen addresses by service; others bind port 0.
    pub listen: BTreeMap<String, SocketAddr>,
    /// Extra environment for every service (`RUST_LOG`...).
    pub env: Vec<(String, String)>,
    /// Extra environment for one service, by name (applied last).
    pub service_env: BTreeMap<String, Vec<(String, String)>>,
    /// Extra environment for one instance (`catalog-2`), applied last.
    pub instance_env: BTreeMap<String, Vec<(String, String)>>,
    /// Instances per service when more than one (`catalog` -> 3 starts
    /// `catalog`, `catalog-2`, `catalog-3` on one database).
    pub replicas: BTreeMap<String, usize>,
    /// Services connect to Postgres over TLS (`sslmode=verify-full`).
    /// Postgres always offers TLS; off by default because sqlx loads the
    /// system's root certificates for every new pooled connection, which in
    /// a debug build stalls the call that waits for it by hundreds of
    /// milliseconds (loopback needs no encryption).
    pub database_tls: bool,
    /// Postgres with `fsync` on, as in production (benchmarks); tests run
    /// it off, being durable against killed processes without it.
    pub durable_postgres: bool,
    /// Where the flags file every service watches is written (the shipped
    /// [`SHIPPED_FLAGS`]); in the stack's own directory when `None`.
    pub flags_file: Option<PathBuf>,
}

/// The flags file the system ships (`k8s/base/flags/flags.json`, also the
/// ConfigMap the manifests mount): both flags, the kill switch on and the
/// minimum-order-value rollout at 0%.
pub const SHIPPED_FLAGS: &str = include_str!("../../../k8s/base/flags/flags.json");

/// A running local system.
pub struct Stack {
    // Field order is drop order: services stop before NATS and Postgres.
    services: BTreeMap<String, ServiceProcess>,
    /// The NATS server.
    pub nats: Nats,
    /// The Postgres server.
    pub postgres: Postgres,
    keys: TokenKeys,
    identities: Identities,
    flags_file: PathBuf,
    dir: TempDir,
}

/// The stack's token keys, made fresh for it: users signs with the private
/// key (`k1`), the gateway trusts the public keys in a directory.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    /// The key id.
    pub kid: String,
    /// The private key file users signs with.
    pub signing_key_file: PathBuf,
    /// The directory of `<kid>.pem` public keys the gateway trusts.
    pub public_keys_dir: PathBuf,
    /// The directory of `<kid>.key` keys orders seals payment tokens with
    /// and payments opens them with (`k1`).
    pub payment_token_keys_dir: PathBuf,
}

impl TokenKeys {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let kid = "k1".to_string();
        let pair = shop_auth::KeyPair::generate();
        let signing = dir.join("keys/signing");
        let public = dir.join("keys/public");
        std::fs::create_dir_all(&signing)?;
        std::fs::create_dir_all(&public)?;
        let signing_key_file = signing.join(format!("{kid}.pem"));
        std::fs::write(&signing_key_file, &pair.private_pem)?;
        std::fs::write(public.join(format!("{kid}.pem")), &pair.public_pem)?;
        let payment_token_keys_dir = dir.join("keys/payment-tokens");
        shop_events::sealed::SealingKeys::generate(&payment_token_keys_dir, "k1")?;
        Ok(Self {
            kid,
            signing_key_file,
            public_keys_dir: public,
            payment_token_keys_dir,
        })
    }

    /// The private key, PEM (tests that forge tokens with the real key).
    pub fn signing_key_pem(&self) -> String {
        std::fs::read_to_string(&self.signing_key_file).expect("the stack's key file exists")
    }
}

/// Every service, each after the services it calls.
pub const SERVICES: &[&str] = &[
    "users",
    "catalog",
    "inventory",
    "payments",
    "orders",
    "notifications",
    "analytics",
    "gateway",
];
/// Where `just web` writes the storefront, relative to the repository.
pub const STOREFRONT_DIR: &str = "web/dist/storefront";
/// Services without a database or NATS of their own.
pub const STATELESS: &[&str] = &["gateway"];
/// Services that do not talk to NATS (no `[events]` settings).
pub const NO_EVENTS: &[&str] = &["gateway", "catalog"];

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("services", &self.services)
            .field("nats", &self.nats)
            .field("postgres", &self.postgres)
            .finish()
    }
}

impl Stack {
    /// Starts `services` on free ports.
    pub async fn start(services: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(StackOptions {
            services: services.iter().map(|s| s.to_string()).collect(),
            ..StackOptions::default()
        })
        .await
    }

    /// Starts a stack as `options` say, reporting progress through
    /// `progress` (one line per step).
    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        Self::start_reporting(options, |_| {}).await
    }

    /// [`Stack::start_with`], calling `progress` with a line per step.
    pub async fn start_reporting(
        options: StackOptions,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("shop-stack-").tempdir()?;
        let identities = Identities::create(dir.path())?;
        identities.mint("operator")?;
        progress(&format!(
            "identities: a CA for spiffe://{}/ns/{}/sa/*, operator's in {}",
            crate::identities::TRUST_DOMAIN,
            crate::identities::NAMESPACE,
            Identities::dir_in(dir.path(), "operator").display()
        ));
        progress("starting postgres");
        let postgres = if options.durable_postgres {
            Postgres::start_durable().await?
        } else {
            Postgres::start().await?
        };
        postgres.enable_tls(&identities.mint("postgres")?).await?;
        progress(&format!(
            "postgres ready on 127.0.0.1:{} (pid {})",
            postgres.port(),
            postgres.pid().unwrap_or(0)
        ));
        progress("starting nats-server with JetStream, TLS and a user per service");
        let users: Vec<&str> = options
            .services
            .iter()
            .map(String::as_str)
            .filter(|s| !NO_EVENTS.contains(s))
            .collect();
        let nats = Nats::start_secure(&users, &identities.mint("nats")?).await?;
        progress(&format!(
            "nats ready at {} (pid {})",
            nats.url(),
            nats.pid().unwrap_or(0)
        ));
        let keys = TokenKeys::create(dir.path())?;
        let flags_file = options
            .flags_file
            .clone()
            .unwrap_or_else(|| dir.path().join("flags/flags.json"));
        if let Some(parent) = flags_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&flags_file, SHIPPED_FLAGS)?;
        progress(&format!("flags: {} (reloaded live)", flags_file.display()));
        let mut stack = Stack {
            services: BTreeMap::new(),
            nats,
            postgres,
            keys,
            identities,
            flags_file,
            dir,
        };
        for name in &options.services {
            progress(&format!("starting {name}"));
            let mut env = Vec::new();
            if !STATELESS.contains(&name.as_str()) {
                // Its own role, owning its own database only.
                let db = format!("shop_{name}");
                let password = uuid::Uuid::new_v4().simple().to_string();
                let db_url = stack
                    .postgres
                    .create_service_database_with_password(&db, name, &password)
                    .await?;
                stack.identities.mint(name)?;
                let db_url = if options.database_tls {
                    // The server's certificate verified against the
                    // service's own bundle.
                    let ca =
                        Identities::dir_in(stack.dir.path(), name).join(shop_identity::files::CA);
                    format!("{db_url}?{}", Postgres::tls_params(&ca))
                } else {
                    // On one machine, the Unix socket.
                    stack.postgres.socket_url_as(name, &password, &db)
                };
                env.extend(stack.nats_env(name));
                env.extend([
                    ("DATABASE_URL".to_string(), db_url),
                    ("NATS_URL".to_string(), stack.nats.url()),
                    (
                        format!("SHOP_{}__DATABASE__PROBE_INTERVAL", name.to_uppercase()),
                        "200ms".to_string(),
                    ),
                ]);
            }
            env.extend(stack.tls_env(name)?);
            env.push((
                format!("SHOP_{}__SERVER__FLAGS__FILES", name.to_uppercase()),
                format!("[{:?}]", stack.flags_file.display().to_string()),
            ));
            env.extend(service_env(name, &stack.services, &stack.keys));
            env.extend(options.env.iter().cloned());
            if let Some(extra) = options.service_env.get(name) {
                env.extend(extra.iter().cloned());
            }
            let instances = options.replicas.get(name).copied().unwrap_or(1).max(1);
            for i in 1..=instances {
                let instance = if i == 1 {
                    name.clone()
                } else {
                    format!("{name}-{i}")
                };
                let listen = options.listen.get(&instance).copied();
                let mut env = env.clone();
                if let Some(extra) = options.instance_env.get(&instance) {
                    env.extend(extra.iter().cloned());
                }
                let process =
                    ServiceProcess::start_instance(name, &instance, env, stack.dir.path(), listen)
                        .await?;
                progress(&format!(
                    "{instance} SERVING on {} (pid {})",
                    process.addr(),
                    process.pid().unwrap_or(0)
                ));
                stack.services.insert(instance, process);
            }
        }
        Ok(stack)
    }

    /// A service of the stack; panics if it was not started.
    pub fn service(&self, name: &str) -> &ServiceProcess {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} is not part of this stack"))
    }

    /// A service of the stack, to kill or restart it.
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceProcess {
        self.services
            .get_mut(name)
            .unwrap_or_else(|| panic!("service {name} is not part of this stack"))
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceProcess> {
        self.services.values()
    }

    /// Where logs and address files live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that gives `service` its own NATS user and its
    /// identity for NATS's TLS (empty for a service without a user): for
    /// another instance started by a test.
    pub fn nats_env(&self, service: &str) -> Vec<(String, String)> {
        let events = format!("SHOP_{}__EVENTS__", service.to_uppercase());
        let tls_dir = Identities::dir_in(self.dir.path(), service);
        self.nats
            .credentials(service)
            .map(|(user, password)| {
                vec![
                    (format!("{events}NATS_USER"), user),
                    (format!("{events}NATS_PASSWORD"), password),
                    (format!("{events}TLS_DIR"), tls_dir.display().to_string()),
                ]
            })
            .unwrap_or_default()
    }

    /// Events settings of NATS's admin user, over TLS as the operator: for
    /// tests that look at streams or play the part of a service.
    pub fn admin_events(&self) -> anyhow::Result<shop_events::EventsSettings> {
        let (user, password) = self
            .nats
            .credentials(crate::nats::ADMIN)
            .ok_or_else(|| anyhow::anyhow!("the stack's NATS has no users"))?;
        let tls_dir = Identities::dir_in(self.dir.path(), "operator");
        Ok(serde_json::from_value(serde_json::json!({
            "nats_url": self.nats.url(),
            "nats_user": user,
            "nats_password": password,
            "tls_dir": tls_dir,
        }))?)
    }

    /// The flags file every service watches: rewrite it (atomically, as a
    /// ConfigMap update does) to change flags live.
    pub fn flags_file(&self) -> &Path {
        &self.flags_file
    }

    /// The token keys users signs with and the gateway trusts.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// grpcurl's flags to call the stack's services as its operator.
    pub fn operator_grpcurl_args(&self) -> Vec<String> {
        crate::identities::grpcurl_args(&Identities::dir_in(self.dir.path(), "operator"))
    }

    /// The stack's CA, to mint (or rotate) identities.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// The environment that gives `service` its identity (minted now if it
    /// has none yet): for another instance started by a test.
    pub fn tls_env(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let prefix = format!("SHOP_{}__SERVER__TLS__", service.to_uppercase());
        let dir = Identities::dir_in(self.dir.path(), service);
        if !dir.exists() {
            self.identities.mint(service)?;
        }
        let mut env = vec![
            (format!("{prefix}DIR"), dir.display().to_string()),
            // Tests rotate certificates: see it quickly.
            (format!("{prefix}RELOAD_INTERVAL"), "200ms".to_string()),
        ];
        if service == "gateway" {
            // The public port: end users have tokens, not certificates.
            env.push((
                format!("{prefix}CLIENT_CERTIFICATES"),
                "optional".to_string(),
            ));
        }
        Ok(env)
    }
}

/// What a service needs beyond the database and NATS: its keys, made up
/// fresh for each stack, and the addresses of the services it calls (which
/// must have been started before it).
fn service_env(
    name: &str,
    started: &BTreeMap<String, ServiceProcess>,
    keys: &TokenKeys,
) -> Vec<(String, String)> {
    match name {
        "users" => vec![(
            "SHOP_USERS__AUTH__SIGNING_KEY_FILE".to_string(),
            keys.signing_key_file.display().to_string(),
        )],
        "orders" => {
            let mut env = endpoints("orders", &["catalog"], started);
            env.push((
                "SHOP_ORDERS__PAYMENT_TOKENS__KEYS_DIR".to_string(),
                keys.payment_token_keys_dir.display().to_string(),
            ));
            env
        }
        "payments" => vec![(
            "SHOP_PAYMENTS__PAYMENT_TOKENS__KEYS_DIR".to_string(),
            keys.payment_token_keys_dir.display().to_string(),
        )],
        "gateway" => {
            let mut env = vec![
                (
                    "SHOP_GATEWAY__AUTH__PUBLIC_KEYS_DIR".to_string(),
                    keys.public_keys_dir.display().to_string(),
                ),
                // Tests rotate keys and deactivate users; see it at once.
                (
                    "SHOP_GATEWAY__AUTH__KEYS_REFRESH".to_string(),
                    "200ms".to_string(),
                ),
                // A developer's stack: the public port serves reflection,
                // so grpcurl reads the contract from it (off by default).
                (
                    "SHOP_GATEWAY__SERVER__REFLECTION".to_string(),
                    "true".to_string(),
                ),
            ];
            // The storefront at `/`, once `just web` has built it (the
            // browser suite, tests/storefront.rs, needs it; `just test`
            // builds it before the suites).
            let site = crate::tools::repo_root().join(STOREFRONT_DIR);
            if site.join("index.html").is_file() {
                env.push((
                    "SHOP_GATEWAY__HTTP__SITE_DIR".to_string(),
                    site.display().to_string(),
                ));
            }
            env.extend(endpoints(
                "gateway",
                &["users", "catalog", "inventory", "orders", "payments"],
                started,
            ));
            env
        }
        _ => Vec::new(),
    }
}

/// `SHOP_<CALLER>__UPSTREAMS__<UPSTREAM>__ENDPOINTS` for each upstream that
/// runs: every instance, for the mesh to balance over.
fn endpoints(
    caller: &str,
    upstreams: &[&str],
    started: &BTreeMap<String, ServiceProcess>,
) -> Vec<(String, String)> {
    upstreams
        .iter()
        .filter_map(|upstream| {
            let urls: Vec<String> = started
                .values()
                .filter(|p| p.service() == *upstream)
                .map(|p| format!("\"{}\"", p.url()))
                .collect();
            (!urls.is_empty()).then(|| {
                (
                    format!(
                        "SHOP_{}__UPSTREAMS__{}__ENDPOINTS",
                        caller.to_uppercase(),
                        upstream.to_uppercase()
                    ),
                    format!("[{}]", urls.join(", ")),
                )
            })
        })
        .collect()
}
