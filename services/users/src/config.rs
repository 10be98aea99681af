//! Settings of the users service.

use secrecy::SecretString;
use serde::Deserialize;
use shop_runtime::{DatabaseSettings, ServerSettings, Settings, TelemetrySettings};
use std::time::Duration;

/// Everything the users service reads at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[telemetry]`
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[events]`: UserRegistered is published through the outbox.
    pub events: shop_events::EventsSettings,
}

/// `[auth]`: access tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HMAC key for HS256 tokens; at least 32 bytes; never logged.
    pub token_secret: SecretString,
    /// How long an access token is valid.
    #[serde(with = "humantime_serde", default = "default_ttl")]
    pub token_ttl: Duration,
    /// The `iss` claim of issued tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_issuer() -> String {
    "shop-users".to_string()
}

impl Settings for Config {
    const DEFAULTS: &'static str = r#"
        [server]
        listen = "127.0.0.1:7101"
    "#;
    const ENV_ALIASES: &'static [(&'static str, &'static str)] = &[
        ("DATABASE_URL", "database.url"),
        ("NATS_URL", "events.nats_url"),
    ];

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}
