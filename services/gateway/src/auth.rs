//! Who is calling: the bearer token of an authenticated call, verified
//! (`shop_auth::Verifier`: EdDSA only, trusted `kid`, `iss`, `aud`, time
//! window), and its subject checked against users: an account that does
//! not exist or was deactivated is not a caller.
//!
//! Every failure is one `UNAUTHENTICATED` with a `www-authenticate`
//! header in the RFC 6750 form, whichever check failed (logged at debug
//! level with the token's `jti` where it has one).

use shop_auth::Verifier;
use shop_mesh::client::MeshChannel;
use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use shop_proto::shop::users::v1::{GetUserRequest, UserStatus};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};
use uuid::Uuid;

/// The caller of an authenticated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The token's subject, an active user.
    pub(crate) user_id: Uuid,
}

/// Subjects remembered as active; beyond this many the memory is cleared.
const SUBJECT_CACHE_MAX: usize = 100_000;

/// Authenticates calls.
pub(crate) struct Authenticator {
    verifier: Verifier,
    users: UserServiceClient<MeshChannel>,
    /// Subjects found active, and until when that is trusted.
    active: Mutex<HashMap<Uuid, Instant>>,
    ttl: Duration,
}

/// The answer to a call without a token.
pub(crate) fn missing_token() -> Status {
    unauthenticated(
        "this call needs an access token: metadata \"authorization: Bearer <token>\" from LogIn",
        "Bearer realm=\"shop\"",
    )
}

/// The answer to a call with a token that is not accepted, for any reason.
pub(crate) fn invalid_token() -> Status {
    unauthenticated(
        "invalid access token",
        "Bearer realm=\"shop\", error=\"invalid_token\"",
    )
}

fn unauthenticated(message: &str, challenge: &'static str) -> Status {
    let mut status = Status::unauthenticated(message);
    status
        .metadata_mut()
        .insert("www-authenticate", MetadataValue::from_static(challenge));
    status
}

impl Authenticator {
    pub(crate) fn new(
        verifier: Verifier,
        users: UserServiceClient<MeshChannel>,
        subject_ttl: Duration,
    ) -> Self {
        Self {
            verifier,
            users,
            active: Mutex::new(HashMap::new()),
            ttl: subject_ttl,
        }
    }

    /// The caller of `request`, or `UNAUTHENTICATED` (`UNAVAILABLE` when
    /// users cannot say whether the subject exists).
    pub(crate) async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Some(header) = request.metadata().get("authorization") else {
            return Err(missing_token());
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(invalid_token)?;
        let verified = self.verifier.verify(token).map_err(|rejected| {
            tracing::debug!(reason = rejected.reason(), "token refused");
            invalid_token()
        })?;
        let user_id = verified.user_id;
        if !self.known_active(user_id) {
            self.check_subject(user_id, &verified.claims.jti).await?;
        }
        Ok(Caller { user_id })
    }

    /// Stops trusting `user_id` as active (its account was just
    /// deactivated): its next call asks users again.
    pub(crate) fn forget(&self, user_id: Uuid) {
        self.active.lock().expect("not poisoned").remove(&user_id);
    }

    fn known_active(&self, user_id: Uuid) -> bool {
        let active = self.active.lock().expect("not poisoned");
        active
            .get(&user_id)
            .is_some_and(|until| Instant::now() < *until)
    }

    async fn check_subject(&self, user_id: Uuid, jti: &str) -> Result<(), Status> {
        let answer = self
            .users
            .clone()
            .get_user(GetUserRequest {
                user_id: user_id.to_string(),
            })
            .await;
        match answer {
            Ok(response) => {
                let active = response
                    .into_inner()
                    .user
                    .is_some_and(|u| u.status() == UserStatus::Active);
                if !active {
                    tracing::debug!(%user_id, jti, "token of a deactivated user refused");
                    return Err(invalid_token());
                }
                if !self.ttl.is_zero() {
                    let mut cache = self.active.lock().expect("not poisoned");
                    if cache.len() >= SUBJECT_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(user_id, Instant::now() + self.ttl);
                }
                Ok(())
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::debug!(%user_id, jti, "token of an unknown user refused");
                Err(invalid_token())
            }
            Err(status) => Err(crate::upstream::relay("users", status)),
        }
    }
}
