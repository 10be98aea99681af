//! WatchOrder: an order followed as its saga runs, for the storefront's
//! order page.
//!
//! The gateway keeps no state and consumes no events, so a watch asks
//! orders for the order (GetOrder through the mesh, the same call as
//! GetOrder's) every `watch.interval`, and sends it on only when it changed.
//! The stream ends after a message whose order is CONFIRMED or CANCELLED,
//! after `watch.longest`, or at the first failure orders gives that is not
//! transient (which is sent as the stream's status). A transient failure
//! (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED) is tried
//! again at the next tick.
//!
//! A stream outlives the mesh server's deadline and concurrency permit
//! (they cover the handler, which returns the stream): its own bounds are
//! `longest` and `max_concurrent` permits, each held by a stream until it
//! ends or the client goes away (the stream is dropped).

use crate::config::WatchSettings;
use crate::upstream::relay;
use futures::Stream;
use shop_mesh::client::MeshChannel;
use shop_proto::shop::gateway::v1::WatchOrderResponse;
use shop_proto::shop::orders::v1::order_service_client::OrderServiceClient;
use shop_proto::shop::orders::v1::{GetOrderRequest, Order, OrderStatus};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The stream WatchOrder answers with.
pub(crate) type OrderStream =
    Pin<Box<dyn Stream<Item = Result<WatchOrderResponse, Status>> + Send + 'static>>;

/// The gateway's watches: their bounds and permits.
pub(crate) struct Watches {
    permits: Arc<Semaphore>,
    interval: Duration,
    longest: Duration,
}

/// One watch as it goes.
struct Watch {
    orders: OrderServiceClient<MeshChannel>,
    order_id: String,
    /// The order to send next, when it changed.
    next: Option<Order>,
    /// The order last sent.
    sent: Option<Order>,
    /// A status to end with.
    failed: Option<Status>,
    done: bool,
    until: Instant,
    interval: Duration,
    _permit: OwnedSemaphorePermit,
}

fn settled(order: &Order) -> bool {
    matches!(
        order.status(),
        OrderStatus::Confirmed | OrderStatus::Cancelled
    )
}

impl Watches {
    pub(crate) fn new(settings: &WatchSettings) -> Self {
        Watches {
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            interval: settings.interval,
            longest: settings.longest,
        }
    }

    /// A stream of `first` (already read, and the caller's) and of each
    /// change after it; RESOURCE_EXHAUSTED, with a retry delay, when every
    /// permit is taken.
    pub(crate) fn watch(
        &self,
        orders: OrderServiceClient<MeshChannel>,
        first: Order,
    ) -> Result<OrderStream, Status> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!("every WatchOrder permit is taken");
            Status::with_error_details(
                Code::ResourceExhausted,
                "the gateway follows as many orders as it may; retry later, or ask GetOrder",
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            )
        })?;
        let watch = Watch {
            orders,
            order_id: first.order_id.clone(),
            next: Some(first),
            sent: None,
            failed: None,
            done: false,
            until: Instant::now() + self.longest,
            interval: self.interval,
            _permit: permit,
        };
        Ok(Box::pin(futures::stream::unfold(watch, step)))
    }
}

/// The next message of a watch, or its end.
async fn step(mut watch: Watch) -> Option<(Result<WatchOrderResponse, Status>, Watch)> {
    loop {
        if let Some(order) = watch.next.take() {
            watch.done = settled(&order);
            watch.sent = Some(order.clone());
            let message = WatchOrderResponse { order: Some(order) };
            return Some((Ok(message), watch));
        }
        if let Some(status) = watch.failed.take() {
            watch.done = true;
            return Some((Err(status), watch));
        }
        if watch.done || Instant::now() + watch.interval > watch.until {
            return None;
        }
        tokio::time::sleep(watch.interval).await;
        let asked = watch
            .orders
            .get_order(GetOrderRequest {
                order_id: watch.order_id.clone(),
            })
            .await;
        match asked.map(|r| r.into_inner().order) {
            Ok(Some(order)) if watch.sent.as_ref() != Some(&order) => watch.next = Some(order),
            Ok(_) => {}
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Cancelled
                ) =>
            {
                tracing::debug!(code = ?status.code(), "a watched order could not be read; next tick");
            }
            Err(status) => watch.failed = Some(relay("orders", status)),
        }
    }
}
