//! Orders, their lines and their saga steps. Functions take a connection so
//! that callers compose them into one transaction with the outbox.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The columns of `orders` every query returns, in `FromRow` order.
macro_rules! order_columns {
    () => {
        "order_id, user_id, status, total_minor, currency, idempotency_key, \
         request_fingerprint, cancel_reason, cancel_detail, created_at, updated_at"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OrderRow {
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) status: String,
    pub(crate) total_minor: i64,
    pub(crate) currency: String,
    pub(crate) idempotency_key: Uuid,
    pub(crate) request_fingerprint: String,
    pub(crate) cancel_reason: Option<i16>,
    pub(crate) cancel_detail: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub(crate) fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct LineRow {
    pub(crate) product_id: Uuid,
    pub(crate) sku: String,
    pub(crate) product_name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub(crate) step: i16,
    pub(crate) status: i16,
    pub(crate) reason: String,
    pub(crate) event_id: Option<Uuid>,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// A new order's row.
pub(crate) struct NewOrder<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) total_minor: i64,
    pub(crate) currency: &'a str,
    pub(crate) idempotency_key: Uuid,
    pub(crate) fingerprint: &'a str,
    pub(crate) deadline: DateTime<Utc>,
}

/// Inserts the order unless its idempotency key is taken: the row as
/// stored, or `None`.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    o: &NewOrder<'_>,
) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(concat!(
        "INSERT INTO orders (order_id, user_id, status, total_minor, currency, idempotency_key,
                             request_fingerprint, deadline_at)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING ",
        order_columns!()
    ))
    .bind(o.order_id)
    .bind(o.user_id)
    .bind(o.total_minor)
    .bind(o.currency)
    .bind(o.idempotency_key)
    .bind(o.fingerprint)
    .bind(o.deadline)
    .fetch_optional(conn)
    .await
}

/// Inserts the order's lines, numbered in order, in one statement.
pub(crate) async fn insert_lines(
    conn: &mut PgConnection,
    order_id: Uuid,
    lines: &[crate::domain::PricedLine],
) -> sqlx::Result<()> {
    let column =
        |f: fn(&crate::domain::PricedLine) -> String| lines.iter().map(f).collect::<Vec<_>>();
    let products: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price_minor).collect();
    sqlx::query(
        "INSERT INTO order_lines
             (order_id, line_no, product_id, sku, product_name, quantity, unit_price_minor)
         SELECT $1, (n - 1)::int, product_id, sku, product_name, quantity, unit_price_minor
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
              WITH ORDINALITY AS l(product_id, sku, product_name, quantity, unit_price_minor, n)",
    )
    .bind(order_id)
    .bind(&products)
    .bind(column(|l| l.sku.clone()))
    .bind(column(|l| l.name.clone()))
    .bind(&quantities)
    .bind(&prices)
    .execute(conn)
    .await?;
    Ok(())
}

impl From<crate::domain::PricedLine> for LineRow {
    fn from(l: crate::domain::PricedLine) -> Self {
        Self {
            product_id: l.product_id,
            sku: l.sku,
            product_name: l.name,
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
        }
    }
}

pub(crate) async fn find_by_key(pool: &PgPool, key: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(pool)
    .await
}

pub(crate) async fn get(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

/// The order, locked until the end of the transaction: every state change
/// of an order happens under this lock.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn lines(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<LineRow>> {
    sqlx::query_as(
        "SELECT product_id, sku, product_name, quantity, unit_price_minor
         FROM order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// The saga's steps in the order they happened: by the time the step's
/// service reports (the events of different services reach orders through
/// different consumers, so one may be recorded before an earlier one),
/// then by the order orders recorded them.
pub(crate) async fn steps(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Vec<StepRow>> {
    sqlx::query_as(
        "SELECT step, status, reason, event_id, occurred_at
         FROM saga_steps WHERE order_id = $1 ORDER BY occurred_at, seq",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

pub(crate) async fn add_step(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: i32,
    status: i32,
    reason: &str,
    event_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO saga_steps (order_id, step, status, reason, event_id, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(step as i16)
    .bind(status as i16)
    .bind(reason)
    .bind(event_id)
    .bind(occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The saga made progress: push its deadline back.
pub(crate) async fn progressed(
    conn: &mut PgConnection,
    order_id: Uuid,
    deadline: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET deadline_at = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(deadline)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn set_confirmed(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE orders SET status = 'confirmed', payment_id = $2, updated_at = now()
         WHERE order_id = $1 AND status = 'pending'",
    )
    .bind(order_id)
    .bind(payment_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn set_cancelled(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: i32,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE orders SET status = 'cancelled', cancel_reason = $2, cancel_detail = $3,
                           updated_at = now()
         WHERE order_id = $1 AND status <> 'cancelled'",
    )
    .bind(order_id)
    .bind(reason as i16)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// PENDING orders past their deadline, locked (skipping ones another
/// transaction holds).
pub(crate) async fn lock_overdue(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT order_id FROM orders
         WHERE status = 'pending' AND deadline_at < now()
         ORDER BY deadline_at LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One page of a user's orders, newest first, after `before` when given.
pub(crate) async fn list(
    pool: &PgPool,
    user_id: Uuid,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders
         WHERE user_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR order_id < $3)
         ORDER BY order_id DESC LIMIT $4"
    ))
    .bind(user_id)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
