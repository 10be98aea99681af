//! Settings of the gateway.

use serde::Deserialize;
use shop_mesh::policy::UpstreamPolicy;
use std::path::PathBuf;
use std::time::Duration;

shop_runtime::service_config! {
    /// Everything the gateway reads at start. It is stateless: no database,
    /// no NATS.
    pub struct Config {
        /// `[auth]`: how end users' tokens are checked.
        pub auth: AuthSettings,
        /// `[limits]`: abuse limits on the public, unauthenticated calls.
        pub limits: LimitSettings,
        /// `[details]`: how GetOrderDetails shares the caller's deadline.
        #[serde(default)]
        pub details: DetailsSettings,
        /// `[upstreams.*]`: the services behind the gateway, through the mesh.
        pub upstreams: Upstreams,
        /// `[http]`: REST/JSON and gRPC-Web on the same port.
        #[serde(default)]
        pub http: HttpSettings,
        /// `[watch]`: how WatchOrder follows orders.
        #[serde(default)]
        pub watch: WatchSettings,
    }
    defaults = r#"
        [server]
        listen = "127.0.0.1:7100"
        # The public port does not describe itself unless configured
        # (`server.reflection = true`, as the local stack does).
        reflection = false
        # End users: anyone may call the public API (tokens authenticate
        # them, not certificates) and, where it is on, read its contract by
        # reflection; MeshAdmin stays operator-only.
        [server.mesh.authorization]
        "shop.gateway.v1.ShopGatewayService" = ["public"]
        "grpc.reflection.v1.ServerReflection" = ["public"]
        "grpc.reflection.v1alpha.ServerReflection" = ["public"]
        # Anonymous calls carry an email and a password: a few hundred bytes.
        [server.mesh.request_limits.methods]
        LogIn = 4096
        SignUp = 4096

        [limits.login]
        per_email = { burst = 5, refill = "12s" }
        per_peer = { burst = 50, refill = "200ms" }
        [limits.signup]
        per_email = { burst = 3, refill = "1m" }
        per_peer = { burst = 10, refill = "6s" }

        # The mesh's own defaults apply to the rest (3 attempts on UNAVAILABLE
        # for the methods the contracts mark safe, jittered backoff, a 20%
        # budget, ejection after 5 consecutive failures).
        [upstreams.users]
        endpoints = ["http://127.0.0.1:7101"]
        timeout = "2s"
        retry = { per_try_timeout = "1s" }
        [upstreams.catalog]
        endpoints = ["http://127.0.0.1:7102"]
        timeout = "2s"
        retry = { per_try_timeout = "500ms" }
        [upstreams.inventory]
        endpoints = ["http://127.0.0.1:7103"]
        timeout = "1s"
        retry = { per_try_timeout = "500ms" }
        [upstreams.orders]
        endpoints = ["http://127.0.0.1:7104"]
        timeout = "3s"
        retry = { per_try_timeout = "1s" }
        [upstreams.payments]
        endpoints = ["http://127.0.0.1:7105"]
        timeout = "1s"
        retry = { per_try_timeout = "500ms" }
    "#;
    // Stateless: `DATABASE_URL` and `NATS_URL` are not its business.
    aliases = &[];
}

/// `[http]`: the HTTP face of the public port. REST/JSON by the
/// contract's `google.api.http` rules and gRPC-Web are always served next
/// to gRPC; these are its bounds, and the storefront's files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest JSON body read; a larger one is refused with 413 before
    /// any parsing (the mesh's per-method request limits then apply to the
    /// call it becomes, as to a gRPC client's).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// The storefront's built files (`just web` writes them to
    /// `web/dist/storefront`), served at `/` with a same-origin
    /// Content-Security-Policy; none when unset. Read once at start.
    #[serde(default)]
    pub site_dir: Option<std::path::PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_request_bytes: default_max_request_bytes(),
            site_dir: None,
        }
    }
}

fn default_max_request_bytes() -> usize {
    64 * 1024
}

/// `[watch]`: WatchOrder streams. Each one asks orders for its order
/// every `interval` (one GetOrder through the mesh) until the order
/// settles or `longest` has passed; at most `max_concurrent` run at once,
/// beyond which a watch is refused with RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSettings {
    #[serde(default = "default_watch_max_concurrent")]
    pub max_concurrent: usize,
    #[serde(with = "humantime_serde", default = "default_watch_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_watch_longest")]
    pub longest: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            max_concurrent: default_watch_max_concurrent(),
            interval: default_watch_interval(),
            longest: default_watch_longest(),
        }
    }
}

fn default_watch_max_concurrent() -> usize {
    1000
}

fn default_watch_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_watch_longest() -> Duration {
    Duration::from_secs(60)
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Directory of trusted public keys, one `<kid>.pem` file each (a
    /// mounted Kubernetes Secret has this layout). Re-read every
    /// `keys_refresh`: adding or removing a file rotates keys without a
    /// restart.
    pub public_keys_dir: PathBuf,
    /// How often `public_keys_dir` is re-read.
    #[serde(with = "humantime_serde", default = "default_keys_refresh")]
    pub keys_refresh: Duration,
    /// The only `iss` accepted.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The only `aud` accepted: this gateway.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde", default = "default_leeway")]
    pub leeway: Duration,
    /// How long a token's subject, once found active in users, is trusted
    /// without asking again; a deactivated user's tokens stop working
    /// within this time. `0s` asks users on every call.
    #[serde(with = "humantime_serde", default = "default_subject_cache_ttl")]
    pub subject_cache_ttl: Duration,
}

fn default_keys_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_issuer() -> String {
    "shop-users".into()
}
fn default_audience() -> String {
    "shop-gateway".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_subject_cache_ttl() -> Duration {
    Duration::from_secs(10)
}

/// `[limits]`: token buckets per email and per peer address. Defaults
/// (in [`Config::DEFAULTS`], so one key can be changed alone): log-in 5 per
/// email then one every 12 s, 50 per address then one every 200 ms;
/// sign-up 3 per email then one a minute, 10 per address then one every
/// 6 s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// `[limits.login]`
    pub login: CallLimits,
    /// `[limits.signup]`
    pub signup: CallLimits,
    /// Buckets one table (emails, or addresses, of one call) holds at most;
    /// beyond, idle buckets are dropped and, if none is idle, new callers
    /// are refused until some are (memory stays bounded under a flood of
    /// made-up emails or addresses).
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

fn default_max_tracked() -> usize {
    50_000
}

/// The buckets of one call: both must have a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// One bucket per email address (normalised: trimmed, lower case).
    pub per_email: Bucket,
    /// One bucket per peer address (the TCP peer's IPv4 address or IPv6
    /// /64; forwarded-for headers are not trusted), checked after the email.
    pub per_peer: Bucket,
}

/// A token bucket: `burst` calls at once, then one more every `refill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Calls allowed at once (the bucket's size); at least 1.
    pub burst: u32,
    /// Time for one token to come back; more than zero.
    #[serde(with = "humantime_serde")]
    pub refill: Duration,
}

/// `[details]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailsSettings {
    /// The share of the caller's remaining deadline (after the order is
    /// read) each optional part may take; the rest is kept to answer.
    #[serde(default = "default_part_share")]
    pub part_share: f64,
    /// The time each optional part may take when the caller set no
    /// deadline.
    #[serde(with = "humantime_serde", default = "default_part_timeout")]
    pub part_timeout: Duration,
}

impl Default for DetailsSettings {
    fn default() -> Self {
        Self {
            part_share: default_part_share(),
            part_timeout: default_part_timeout(),
        }
    }
}

fn default_part_share() -> f64 {
    0.8
}
fn default_part_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `[upstreams]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    /// `[upstreams.users]`: sign-up, log-in, token subjects, accounts.
    pub users: UpstreamPolicy,
    /// `[upstreams.catalog]`: products.
    pub catalog: UpstreamPolicy,
    /// `[upstreams.inventory]`: availability.
    pub inventory: UpstreamPolicy,
    /// `[upstreams.orders]`: orders.
    pub orders: UpstreamPolicy,
    /// `[upstreams.payments]`: an order's payments.
    pub payments: UpstreamPolicy,
}

impl Config {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let d = &self.details;
        anyhow::ensure!(
            d.part_share > 0.0 && d.part_share < 1.0,
            "details.part_share must be between 0 and 1 (exclusive), got {}",
            d.part_share
        );
        anyhow::ensure!(
            self.limits.max_tracked >= 1,
            "limits.max_tracked must be at least 1"
        );
        let w = &self.watch;
        anyhow::ensure!(
            w.max_concurrent >= 1 && !w.interval.is_zero() && w.longest >= w.interval,
            "watch: max_concurrent must be at least 1, interval more than 0s and longest at least interval"
        );
        for (name, limits) in [
            ("login", &self.limits.login),
            ("signup", &self.limits.signup),
        ] {
            for (which, bucket) in [
                ("per_email", &limits.per_email),
                ("per_peer", &limits.per_peer),
            ] {
                anyhow::ensure!(
                    bucket.burst >= 1 && !bucket.refill.is_zero(),
                    "limits.{name}.{which}: burst must be at least 1 and refill more than 0s"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &str = "[auth]\npublic_keys_dir = \"/keys\"\n";

    #[test]
    fn the_defaults_make_a_valid_config() {
        let config: Config = shop_runtime::config::from_toml(REQUIRED).unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits.login.per_email.burst, 5);
        assert_eq!(config.upstreams.orders.timeout, Duration::from_secs(3));
        assert_eq!(config.auth.leeway, Duration::from_secs(30));
    }

    #[test]
    fn one_bucket_key_can_change_alone_and_nonsense_is_refused() {
        let config: Config = shop_runtime::config::from_toml(&format!(
            "{REQUIRED}[limits.login.per_email]\nburst = 100\n"
        ))
        .unwrap();
        assert_eq!(config.limits.login.per_email.burst, 100);
        assert_eq!(
            config.limits.login.per_email.refill,
            Duration::from_secs(12)
        );

        let config: Config = shop_runtime::config::from_toml(&format!(
            "{REQUIRED}[limits.signup.per_peer]\nburst = 0\n[details]\npart_share = 1.5\n"
        ))
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("details.part_share"), "{err}");
        let config: Config = shop_runtime::config::from_toml(&format!(
            "{REQUIRED}[limits.signup.per_peer]\nburst = 0\n"
        ))
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("limits.signup.per_peer"), "{err}");
    }
}
