//! Verifying access tokens (the gateway).
//!
//! The checks, in order: the header parses and names `alg: EdDSA` (the
//! only algorithm accepted: `none`, HS256 signed with the public key as an
//! HMAC secret and any other algorithm are refused before a key is looked
//! at); its `kid` is one of the trusted keys; the signature verifies with
//! that key; `iss` and `aud` are the configured ones; `exp`, `nbf` and
//! `iat` are present and `now` is within `nbf - leeway .. exp + leeway`;
//! `sub` is a UUID and `jti` is present.
//!
//! Every failure is the same [`Rejected`] to the caller: which check failed
//! is logged at debug level, never answered, so a forger learns nothing.

use crate::claims::Claims;
use crate::keys::{KeySet, SharedKeys};
use jsonwebtoken::{Algorithm, Validation};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// A token that is not accepted. Deliberately says nothing more to the
/// caller; [`Rejected::reason`] is for logs.
#[derive(Debug, thiserror::Error)]
#[error("invalid access token")]
pub struct Rejected(&'static str);

impl Rejected {
    /// Which check failed, for debug logs only.
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

/// A verified token's subject and claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user the token was issued to.
    pub user_id: Uuid,
    /// All claims, for audit logs (`jti`).
    pub claims: Claims,
}

/// Verifies tokens against a set of trusted public keys.
#[derive(Clone)]
pub struct Verifier {
    keys: SharedKeys,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier trusting `keys` (shared with a [`crate::KeyDir`]
    /// watcher, which may replace them), for tokens issued by `issuer` to
    /// `audience`, tolerating `leeway` of clock skew.
    pub fn new(keys: SharedKeys, issuer: &str, audience: &str, leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Self {
            keys,
            validation: Arc::new(validation),
        }
    }

    /// A verifier over a fixed set of keys (tests, tools).
    pub fn with_keys(keys: KeySet, issuer: &str, audience: &str, leeway: Duration) -> Self {
        Self::new(
            Arc::new(RwLock::new(Arc::new(keys))),
            issuer,
            audience,
            leeway,
        )
    }

    /// The subject of `token` if every check passes.
    pub fn verify(&self, token: &str) -> Result<Verified, Rejected> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Rejected("malformed header"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(Rejected("algorithm is not EdDSA"));
        }
        let kid = header.kid.ok_or(Rejected("no kid"))?;
        let key = {
            let keys = self.keys.read().expect("not poisoned");
            keys.get(&kid).cloned().ok_or(Rejected("unknown kid"))?
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Rejected(match e.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "missing claim",
                _ => "undecodable",
            })
        })?;
        let claims = data.claims;
        if claims.jti.is_empty() {
            return Err(Rejected("no jti"));
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| Rejected("sub is not a UUID"))?;
        Ok(Verified { user_id, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;
    use crate::signer::Signer;
    use base64::Engine as _;
    use chrono::Utc;
    use jsonwebtoken::{DecodingKey, EncodingKey, Header};

    const ISS: &str = "shop-users";
    const AUD: &str = "shop-gateway";

    fn keys(pairs: &[(&str, &KeyPair)]) -> KeySet {
        pairs
            .iter()
            .map(|(kid, p)| {
                (
                    kid.to_string(),
                    DecodingKey::from_ed_pem(p.public_pem.as_bytes()).unwrap(),
                )
            })
            .collect()
    }

    fn signer(pair: &KeyPair, kid: &str) -> Signer {
        Signer::from_pem(
            pair.private_pem.as_bytes(),
            kid,
            ISS,
            AUD,
            Duration::from_secs(900),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_token_verifies_with_its_kid_and_carries_no_personal_data() {
        let pair = KeyPair::generate();
        let verifier =
            Verifier::with_keys(keys(&[("k1", &pair)]), ISS, AUD, Duration::from_secs(30));
        let user = Uuid::now_v7();
        let (token, _) = signer(&pair, "k1").issue(user, Utc::now()).unwrap();
        let verified = verifier.verify(&token).unwrap();
        assert_eq!(verified.user_id, user);
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["aud", "exp", "iat", "iss", "jti", "nbf", "sub"]);
    }

    #[test]
    fn rotation_accepts_both_keys_then_only_the_new_one() {
        let old = KeyPair::generate();
        let new = KeyPair::generate();
        let user = Uuid::now_v7();
        let (old_token, _) = signer(&old, "k1").issue(user, Utc::now()).unwrap();
        let (new_token, _) = signer(&new, "k2").issue(user, Utc::now()).unwrap();
        let shared: SharedKeys = Arc::new(RwLock::new(Arc::new(keys(&[("k1", &old)]))));
        let verifier = Verifier::new(shared.clone(), ISS, AUD, Duration::from_secs(30));
        assert!(verifier.verify(&old_token).is_ok());
        assert!(verifier.verify(&new_token).is_err());
        *shared.write().unwrap() = Arc::new(keys(&[("k1", &old), ("k2", &new)]));
        assert!(verifier.verify(&old_token).is_ok());
        assert!(verifier.verify(&new_token).is_ok());
        *shared.write().unwrap() = Arc::new(keys(&[("k2", &new)]));
        assert_eq!(
            verifier.verify(&old_token).unwrap_err().reason(),
            "unknown kid"
        );
        assert!(verifier.verify(&new_token).is_ok());
    }

    #[test]
    fn a_key_confusion_token_and_alg_none_are_refused_before_any_key() {
        let pair = KeyPair::generate();
        let verifier =
            Verifier::with_keys(keys(&[("k1", &pair)]), ISS, AUD, Duration::from_secs(30));
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7().to_string(),
            iss: ISS.into(),
            aud: AUD.into(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: "x".into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(pair.public_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&hs).unwrap_err().reason(),
            "algorithm is not EdDSA"
        );
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        assert!(verifier.verify(&none).is_err());
        assert!(verifier.verify("not a token").is_err());
        assert_eq!(Rejected("x").to_string(), "invalid access token");
    }
}
