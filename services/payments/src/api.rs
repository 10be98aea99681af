//! `shop.payments.v1.PaymentService`: request checks, then store reads.

use crate::consumers::decline_reason_to_proto;
use crate::domain::DeclineReason;
use crate::store::{self, PaymentRow, RefundRow};
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::payments::v1::payment_service_server::PaymentService;
use shop_proto::shop::payments::v1::{
    GetPaymentRequest, GetPaymentResponse, ListDeadLettersRequest, ListDeadLettersResponse,
    ListPaymentsRequest, ListPaymentsResponse, Payment, PaymentStatus, Refund,
};
use shop_runtime::convert::timestamp;
use shop_runtime::paging;
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub(crate) struct PaymentsApi {
    pool: PgPool,
}

impl PaymentsApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// `rows` as protobuf payments, each with its refunds.
    async fn with_refunds(&self, rows: Vec<PaymentRow>) -> Result<Vec<Payment>, ServiceError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.payment_id).collect();
        let mut refunds: HashMap<Uuid, Vec<RefundRow>> = HashMap::new();
        for refund in store::refunds_of(&self.pool, &ids).await? {
            refunds.entry(refund.payment_id).or_default().push(refund);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let of_row = refunds.remove(&row.payment_id).unwrap_or_default();
                to_proto(row, of_row)
            })
            .collect())
    }
}

fn status_to_proto(status: &str) -> PaymentStatus {
    match status {
        "captured" => PaymentStatus::Captured,
        "declined" => PaymentStatus::Declined,
        "refunded" => PaymentStatus::Refunded,
        _ => PaymentStatus::Unspecified,
    }
}

fn to_proto(row: PaymentRow, refunds: Vec<RefundRow>) -> Payment {
    let refunded_minor = refunds.iter().map(|r| r.amount_minor).sum();
    let status = status_to_proto(&row.status);
    let decline_reason = row
        .decline_reason
        .as_deref()
        .and_then(DeclineReason::from_stored)
        .map_or(0, |r| decline_reason_to_proto(r) as i32);
    Payment {
        payment_id: row.payment_id.to_string(),
        order_id: row.order_id.to_string(),
        user_id: row.user_id.to_string(),
        amount: Some(Money {
            amount_minor: row.amount_minor,
            currency_code: row.currency.clone(),
        }),
        status: status as i32,
        decline_reason,
        decline_detail: if status == PaymentStatus::Declined {
            row.detail
        } else {
            String::new()
        },
        refunded_amount: Some(Money {
            amount_minor: refunded_minor,
            currency_code: row.currency,
        }),
        refunds: refunds
            .into_iter()
            .map(|r| Refund {
                refund_id: r.refund_id.to_string(),
                payment_id: r.payment_id.to_string(),
                amount: Some(Money {
                    amount_minor: r.amount_minor,
                    currency_code: r.currency,
                }),
                reason: r.reason,
                create_time: Some(timestamp(r.created_at)),
            })
            .collect(),
        attempt_count: row.attempt_count,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentsApi {
    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let id = Uuid::parse_str(&request.get_ref().payment_id)
            .map_err(|_| ServiceError::invalid("payment_id", "must be a UUID"))?;
        let row = store::get(&self.pool, id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::not_found("payment", id))?;
        let payment = self.with_refunds(vec![row]).await?.pop();
        Ok(Response::new(GetPaymentResponse { payment }))
    }

    async fn list_payments(
        &self,
        request: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let limit = paging::page_size(&mut v, req.page_size);
        let order_id = if req.order_id.is_empty() {
            None
        } else {
            let parsed = Uuid::parse_str(&req.order_id).ok();
            v.check(parsed.is_some(), "order_id", "must be a UUID or empty");
            parsed
        };
        // Tokens are bound to the canonical form of the filter.
        let filter = order_id.map_or_else(|| req.order_id.clone(), |id| id.to_string());
        let scope: [&[u8]; 2] = [b"payments/ListPayments", filter.as_bytes()];
        let after = paging::page_start(&mut v, &req.page_token, &scope);
        v.into_result()?;

        // One extra row tells whether another page follows.
        let mut rows = store::list(&self.pool, order_id, after, limit + 1)
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            let last_id = rows.last().expect("limit >= 1").payment_id;
            paging::next_page_token(last_id, &scope)
        } else {
            String::new()
        };
        Ok(Response::new(ListPaymentsResponse {
            payments: self.with_refunds(rows).await?,
            next_page_token,
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
