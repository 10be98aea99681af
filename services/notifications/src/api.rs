//! `shop.notifications.v1.NotificationService`: request checks, then store
//! calls.

use crate::domain::Kind;
use crate::store::{self, NotificationRow};
use shop_proto::shop::notifications::v1::notification_service_server::NotificationService;
use shop_proto::shop::notifications::v1::{
    ListDeadLettersRequest, ListDeadLettersResponse, ListNotificationsRequest,
    ListNotificationsResponse, Notification, NotificationKind,
};
use shop_runtime::FieldViolations;
use shop_runtime::convert::timestamp;
use shop_runtime::paging;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub(crate) struct NotificationsApi {
    pool: PgPool,
}

impl NotificationsApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(row: NotificationRow) -> Notification {
    let kind = match Kind::from_db(&row.kind) {
        Some(Kind::Welcome) => NotificationKind::Welcome,
        Some(Kind::OrderConfirmed) => NotificationKind::OrderConfirmed,
        Some(Kind::OrderCancelled) => NotificationKind::OrderCancelled,
        None => NotificationKind::Unspecified,
    };
    Notification {
        notification_id: row.notification_id.to_string(),
        user_id: row.user_id.to_string(),
        kind: kind as i32,
        order_id: row.order_id.map(|id| id.to_string()).unwrap_or_default(),
        subject: row.subject,
        body: row.body,
        source_event_id: row.source_event_id.to_string(),
        create_time: Some(timestamp(row.created_at)),
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationsApi {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let limit = paging::page_size(&mut v, req.page_size);
        let user_id = if req.user_id.is_empty() {
            v.add("user_id", "is required");
            None
        } else {
            Uuid::parse_str(&req.user_id)
                .map_err(|_| v.add("user_id", "must be a UUID"))
                .ok()
        };
        // A token is only checked against a valid user_id; with a bad
        // user_id the caller has that to fix first.
        const LIST: &[u8] = b"notifications/ListNotifications";
        let before = match user_id {
            Some(user_id) => {
                paging::page_start(&mut v, &req.page_token, &[LIST, user_id.as_bytes()])
            }
            None => None,
        };
        v.into_result()?;
        let user_id = user_id.expect("checked above");

        // One extra row tells whether another page follows.
        let mut rows = store::list(&self.pool, user_id, before, limit + 1).await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            let last_id = rows.last().expect("limit >= 1").notification_id;
            paging::next_page_token(last_id, &[LIST, user_id.as_bytes()])
        } else {
            String::new()
        };
        Ok(Response::new(ListNotificationsResponse {
            notifications: rows.into_iter().map(to_proto).collect(),
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
