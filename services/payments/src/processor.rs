//! The simulated card processor: another system, with its own ledger (the
//! `processor_ledger` table, written only here and only in transactions of
//! its own), answering the test tokens of [`domain::answer`].
//!
//! Like a card API, it takes an idempotency key with each request (the
//! order id) and keeps the first answer under it: a repeated charge (a
//! redelivery after a crash, a second replica) returns the original charge
//! and takes no money. A cancellation under the key refunds a capture once,
//! or voids the key so that no later charge under it captures: the race
//! between a slow charge and a cancellation is settled here, at the
//! processor, as it would be by a real provider's payment intents.

use crate::domain::{self, Charge, DeclineReason, TestToken};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The simulated processor.
#[derive(Debug, Clone)]
pub(crate) struct Processor {
    /// Its ledger (a table of its own in the payments database).
    pub(crate) pool: PgPool,
    /// How long `tok_approve_slow` takes.
    pub(crate) slow_delay: Duration,
    /// Attempts the consumer allows (its `max_deliver`).
    pub(crate) max_attempts: i64,
}

/// A charge request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChargeRequest<'a> {
    pub(crate) key: Uuid,
    pub(crate) token: &'a str,
    pub(crate) amount_minor: i64,
    pub(crate) currency: &'a str,
    /// The event's delivery count: what `tok_fail_transient` counts.
    pub(crate) attempt: i64,
}

/// The processor's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// What [`domain::answer`] decided, the first time the key was seen.
    Charge(Charge),
    /// The key was cancelled before any charge: nothing captured.
    Voided,
}

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// A capture under the key was refunded (now or by an earlier call).
    Refunded,
    /// Nothing was captured; the key is void (or was declined).
    NothingCaptured,
}

#[derive(sqlx::FromRow)]
struct Entry {
    outcome: String,
    amount_minor: i64,
    decline_reason: Option<String>,
    detail: String,
}

impl Entry {
    fn answer(self) -> anyhow::Result<Answer> {
        Ok(match self.outcome.as_str() {
            "captured" => Answer::Charge(Charge::Captured {
                amount_minor: self.amount_minor,
            }),
            "voided" => Answer::Voided,
            "declined" => Answer::Charge(Charge::Declined {
                reason: self
                    .decline_reason
                    .as_deref()
                    .and_then(DeclineReason::from_stored)
                    .ok_or_else(|| anyhow::anyhow!("ledger decline without a known reason"))?,
                detail: self.detail,
            }),
            other => anyhow::bail!("ledger outcome {other:?}"),
        })
    }
}

impl Processor {
    /// Charges `request.amount_minor` to `request.token` under
    /// `request.key`; the first answer stored under a key is the answer for
    /// good. A transient failure stores nothing (ask again later).
    pub(crate) async fn charge(&self, request: ChargeRequest<'_>) -> anyhow::Result<Answer> {
        let token = TestToken::parse(request.token);
        if token == TestToken::ApproveSlow {
            // A slow answer is only slow the first time a key is asked.
            if let Some(first) = self.repeat(request.key).await? {
                return Ok(first);
            }
            tokio::time::sleep(self.slow_delay).await;
        }
        let (outcome, captured, reason, detail) = match domain::answer(
            token,
            request.amount_minor,
            request.attempt,
            self.max_attempts,
        ) {
            Charge::RetryLater(why) => {
                // Nothing to store; an answer stored before stands.
                return Ok(match self.repeat(request.key).await? {
                    Some(first) => first,
                    None => Answer::Charge(Charge::RetryLater(why)),
                });
            }
            Charge::Captured { amount_minor } => ("captured", amount_minor, None, String::new()),
            Charge::Declined { reason, detail } => ("declined", 0, Some(reason.as_str()), detail),
        };
        // The first answer under a key is stored; a repeat (or a request
        // racing this one) gets the stored row back, counted: one
        // statement either way.
        let entry: Entry = sqlx::query_as(
            "INSERT INTO processor_ledger
                 (idempotency_key, outcome, token, amount_minor, currency, decline_reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (idempotency_key) DO UPDATE
                 SET requests = processor_ledger.requests + 1
             RETURNING outcome, amount_minor, decline_reason, detail",
        )
        .bind(request.key)
        .bind(outcome)
        .bind(request.token)
        .bind(captured)
        .bind(request.currency)
        .bind(reason)
        .bind(&detail)
        .fetch_one(&self.pool)
        .await?;
        entry.answer()
    }

    /// The stored answer under `key`, counting the request, if there is one.
    async fn repeat(&self, key: Uuid) -> anyhow::Result<Option<Answer>> {
        let entry: Option<Entry> = sqlx::query_as(
            "UPDATE processor_ledger SET requests = requests + 1 WHERE idempotency_key = $1
             RETURNING outcome, amount_minor, decline_reason, detail",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        entry.map(Entry::answer).transpose()
    }

    /// Cancels the payment under `key`: refunds its capture (once, however
    /// often asked), or voids the key when nothing was charged under it.
    pub(crate) async fn cancel(&self, key: Uuid) -> anyhow::Result<Cancelled> {
        let outcome: String = sqlx::query_scalar(
            "INSERT INTO processor_ledger (idempotency_key, outcome, requests)
             VALUES ($1, 'voided', 0)
             ON CONFLICT (idempotency_key) DO UPDATE
                 SET refunded_at = CASE WHEN processor_ledger.outcome = 'captured'
                                        THEN coalesce(processor_ledger.refunded_at, now()) END
             RETURNING outcome",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(if outcome == "captured" {
            Cancelled::Refunded
        } else {
            Cancelled::NothingCaptured
        })
    }
}
