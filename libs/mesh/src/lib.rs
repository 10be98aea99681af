//! The sidecar-free mesh: what Envoy or linkerd2-proxy would do beside each
//! service, done inside it as tower layers over `http` requests (so nothing
//! here depends on tonic's internals beyond its body type).
//!
//! Client stack, outer to inner (see [`client`]):
//! telemetry -> [`deadline`] -> [`concurrency`] (the caller's adaptive
//! limit) -> [`retry`] (budget, backoff, pushback,
//! replayable bodies) -> per-try timeout -> [`split`] (weighted subsets)
//! -> [`balance`] (p2c over peak-EWMA) -> per endpoint [`outlier`]
//! ejection -> [`fault`] injection -> the connection.
//!
//! Server stack (see [`server`]): deadline enforcement from `grpc-timeout`,
//! per-method authorization by caller identity ([`authz`]), concurrency
//! limit with load shedding (RESOURCE_EXHAUSTED + pushback), fault
//! injection.
//!
//! - [`policy`]: the configuration, in the shape of Istio's
//!   VirtualService/DestinationRule; validated, and swapped at run time.
//! - [`stats`]: counters and endpoint states every layer reports into and
//!   [`admin`] (`shop.mesh.v1.MeshAdminService`) reads.
//! - [`metrics`]: call and attempt metrics as OpenTelemetry instruments,
//!   named as gRPC's own (`grpc.client.call.duration`, ...).
//! - [`infrastructure`]: the calls (health, reflection, admin) that are
//!   never shed or faulted.
//! - [`transport`]: typed transport errors (connect refused, TLS failure,
//!   peer identity mismatch, GOAWAY...).
//! - [`status`]: reading and writing gRPC statuses, `grpc-timeout` and
//!   `grpc-retry-pushback-ms` on `http` messages.

pub mod adaptive;
pub mod admin;
pub mod authz;
pub mod balance;
pub mod client;
pub mod concurrency;
pub mod connection;
pub mod context;
pub mod deadline;
pub mod discovery;
pub mod fault;
pub mod infrastructure;
pub mod message_size;
pub mod metrics;
pub mod outlier;
pub mod policy;
pub mod rate_limit;
pub mod retry;
pub mod server;
pub mod span;
pub mod split;
pub mod stats;
pub mod status;
pub mod throttle;
pub mod transport;

/// The body every layer carries: tonic's.
pub type Body = tonic::body::Body;
/// A gRPC request as the layers see it.
pub type Request = http::Request<Body>;
/// A gRPC response as the layers see it.
pub type Response = http::Response<Body>;
/// The error type of every client layer.
pub type BoxError = tower::BoxError;
