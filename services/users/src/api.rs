//! `shop.users.v1.UserService`: request checks, then store calls; errors
//! leave through `shop_runtime::ServiceError`.

use crate::domain::{self, check_password, normalise_display_name, normalise_email};
use crate::password::Passwords;
use crate::store::{self, UserRow};
use shop_auth::Signer;
use shop_proto::shop::events::v1::UserRegistered;
use shop_proto::shop::users::v1::user_service_server::UserService;
use shop_proto::shop::users::v1::{
    AuthenticateRequest, AuthenticateResponse, CreateUserRequest, CreateUserResponse,
    DeactivateUserRequest, DeactivateUserResponse, GetUserRequest, GetUserResponse,
    UpdateUserRequest, UpdateUserResponse, User, UserStatus,
};
use shop_runtime::convert::timestamp;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The same answer for every failed log-in, so callers cannot tell which
/// emails are registered.
const BAD_CREDENTIALS: &str = "invalid email or password";

pub(crate) struct UsersApi {
    pool: PgPool,
    tokens: Signer,
    passwords: Passwords,
    events: shop_events::Events,
}

impl UsersApi {
    pub(crate) fn new(
        pool: PgPool,
        tokens: Signer,
        passwords: Passwords,
        events: shop_events::Events,
    ) -> Self {
        Self {
            pool,
            tokens,
            passwords,
            events,
        }
    }
}

fn parse_user_id(raw: &str) -> Result<Uuid, ServiceError> {
    shop_runtime::convert::parse_uuid("user_id", raw)
}

fn to_proto(row: UserRow) -> User {
    let status = if row.is_active() {
        UserStatus::Active
    } else {
        UserStatus::Deactivated
    };
    User {
        user_id: row.user_id.to_string(),
        email: row.email,
        display_name: row.display_name,
        status: status as i32,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

#[tonic::async_trait]
impl UserService for UsersApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let req = request.into_inner();
        let new = domain::validate_new_user(&req.email, &req.password, &req.display_name)
            .map_err(ServiceError::InvalidArgument)?;
        let hash = self
            .passwords
            .hash(req.password)
            .await
            .map_err(ServiceError::from)?;
        // The account and its UserRegistered event commit together.
        let mut tx = self.pool.begin().await.map_err(ServiceError::from)?;
        let row = store::insert(
            &mut tx,
            Uuid::now_v7(),
            &new.email,
            &new.display_name,
            &hash,
        )
        .await?;
        let event = UserRegistered {
            user_id: row.user_id.to_string(),
            email: row.email.clone(),
            display_name: row.display_name.clone(),
        };
        shop_events::outbox::enqueue(&mut tx, "users", &event.user_id, &event, None)
            .await
            .map_err(ServiceError::from)?;
        shop_runtime::db::commit(tx)
            .await
            .map_err(ServiceError::from)?;
        self.events.wake_relay();
        tracing::info!(user_id = %row.user_id, "user created");
        Ok(Response::new(CreateUserResponse {
            user: Some(to_proto(row)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let id = parse_user_id(&request.get_ref().user_id)?;
        let row = store::get(&self.pool, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("user", id))?;
        Ok(Response::new(GetUserResponse {
            user: Some(to_proto(row)),
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let id = Uuid::parse_str(&req.user_id)
            .map_err(|_| v.add("user_id", "must be a UUID"))
            .ok();
        let email = match req.email.as_deref().map(normalise_email) {
            Some(Err(e)) => {
                v.add("email", e);
                None
            }
            other => other.and_then(Result::ok),
        };
        let display_name = match req.display_name.as_deref().map(normalise_display_name) {
            Some(Err(e)) => {
                v.add("display_name", e);
                None
            }
            other => other.and_then(Result::ok),
        };
        if let Some(Err(e)) = req.password.as_deref().map(check_password) {
            v.add("password", e);
        }
        v.check(
            req.current_password.as_ref().is_none_or(|p| !p.is_empty()),
            "current_password",
            "must not be empty when present",
        );
        v.into_result()?;
        let id = id.expect("checked above");
        if let Some(current) = req.current_password {
            // Checked against the hash as Authenticate does (a deactivated
            // or unknown user costs the same and changes nothing).
            let user = store::get(&self.pool, id)
                .await?
                .ok_or_else(|| ServiceError::not_found("user", id))?;
            let matches = self
                .passwords
                .verify(current, Some(user.password_hash))
                .await
                .map_err(ServiceError::from)?;
            if !matches {
                return Err(ServiceError::invalid(
                    "current_password",
                    "is not the account's password",
                )
                .into());
            }
        }
        let hash = match req.password {
            Some(p) => Some(self.passwords.hash(p).await.map_err(ServiceError::from)?),
            None => None,
        };
        let row = store::update(
            &self.pool,
            id,
            email.as_deref(),
            display_name.as_deref(),
            hash.as_deref(),
        )
        .await?
        .ok_or_else(|| ServiceError::not_found("user", id))?;
        Ok(Response::new(UpdateUserResponse {
            user: Some(to_proto(row)),
        }))
    }

    async fn deactivate_user(
        &self,
        request: Request<DeactivateUserRequest>,
    ) -> Result<Response<DeactivateUserResponse>, Status> {
        let id = parse_user_id(&request.get_ref().user_id)?;
        let row = store::deactivate(&self.pool, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("user", id))?;
        Ok(Response::new(DeactivateUserResponse {
            user: Some(to_proto(row)),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(!req.email.trim().is_empty(), "email", "must not be empty");
        v.check(!req.password.is_empty(), "password", "must not be empty");
        v.into_result()?;

        // A syntactically impossible email cannot be registered: treat it
        // like an unknown one, with the same cost and the same answer.
        let user = match normalise_email(&req.email) {
            Ok(email) => store::find_by_email(&self.pool, &email).await?,
            Err(_) => None,
        };
        let user = user.filter(UserRow::is_active);
        let matches = self
            .passwords
            .verify(req.password, user.as_ref().map(|u| u.password_hash.clone()))
            .await
            .map_err(ServiceError::from)?;
        let Some(user) = user.filter(|_| matches) else {
            return Err(ServiceError::Unauthenticated(BAD_CREDENTIALS.into()).into());
        };
        let (token, expires) = self
            .tokens
            .issue(user.user_id, chrono::Utc::now())
            .map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(Response::new(AuthenticateResponse {
            access_token: token,
            expire_time: Some(timestamp(expires)),
            user_id: user.user_id.to_string(),
            token_type: "Bearer".into(),
        }))
    }
}
