//! The operator's actions on dead letters, each with a reason: the service
//! records a discard's reason (and the operator's SPIFFE ID as the one who
//! resolved it); the console logs every action, replays included, with its
//! reason and outcome, and keeps the last ones for the page.

use crate::admin::Service;
use crate::json::to_json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shop_proto::shop::events::v1::events_admin_service_client::EventsAdminServiceClient;
use shop_proto::shop::events::v1::{DiscardDeadLetterRequest, ReplayDeadLetterRequest};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;
use tonic::Status;

/// Longest reason accepted.
pub const MAX_REASON: usize = 500;
/// Actions the page is shown.
const KEPT: usize = 50;

/// What the operator does to a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Replay,
    Discard,
}

impl Verb {
    pub fn parse(word: &str) -> Option<Verb> {
        match word {
            "replay" => Some(Verb::Replay),
            "discard" => Some(Verb::Discard),
            _ => None,
        }
    }
}

/// The body of an action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub reason: String,
}

/// One action taken, as the page lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Taken {
    pub time_unix_ms: u128,
    pub service: String,
    pub dead_letter_id: String,
    pub verb: Verb,
    pub reason: String,
    /// `OK`, or the status code of the refusal.
    pub outcome: String,
}

/// The last actions, newest first.
#[derive(Debug, Default)]
pub struct Log(Mutex<VecDeque<Taken>>);

impl Log {
    pub fn record(&self, taken: Taken) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.push_front(taken);
        log.truncate(KEPT);
    }

    pub fn recent(&self) -> Vec<Taken> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Checks the reason: present, bounded.
pub fn check_reason(reason: &str) -> Result<&str, Status> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Status::invalid_argument("reason: say why"));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(Status::invalid_argument(format!(
            "reason: at most {MAX_REASON} characters"
        )));
    }
    Ok(reason)
}

/// Replays or discards `id` on `service`, and logs it.
pub async fn act(
    log: &Log,
    service: &Service,
    id: &str,
    verb: Verb,
    reason: &str,
) -> Result<Value, Status> {
    let reason = check_reason(reason)?;
    let mut client = EventsAdminServiceClient::new(service.channel.clone());
    let call = async {
        match verb {
            Verb::Replay => client
                .replay_dead_letter(ReplayDeadLetterRequest {
                    dead_letter_id: id.to_string(),
                })
                .await
                .map(|r| r.into_inner().dead_letter),
            Verb::Discard => client
                .discard_dead_letter(DiscardDeadLetterRequest {
                    dead_letter_id: id.to_string(),
                    reason: reason.to_string(),
                })
                .await
                .map(|r| r.into_inner().dead_letter),
        }
    };
    let deadline = crate::overview::CALL_DEADLINE * 2;
    let answer = tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
    let outcome = match &answer {
        Ok(_) => "OK".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    tracing::info!(
        service = service.name,
        dead_letter = id,
        ?verb,
        reason,
        outcome,
        "operator action"
    );
    log.record(Taken {
        time_unix_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        service: service.name.clone(),
        dead_letter_id: id.to_string(),
        verb,
        reason: reason.to_string(),
        outcome,
    });
    let letter = answer?;
    Ok(letter.map_or(Value::Null, |l| to_json("shop.common.v1.DeadLetter", &l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert_eq!(
            check_reason(" fixed the price ").unwrap(),
            "fixed the price"
        );
    }

    #[test]
    fn the_log_keeps_the_newest() {
        let log = Log::default();
        for i in 0..(KEPT + 5) {
            log.record(Taken {
                time_unix_ms: i as u128,
                service: "orders".into(),
                dead_letter_id: i.to_string(),
                verb: Verb::Replay,
                reason: "r".into(),
                outcome: "OK".into(),
            });
        }
        let recent = log.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].dead_letter_id, (KEPT + 4).to_string());
    }
}
