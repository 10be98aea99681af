//! `shop.catalog.v1.CatalogService`: request checks, then store calls.

use crate::domain::{self, MAX_BATCH};
use crate::store::{self, NewProduct, ProductChanges, ProductRow};
use shop_proto::shop::catalog::v1::catalog_service_server::CatalogService;
use shop_proto::shop::catalog::v1::{
    BatchGetProductsRequest, BatchGetProductsResponse, CreateProductRequest, CreateProductResponse,
    GetProductRequest, GetProductResponse, ListProductsRequest, ListProductsResponse, Product,
    UpdateProductRequest, UpdateProductResponse,
};
use shop_proto::shop::common::v1::Money;
use shop_runtime::convert::{parse_uuid as parse_id, timestamp};
use shop_runtime::paging;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub(crate) struct CatalogApi {
    pool: PgPool,
}

impl CatalogApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(row: ProductRow) -> Product {
    Product {
        product_id: row.product_id.to_string(),
        sku: row.sku,
        name: row.name,
        description: row.description,
        category: row.category,
        price: Some(Money {
            amount_minor: row.price_minor,
            currency_code: row.currency,
        }),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn create_product(
        &self,
        request: Request<CreateProductRequest>,
    ) -> Result<Response<CreateProductResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        domain::check_sku(&mut v, "sku", &req.sku);
        domain::check_name(&mut v, "name", &req.name);
        domain::check_description(&mut v, "description", &req.description);
        domain::check_category(&mut v, "category", &req.category);
        let price = match &req.price {
            Some(m) => domain::check_price(&mut v, "price", m.amount_minor, &m.currency_code),
            None => {
                v.add("price", "is required");
                None
            }
        };
        v.into_result()?;
        let price = price.expect("checked above");
        let row = store::insert(
            &self.pool,
            NewProduct {
                product_id: Uuid::now_v7(),
                sku: &req.sku,
                name: req.name.trim(),
                description: &req.description,
                category: &req.category,
                price_minor: price.amount_minor,
                currency: &price.currency,
            },
        )
        .await?;
        tracing::info!(product_id = %row.product_id, sku = %row.sku, "product created");
        Ok(Response::new(CreateProductResponse {
            product: Some(to_proto(row)),
        }))
    }

    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<GetProductResponse>, Status> {
        let id = parse_id("product_id", &request.get_ref().product_id)?;
        let row = store::get(&self.pool, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("product", id))?;
        Ok(Response::new(GetProductResponse {
            product: Some(to_proto(row)),
        }))
    }

    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            req.product_ids.len() <= MAX_BATCH,
            "product_ids",
            format!("must have at most {MAX_BATCH} ids"),
        );
        let mut ids = Vec::with_capacity(req.product_ids.len());
        for (i, raw) in req.product_ids.iter().enumerate() {
            match Uuid::parse_str(raw) {
                Ok(id) => ids.push(id),
                Err(_) => v.add(format!("product_ids[{i}]"), "must be a UUID"),
            }
        }
        v.into_result()?;
        let mut found: HashMap<Uuid, ProductRow> = store::get_many(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|row| (row.product_id, row))
            .collect();
        // Answer in request order; a repeated id is answered once.
        let mut products = Vec::with_capacity(found.len());
        let mut not_found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            match found.remove(&id) {
                Some(row) => products.push(to_proto(row)),
                None => not_found.push(id.to_string()),
            }
        }
        Ok(Response::new(BatchGetProductsResponse {
            products,
            not_found_product_ids: not_found,
        }))
    }

    async fn update_product(
        &self,
        request: Request<UpdateProductRequest>,
    ) -> Result<Response<UpdateProductResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let id = Uuid::parse_str(&req.product_id)
            .map_err(|_| v.add("product_id", "must be a UUID"))
            .ok();
        if let Some(name) = &req.name {
            domain::check_name(&mut v, "name", name);
        }
        if let Some(description) = &req.description {
            domain::check_description(&mut v, "description", description);
        }
        if let Some(category) = &req.category {
            domain::check_category(&mut v, "category", category);
        }
        let price = req
            .price
            .as_ref()
            .and_then(|m| domain::check_price(&mut v, "price", m.amount_minor, &m.currency_code));
        v.into_result()?;
        let id = id.expect("checked above");
        let changes = ProductChanges {
            name: req.name.as_deref().map(str::trim),
            description: req.description.as_deref(),
            category: req.category.as_deref(),
            price: price
                .as_ref()
                .map(|p| (p.amount_minor, p.currency.as_str())),
        };
        let row = store::update(&self.pool, id, changes)
            .await?
            .ok_or_else(|| ServiceError::not_found("product", id))?;
        Ok(Response::new(UpdateProductResponse {
            product: Some(to_proto(row)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let limit = paging::page_size(&mut v, req.page_size);
        if !req.category.is_empty() {
            domain::check_category(&mut v, "category", &req.category);
        }
        v.check(
            req.name_contains.chars().count() <= 200,
            "name_contains",
            "must be at most 200 characters",
        );
        let scope: [&[u8]; 3] = [
            b"catalog/ListProducts",
            req.category.as_bytes(),
            req.name_contains.as_bytes(),
        ];
        let after = paging::page_start(&mut v, &req.page_token, &scope);
        v.into_result()?;

        let category = (!req.category.is_empty()).then_some(req.category.as_str());
        let pattern =
            (!req.name_contains.is_empty()).then(|| domain::contains_pattern(&req.name_contains));
        // One extra row tells whether another page follows.
        let mut rows =
            store::list(&self.pool, category, pattern.as_deref(), after, limit + 1).await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            let last_id = rows.last().expect("limit >= 1").product_id;
            paging::next_page_token(last_id, &scope)
        } else {
            String::new()
        };
        Ok(Response::new(ListProductsResponse {
            products: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}
