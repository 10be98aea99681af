//! The `stock`, `stock_adjustments`, `reservations` and `reservation_lines`
//! tables.
//!
//! The API's calls take the pool and run their own transaction; the saga's
//! take the consumer's connection, inside the transaction that also records
//! the event in the inbox and writes the outgoing events to the outbox.

use crate::domain::{Line, RejectionReason, ReservationStatus};
use chrono::{DateTime, Utc};
use shop_runtime::ServiceError;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use uuid::Uuid;

/// One row of `stock`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StockRow {
    pub(crate) product_id: Uuid,
    pub(crate) available: i64,
    pub(crate) reserved: i64,
    pub(crate) sold: i64,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The columns of `stock`, in `StockRow` order.
macro_rules! stock_columns {
    () => {
        "product_id, available, reserved, sold, updated_at"
    };
}

// === stock (API) ===

pub(crate) async fn get_stock(pool: &PgPool, id: Uuid) -> Result<Option<StockRow>, ServiceError> {
    Ok(sqlx::query_as::<_, StockRow>(concat!(
        "SELECT ",
        stock_columns!(),
        " FROM stock WHERE product_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub(crate) async fn get_stocks(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<StockRow>, ServiceError> {
    Ok(sqlx::query_as::<_, StockRow>(concat!(
        "SELECT ",
        stock_columns!(),
        " FROM stock WHERE product_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Sets `available`, creating the record if needed; `reserved` and `sold`
/// stay as they are.
pub(crate) async fn set_available(
    pool: &PgPool,
    id: Uuid,
    available: i64,
) -> Result<StockRow, ServiceError> {
    Ok(sqlx::query_as::<_, StockRow>(concat!(
        "INSERT INTO stock (product_id, available) VALUES ($1, $2)
         ON CONFLICT (product_id)
         DO UPDATE SET available = EXCLUDED.available, updated_at = now()
         RETURNING ",
        stock_columns!(),
        ""
    ))
    .bind(id)
    .bind(available)
    .fetch_one(pool)
    .await?)
}

/// An AdjustStock call, already validated.
#[derive(Debug, Clone)]
pub(crate) struct Adjustment<'a> {
    pub(crate) key: Uuid,
    pub(crate) product_id: Uuid,
    pub(crate) delta: i64,
    pub(crate) reason: &'a str,
}

#[derive(sqlx::FromRow)]
struct AdjustmentRow {
    product_id: Uuid,
    delta: i64,
    reason: String,
    resulting_available: i64,
    resulting_reserved: i64,
    resulting_sold: i64,
    created_at: DateTime<Utc>,
}

impl AdjustmentRow {
    /// The first call's result, if `call` repeats it; ALREADY_EXISTS if the
    /// key was used for another adjustment.
    fn replay(self, call: &Adjustment<'_>) -> Result<StockRow, ServiceError> {
        if self.product_id != call.product_id
            || self.delta != call.delta
            || self.reason != call.reason
        {
            return Err(ServiceError::AlreadyExists(format!(
                "idempotency key {} was already used for another adjustment",
                call.key
            )));
        }
        Ok(StockRow {
            product_id: self.product_id,
            available: self.resulting_available,
            reserved: self.resulting_reserved,
            sold: self.resulting_sold,
            updated_at: self.created_at,
        })
    }
}

async fn find_adjustment(
    conn: &mut PgConnection,
    key: Uuid,
) -> Result<Option<AdjustmentRow>, sqlx::Error> {
    sqlx::query_as::<_, AdjustmentRow>(
        "SELECT product_id, delta, reason, resulting_available, resulting_reserved,
                resulting_sold, created_at
         FROM stock_adjustments WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// SQLSTATE 22003: a bigint sum left the 64-bit range.
fn out_of_range(e: sqlx::Error) -> ServiceError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22003") => {
            ServiceError::FailedPrecondition(
                "the adjusted quantity would exceed the largest quantity stored".into(),
            )
        }
        _ => e.into(),
    }
}

/// Applies `call` once per idempotency key. A repeat with the same body
/// returns the stock as the first call left it; a result below zero is
/// FAILED_PRECONDITION and records nothing, so the key stays usable.
pub(crate) async fn adjust(pool: &PgPool, call: &Adjustment<'_>) -> Result<StockRow, ServiceError> {
    let mut tx = pool.begin().await?;
    if let Some(first) = find_adjustment(&mut tx, call.key).await? {
        return first.replay(call);
    }
    // The condition and the CHECK both keep `available` non-negative; the
    // condition lets us tell the caller why instead of failing the statement.
    let row = sqlx::query_as::<_, StockRow>(concat!(
        "UPDATE stock SET available = available + $2, updated_at = now()
         WHERE product_id = $1 AND available + $2 >= 0
         RETURNING ",
        stock_columns!(),
        ""
    ))
    .bind(call.product_id)
    .bind(call.delta)
    .fetch_optional(&mut *tx)
    .await
    .map_err(out_of_range)?;
    let Some(row) = row else {
        let available: Option<i64> =
            sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
                .bind(call.product_id)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match available {
            None => ServiceError::not_found("stock of product", call.product_id),
            Some(available) => ServiceError::FailedPrecondition(format!(
                "adjusting by {} would leave {} available below zero",
                call.delta, available
            )),
        });
    };
    // A concurrent call with the same key waits here for ours to finish;
    // whichever comes second finds the first one's row.
    let inserted = sqlx::query(
        "INSERT INTO stock_adjustments
             (idempotency_key, product_id, delta, reason,
              resulting_available, resulting_reserved, resulting_sold, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(call.key)
    .bind(call.product_id)
    .bind(call.delta)
    .bind(call.reason)
    .bind(row.available)
    .bind(row.reserved)
    .bind(row.sold)
    .bind(row.updated_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        let mut conn = pool.acquire().await?;
        let first = find_adjustment(&mut conn, call.key)
            .await?
            .ok_or_else(|| ServiceError::Internal(anyhow::anyhow!("adjustment vanished")))?;
        return first.replay(call);
    }
    shop_runtime::db::commit(tx).await?;
    Ok(row)
}

// === reservations (API) ===

/// One row of `reservations`, with its lines.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) order_id: Uuid,
    pub(crate) status: ReservationStatus,
    pub(crate) rejection_reason: Option<RejectionReason>,
    pub(crate) rejection_detail: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) lines: Vec<Line>,
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    order_id: Uuid,
    status: String,
    rejection_reason: Option<String>,
    rejection_detail: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

pub(crate) async fn get_reservation(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<Reservation>, ServiceError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as::<_, ReservationRow>(
        "SELECT order_id, status, rejection_reason, rejection_detail, created_at, updated_at
         FROM reservations WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lines = lines_of(&mut tx, order_id).await?;
    shop_runtime::db::commit(tx).await?;
    let status = ReservationStatus::parse(&row.status).ok_or_else(|| {
        ServiceError::Internal(anyhow::anyhow!("unknown reservation status {}", row.status))
    })?;
    let rejection_reason = match row.rejection_reason.as_deref() {
        None => None,
        Some(r) => Some(RejectionReason::parse(r).ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("unknown rejection reason {r}"))
        })?),
    };
    Ok(Some(Reservation {
        order_id: row.order_id,
        status,
        rejection_reason,
        rejection_detail: row.rejection_detail,
        created_at: row.created_at,
        updated_at: row.updated_at,
        lines,
    }))
}

// === reservations (saga, in the consumer's transaction) ===

/// The lines of an order's reservation, in product order.
pub(crate) async fn lines_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<Line>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT product_id, quantity FROM reservation_lines
         WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(product_id, quantity)| Line {
            product_id,
            quantity,
        })
        .collect())
}

/// Claims the order with a `reserved` row (settled later in the same
/// transaction). `false` when the order already has a row: a concurrent
/// transaction claiming the same order makes this wait for its outcome.
pub(crate) async fn claim_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
    user_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO reservations (order_id, user_id, status) VALUES ($1, $2, 'reserved')
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub(crate) async fn insert_lines(
    conn: &mut PgConnection,
    order_id: Uuid,
    lines: &[Line],
) -> Result<(), sqlx::Error> {
    let products: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    sqlx::query(
        "INSERT INTO reservation_lines (order_id, product_id, quantity)
         SELECT $1, p, q FROM UNNEST($2::uuid[], $3::bigint[]) AS l (p, q)",
    )
    .bind(order_id)
    .bind(&products)
    .bind(&quantities)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn savepoint(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT reserve").execute(conn).await?;
    Ok(())
}

pub(crate) async fn rollback_to_savepoint(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("ROLLBACK TO SAVEPOINT reserve")
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves `quantity` from available to reserved if that much is available:
/// the conditional update that makes reservations safe under contention.
pub(crate) async fn try_reserve(conn: &mut PgConnection, line: &Line) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE stock
         SET available = available - $2, reserved = reserved + $2, updated_at = now()
         WHERE product_id = $1 AND available >= $2",
    )
    .bind(line.product_id)
    .bind(line.quantity)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// What is available of each stocked product among `ids`, locking those
/// rows (in product order) until the transaction ends.
pub(crate) async fn lock_available(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT product_id, available FROM stock WHERE product_id = ANY($1)
         ORDER BY product_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

pub(crate) async fn mark_rejected(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: RejectionReason,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations
         SET status = 'rejected', rejection_reason = $2, rejection_detail = $3, updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(reason.as_str())
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// The order's reservation status and user, locking the row until the
/// transaction ends; `None` when inventory never heard of the order.
pub(crate) async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<(ReservationStatus, Uuid)>> {
    let row: Option<(String, Uuid)> =
        sqlx::query_as("SELECT status, user_id FROM reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(conn)
            .await?;
    row.map(|(status, user)| {
        ReservationStatus::parse(&status)
            .map(|s| (s, user))
            .ok_or_else(|| anyhow::anyhow!("unknown reservation status {status}"))
    })
    .transpose()
}

/// reserved -> committed in one statement: the reservation's status, and
/// each line's quantity from `reserved` to `sold`. `false` (nothing
/// changed) when the order has no reservation in `reserved`.
pub(crate) async fn commit_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let committed: i64 = sqlx::query_scalar(
        "WITH committed AS (
             UPDATE reservations SET status = 'committed', updated_at = now()
             WHERE order_id = $1 AND status = 'reserved'
             RETURNING order_id),
         moved AS (
             UPDATE stock s
             SET reserved = s.reserved - l.quantity, sold = s.sold + l.quantity,
                 updated_at = now()
             FROM reservation_lines l JOIN committed c ON c.order_id = l.order_id
             WHERE s.product_id = l.product_id
             RETURNING s.product_id)
         SELECT count(*) FROM committed",
    )
    .bind(order_id)
    .fetch_one(conn)
    .await?;
    Ok(committed == 1)
}

pub(crate) async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that the order was cancelled before inventory saw it placed, so
/// a late OrderPlaced reserves nothing. Fails on a concurrent claim of the
/// same order (the retry then finds and releases it).
pub(crate) async fn insert_tombstone(
    conn: &mut PgConnection,
    order_id: Uuid,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO reservations (order_id, user_id, status) VALUES ($1, $2, 'released')")
        .bind(order_id)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How one line's quantity moves between the columns of `stock` when a
/// reservation is released (reserved -> sold, on OrderConfirmed, is
/// [`commit_reservation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    /// reserved -> available (OrderCancelled before confirmation).
    ReleaseReserved,
    /// sold -> available (OrderCancelled after confirmation).
    ReleaseSold,
}

/// Applies `movement` to every line, in product order. The CHECKs refuse
/// any move that would take a column below zero.
pub(crate) async fn move_lines(
    conn: &mut PgConnection,
    lines: &[Line],
    movement: Move,
) -> anyhow::Result<()> {
    for line in lines {
        let query = match movement {
            Move::ReleaseReserved => sqlx::query(
                "UPDATE stock
                 SET reserved = reserved - $2, available = available + $2, updated_at = now()
                 WHERE product_id = $1",
            ),
            Move::ReleaseSold => sqlx::query(
                "UPDATE stock SET sold = sold - $2, available = available + $2, updated_at = now()
                 WHERE product_id = $1",
            ),
        };
        let r = query
            .bind(line.product_id)
            .bind(line.quantity)
            .execute(&mut *conn)
            .await?;
        anyhow::ensure!(
            r.rows_affected() == 1,
            "no stock record for product {} of a held reservation",
            line.product_id
        );
    }
    Ok(())
}
