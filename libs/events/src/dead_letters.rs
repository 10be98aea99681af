//! Reading the `dead_letters` table, for each consuming service's
//! `ListDeadLetters`.

use shop_proto::shop::common::v1::DeadLetter;
use shop_runtime::paging;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct Row {
    dead_letter_id: Uuid,
    consumer: String,
    stream: String,
    subject: String,
    event_id: Option<String>,
    event_type: String,
    delivery_count: i64,
    last_error: String,
    payload: Vec<u8>,
    created_at: chrono::DateTime<chrono::Utc>,
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
    let mut rows: Vec<Row> = sqlx::query_as(
        "SELECT dead_letter_id, consumer, stream, subject, event_id, event_type,
                delivery_count, last_error, payload, created_at
         FROM dead_letters
         WHERE ($1::uuid IS NULL OR dead_letter_id < $1)
         ORDER BY dead_letter_id DESC LIMIT $2",
    )
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
    let letters = rows
        .into_iter()
        .map(|r| DeadLetter {
            dead_letter_id: r.dead_letter_id.to_string(),
            consumer: r.consumer,
            stream: r.stream,
            subject: r.subject,
            event_id: r.event_id.unwrap_or_default(),
            event_type: r.event_type,
            delivery_count: r.delivery_count,
            last_error: r.last_error,
            payload: r.payload,
            create_time: Some(prost_types::Timestamp {
                seconds: r.created_at.timestamp(),
                nanos: r.created_at.timestamp_subsec_nanos() as i32,
            }),
        })
        .collect();
    Ok((letters, next))
}
