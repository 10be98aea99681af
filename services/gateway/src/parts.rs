//! The optional parts of an aggregated answer.
//!
//! Each part is fetched within its own share of what is left of the
//! caller's deadline (`details.part_share`, or `details.part_timeout` when
//! the caller set none), so a slow service costs its part and not the
//! answer: a part that fails or runs out of time is reported as a
//! [`MissingPart`] with its reason, and the answer goes out without it.
//!
//! A missing part names the part and a reason code (UNAVAILABLE or
//! DEADLINE_EXCEEDED) in words of our own: the upstream's text (which may
//! hold addresses, identities and method names) goes to the log and the
//! call's trace only, never to the caller, who may be anonymous.

use shop_proto::shop::gateway::v1::{MissingPart, Part};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Status};

/// How much time each optional part gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    share: f64,
    fallback: Duration,
}

impl Budget {
    pub(crate) fn new(share: f64, fallback: Duration) -> Self {
        Self { share, fallback }
    }

    /// The time a part started now may take: its share of the incoming
    /// call's remaining deadline, or the fallback without one.
    pub(crate) fn now(&self) -> Duration {
        match shop_mesh::context::incoming_deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .mul_f64(self.share),
            None => self.fallback,
        }
    }
}

/// Runs `call` for `part` within `budget`: its value, or why it is missing.
pub(crate) async fn fetch<T>(
    part: Part,
    budget: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, MissingPart> {
    let missing = |code: Code, cause: &str| {
        tracing::warn!(
            part = part.as_str_name(),
            ?code,
            cause,
            "answering without a part"
        );
        let message = match code {
            Code::DeadlineExceeded => format!("{} did not answer in time", part_source(part)),
            _ => format!("{} is unavailable", part_source(part)),
        };
        MissingPart {
            part: part as i32,
            code: code as i32,
            message,
        }
    };
    match tokio::time::timeout(budget, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => {
            // Whatever the upstream said, the part is unknown right now.
            let code = match status.code() {
                Code::DeadlineExceeded => Code::DeadlineExceeded,
                _ => Code::Unavailable,
            };
            Err(missing(
                code,
                &format!("{:?}: {}", status.code(), status.message()),
            ))
        }
        Err(_) => Err(missing(
            Code::DeadlineExceeded,
            &format!("no answer within {budget:?}"),
        )),
    }
}

/// `part` is switched off by `flag`: missing as when its service does not
/// answer (UNAVAILABLE), and not logged per call (it is the operator's
/// decision, and FlagsAdmin counts the evaluations).
pub(crate) fn switched_off(part: Part, flag: &str) -> MissingPart {
    MissingPart {
        part: part as i32,
        code: Code::Unavailable as i32,
        message: format!("{} is switched off (flag {flag})", part_source(part)),
    }
}

fn part_source(part: Part) -> &'static str {
    match part {
        Part::User => "users",
        Part::Products => "catalog",
        Part::Stock => "inventory",
        Part::Payments => "payments",
        Part::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_late_part_is_missing_with_deadline_exceeded() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Status>(1)
        };
        let started = Instant::now();
        let missing = fetch(Part::Payments, Duration::from_millis(400), slow)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        assert_eq!(missing.part(), Part::Payments);
        assert_eq!(missing.code, Code::DeadlineExceeded as i32);
    }

    #[tokio::test]
    async fn a_failed_part_is_missing_as_unavailable() {
        let down = async {
            Err::<i32, _>(Status::unavailable(
                "10.244.1.7:7000 (spiffe://shop.local/ns/shop/sa/inventory): connection refused",
            ))
        };
        let missing = fetch(Part::Stock, Duration::from_secs(1), down)
            .await
            .unwrap_err();
        assert_eq!(missing.part(), Part::Stock);
        assert_eq!(missing.code, Code::Unavailable as i32);
        // Nothing of the upstream's own text reaches the caller.
        assert_eq!(missing.message, "inventory is unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_a_share_of_the_incoming_deadline() {
        let budget = Budget::new(0.8, Duration::from_secs(1));
        assert_eq!(budget.now(), Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_millis(500);
        let share =
            shop_mesh::context::with_incoming_deadline(Some(deadline), async { budget.now() })
                .await;
        assert_eq!(share, Duration::from_millis(400));
    }
}
