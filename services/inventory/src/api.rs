//! `shop.inventory.v1.InventoryService`: request checks, then store calls.

use crate::domain::{self, MAX_BATCH, RejectionReason};
use crate::store::{self, Adjustment, Reservation, StockRow};
use shop_proto::shop::common::v1::StockRejectionReason;
use shop_proto::shop::inventory::v1::inventory_service_server::InventoryService;
use shop_proto::shop::inventory::v1::{
    AdjustStockRequest, AdjustStockResponse, BatchGetStockRequest, BatchGetStockResponse,
    GetReservationRequest, GetReservationResponse, GetStockRequest, GetStockResponse,
    ListDeadLettersRequest, ListDeadLettersResponse, ReservationLine, ReservationStatus,
    SetStockRequest, SetStockResponse, StockLevel,
};
use shop_runtime::convert::{parse_uuid as parse_id, timestamp};
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// Longest reason an adjustment may record.
const MAX_REASON_CHARS: usize = 500;

pub(crate) struct InventoryApi {
    pool: PgPool,
}

impl InventoryApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Parses `raw` as a UUID, recording a violation for `field` if it is not.
fn check_id(v: &mut FieldViolations, field: &str, raw: &str) -> Option<Uuid> {
    let id = Uuid::parse_str(raw).ok();
    v.check(id.is_some(), field, "must be a UUID");
    id
}

fn stock_level(row: StockRow) -> StockLevel {
    StockLevel {
        product_id: row.product_id.to_string(),
        available: row.available,
        reserved: row.reserved,
        sold: row.sold,
        update_time: Some(timestamp(row.updated_at)),
    }
}

fn reservation(r: Reservation) -> shop_proto::shop::inventory::v1::Reservation {
    let status = match r.status {
        domain::ReservationStatus::Reserved => ReservationStatus::Reserved,
        domain::ReservationStatus::Rejected => ReservationStatus::Rejected,
        domain::ReservationStatus::Committed => ReservationStatus::Committed,
        domain::ReservationStatus::Released => ReservationStatus::Released,
    };
    let rejection_reason = match r.rejection_reason {
        None => StockRejectionReason::Unspecified,
        Some(RejectionReason::InsufficientStock) => StockRejectionReason::InsufficientStock,
        Some(RejectionReason::UnknownProduct) => StockRejectionReason::UnknownProduct,
    };
    shop_proto::shop::inventory::v1::Reservation {
        order_id: r.order_id.to_string(),
        status: status as i32,
        lines: r
            .lines
            .into_iter()
            .map(|l| ReservationLine {
                product_id: l.product_id.to_string(),
                quantity: l.quantity,
            })
            .collect(),
        rejection_reason: rejection_reason as i32,
        rejection_detail: r.rejection_detail,
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<GetStockResponse>, Status> {
        let id = parse_id("product_id", &request.get_ref().product_id)?;
        let row = store::get_stock(&self.pool, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("stock of product", id))?;
        Ok(Response::new(GetStockResponse {
            stock: Some(stock_level(row)),
        }))
    }

    async fn batch_get_stock(
        &self,
        request: Request<BatchGetStockRequest>,
    ) -> Result<Response<BatchGetStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            req.product_ids.len() <= MAX_BATCH,
            "product_ids",
            format!("must have at most {MAX_BATCH} ids"),
        );
        let ids: Vec<Uuid> = req
            .product_ids
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| check_id(&mut v, &format!("product_ids[{i}]"), raw))
            .collect();
        v.into_result()?;
        let mut found: HashMap<Uuid, StockRow> = store::get_stocks(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|row| (row.product_id, row))
            .collect();
        // Answer in request order; a repeated id is answered once.
        let mut stocks = Vec::with_capacity(found.len());
        let mut not_found = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            match found.remove(&id) {
                Some(row) => stocks.push(stock_level(row)),
                None => not_found.push(id.to_string()),
            }
        }
        Ok(Response::new(BatchGetStockResponse {
            stocks,
            not_found_product_ids: not_found,
        }))
    }

    async fn set_stock(
        &self,
        request: Request<SetStockRequest>,
    ) -> Result<Response<SetStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let id = check_id(&mut v, "product_id", &req.product_id);
        v.check(req.available >= 0, "available", "must be zero or more");
        v.into_result()?;
        let id = id.expect("checked above");
        let row = store::set_available(&self.pool, id, req.available).await?;
        tracing::info!(product_id = %id, available = row.available, "stock set");
        Ok(Response::new(SetStockResponse {
            stock: Some(stock_level(row)),
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<AdjustStockRequest>,
    ) -> Result<Response<AdjustStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let product_id = check_id(&mut v, "product_id", &req.product_id);
        v.check(req.delta != 0, "delta", "must not be zero");
        let key = check_id(&mut v, "idempotency_key", &req.idempotency_key);
        v.check(
            req.reason.chars().count() <= MAX_REASON_CHARS,
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
        v.into_result()?;
        let call = Adjustment {
            key: key.expect("checked above"),
            product_id: product_id.expect("checked above"),
            delta: req.delta,
            reason: &req.reason,
        };
        let row = store::adjust(&self.pool, &call).await?;
        tracing::info!(
            product_id = %call.product_id,
            delta = call.delta,
            available = row.available,
            "stock adjusted"
        );
        Ok(Response::new(AdjustStockResponse {
            stock: Some(stock_level(row)),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<GetReservationResponse>, Status> {
        let id = parse_id("order_id", &request.get_ref().order_id)?;
        let found = store::get_reservation(&self.pool, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("reservation of order", id))?;
        Ok(Response::new(GetReservationResponse {
            reservation: Some(reservation(found)),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let (dead_letters, next_page_token) =
            shop_events::dead_letters::list(&self.pool, req.page_size, &req.page_token).await?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }
}
