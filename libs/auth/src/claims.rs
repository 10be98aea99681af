//! The claims of an access token.

use serde::{Deserialize, Serialize};

/// What an access token says, and nothing more: who (`sub`), issued by
/// whom for whom (`iss`, `aud`), valid when (`nbf`..`exp`, issued `iat`),
/// and a unique id (`jti`) for logs and revocation lists. No email or other
/// personal data: tokens end up in logs and browser storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id (UUID).
    pub sub: String,
    /// The issuer (users' `auth.issuer`).
    pub iss: String,
    /// The audience (the gateway's `auth.audience`).
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not valid before, seconds since the epoch.
    pub nbf: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Unique token id (UUIDv7).
    pub jti: String,
}
