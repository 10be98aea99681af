//! `shop.analytics.v1.AnalyticsService`: each report is read from one
//! consistent snapshot of the projections.

use crate::domain::{Outcomes, Progress, Revenue};
use crate::store;
use shop_proto::shop::analytics::v1::analytics_service_server::AnalyticsService;
use shop_proto::shop::analytics::v1::{
    CancellationCount, CurrencyRevenue, GetSagaOutcomesRequest, GetSagaOutcomesResponse,
    GetSalesReportRequest, GetSalesReportResponse, ListDeadLettersRequest, ListDeadLettersResponse,
    OrderOutcomeCounts, ProductUnits,
};
use shop_proto::shop::common::v1::Money;
use shop_runtime::convert::timestamp;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

pub(crate) struct AnalyticsApi {
    pool: PgPool,
}

impl AnalyticsApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn duration(micros: i64) -> prost_types::Duration {
    // Seconds and nanos carry the same sign, as google.protobuf.Duration
    // requires.
    prost_types::Duration {
        seconds: micros / 1_000_000,
        nanos: (micros % 1_000_000) as i32 * 1000,
    }
}

fn outcome_counts(o: Outcomes) -> OrderOutcomeCounts {
    OrderOutcomeCounts {
        placed_count: o.placed,
        confirmed_count: o.confirmed,
        cancelled_count: o.cancelled,
        pending_count: o.pending,
        cancelled_by_reason: o
            .cancelled_by_reason
            .into_iter()
            .map(|(reason, count)| CancellationCount { reason, count })
            .collect(),
    }
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: currency.to_string(),
    })
}

fn currency_revenue(r: Revenue) -> CurrencyRevenue {
    CurrencyRevenue {
        confirmed_total: money(r.confirmed_total, &r.currency),
        captured: money(r.captured, &r.currency),
        refunded: money(r.refunded, &r.currency),
        net_captured: money(r.net_captured(), &r.currency),
        currency_code: r.currency,
    }
}

fn last_event_time(p: &Progress) -> Option<prost_types::Timestamp> {
    p.last_event_time.map(timestamp)
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn get_sales_report(
        &self,
        _request: Request<GetSalesReportRequest>,
    ) -> Result<Response<GetSalesReportResponse>, Status> {
        let mut tx = store::snapshot(&self.pool).await?;
        let progress = store::progress(&mut tx).await?;
        let outcomes = store::outcomes(&mut tx).await?;
        let revenue = store::revenue(&mut tx).await?;
        let units = store::units_sold(&mut tx).await?;
        shop_runtime::db::commit(tx)
            .await
            .map_err(shop_runtime::ServiceError::from)?;
        Ok(Response::new(GetSalesReportResponse {
            orders: Some(outcome_counts(outcomes)),
            revenue: revenue.into_iter().map(currency_revenue).collect(),
            units_sold: units
                .into_iter()
                .map(|p| ProductUnits {
                    product_id: p.product_id.to_string(),
                    units_sold: p.units_sold,
                    order_count: p.order_count,
                })
                .collect(),
            applied_event_count: progress.applied_events,
            last_event_time: last_event_time(&progress),
        }))
    }

    async fn get_saga_outcomes(
        &self,
        _request: Request<GetSagaOutcomesRequest>,
    ) -> Result<Response<GetSagaOutcomesResponse>, Status> {
        let mut tx = store::snapshot(&self.pool).await?;
        let progress = store::progress(&mut tx).await?;
        let outcomes = store::outcomes(&mut tx).await?;
        let counts = store::saga_counts(&mut tx).await?;
        let durations = store::saga_durations(&mut tx).await?;
        shop_runtime::db::commit(tx)
            .await
            .map_err(shop_runtime::ServiceError::from)?;
        Ok(Response::new(GetSagaOutcomesResponse {
            outcomes: Some(outcome_counts(outcomes)),
            stock_rejected_count: counts.stock_rejected,
            payment_declined_count: counts.payment_declined,
            stock_released_count: counts.stock_released,
            payment_refunded_count: counts.payment_refunded,
            median_saga_duration: durations.median_micros.map(duration),
            p99_saga_duration: durations.p99_micros.map(duration),
            max_saga_duration: durations.max_micros.map(duration),
            applied_event_count: progress.applied_events,
            last_event_time: last_event_time(&progress),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_one_sign() {
        assert_eq!(
            duration(1_500_000),
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            duration(-1_500_000),
            prost_types::Duration {
                seconds: -1,
                nanos: -500_000_000
            }
        );
    }
}
