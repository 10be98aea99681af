//! `shop.events.v1.EventsAdminService`: the consumers of a service and its
//! dead letters, one implementation every consuming service mounts
//! ([`crate::Events::admin`]). Operator only, by the mesh's default
//! authorization.

use crate::consumer::Consumer;
use crate::dead_letters;
use crate::envelope::Received;
use crate::inbox::{self, Mark, Outcome};
use prost::Message as _;
use shop_proto::shop::common::v1::{DeadLetter, DeadLetterStatus};
use shop_proto::shop::events::v1::events_admin_service_server::{
    EventsAdminService, EventsAdminServiceServer,
};
use shop_proto::shop::events::v1::{
    ConsumerState, DiscardDeadLetterRequest, DiscardDeadLetterResponse, Envelope,
    ListConsumersRequest, ListConsumersResponse, ListDeadLettersRequest, ListDeadLettersResponse,
    ReplayDeadLetterRequest, ReplayDeadLetterResponse,
};
use shop_runtime::{FieldViolations, ServiceError};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// The consumers this process runs.
pub(crate) type Registry = Arc<Mutex<Vec<Arc<Consumer>>>>;

/// The admin service over a service's pool and consumers.
pub struct EventsAdmin {
    pool: PgPool,
    consumers: Registry,
}

impl EventsAdmin {
    pub(crate) fn new(pool: PgPool, consumers: Registry) -> Self {
        Self { pool, consumers }
    }

    /// The tonic service, to add to a server.
    pub fn into_server(self) -> EventsAdminServiceServer<Self> {
        EventsAdminServiceServer::new(self)
    }

    fn consumer(&self, name: &str) -> Option<Arc<Consumer>> {
        self.consumers
            .lock()
            .expect("registry lock")
            .iter()
            .find(|c| c.durable == name)
            .cloned()
    }

    async fn state(&self, c: &Consumer) -> Result<ConsumerState, ServiceError> {
        let s = c.stats.snapshot();
        let info = async {
            let stream = c.js.get_stream(c.spec.stream.name).await?;
            anyhow::Ok(stream.consumer_info(&c.durable).await?)
        }
        .await;
        let (pending, ack_pending, redelivered, server_subjects, server_ack_wait) = match info {
            Ok(i) => (
                i.num_pending,
                i.num_ack_pending as u64,
                i.num_redelivered as u64,
                crate::consumer::filters(&i.config),
                prost_types::Duration::try_from(i.config.ack_wait).ok(),
            ),
            // Not created yet (the consumer is still connecting) or NATS
            // unreachable: what this process knows is still worth showing.
            Err(e) => {
                tracing::debug!(consumer = %c.durable, error = %e, "no consumer info");
                (0, 0, 0, Vec::new(), None)
            }
        };
        Ok(ConsumerState {
            name: c.durable.clone(),
            stream: c.spec.stream.name.to_string(),
            subjects: c.spec.subjects(),
            max_in_flight: u32::try_from(c.settings.max_in_flight).unwrap_or(u32::MAX),
            in_flight: u32::try_from(s.in_flight).unwrap_or(u32::MAX),
            pending,
            ack_pending,
            redelivered,
            applied: s.applied,
            duplicates: s.duplicates,
            failed_attempts: s.failed_attempts,
            dead_lettered: s.dead_lettered,
            compensations_dead_lettered: s.compensations_dead_lettered,
            dead_letter_write_failures: s.dead_letter_write_failures,
            dead_letters_pending: dead_letters::pending(&self.pool, &c.durable).await? as u64,
            backoff: c
                .settings
                .backoff
                .iter()
                .filter_map(|d| prost_types::Duration::try_from(**d).ok())
                .collect(),
            max_deliver: c.settings.max_deliver,
            redeliveries_received: s.redeliveries,
            server_subjects,
            server_ack_wait,
        })
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ServiceError> {
    shop_runtime::convert::parse_uuid("dead_letter_id", raw)
}

/// Who is calling, for the record: the caller's SPIFFE ID.
fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<shop_identity::Peer>()
        .and_then(|p| p.identity.as_ref())
        .map_or_else(|| "unauthenticated".to_string(), ToString::to_string)
}

#[tonic::async_trait]
impl EventsAdminService for EventsAdmin {
    async fn list_consumers(
        &self,
        _request: Request<ListConsumersRequest>,
    ) -> Result<Response<ListConsumersResponse>, Status> {
        let consumers: Vec<Arc<Consumer>> = self.consumers.lock().expect("registry lock").clone();
        let mut states = Vec::with_capacity(consumers.len());
        for c in &consumers {
            states.push(self.state(c).await?);
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListConsumersResponse { consumers: states }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let (dead_letters, next_page_token) =
            dead_letters::list(&self.pool, req.page_size, &req.page_token).await?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<ReplayDeadLetterRequest>,
    ) -> Result<Response<ReplayDeadLetterResponse>, Status> {
        let by = caller(&request);
        let id = parse_id(&request.get_ref().dead_letter_id)?;
        let letter = dead_letters::get(&self.pool, id).await?;
        match letter.status.as_str() {
            "pending" => {}
            "replayed" => {
                return Ok(Response::new(ReplayDeadLetterResponse {
                    dead_letter: Some(letter.into()),
                }));
            }
            other => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "dead letter {id} is {other}; only a pending letter can be replayed"
                ))
                .into());
            }
        }
        let Some(consumer) = self.consumer(&letter.consumer) else {
            return Err(ServiceError::FailedPrecondition(format!(
                "dead letter {id} belongs to consumer {:?}, which does not run in this service",
                letter.consumer
            ))
            .into());
        };
        let envelope = Envelope::decode(letter.payload.as_slice()).map_err(|e| {
            ServiceError::FailedPrecondition(format!(
                "dead letter {id} holds no envelope ({e}); nothing can apply it: discard it"
            ))
        })?;
        let event_id = envelope.event_id.parse().map_err(|e| {
            ServiceError::FailedPrecondition(format!(
                "dead letter {id} holds an envelope without a valid event_id ({e}): discard it"
            ))
        })?;
        let Some((handler, _)) = consumer.spec.handler_for(&envelope.event_type) else {
            return Err(ServiceError::FailedPrecondition(format!(
                "dead letter {id} holds a {}, which consumer {:?} has no handler for: discard it",
                envelope.event_type, consumer.durable
            ))
            .into());
        };
        let handler = handler.clone();
        let received = Received {
            subject: letter.subject.clone(),
            envelope,
            event_id,
            stream_sequence: 0,
            delivered: i64::from(letter.replay_attempts) + 1,
        };
        let mark = Mark::Replay {
            dead_letter_id: id,
            by: &by,
        };
        match inbox::apply(&self.pool, mark, handler.as_ref(), &received).await {
            Outcome::Applied { enqueued } => {
                if enqueued {
                    consumer.wake_relay.notify_one();
                }
                tracing::warn!(dead_letter_id = %id, consumer = %consumer.durable, %by, "dead letter replayed");
            }
            // Resolved meanwhile: by another replay (applied once, by that
            // one), or by a discard (checked below).
            Outcome::Duplicate => {}
            Outcome::Unavailable(e) => {
                return Err(ServiceError::Unavailable(e).into());
            }
            Outcome::Failed(e) => {
                let error = format!("{e:#}");
                dead_letters::replay_failed(&self.pool, id, &error)
                    .await
                    .map_err(ServiceError::from)?;
                tracing::warn!(dead_letter_id = %id, %by, error = %error, "dead letter replay failed");
                return Err(ServiceError::FailedPrecondition(format!(
                    "the handler failed again: {error}"
                ))
                .into());
            }
        }
        let letter: DeadLetter = dead_letters::get(&self.pool, id).await?.into();
        match letter.status() {
            DeadLetterStatus::Replayed => {}
            DeadLetterStatus::Discarded => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "dead letter {id} was discarded while this replay ran; nothing was applied"
                ))
                .into());
            }
            _ => {
                return Err(ServiceError::Internal(anyhow::anyhow!(
                    "dead letter {id} still pending after its replay was applied"
                ))
                .into());
            }
        }
        Ok(Response::new(ReplayDeadLetterResponse {
            dead_letter: Some(letter),
        }))
    }

    async fn discard_dead_letter(
        &self,
        request: Request<DiscardDeadLetterRequest>,
    ) -> Result<Response<DiscardDeadLetterResponse>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let id = Uuid::parse_str(&req.dead_letter_id).ok();
        v.check(id.is_some(), "dead_letter_id", "must be a UUID");
        let reason = req.reason.trim();
        v.check(
            !reason.is_empty(),
            "reason",
            "required: say why the letter is given up on",
        );
        v.into_result()?;
        let id = id.expect("checked above");
        let letter = dead_letters::get(&self.pool, id).await?;
        if letter.status == "pending" {
            let done = dead_letters::discard(&self.pool, id, reason, &by)
                .await
                .map_err(ServiceError::from)?;
            if done {
                tracing::warn!(dead_letter_id = %id, consumer = %letter.consumer, %by, reason, "dead letter discarded");
            }
        }
        let letter: DeadLetter = dead_letters::get(&self.pool, id).await?.into();
        if letter.status() == DeadLetterStatus::Replayed {
            return Err(ServiceError::FailedPrecondition(format!(
                "dead letter {id} was replayed; a replayed letter cannot be discarded"
            ))
            .into());
        }
        Ok(Response::new(DiscardDeadLetterResponse {
            dead_letter: Some(letter),
        }))
    }
}
