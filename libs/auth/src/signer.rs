//! Signing access tokens (users).

use crate::claims::Claims;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Why a signer cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The private key is not an Ed25519 key in PKCS#8 PEM.
    #[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// A setting is out of range.
    #[error("{0}")]
    Setting(&'static str),
}

/// Issues tokens signed with one private key, named `kid`.
#[derive(Clone)]
pub struct Signer {
    key: Arc<EncodingKey>,
    kid: String,
    issuer: String,
    audience: String,
    ttl: chrono::Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from an Ed25519 private key in PKCS#8 PEM (`openssl genpkey
    /// -algorithm ed25519` writes one), its key id, and what every token
    /// says about its issuer, audience and lifetime.
    pub fn from_pem(
        private_pem: &[u8],
        kid: &str,
        issuer: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, SignerError> {
        if kid.is_empty() {
            return Err(SignerError::Setting("auth.key_id must not be empty"));
        }
        let ttl = chrono::Duration::from_std(ttl)
            .ok()
            .filter(|t| *t > chrono::Duration::zero())
            .ok_or(SignerError::Setting(
                "auth.token_ttl must be positive and finite",
            ))?;
        let key = EncodingKey::from_ed_pem(private_pem).map_err(SignerError::Key)?;
        // Sign once now, so a PEM of the wrong key type fails at start and
        // not at the first log-in.
        let signer = Self {
            key: Arc::new(key),
            kid: kid.to_string(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl,
        };
        signer
            .issue(Uuid::nil(), Utc::now())
            .map_err(SignerError::Key)?;
        Ok(signer)
    }

    /// The key id tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token for `user_id`, valid from `now` for the configured lifetime,
    /// and when it expires.
    pub fn issue(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), jsonwebtoken::errors::Error> {
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: expires.timestamp(),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: Uuid::now_v7().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok((token, expires))
    }
}
