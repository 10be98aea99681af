//! The `products` and `categories` tables.

use chrono::{DateTime, Utc};
use shop_runtime::ServiceError;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// One row of `products`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ProductRow {
    pub(crate) product_id: Uuid,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) category: String,
    pub(crate) price_minor: i64,
    pub(crate) currency: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The columns every query returns, in `FromRow` order.
macro_rules! columns {
    () => {
        "product_id, sku, name, description, category, price_minor, currency, created_at, updated_at"
    };
}

/// A new product's fields, already validated.
pub(crate) struct NewProduct<'a> {
    pub(crate) product_id: Uuid,
    pub(crate) sku: &'a str,
    pub(crate) name: &'a str,
    pub(crate) description: &'a str,
    pub(crate) category: &'a str,
    pub(crate) price_minor: i64,
    pub(crate) currency: &'a str,
}

/// Changes to a product; `None` leaves a field as it is.
#[derive(Default)]
pub(crate) struct ProductChanges<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) description: Option<&'a str>,
    pub(crate) category: Option<&'a str>,
    pub(crate) price: Option<(i64, &'a str)>,
}

fn sku_taken(e: sqlx::Error) -> ServiceError {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("products_sku_key") => {
            ServiceError::AlreadyExists("a product with this sku already exists".into())
        }
        _ => e.into(),
    }
}

async fn ensure_category(
    tx: &mut Transaction<'_, Postgres>,
    slug: &str,
) -> Result<(), ServiceError> {
    sqlx::query("INSERT INTO categories (slug) VALUES ($1) ON CONFLICT (slug) DO NOTHING")
        .bind(slug)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn insert(pool: &PgPool, p: NewProduct<'_>) -> Result<ProductRow, ServiceError> {
    let mut tx = pool.begin().await?;
    ensure_category(&mut tx, p.category).await?;
    let row = sqlx::query_as::<_, ProductRow>(concat!(
        "INSERT INTO products
             (product_id, sku, name, description, category, price_minor, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(p.product_id)
    .bind(p.sku)
    .bind(p.name)
    .bind(p.description)
    .bind(p.category)
    .bind(p.price_minor)
    .bind(p.currency)
    .fetch_one(&mut *tx)
    .await
    .map_err(sku_taken)?;
    shop_runtime::db::commit(tx).await?;
    Ok(row)
}

pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ProductRow>, ServiceError> {
    Ok(sqlx::query_as::<_, ProductRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE product_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub(crate) async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ProductRow>, ServiceError> {
    Ok(sqlx::query_as::<_, ProductRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM products WHERE product_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

pub(crate) async fn update(
    pool: &PgPool,
    id: Uuid,
    changes: ProductChanges<'_>,
) -> Result<Option<ProductRow>, ServiceError> {
    let mut tx = pool.begin().await?;
    if let Some(category) = changes.category {
        ensure_category(&mut tx, category).await?;
    }
    let row = sqlx::query_as::<_, ProductRow>(concat!(
        "UPDATE products SET
             name = COALESCE($2, name),
             description = COALESCE($3, description),
             category = COALESCE($4, category),
             price_minor = COALESCE($5, price_minor),
             currency = COALESCE($6, currency),
             updated_at = now()
         WHERE product_id = $1
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(id)
    .bind(changes.name)
    .bind(changes.description)
    .bind(changes.category)
    .bind(changes.price.map(|p| p.0))
    .bind(changes.price.map(|p| p.1))
    .fetch_optional(&mut *tx)
    .await?;
    shop_runtime::db::commit(tx).await?;
    Ok(row)
}

/// One page of products in id order (creation order: ids are UUIDv7), after
/// `after` when given. Keyset paging on an immutable key: walking the pages
/// never skips or repeats a product, even while others are being added.
pub(crate) async fn list(
    pool: &PgPool,
    category: Option<&str>,
    name_pattern: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ProductRow>, ServiceError> {
    Ok(sqlx::query_as::<_, ProductRow>(concat!(
        "SELECT ",
        columns!(),
        " FROM products
         WHERE ($1::text IS NULL OR category = $1)
           AND ($2::text IS NULL OR name ILIKE $2)
           AND ($3::uuid IS NULL OR product_id > $3)
         ORDER BY product_id
         LIMIT $4"
    ))
    .bind(category)
    .bind(name_pattern)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
