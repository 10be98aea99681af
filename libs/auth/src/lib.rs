//! End-user access tokens, in one place: users signs them, the gateway
//! verifies them, and nobody else needs to know how.
//!
//! Tokens are JWTs signed with Ed25519 (`alg: EdDSA`). The signer holds a
//! private key; verifiers hold only public keys, so no verifier can mint a
//! token. Every token names its key (`kid`), and a verifier accepts a
//! *set* of public keys: a key rotates by adding the new public key to the
//! verifiers, switching the signer, and removing the old public key once
//! the longest-lived token signed with it has expired.
//!
//! - [`claims`]: what a token says (`sub`, `iss`, `aud`, `exp`, `nbf`,
//!   `iat`, `jti`; nothing personal).
//! - [`signer`]: [`signer::Signer`], used by users at log-in.
//! - [`verifier`]: [`verifier::Verifier`] with the algorithm pinned,
//!   `iss`/`aud` required and a small leeway; one opaque rejection.
//! - [`keys`]: Ed25519 key pairs in PEM (made fresh by the testkit and
//!   `just up`), and [`keys::KeyDir`], a directory of public keys named
//!   `<kid>.pem`, re-read while running.

pub mod claims;
pub mod keys;
pub mod signer;
pub mod verifier;

pub use claims::Claims;
pub use keys::{KeyDir, KeyPair};
pub use signer::Signer;
pub use verifier::{Rejected, Verifier};
