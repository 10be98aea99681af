//! Batched consumers: many events, one transaction.
//!
//! The intake queues every message in its aggregate's lane, as for any
//! consumer; one task per batched consumer then takes the head of up to
//! `batch_max` lanes, sorted by lane key so that concurrent batches (of
//! replicas) take row locks in one order, and applies them in one
//! transaction ([`inbox::apply_batch`]): their inbox rows in one statement
//! (a conflict is a duplicate, skipped), every handler, one commit, then
//! the acks. A lane's next event waits for the batch that holds its head,
//! so each aggregate's events are applied in stream order, as on the
//! per-event path.
//!
//! On any error the batch is rolled back and its events are applied again
//! one per transaction on the per-event path ([`Consumer::process`]), so
//! backoff, dead letters and the handling of an unavailable database are
//! exactly those of an unbatched consumer. A crash between the commit and
//! the acks redelivers events whose inbox rows are committed: they are
//! acked as duplicates and applied once.

use super::{Consumer, Held, Lanes};
use crate::inbox::{self, BatchOutcome};
use futures::FutureExt as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

impl Consumer {
    /// The most events a batch takes, when this consumer is batched.
    pub(super) fn batch_max(&self) -> Option<usize> {
        (self.spec.batched && self.settings.batch_max > 1).then_some(self.settings.batch_max)
    }

    /// Applies batches of lane heads until the intake is done (then what it
    /// held is applied first) or shutdown (then what is queued is handed
    /// back).
    pub(super) async fn run_batches(
        self: Arc<Self>,
        max: usize,
        lanes: Lanes,
        ready: Arc<Notify>,
        intake_done: CancellationToken,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = take_heads(&lanes, max);
            if batch.is_empty() {
                if intake_done.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = ready.notified() => {}
                    () = intake_done.cancelled() => {}
                }
                continue;
            }
            if shutdown.is_cancelled() {
                // Another process (or this one, restarted) takes them now
                // rather than after the ack wait.
                for held in batch {
                    let _ = held
                        .message
                        .ack_with(async_nats::jetstream::AckKind::Nak(None))
                        .await;
                    self.stats.left();
                }
                continue;
            }
            let applied = AssertUnwindSafe(self.apply_batch(batch, &shutdown))
                .catch_unwind()
                .await;
            if applied.is_err() {
                tracing::error!(consumer = %self.durable, "a batch panicked; its events will be redelivered");
            }
        }
    }

    /// Applies `batch` in one transaction, or, when that fails, each of its
    /// events on the per-event path.
    async fn apply_batch(&self, batch: Vec<Held>, shutdown: &CancellationToken) {
        let (routed, alone): (Vec<Held>, Vec<Held>) = batch.into_iter().partition(|held| {
            held.decoded
                .as_ref()
                .is_ok_and(|r| self.spec.handles(&r.envelope.event_type))
        });
        // Undecodable or unroutable: dead-lettered on the per-event path.
        for held in alone {
            self.process_one(held, shutdown).await;
        }
        if routed.len() <= 1 {
            for held in routed {
                self.process_one(held, shutdown).await;
            }
            return;
        }
        let items: Vec<_> = routed
            .iter()
            .map(|held| {
                let received = held.decoded.as_ref().expect("partitioned on Ok");
                let (handler, _) = self
                    .spec
                    .handler_for(&received.envelope.event_type)
                    .expect("partitioned on a handler");
                (
                    handler.as_ref(),
                    received,
                    self.span(&held.message, received),
                )
            })
            .collect();
        match inbox::apply_batch(&self.pool, &self.durable, &items).await {
            BatchOutcome::Committed { fresh, enqueued } => {
                drop(items);
                if enqueued {
                    self.wake_relay.notify_one();
                }
                let acks = routed.iter().zip(&fresh).map(|(held, fresh)| {
                    if held.decoded.as_ref().is_ok_and(|r| r.delivered > 1) {
                        self.stats.redelivery();
                    }
                    if *fresh {
                        self.stats.applied();
                    } else {
                        self.stats.duplicate();
                    }
                    held.message.ack()
                });
                let _ = futures::future::join_all(acks).await;
                for _ in &routed {
                    self.stats.left();
                }
            }
            BatchOutcome::RolledBack(e) => {
                drop(items);
                tracing::warn!(
                    consumer = %self.durable,
                    events = routed.len(),
                    error = format!("{e:#}"),
                    "batch rolled back; applying its events one at a time"
                );
                for held in routed {
                    self.process_one(held, shutdown).await;
                }
            }
        }
    }

    /// `held` on the per-event path.
    async fn process_one(&self, held: Held, shutdown: &CancellationToken) {
        self.process(held.message, held.decoded, shutdown).await;
        self.stats.left();
    }
}

/// Takes the head of up to `max` lanes, in lane-key order.
fn take_heads(lanes: &Lanes, max: usize) -> Vec<Held> {
    let mut queues = lanes.lock().expect("lanes lock");
    let mut keys: Vec<String> = queues.keys().cloned().collect();
    keys.sort_unstable();
    keys.truncate(max);
    let mut heads = Vec::with_capacity(keys.len());
    for key in keys {
        let queue = queues.get_mut(&key).expect("listed above");
        if let Some(held) = queue.pop_front() {
            heads.push(held);
        }
        if queue.is_empty() {
            queues.remove(&key);
        }
    }
    heads
}
