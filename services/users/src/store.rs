//! The `users` table. Every write is one statement, so a failed call leaves
//! nothing half-written.

use chrono::{DateTime, Utc};
use shop_runtime::ServiceError;
use sqlx::PgPool;
use uuid::Uuid;

/// One row of `users`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub(crate) user_id: Uuid,
    pub(crate) email: String,
    pub(crate) display_name: String,
    pub(crate) password_hash: String,
    pub(crate) status: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl UserRow {
    pub(crate) fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// The columns every query returns, in `FromRow` order.
macro_rules! columns {
    () => {
        "user_id, email, display_name, password_hash, status, created_at, updated_at"
    };
}

/// The email's owner is someone else: the unique constraint said so.
fn email_taken(e: sqlx::Error) -> ServiceError {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("users_email_key") => {
            ServiceError::AlreadyExists("a user with this email already exists".into())
        }
        _ => e.into(),
    }
}

pub(crate) async fn insert(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    email: &str,
    display_name: &str,
    password_hash: &str,
) -> Result<UserRow, ServiceError> {
    sqlx::query_as::<_, UserRow>(concat!(
        "INSERT INTO users (user_id, email, display_name, password_hash)
         VALUES ($1, $2, $3, $4) RETURNING ",
        columns!(),
        ""
    ))
    .bind(user_id)
    .bind(email)
    .bind(display_name)
    .bind(password_hash)
    .fetch_one(conn)
    .await
    .map_err(email_taken)
}

pub(crate) async fn get(pool: &PgPool, user_id: Uuid) -> Result<Option<UserRow>, ServiceError> {
    Ok(sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM users WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(pool)
    .await?)
}

pub(crate) async fn find_by_email(
    pool: &PgPool,
    email: &str,
) -> Result<Option<UserRow>, ServiceError> {
    Ok(sqlx::query_as::<_, UserRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM users WHERE email = $1"
    ))
    .bind(email)
    .fetch_optional(pool)
    .await?)
}

/// Sets the fields that are `Some`; `None` if the user does not exist.
pub(crate) async fn update(
    pool: &PgPool,
    user_id: Uuid,
    email: Option<&str>,
    display_name: Option<&str>,
    password_hash: Option<&str>,
) -> Result<Option<UserRow>, ServiceError> {
    sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET
             email = COALESCE($2, email),
             display_name = COALESCE($3, display_name),
             password_hash = COALESCE($4, password_hash),
             updated_at = now()
         WHERE user_id = $1
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(user_id)
    .bind(email)
    .bind(display_name)
    .bind(password_hash)
    .fetch_optional(pool)
    .await
    .map_err(email_taken)
}

/// Deactivates a user; a user already deactivated is returned unchanged.
pub(crate) async fn deactivate(
    pool: &PgPool,
    user_id: Uuid,
) -> Result<Option<UserRow>, ServiceError> {
    let updated = sqlx::query_as::<_, UserRow>(concat!(
        "UPDATE users SET status = 'deactivated', updated_at = now()
         WHERE user_id = $1 AND status <> 'deactivated'
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    match updated {
        Some(row) => Ok(Some(row)),
        None => get(pool, user_id).await,
    }
}
