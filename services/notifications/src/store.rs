//! The `notifications` table.

use crate::domain::Kind;
use chrono::{DateTime, Utc};
use shop_runtime::ServiceError;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One row of `notifications`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct NotificationRow {
    pub(crate) notification_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) kind: String,
    pub(crate) order_id: Option<Uuid>,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) source_event_id: Uuid,
    pub(crate) created_at: DateTime<Utc>,
}

/// The columns every query returns, in `FromRow` order.
macro_rules! columns {
    () => {
        "notification_id, user_id, kind, order_id, subject, body, source_event_id, created_at"
    };
}

/// A notification to record.
pub(crate) struct NewNotification<'a> {
    pub(crate) notification_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) kind: Kind,
    pub(crate) order_id: Option<Uuid>,
    pub(crate) subject: &'a str,
    pub(crate) body: &'a str,
    pub(crate) source_event_id: Uuid,
}

/// Records `n` unless its user or order was already notified of this kind
/// (`None` then): the table's unique keys decide, so concurrent or repeated
/// events notify once.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    n: NewNotification<'_>,
) -> Result<Option<NotificationRow>, sqlx::Error> {
    sqlx::query_as::<_, NotificationRow>(concat!(
        "INSERT INTO notifications
             (notification_id, user_id, kind, order_id, subject, body, source_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(n.notification_id)
    .bind(n.user_id)
    .bind(n.kind.as_db())
    .bind(n.order_id)
    .bind(n.subject)
    .bind(n.body)
    .bind(n.source_event_id)
    .fetch_optional(conn)
    .await
}

/// One page of `user_id`'s notifications, newest first (ids are UUIDv7),
/// before `before` when given. Keyset paging on an immutable key: walking
/// the pages never skips or repeats one, even while new ones arrive.
pub(crate) async fn list(
    pool: &PgPool,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<NotificationRow>, ServiceError> {
    Ok(sqlx::query_as::<_, NotificationRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM notifications
         WHERE user_id = $1
           AND ($2::uuid IS NULL OR notification_id < $2)
         ORDER BY notification_id DESC
         LIMIT $3"
    ))
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
