//! What the page shows: for every service, in parallel, its health and
//! the answers of its admin APIs, each call with its own deadline. A
//! service that is down, or a part that fails, is reported with its error
//! beside the parts that answered; a part the service does not serve
//! (EventsAdmin on a service without events) is absent, not an error.

use crate::admin::Service;
use crate::json::to_json;
use serde_json::{Map, Value, json};
use shop_proto::shop::events::v1::events_admin_service_client::EventsAdminServiceClient;
use shop_proto::shop::events::v1::{ListConsumersRequest, ListDeadLettersRequest};
use shop_proto::shop::flags::v1::ListFlagsRequest;
use shop_proto::shop::flags::v1::flags_admin_service_client::FlagsAdminServiceClient;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient;
use shop_proto::shop::mesh::v1::{
    GetPolicyRequest, GetStatsRequest, ListEndpointsRequest, ListUpstreamsRequest,
};
use std::future::Future;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Deadline of each admin call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// Page size of the lists; the console shows the first page of each.
const PAGE: i32 = 100;

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// The parts of one service's view, and the errors of those that failed.
#[derive(Default)]
struct Parts {
    parts: Map<String, Value>,
    errors: Map<String, Value>,
}

impl Parts {
    /// Runs `call` (bounded by [`CALL_DEADLINE`] on the wire and here) and
    /// files its answer, as JSON of type `name`, under `part`.
    async fn add<M, F>(&mut self, part: &str, name: &str, call: F)
    where
        M: prost::Message,
        F: Future<Output = Result<tonic::Response<M>, Status>>,
    {
        let answer =
            match tokio::time::timeout(CALL_DEADLINE + Duration::from_millis(500), call).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded("no answer in time")),
            };
        match answer {
            Ok(response) => {
                self.parts
                    .insert(part.to_string(), to_json(name, response.get_ref()));
            }
            Err(status) if status.code() == Code::Unimplemented => {}
            Err(status) => {
                self.errors.insert(
                    part.to_string(),
                    Value::String(format!("{:?}: {}", status.code(), status.message())),
                );
            }
        }
    }
}

/// Everything the console shows of `service`.
pub async fn service(service: &Service) -> Value {
    let channel = service.channel.clone();
    let health = async {
        let mut client = HealthClient::new(channel.clone());
        let check = client.check(request(HealthCheckRequest::default()));
        match tokio::time::timeout(CALL_DEADLINE + Duration::from_millis(500), check).await {
            Ok(Ok(answer)) => answer.get_ref().status().as_str_name().to_string(),
            Ok(Err(status)) => format!("UNREACHABLE ({:?})", status.code()),
            Err(_) => "UNREACHABLE (no answer in time)".to_string(),
        }
    };
    let mesh = async {
        let mut parts = Parts::default();
        let mut client = MeshAdminServiceClient::new(channel.clone());
        parts
            .add(
                "stats",
                "shop.mesh.v1.GetStatsResponse",
                client.get_stats(request(GetStatsRequest {})),
            )
            .await;
        parts
            .add(
                "policy",
                "shop.mesh.v1.GetPolicyResponse",
                client.get_policy(request(GetPolicyRequest::default())),
            )
            .await;
        parts
            .add(
                "upstreams",
                "shop.mesh.v1.ListUpstreamsResponse",
                client.list_upstreams(request(ListUpstreamsRequest {
                    page_size: PAGE,
                    page_token: String::new(),
                })),
            )
            .await;
        parts
            .add(
                "endpoints",
                "shop.mesh.v1.ListEndpointsResponse",
                client.list_endpoints(request(ListEndpointsRequest {
                    page_size: PAGE,
                    ..ListEndpointsRequest::default()
                })),
            )
            .await;
        parts
    };
    let events = async {
        let mut parts = Parts::default();
        let mut client = EventsAdminServiceClient::new(channel.clone());
        parts
            .add(
                "consumers",
                "shop.events.v1.ListConsumersResponse",
                client.list_consumers(request(ListConsumersRequest {})),
            )
            .await;
        parts
            .add(
                "deadLetters",
                "shop.events.v1.ListDeadLettersResponse",
                client.list_dead_letters(request(ListDeadLettersRequest {
                    page_size: PAGE,
                    page_token: String::new(),
                })),
            )
            .await;
        parts
    };
    let flags = async {
        let mut parts = Parts::default();
        let mut client = FlagsAdminServiceClient::new(channel.clone());
        parts
            .add(
                "flags",
                "shop.flags.v1.ListFlagsResponse",
                client.list_flags(request(ListFlagsRequest {})),
            )
            .await;
        parts
    };
    let (health, mesh, events, flags) = tokio::join!(health, mesh, events, flags);
    let mut parts = Map::new();
    let mut errors = Map::new();
    for part in [mesh, events, flags] {
        parts.extend(part.parts);
        errors.extend(part.errors);
    }
    json!({
        "name": service.name,
        "address": service.addr.to_string(),
        "health": health,
        "parts": parts,
        "errors": errors,
    })
}
