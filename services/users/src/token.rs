//! Password hashing (argon2id) and access tokens (HS256 JWT).

use crate::config::AuthSettings;
use anyhow::{Context as _, ensure};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use jsonwebtoken::{EncodingKey, Header};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use std::sync::{Arc, LazyLock};
use uuid::Uuid;

/// Hashes `password` with argon2id (default parameters: 19 MiB, 2 passes),
/// off the async executor.
pub(crate) async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
    .await?
}

/// A hash of a password nobody has, checked when the email is unknown so
/// that an unknown email costs as much time as a wrong password.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(Uuid::new_v4().as_bytes(), &salt)
        .expect("hashing a fixed-size input cannot fail")
        .to_string()
});

/// Whether `password` matches `hash` (a PHC string); `None` checks the decoy
/// and is always false.
pub(crate) async fn verify_password(
    password: String,
    hash: Option<String>,
) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let decoy = hash.is_none();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.clone());
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(matches && !decoy)
    })
    .await?
}

/// Issues signed access tokens.
#[derive(Clone)]
pub(crate) struct TokenIssuer {
    key: Arc<EncodingKey>,
    ttl: chrono::Duration,
    issuer: String,
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: String,
    email: &'a str,
    iss: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

impl TokenIssuer {
    pub(crate) fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let secret = settings.token_secret.expose_secret();
        ensure!(
            secret.len() >= 32,
            "auth.token_secret must be at least 32 bytes long"
        );
        let ttl = chrono::Duration::from_std(settings.token_ttl).context("auth.token_ttl")?;
        ensure!(
            ttl > chrono::Duration::zero(),
            "auth.token_ttl must be positive"
        );
        Ok(Self {
            key: Arc::new(EncodingKey::from_secret(secret.as_bytes())),
            ttl,
            issuer: settings.issuer.clone(),
        })
    }

    /// A token for `user_id`, and when it expires.
    pub(crate) fn issue(
        &self,
        user_id: Uuid,
        email: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            email,
            iss: &self.issuer,
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: Uuid::now_v7().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.key)?;
        Ok((token, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use secrecy::SecretString;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            token_secret: SecretString::from(secret.to_string()),
            token_ttl: std::time::Duration::from_secs(60),
            issuer: "test".into(),
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenIssuer::new(&settings("too short")).is_err());
    }

    #[test]
    fn tokens_are_signed_and_expire() {
        let secret = "k".repeat(32);
        let issuer = TokenIssuer::new(&settings(&secret)).unwrap();
        let id = Uuid::now_v7();
        let now = Utc::now();
        let (token, expires) = issuer.issue(id, "a@example.com", now).unwrap();
        assert_eq!((expires - now).num_seconds(), 60);
        let mut validation = Validation::default();
        validation.set_issuer(&["test"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], id.to_string());
        let wrong = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(b"another key that is long enough!!"),
            &validation,
        );
        assert!(wrong.is_err());
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }
}
