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

/// An order with its lines (by line number) and its saga's steps in the
/// order they happened: by the time the step's service reports (the events
/// of different services reach orders through different consumers, so one
/// may be recorded before an earlier one), then by the order orders
/// recorded them.
pub(crate) struct FullOrder {
    pub(crate) order: OrderRow,
    pub(crate) lines: Vec<LineRow>,
    pub(crate) steps: Vec<StepRow>,
}

/// `orders` with each order's lines and steps aggregated beside it, so that
/// an order (or a page of them) is read in one statement.
macro_rules! full_orders {
    ($where:literal) => {
        concat!(
            "SELECT ",
            order_columns!(),
            ", line_product_ids, line_skus, line_names, line_quantities, line_prices,
               step_steps, step_statuses, step_reasons, step_event_ids, step_times
             FROM orders o
             CROSS JOIN LATERAL (
                 SELECT array_agg(product_id ORDER BY line_no) AS line_product_ids,
                        array_agg(sku ORDER BY line_no) AS line_skus,
                        array_agg(product_name ORDER BY line_no) AS line_names,
                        array_agg(quantity ORDER BY line_no) AS line_quantities,
                        array_agg(unit_price_minor ORDER BY line_no) AS line_prices
                 FROM order_lines l WHERE l.order_id = o.order_id) l
             CROSS JOIN LATERAL (
                 SELECT array_agg(step ORDER BY occurred_at, seq) AS step_steps,
                        array_agg(status ORDER BY occurred_at, seq) AS step_statuses,
                        array_agg(reason ORDER BY occurred_at, seq) AS step_reasons,
                        array_agg(event_id ORDER BY occurred_at, seq) AS step_event_ids,
                        array_agg(occurred_at ORDER BY occurred_at, seq) AS step_times
                 FROM saga_steps s WHERE s.order_id = o.order_id) s ",
            $where
        )
    };
}

#[derive(sqlx::FromRow)]
struct FullRow {
    #[sqlx(flatten)]
    order: OrderRow,
    line_product_ids: Option<Vec<Uuid>>,
    line_skus: Option<Vec<String>>,
    line_names: Option<Vec<String>>,
    line_quantities: Option<Vec<i64>>,
    line_prices: Option<Vec<i64>>,
    step_steps: Option<Vec<i16>>,
    step_statuses: Option<Vec<i16>>,
    step_reasons: Option<Vec<String>>,
    step_event_ids: Option<Vec<Option<Uuid>>>,
    step_times: Option<Vec<DateTime<Utc>>>,
}

impl From<FullRow> for FullOrder {
    fn from(r: FullRow) -> Self {
        let lines = zip5(
            r.line_product_ids.unwrap_or_default(),
            r.line_skus.unwrap_or_default(),
            r.line_names.unwrap_or_default(),
            r.line_quantities.unwrap_or_default(),
            r.line_prices.unwrap_or_default(),
        )
        .map(
            |(product_id, sku, product_name, quantity, unit_price_minor)| LineRow {
                product_id,
                sku,
                product_name,
                quantity,
                unit_price_minor,
            },
        )
        .collect();
        let steps = zip5(
            r.step_steps.unwrap_or_default(),
            r.step_statuses.unwrap_or_default(),
            r.step_reasons.unwrap_or_default(),
            r.step_event_ids.unwrap_or_default(),
            r.step_times.unwrap_or_default(),
        )
        .map(|(step, status, reason, event_id, occurred_at)| StepRow {
            step,
            status,
            reason,
            event_id,
            occurred_at,
        })
        .collect();
        Self {
            order: r.order,
            lines,
            steps,
        }
    }
}

/// Five columns of one aggregate, element by element.
fn zip5<A, B, C, D, E>(
    a: Vec<A>,
    b: Vec<B>,
    c: Vec<C>,
    d: Vec<D>,
    e: Vec<E>,
) -> impl Iterator<Item = (A, B, C, D, E)> {
    a.into_iter()
        .zip(b)
        .zip(c)
        .zip(d)
        .zip(e)
        .map(|((((a, b), c), d), e)| (a, b, c, d, e))
}

/// The order with its lines and steps, in one statement.
pub(crate) async fn get_full(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<FullOrder>> {
    let row: Option<FullRow> = sqlx::query_as(full_orders!("WHERE o.order_id = $1"))
        .bind(order_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(FullOrder::from))
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

/// A saga step to record with a state change, in the same statement.
pub(crate) struct NewStep<'a> {
    pub(crate) step: i16,
    pub(crate) status: i16,
    pub(crate) reason: &'a str,
    pub(crate) event_id: Option<Uuid>,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// Records `step` on the order's timeline.
pub(crate) async fn record(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: &NewStep<'_>,
) -> sqlx::Result<()> {
    add_step(
        conn,
        order_id,
        i32::from(step.step),
        i32::from(step.status),
        step.reason,
        step.event_id,
        step.occurred_at,
    )
    .await
}

/// `$then` (an update of order `$1`, its own parameters from `$7`) with
/// the steps bound by [`bind_steps`] recorded, in order, by the same
/// statement.
macro_rules! with_steps {
    ($then:literal) => {
        concat!(
            "WITH steps AS (
                 INSERT INTO saga_steps (order_id, step, status, reason, event_id, occurred_at)
                 SELECT $1, step, status, reason, event_id, occurred_at
                 FROM unnest($2::smallint[], $3::smallint[], $4::text[], $5::uuid[],
                             $6::timestamptz[])
                      WITH ORDINALITY AS s(step, status, reason, event_id, occurred_at, n)
                 ORDER BY n) ",
            $then
        )
    };
}

fn bind_steps<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    order_id: Uuid,
    steps: &[NewStep<'_>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(order_id)
        .bind(steps.iter().map(|s| s.step).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.status).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| s.reason.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.event_id).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.occurred_at).collect::<Vec<_>>())
}

/// The saga made progress: `steps` recorded and its deadline pushed back.
pub(crate) async fn progressed(
    conn: &mut PgConnection,
    order_id: Uuid,
    deadline: DateTime<Utc>,
    steps: &[NewStep<'_>],
) -> sqlx::Result<()> {
    bind_steps(
        sqlx::query(with_steps!(
            "UPDATE orders SET deadline_at = $7, updated_at = now() WHERE order_id = $1"
        )),
        order_id,
        steps,
    )
    .bind(deadline)
    .execute(conn)
    .await?;
    Ok(())
}

/// A pending order confirmed on `payment_id`, with `steps` recorded.
pub(crate) async fn set_confirmed(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Uuid,
    steps: &[NewStep<'_>],
) -> sqlx::Result<()> {
    bind_steps(
        sqlx::query(with_steps!(
            "UPDATE orders SET status = 'confirmed', payment_id = $7, updated_at = now()
             WHERE order_id = $1 AND status = 'pending'"
        )),
        order_id,
        steps,
    )
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
/// A page of `user_id`'s orders, newest first, each with its lines and
/// steps: one statement.
pub(crate) async fn list_full(
    pool: &PgPool,
    user_id: Uuid,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<FullOrder>> {
    let rows: Vec<FullRow> = sqlx::query_as(full_orders!(
        "WHERE o.user_id = $1
           AND ($2::text IS NULL OR o.status = $2)
           AND ($3::uuid IS NULL OR o.order_id < $3)
         ORDER BY o.order_id DESC LIMIT $4"
    ))
    .bind(user_id)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FullOrder::from).collect())
}
