//! Settings of the users service.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

shop_runtime::service_config! {
    /// Everything the users service reads at start.
    pub struct Config {
        database;
        /// `[auth]`
        pub auth: AuthSettings,
        /// `[events]`: UserRegistered is published through the outbox.
        pub events: shop_events::EventsSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7101"
        # Who may call what (mTLS identities; see shop_mesh::authz): the
        # operator everything, the services only what they need.
        [server.mesh.authorization]
        "shop.users.v1.UserService" = ["operator"]
        "shop.users.v1.UserService/CreateUser" = ["gateway", "operator"]
        "shop.users.v1.UserService/GetUser" = ["gateway", "operator"]
        "shop.users.v1.UserService/Authenticate" = ["gateway", "operator"]
        # The gateway's self-service account calls, always for the caller.
        "shop.users.v1.UserService/UpdateUser" = ["gateway", "operator"]
        "shop.users.v1.UserService/DeactivateUser" = ["gateway", "operator"]
    "#;
    aliases = shop_runtime::config::DATABASE_AND_NATS_ALIASES;
}

/// `[auth]`: access tokens and password hashing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The Ed25519 private key that signs access tokens, a PKCS#8 PEM file
    /// (`openssl genpkey -algorithm ed25519`); never logged. Verifiers get
    /// only its public half.
    pub signing_key_file: PathBuf,
    /// The `kid` of issued tokens: the name verifiers know the public key
    /// by. Defaults to the key file's name without `.pem` (`k1.pem` is
    /// `k1`), the name the gateway's key directory gives it.
    #[serde(default)]
    pub key_id: Option<String>,
    /// How long an access token is valid.
    #[serde(with = "humantime_serde", default = "default_ttl")]
    pub token_ttl: Duration,
    /// The `iss` claim of issued tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The `aud` claim of issued tokens: who they are for.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Password hashes computed at once (argon2id, 19 MiB each); more wait.
    /// Defaults to the number of CPUs.
    #[serde(default)]
    pub hash_concurrency: Option<usize>,
    /// Hashes queued beyond those running; more are refused at once with
    /// RESOURCE_EXHAUSTED and a retry time. Defaults to eight per running
    /// hash (a queue of a few hundred milliseconds).
    #[serde(default)]
    pub hash_queue: Option<usize>,
}

impl AuthSettings {
    /// The key id: `key_id`, else the key file's stem.
    pub fn kid(&self) -> String {
        self.key_id.clone().unwrap_or_else(|| {
            self.signing_key_file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }

    /// How many hashes may run at once.
    pub fn hash_permits(&self) -> usize {
        self.hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
            .max(1)
    }

    /// How many hashes may wait for a permit.
    pub fn hash_waiting(&self) -> usize {
        self.hash_queue.unwrap_or(8 * self.hash_permits())
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_issuer() -> String {
    "shop-users".to_string()
}

fn default_audience() -> String {
    "shop-gateway".to_string()
}
