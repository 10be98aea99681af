//! Typed settings, layered: serde defaults, then a TOML file, then the
//! environment. This module is the only user of figment in the workspace.
//!
//! Environment keys are `SHOP_<SERVICE>__<SECTION>__<KEY>` (double
//! underscores separate levels: `SHOP_USERS__SERVER__LISTEN`), plus the
//! conventional `DATABASE_URL` for `database.url`. `RUST_LOG` and `OTEL_*`
//! are read by [`crate::telemetry`] and the OpenTelemetry SDK themselves.
//!
//! Every settings struct denies unknown fields, so a typo in a key is a
//! start-up error that names the key, not a silently ignored setting.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A service's whole configuration: the shared sections plus its own.
pub trait Settings: DeserializeOwned + Send + Sync + 'static {
    /// The lowest layer, as TOML: the service's own defaults (its port...).
    const DEFAULTS: &'static str;
    /// Conventional environment variables and the keys they set.
    const ENV_ALIASES: &'static [(&'static str, &'static str)] =
        &[("DATABASE_URL", "database.url")];
    /// Where and how to serve.
    fn server(&self) -> &ServerSettings;
    /// Logging and tracing.
    fn telemetry(&self) -> &TelemetrySettings;
}

/// The environment aliases of a service with a database and NATS:
/// `DATABASE_URL` for `database.url`, `NATS_URL` for `events.nats_url`.
pub const DATABASE_AND_NATS_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("NATS_URL", "events.nats_url"),
];

/// Declares a service's `Config`, one TOML document in one shape for every
/// service: the sections all services share (`[server]`, `[telemetry]`,
/// and `[database]` for a service that starts its body with `database;`),
/// then the service's own sections, unknown keys refused at every level;
/// and its [`Settings`] (its defaults, and its environment aliases if they
/// are not just `DATABASE_URL`).
///
/// ```ignore
/// shop_runtime::service_config! {
///     /// Everything the example service reads at start.
///     pub struct Config {
///         database;
///         /// `[greeting]`
///         #[serde(default)]
///         pub greeting: String,
///     }
///     defaults = r#"
///         [server]
///         listen = "127.0.0.1:7199"
///     "#;
/// }
/// ```
#[macro_export]
macro_rules! service_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { database; $($own:tt)* }
        $($rest:tt)*
    ) => {
        $crate::service_config! {
            @emit $(#[$meta])* $name {
                /// `[database]`: the service's own Postgres database.
                pub database: $crate::DatabaseSettings,
                $($own)*
            }
            $($rest)*
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($own:tt)* }
        $($rest:tt)*
    ) => {
        $crate::service_config! { @emit $(#[$meta])* $name { $($own)* } $($rest)* }
    };
    (
        @emit $(#[$meta:meta])* $name:ident { $($fields:tt)* }
        defaults = $defaults:literal;
        $(aliases = $aliases:expr;)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// `[server]`
            pub server: $crate::ServerSettings,
            /// `[telemetry]`
            #[serde(default)]
            pub telemetry: $crate::TelemetrySettings,
            $($fields)*
        }

        impl $crate::Settings for $name {
            const DEFAULTS: &'static str = $defaults;
            $(const ENV_ALIASES: &'static [(&'static str, &'static str)] = $aliases;)?

            fn server(&self) -> &$crate::ServerSettings {
                &self.server
            }

            fn telemetry(&self) -> &$crate::TelemetrySettings {
                &self.telemetry
            }
        }
    };
}

/// `[server]`: the listening socket and the shutdown behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// After binding, the actual address is written to this file (for
    /// supervisors and tests that bind port 0).
    #[serde(default)]
    pub addr_file: Option<PathBuf>,
    /// How long in-flight calls may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde", default = "default_grace")]
    pub shutdown_grace: Duration,
    /// `[server.mesh]`: the mesh's server side (authorization,
    /// concurrency limit and shedding, fault injection); reloaded live.
    #[serde(default)]
    pub mesh: shop_mesh::policy::ServerPolicy,
    /// `[server.tls]`: the workload identity. With it the port is mutual
    /// TLS, callers are authorized by identity, and every upstream is
    /// called over mTLS; without it everything is plaintext and nothing is
    /// authorized (a development server, which says so at start).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// A second port, plaintext, serving `grpc.health.v1.Health` and
    /// nothing else (Kubernetes gRPC probes do not speak TLS).
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// After binding, the health port's actual address is written here.
    #[serde(default)]
    pub health_addr_file: Option<PathBuf>,
    /// `[server.flags]`: the feature-flag files the service evaluates
    /// (flagd definitions), reloaded live; see `shop_flags`.
    #[serde(default)]
    pub flags: shop_flags::FlagSettings,
    /// `[server.connections]`: what one client, and all of them, may hold
    /// of the port (see [`crate::listener::ConnectionLimits`]).
    #[serde(default)]
    pub connections: crate::listener::ConnectionLimits,
    /// Whether the port serves reflection (v1 and v1alpha). On by default;
    /// the gateway's public port turns it off unless configured.
    #[serde(default = "default_reflection")]
    pub reflection: bool,
}

fn default_reflection() -> bool {
    true
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// `[server.tls]`: where the workload's identity is, and how it is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// A directory in the layout of a cert-manager Secret: `tls.crt` (the
    /// chain, its leaf carrying the SPIFFE ID), `tls.key`, `ca.crt` (the
    /// trust bundle).
    pub dir: PathBuf,
    /// `required` (service ports) or `optional` (the gateway's public
    /// port: end users have tokens, not certificates).
    #[serde(default)]
    pub client_certificates: shop_identity::ClientAuth,
    /// How often the directory is checked for a rotated identity.
    #[serde(with = "humantime_serde", default = "default_reload_interval")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[database]`: the service's own Postgres database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:pass@host:port/db`; never logged.
    pub url: SecretString,
    /// Connections for the calls the service serves.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections for the outbox relay, event consumers and sweepers, a
    /// separate pool: a backlog of events never takes the API's.
    #[serde(default = "default_background_connections")]
    pub background_connections: u32,
    /// How long a call waits for a connection: then `RESOURCE_EXHAUSTED`
    /// while the database answers its probe, `UNAVAILABLE` when it does
    /// not. A call's own deadline ends the wait sooner.
    #[serde(with = "humantime_serde", default = "default_acquire_timeout")]
    pub acquire_timeout: Duration,
    /// How long start-up keeps trying to reach the database.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How often the health probe checks the database.
    #[serde(with = "humantime_serde", default = "default_probe_interval")]
    pub probe_interval: Duration,
}

fn default_max_connections() -> u32 {
    10
}
fn default_background_connections() -> u32 {
    6
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_interval() -> Duration {
    Duration::from_millis(500)
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` for people, `json` for log collectors.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Filter used when `RUST_LOG` is unset (`info`, `users=debug,info`...).
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            log_level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one event per line.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The configuration file named on the command line (`--config <path>` or
/// `--config=<path>`), else by `SHOP_CONFIG`.
pub fn file_from_args_or_env(args: impl IntoIterator<Item = String>) -> Option<PathBuf> {
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("SHOP_CONFIG").map(PathBuf::from)
}

/// The figment a service's settings are extracted from; exposed so tests can
/// layer their own values on top.
pub fn figment(
    service: &str,
    defaults: &str,
    aliases: &[(&'static str, &'static str)],
    file: Option<&Path>,
) -> Figment {
    let mut figment = Figment::new().merge(Toml::string(defaults));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let prefix = format!("SHOP_{}__", service.to_uppercase());
    for (var, key) in aliases {
        let key = *key;
        figment = figment.merge(Env::raw().only(&[var]).map(move |_| key.into()));
    }
    figment.merge(Env::prefixed(&prefix).split("__"))
}

/// Loads a service's settings; the error names the offending key and where
/// its value came from.
pub fn load<C: Settings>(service: &str, file: Option<&Path>) -> Result<C, ConfigError> {
    load_inner(service, C::DEFAULTS, C::ENV_ALIASES, file)
}

/// [`load`] for any settings type, with explicit defaults.
pub fn load_with_defaults<C: DeserializeOwned>(
    service: &str,
    defaults: &str,
    file: Option<&Path>,
) -> Result<C, ConfigError> {
    load_inner(service, defaults, &[("DATABASE_URL", "database.url")], file)
}

fn load_inner<C: DeserializeOwned>(
    service: &str,
    defaults: &str,
    aliases: &[(&'static str, &'static str)],
    file: Option<&Path>,
) -> Result<C, ConfigError> {
    if let Some(file) = file
        && !file.exists()
    {
        return Err(ConfigError(format!(
            "configuration file {} does not exist",
            file.display()
        )));
    }
    figment(service, defaults, aliases, file)
        .extract()
        .map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError(messages.join("; "))
        })
}

/// Where a service's configuration comes from, to read it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The service (`orders`): the environment prefix.
    pub service: &'static str,
    /// Its built-in defaults.
    pub defaults: &'static str,
    /// Its conventional environment variables.
    pub aliases: &'static [(&'static str, &'static str)],
    /// The file, watched for changes.
    pub file: PathBuf,
}

/// The parts of a configuration the mesh reloads live: `[server.mesh]`
/// and `[upstreams.*]`. Other keys are ignored here (they were checked at
/// start and are not reloaded).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MeshView {
    /// `[server]`, of which only `mesh` is read.
    #[serde(default)]
    pub server: MeshServerView,
    /// `[upstreams.<name>]`
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, shop_mesh::policy::UpstreamPolicy>,
}

/// `[server.mesh]` alone.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MeshServerView {
    /// `[server.mesh]`
    #[serde(default)]
    pub mesh: shop_mesh::policy::ServerPolicy,
}

/// Reads the live-reloadable mesh policies from the same layers as
/// [`load`].
pub fn load_mesh_view(
    service: &str,
    defaults: &str,
    aliases: &[(&'static str, &'static str)],
    file: Option<&Path>,
) -> Result<MeshView, ConfigError> {
    figment(service, defaults, aliases, file)
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}

/// Settings from `toml` alone on top of the service's defaults, ignoring
/// files and the environment: for tests that build a service in process.
pub fn from_toml<C: Settings>(toml: &str) -> Result<C, ConfigError> {
    Figment::new()
        .merge(Toml::string(C::DEFAULTS))
        .merge(Toml::string(toml))
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}

/// A configuration that cannot be used, with a message naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[cfg(test)]
// figment::Jail's closures return figment's large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        server: ServerSettings,
        database: DatabaseSettings,
        #[serde(default)]
        telemetry: TelemetrySettings,
    }

    #[test]
    fn file_then_environment_with_typed_durations() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "svc.toml",
                r#"
                [server]
                listen = "127.0.0.1:7000"
                shutdown_grace = "1500ms"
                [database]
                url = "postgres://file/db"
                "#,
            )?;
            jail.set_env("SHOP_SVC__SERVER__LISTEN", "127.0.0.1:7001");
            jail.set_env("DATABASE_URL", "postgres://env/db");
            let s: Sample = load_with_defaults(
                "svc",
                "[telemetry]\nlog_level = \"debug\"",
                Some(Path::new("svc.toml")),
            )
            .unwrap();
            assert_eq!(s.telemetry.log_level, "debug");
            assert_eq!(s.server.listen.port(), 7001);
            assert_eq!(s.server.shutdown_grace, Duration::from_millis(1500));
            use secrecy::ExposeSecret;
            assert_eq!(s.database.url.expose_secret(), "postgres://env/db");
            assert_eq!(s.database.acquire_timeout, Duration::from_secs(2));
            assert_eq!(s.telemetry.log_format, LogFormat::Pretty);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "svc.toml",
                "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n[database]\nurl = \"x\"\n",
            )?;
            let err = load_with_defaults::<Sample>("svc", "", Some(Path::new("svc.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_backlog"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_is_refused_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("SHOP_SVC__SERVER__LISTEN", "127.0.0.1:0");
            jail.set_env("SHOP_SVC__SERVER__SHUTDOWN_GRACE", "ten seconds");
            jail.set_env("SHOP_SVC__DATABASE__URL", "x");
            let err = load_with_defaults::<Sample>("svc", "", None)
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains("server.shutdown_grace"),
                "{err}"
            );
            assert!(err.contains("ten seconds"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load_with_defaults::<Sample>("svc", "", Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn config_flag_wins_over_environment() {
        let args = ["bin", "--config", "a.toml"].map(String::from);
        assert_eq!(file_from_args_or_env(args), Some(PathBuf::from("a.toml")));
        let args = ["bin", "--config=b.toml"].map(String::from);
        assert_eq!(file_from_args_or_env(args), Some(PathBuf::from("b.toml")));
    }
}
