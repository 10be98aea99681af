//! Real dependencies for tests and for `just up`, without Docker.
//!
//! - [`tools`]: finds the binaries (on PATH, under `/usr/lib/postgresql`, or
//!   in `.tools/` where `libs/testkit/bootstrap.py` installs pinned versions).
//! - [`postgres`]: a throwaway Postgres cluster (initdb + postgres in a temp
//!   dir, as an unprivileged user when run as root), one database per use.
//! - [`nats`]: a throwaway `nats-server` with JetStream on file storage.
//! - [`process`]: a service binary on a free port, waited on until SERVING.
//! - [`identities`]: a CA and workload certificates (SPIFFE IDs) for a stack.
//! - [`secrets`]: the Secrets the k8s manifests reference, minted.
//! - [`stack`]: all of the above for a list of services, over mTLS.
//! - [`inproc`]: a service served inside the test process.
//! - [`status`]: assertions on gRPC statuses (`violated_fields`).
//! - [`bearer`]: authenticated requests to the gateway.
//! - [`rest`]: an HTTP/JSON client of the gateway's REST face.
//! - [`wait`]: bounded waiting (`eventually`) instead of bare sleeps.
//!
//! Everything started is stopped when its handle is dropped, including when
//! a test panics.

pub mod bearer;
mod child;
pub mod console;
pub mod identities;
pub mod inproc;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod rest;
pub mod secrets;
pub mod stack;
pub mod status;
pub mod tools;
pub mod wait;

pub use bearer::with_bearer;
pub use nats::Nats;
pub use postgres::Postgres;
pub use process::ServiceProcess;
pub use stack::Stack;
pub use wait::eventually;
