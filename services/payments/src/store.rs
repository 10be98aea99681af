//! The `payments`, `refunds` and `cancelled_orders` tables.
//!
//! Reads for the API take the pool; the consumers' writes take the
//! connection of the transaction that also records the event in the inbox.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One row of `payments`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PaymentRow {
    pub(crate) payment_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) status: String,
    pub(crate) decline_reason: Option<String>,
    pub(crate) detail: String,
    pub(crate) attempt_count: i32,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The columns of `payments` every query returns, in `FromRow` order.
macro_rules! columns {
    () => {
        "payment_id, order_id, user_id, amount_minor, currency, status, decline_reason, \
         detail, attempt_count, created_at, updated_at"
    };
}

/// One row of `refunds`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RefundRow {
    pub(crate) refund_id: Uuid,
    pub(crate) payment_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) reason: String,
    pub(crate) created_at: DateTime<Utc>,
}

/// A payment the processor answered for, ready to be stored.
pub(crate) struct NewPayment<'a> {
    pub(crate) payment_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) amount_minor: i64,
    pub(crate) currency: &'a str,
    pub(crate) token: &'a str,
    /// `captured` or `declined`.
    pub(crate) status: &'static str,
    pub(crate) decline_reason: Option<&'static str>,
    pub(crate) detail: &'a str,
    pub(crate) attempt_count: i32,
}

// === Reads (API) ===

pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM payments WHERE payment_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One page of payments in id order (creation order: ids are UUIDv7), of
/// one order when `order_id` is given, after `after` when given.
pub(crate) async fn list(
    pool: &PgPool,
    order_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM payments
         WHERE ($1::uuid IS NULL OR order_id = $1)
           AND ($2::uuid IS NULL OR payment_id > $2)
         ORDER BY payment_id
         LIMIT $3"
    ))
    .bind(order_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The refunds of `payment_ids`, oldest first.
pub(crate) async fn refunds_of(
    pool: &PgPool,
    payment_ids: &[Uuid],
) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as::<_, RefundRow>(
        "SELECT refund_id, payment_id, amount_minor, currency, reason, created_at
         FROM refunds WHERE payment_id = ANY($1)
         ORDER BY created_at, refund_id",
    )
    .bind(payment_ids)
    .fetch_all(pool)
    .await
}

// === Writes (consumers, inside the event's transaction) ===

/// Serialises the consumers' work on one order until the transaction ends:
/// whichever of StockReserved and OrderCancelled comes second waits, then
/// sees what the first committed (READ COMMITTED takes a new snapshot per
/// statement).
pub(crate) async fn lock_order(tx: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub(crate) async fn is_cancelled(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cancelled_orders WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await
}

/// Records the payment of an order, unless the order has one: `None`.
pub(crate) async fn insert_payment(
    tx: &mut PgConnection,
    p: NewPayment<'_>,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "INSERT INTO payments
             (payment_id, order_id, user_id, amount_minor, currency, token, status,
              decline_reason, detail, attempt_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(p.payment_id)
    .bind(p.order_id)
    .bind(p.user_id)
    .bind(p.amount_minor)
    .bind(p.currency)
    .bind(p.token)
    .bind(p.status)
    .bind(p.decline_reason)
    .bind(p.detail)
    .bind(p.attempt_count)
    .fetch_optional(&mut *tx)
    .await
}

/// Records that `order_id` is cancelled; a no-op when it already was.
pub(crate) async fn mark_cancelled(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO cancelled_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The order's payment if it is captured (not declined, not yet refunded),
/// locked for the refund.
pub(crate) async fn captured_payment(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as::<_, PaymentRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM payments WHERE order_id = $1 AND status = 'captured' FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await
}

/// Refunds `payment` in full and marks it refunded.
pub(crate) async fn refund(
    tx: &mut PgConnection,
    refund_id: Uuid,
    payment: &PaymentRow,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refunds (refund_id, payment_id, order_id, amount_minor, currency, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(refund_id)
    .bind(payment.payment_id)
    .bind(payment.order_id)
    .bind(payment.amount_minor)
    .bind(&payment.currency)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE payments SET status = 'refunded', updated_at = now()
         WHERE payment_id = $1 AND status = 'captured'",
    )
    .bind(payment.payment_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
