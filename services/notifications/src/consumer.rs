//! Events in, notifications out.
//!
//! The consumers (`notifications-orders`, `notifications-users`) already
//! record each event id in the inbox in the handler's transaction; on top of
//! that, the table's unique key (kind, order or user) makes a business fact
//! published twice under two event ids notify once.

use crate::domain::{self, Amount, Kind, Message};
use crate::store::{self, NewNotification};
use anyhow::Context as _;
use shop_events::catalog::{ORDERS, USERS};
use shop_events::{Apply, ConsumerSpec, On, Received};
use shop_proto::shop::common::v1::Money;
use shop_proto::shop::events::v1::{OrderCancelled, OrderConfirmed, OrderLine, UserRegistered};
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

/// The consumers: `notifications-orders` (OrderConfirmed, OrderCancelled)
/// and `notifications-users` (UserRegistered), both batched.
pub fn consumer_specs() -> [ConsumerSpec; 2] {
    let notifier = Arc::new(Notifier);
    [
        ConsumerSpec::new("notifications-orders", ORDERS)
            .on::<OrderConfirmed>(notifier.clone())
            .on::<OrderCancelled>(notifier.clone())
            .batched(),
        ConsumerSpec::new("notifications-users", USERS)
            .on::<UserRegistered>(notifier)
            .batched(),
    ]
}

/// Handles OrderConfirmed, OrderCancelled and UserRegistered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

fn parse_uuid(field: &str, raw: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(raw).with_context(|| format!("{field} {raw:?} is not a UUID"))
}

fn quantity(lines: &[OrderLine]) -> i64 {
    lines.iter().map(|l| l.quantity).sum()
}

fn amount(total: Option<&Money>) -> Option<Amount<'_>> {
    total.map(|m| Amount {
        minor: m.amount_minor,
        currency: &m.currency_code,
    })
}

#[async_trait::async_trait]
impl On<OrderConfirmed> for Notifier {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: OrderConfirmed,
        event: &Received,
    ) -> anyhow::Result<()> {
        let order_id = parse_uuid("order_id", &e.order_id)?;
        let message =
            domain::order_confirmed(order_id, quantity(&e.lines), amount(e.total.as_ref()));
        let user_id = parse_uuid("user_id", &e.user_id)?;
        deliver(
            apply.tx().await?,
            event,
            user_id,
            Kind::OrderConfirmed,
            Some(order_id),
            &message,
        )
        .await
    }
}

#[async_trait::async_trait]
impl On<OrderCancelled> for Notifier {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: OrderCancelled,
        event: &Received,
    ) -> anyhow::Result<()> {
        let order_id = parse_uuid("order_id", &e.order_id)?;
        let message = domain::order_cancelled(
            order_id,
            quantity(&e.lines),
            amount(e.total.as_ref()),
            e.reason,
            &e.detail,
        );
        let user_id = parse_uuid("user_id", &e.user_id)?;
        deliver(
            apply.tx().await?,
            event,
            user_id,
            Kind::OrderCancelled,
            Some(order_id),
            &message,
        )
        .await
    }
}

#[async_trait::async_trait]
impl On<UserRegistered> for Notifier {
    async fn on(
        &self,
        apply: &mut Apply<'_>,
        e: UserRegistered,
        event: &Received,
    ) -> anyhow::Result<()> {
        let message = domain::welcome(&e.display_name, &e.email);
        let user_id = parse_uuid("user_id", &e.user_id)?;
        deliver(
            apply.tx().await?,
            event,
            user_id,
            Kind::Welcome,
            None,
            &message,
        )
        .await
    }
}

/// Stores the notification and "sends" it: the simulated delivery is a log
/// line. A repeat of the same fact is skipped.
async fn deliver(
    tx: &mut PgConnection,
    event: &Received,
    user_id: Uuid,
    kind: Kind,
    order_id: Option<Uuid>,
    message: &Message,
) -> anyhow::Result<()> {
    let stored = store::insert(
        tx,
        NewNotification {
            notification_id: Uuid::now_v7(),
            user_id,
            kind,
            order_id,
            subject: &message.subject,
            body: &message.body,
            source_event_id: event.event_id,
        },
    )
    .await?;
    match stored {
        Some(row) => tracing::info!(
            notification_id = %row.notification_id,
            user_id = %row.user_id,
            kind = kind.as_db(),
            subject = %row.subject,
            "notification delivered (simulated)"
        ),
        None => tracing::info!(
            user_id = %user_id,
            kind = kind.as_db(),
            order_id = ?order_id,
            "already notified; nothing sent"
        ),
    }
    Ok(())
}
