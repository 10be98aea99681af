//! The `dead_letters` table: events a consumer gave up on, until an
//! operator replays or discards them (`EventsAdminService`, in
//! [`crate::admin`]).

use shop_proto::shop::common::v1::{DeadLetter, DeadLetterStatus};
use shop_runtime::convert::timestamp;
use shop_runtime::paging;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use uuid::Uuid;

/// A dead letter about to be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewDeadLetter<'a> {
    pub(crate) consumer: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) event_id: Option<&'a str>,
    pub(crate) event_type: &'a str,
    pub(crate) delivery_count: i64,
    pub(crate) last_error: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) compensation: bool,
}

/// Writes `letter` and, for a decodable event, the consumer's inbox row
/// (so a redelivery of it is a duplicate), in one transaction: the
/// letter's id, or `None` when the inbox shows the event applied meanwhile
/// (by another copy of it) and no letter is due.
pub(crate) async fn record(
    pool: &PgPool,
    letter: &NewDeadLetter<'_>,
) -> sqlx::Result<Option<Uuid>> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    if let Some(event_id) = letter.event_id.and_then(|e| e.parse::<Uuid>().ok()) {
        let inserted = sqlx::query(
            "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(letter.consumer)
        .bind(event_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
    }
    // Text columns refuse NUL; an error message could hold one.
    let text = |s: &str| s.replace('\0', "");
    sqlx::query(
        "INSERT INTO dead_letters
             (dead_letter_id, consumer, stream, subject, event_id, event_type,
              delivery_count, last_error, payload, compensation)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(letter.consumer)
    .bind(letter.stream)
    .bind(text(letter.subject))
    .bind(letter.event_id)
    .bind(text(letter.event_type))
    .bind(letter.delivery_count)
    .bind(text(letter.last_error))
    .bind(letter.payload)
    .bind(letter.compensation)
    .execute(&mut *tx)
    .await?;
    shop_runtime::db::commit(tx).await?;
    Ok(Some(id))
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    pub(crate) dead_letter_id: Uuid,
    pub(crate) consumer: String,
    stream: String,
    pub(crate) subject: String,
    event_id: Option<String>,
    event_type: String,
    delivery_count: i64,
    last_error: String,
    pub(crate) payload: Vec<u8>,
    created_at: chrono::DateTime<chrono::Utc>,
    pub(crate) status: String,
    compensation: bool,
    pub(crate) replay_attempts: i32,
    resolved_at: Option<chrono::DateTime<chrono::Utc>>,
    discard_reason: String,
    resolved_by: String,
}

/// The columns of [`Row`], for `concat!` (queries stay static strings).
macro_rules! columns {
    () => {
        "dead_letter_id, consumer, stream, subject, event_id, event_type, delivery_count,
         last_error, payload, created_at, status, compensation, replay_attempts, resolved_at,
         discard_reason, resolved_by"
    };
}

impl From<Row> for DeadLetter {
    fn from(r: Row) -> Self {
        let status = match r.status.as_str() {
            "pending" => DeadLetterStatus::Pending,
            "replayed" => DeadLetterStatus::Replayed,
            "discarded" => DeadLetterStatus::Discarded,
            _ => DeadLetterStatus::Unspecified,
        };
        DeadLetter {
            dead_letter_id: r.dead_letter_id.to_string(),
            consumer: r.consumer,
            stream: r.stream,
            subject: r.subject,
            event_id: r.event_id.unwrap_or_default(),
            event_type: r.event_type,
            delivery_count: r.delivery_count,
            last_error: r.last_error,
            payload: r.payload,
            create_time: Some(timestamp(r.created_at)),
            status: status as i32,
            compensation: r.compensation,
            replay_attempts: r.replay_attempts,
            resolve_time: r.resolved_at.map(timestamp),
            discard_reason: r.discard_reason,
            resolved_by: r.resolved_by,
        }
    }
}

/// What a dead-letter page token is bound to.
const SCOPE: &[&[u8]] = &[b"dead_letters"];

/// One page of dead letters, newest first, and the next page's token.
pub async fn list(
    pool: &PgPool,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<DeadLetter>, String), ServiceError> {
    let mut v = FieldViolations::new();
    let limit = paging::page_size(&mut v, page_size);
    let after = paging::page_start(&mut v, page_token, SCOPE);
    v.into_result()?;
    let mut rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM dead_letters
         WHERE ($1::uuid IS NULL OR dead_letter_id < $1)
         ORDER BY dead_letter_id DESC LIMIT $2"
    ))
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        paging::next_page_token(rows.last().expect("limit >= 1").dead_letter_id, SCOPE)
    } else {
        String::new()
    };
    Ok((rows.into_iter().map(DeadLetter::from).collect(), next))
}

/// The letter `id`, or NOT_FOUND.
pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Row, ServiceError> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM dead_letters WHERE dead_letter_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ServiceError::not_found("dead letter", id))
}

/// A replay that failed: the attempt is counted and its error kept.
pub(crate) async fn replay_failed(pool: &PgPool, id: Uuid, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dead_letters SET replay_attempts = replay_attempts + 1, last_error = $2
         WHERE dead_letter_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Discards the pending letter `id` with `reason`, by `by`; false when it
/// was no longer pending.
pub(crate) async fn discard(pool: &PgPool, id: Uuid, reason: &str, by: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE dead_letters
         SET status = 'discarded', resolved_at = now(), discard_reason = $2, resolved_by = $3
         WHERE dead_letter_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(reason)
    .bind(by)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Pending letters of `consumer`.
pub(crate) async fn pending(pool: &PgPool, consumer: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE consumer = $1 AND status = 'pending'",
    )
    .bind(consumer)
    .fetch_one(pool)
    .await
}
