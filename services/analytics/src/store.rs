//! The projection tables: applying facts, and reading the figures back.
//!
//! Every write is order-independent (see `migrations/analytics/
//! 0002_projections.sql`): keyed by the business id, earliest `(occurred_at,
//! event_id)` wins, milestones are minima. Every figure is derived when
//! read, so nothing is incremented or decremented.

use crate::domain::{
    Fact, Milestone, OrderHeader, Outcomes, ProductSales, Progress, Revenue, SagaCounts,
    SagaDurations, Source,
};
use chrono::{DateTime, Utc};
use shop_runtime::ServiceError;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Records that the event `source` was applied; `false` when it already
/// was (then nothing else must change).
pub(crate) async fn record_event(
    conn: &mut PgConnection,
    source: Source,
    event_type: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO applied_events (event_id, event_type, occurred_at)
         VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(source.event_id)
    .bind(event_type)
    .bind(source.occurred_at)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Applies `fact`, stated by the event `source`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    source: Source,
    fact: &Fact,
) -> Result<(), sqlx::Error> {
    let Source {
        event_id,
        occurred_at: at,
    } = source;
    match fact {
        Fact::Order { header, milestone } => apply_order(conn, source, header, milestone).await,
        Fact::StockReserved { order_id, units } => sqlx::query(
            "INSERT INTO stock_reserved AS t (order_id, units, occurred_at, event_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (order_id) DO UPDATE
                 SET units = EXCLUDED.units, occurred_at = EXCLUDED.occurred_at,
                     event_id = EXCLUDED.event_id
                 WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(order_id)
        .bind(units)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::StockRejected { order_id, reason } => sqlx::query(
            "INSERT INTO stock_rejected AS t (order_id, reason, occurred_at, event_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (order_id) DO UPDATE
                 SET reason = EXCLUDED.reason, occurred_at = EXCLUDED.occurred_at,
                     event_id = EXCLUDED.event_id
                 WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(order_id)
        .bind(reason)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::StockReleased {
            order_id,
            units,
            was_committed,
        } => sqlx::query(
            "INSERT INTO stock_released AS t
                 (order_id, units, was_committed, occurred_at, event_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (order_id) DO UPDATE
             SET units = EXCLUDED.units, was_committed = EXCLUDED.was_committed,
                 occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(order_id)
        .bind(units)
        .bind(was_committed)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::PaymentCaptured {
            payment_id,
            order_id,
            amount,
        } => sqlx::query(
            "INSERT INTO payment_captures AS t
                 (payment_id, order_id, amount_minor, currency, occurred_at, event_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (payment_id) DO UPDATE
             SET order_id = EXCLUDED.order_id, amount_minor = EXCLUDED.amount_minor,
                 currency = EXCLUDED.currency, occurred_at = EXCLUDED.occurred_at,
                 event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(payment_id)
        .bind(order_id)
        .bind(amount.minor)
        .bind(&amount.currency)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::PaymentDeclined {
            payment_id,
            order_id,
            amount,
            reason,
        } => sqlx::query(
            "INSERT INTO payment_declines AS t
                 (payment_id, order_id, amount_minor, currency, reason, occurred_at, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (payment_id) DO UPDATE
             SET order_id = EXCLUDED.order_id, amount_minor = EXCLUDED.amount_minor,
                 currency = EXCLUDED.currency, reason = EXCLUDED.reason,
                 occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(payment_id)
        .bind(order_id)
        .bind(amount.minor)
        .bind(&amount.currency)
        .bind(reason)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::PaymentRefunded {
            refund_id,
            payment_id,
            order_id,
            amount,
        } => sqlx::query(
            "INSERT INTO payment_refunds AS t
                 (refund_id, payment_id, order_id, amount_minor, currency, occurred_at, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (refund_id) DO UPDATE
             SET payment_id = EXCLUDED.payment_id, order_id = EXCLUDED.order_id,
                 amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency,
                 occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (t.occurred_at, t.event_id)",
        )
        .bind(refund_id)
        .bind(payment_id)
        .bind(order_id)
        .bind(amount.minor)
        .bind(&amount.currency)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
        Fact::UserRegistered { user_id } => sqlx::query(
            "INSERT INTO user_registrations AS t (user_id, registered_at, event_id)
             VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE
             SET registered_at = EXCLUDED.registered_at, event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.registered_at, EXCLUDED.event_id) < (t.registered_at, t.event_id)",
        )
        .bind(user_id)
        .bind(at)
        .bind(event_id)
        .execute(conn)
        .await
        .map(drop),
    }
}

async fn apply_order(
    conn: &mut PgConnection,
    source: Source,
    header: &OrderHeader,
    milestone: &Milestone,
) -> Result<(), sqlx::Error> {
    // The header of the earliest event wins; this also locks the order's
    // row for the rest of the transaction.
    let replaced: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO orders AS t
             (order_id, user_id, total_minor, currency, header_occurred_at, header_event_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (order_id) DO UPDATE
         SET user_id = EXCLUDED.user_id, total_minor = EXCLUDED.total_minor,
             currency = EXCLUDED.currency, header_occurred_at = EXCLUDED.header_occurred_at,
             header_event_id = EXCLUDED.header_event_id
         WHERE (EXCLUDED.header_occurred_at, EXCLUDED.header_event_id)
               < (t.header_occurred_at, t.header_event_id)
         RETURNING order_id",
    )
    .bind(header.order_id)
    .bind(header.user_id)
    .bind(header.total.minor)
    .bind(&header.total.currency)
    .bind(source.occurred_at)
    .bind(source.event_id)
    .fetch_optional(&mut *conn)
    .await?;
    if replaced.is_some() {
        sqlx::query("DELETE FROM order_lines WHERE order_id = $1")
            .bind(header.order_id)
            .execute(&mut *conn)
            .await?;
        let line_nos: Vec<i32> = (0..header.lines.len() as i32).collect();
        let products: Vec<Uuid> = header.lines.iter().map(|l| l.product_id).collect();
        let quantities: Vec<i64> = header.lines.iter().map(|l| l.quantity).collect();
        let prices: Vec<i64> = header.lines.iter().map(|l| l.unit_price_minor).collect();
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_minor)
             SELECT $1, * FROM UNNEST($2::int[], $3::uuid[], $4::bigint[], $5::bigint[])",
        )
        .bind(header.order_id)
        .bind(&line_nos)
        .bind(&products)
        .bind(&quantities)
        .bind(&prices)
        .execute(&mut *conn)
        .await?;
    }
    let query = match milestone {
        Milestone::Placed => {
            sqlx::query("UPDATE orders SET placed_at = LEAST(placed_at, $2) WHERE order_id = $1")
                .bind(header.order_id)
                .bind(source.occurred_at)
        }
        Milestone::Confirmed => sqlx::query(
            "UPDATE orders SET confirmed_at = LEAST(confirmed_at, $2) WHERE order_id = $1",
        )
        .bind(header.order_id)
        .bind(source.occurred_at),
        Milestone::Cancelled { reason, detail } => sqlx::query(
            "UPDATE orders
             SET cancelled_at = $2, cancel_event_id = $3,
                 cancellation_reason = $4, cancellation_detail = $5
             WHERE order_id = $1
               AND (cancelled_at IS NULL OR ($2, $3) < (cancelled_at, cancel_event_id))",
        )
        .bind(header.order_id)
        .bind(source.occurred_at)
        .bind(source.event_id)
        .bind(*reason)
        .bind(detail.as_str()),
    };
    query.execute(conn).await.map(drop)
}

/// A consistent snapshot to read a whole report from.
pub(crate) async fn snapshot(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, ServiceError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

pub(crate) async fn progress(conn: &mut PgConnection) -> Result<Progress, ServiceError> {
    let (applied_events, last_event_time): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), max(occurred_at) FROM applied_events")
            .fetch_one(conn)
            .await?;
    Ok(Progress {
        applied_events,
        last_event_time,
    })
}

pub(crate) async fn outcomes(conn: &mut PgConnection) -> Result<Outcomes, ServiceError> {
    let (placed, confirmed, cancelled, pending): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT
             count(*) FILTER (WHERE placed_at IS NOT NULL),
             count(*) FILTER (WHERE cancelled_at IS NULL AND confirmed_at IS NOT NULL),
             count(*) FILTER (WHERE cancelled_at IS NOT NULL),
             count(*) FILTER (WHERE placed_at IS NOT NULL
                                AND confirmed_at IS NULL AND cancelled_at IS NULL)
         FROM orders",
    )
    .fetch_one(&mut *conn)
    .await?;
    let cancelled_by_reason: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT cancellation_reason, count(*) FROM orders
         WHERE cancelled_at IS NOT NULL
         GROUP BY cancellation_reason ORDER BY cancellation_reason",
    )
    .fetch_all(conn)
    .await?;
    Ok(Outcomes {
        placed,
        confirmed,
        cancelled,
        pending,
        cancelled_by_reason,
    })
}

pub(crate) async fn revenue(conn: &mut PgConnection) -> Result<Vec<Revenue>, ServiceError> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "WITH confirmed AS (
             SELECT currency, sum(total_minor) AS total FROM orders
             WHERE confirmed_at IS NOT NULL AND cancelled_at IS NULL
             GROUP BY currency
         ), captured AS (
             SELECT currency, sum(amount_minor) AS total FROM payment_captures GROUP BY currency
         ), refunded AS (
             SELECT currency, sum(amount_minor) AS total FROM payment_refunds GROUP BY currency
         ), currencies AS (
             SELECT currency FROM confirmed
             UNION SELECT currency FROM captured
             UNION SELECT currency FROM refunded
         )
         SELECT c.currency,
                COALESCE(confirmed.total, 0)::bigint,
                COALESCE(captured.total, 0)::bigint,
                COALESCE(refunded.total, 0)::bigint
         FROM currencies c
         LEFT JOIN confirmed USING (currency)
         LEFT JOIN captured USING (currency)
         LEFT JOIN refunded USING (currency)
         ORDER BY c.currency",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(currency, confirmed_total, captured, refunded)| Revenue {
            currency,
            confirmed_total,
            captured,
            refunded,
        })
        .collect())
}

pub(crate) async fn units_sold(conn: &mut PgConnection) -> Result<Vec<ProductSales>, ServiceError> {
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT l.product_id, sum(l.quantity)::bigint, count(DISTINCT l.order_id)
         FROM order_lines l JOIN orders o USING (order_id)
         WHERE o.confirmed_at IS NOT NULL AND o.cancelled_at IS NULL
         GROUP BY l.product_id
         ORDER BY l.product_id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(product_id, units_sold, order_count)| ProductSales {
            product_id,
            units_sold,
            order_count,
        })
        .collect())
}

pub(crate) async fn saga_counts(conn: &mut PgConnection) -> Result<SagaCounts, ServiceError> {
    let (stock_rejected, payment_declined, stock_released, payment_refunded): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT
             (SELECT count(*) FROM stock_rejected),
             (SELECT count(DISTINCT order_id) FROM payment_declines),
             (SELECT count(*) FROM stock_released),
             (SELECT count(*) FROM payment_refunds)",
        )
        .fetch_one(conn)
        .await?;
    Ok(SagaCounts {
        stock_rejected,
        payment_declined,
        stock_released,
        payment_refunded,
    })
}

pub(crate) async fn saga_durations(conn: &mut PgConnection) -> Result<SagaDurations, ServiceError> {
    let (median_micros, p99_micros, max_micros): (Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY micros),
                    percentile_disc(0.99) WITHIN GROUP (ORDER BY micros),
                    max(micros)
             FROM (
                 SELECT (EXTRACT(EPOCH FROM LEAST(confirmed_at, cancelled_at) - placed_at)
                         * 1000000)::bigint AS micros
                 FROM orders
                 WHERE placed_at IS NOT NULL
                   AND (confirmed_at IS NOT NULL OR cancelled_at IS NOT NULL)
             ) ended",
        )
        .fetch_one(conn)
        .await?;
    Ok(SagaDurations {
        median_micros,
        p99_micros,
        max_micros,
    })
}
