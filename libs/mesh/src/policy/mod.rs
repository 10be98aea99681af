//! Mesh policy as configuration, in the shape people know from Istio's
//! VirtualService/DestinationRule:
//!
//! ```toml
//! [upstreams.catalog]
//! endpoints = ["http://127.0.0.1:7102"]   # or dns = "catalog.shop.svc.cluster.local:7000"
//! timeout = "2s"
//! [upstreams.catalog.retry]
//! max_attempts = 3
//! per_try_timeout = "300ms"
//! on = ["unavailable", "resource_exhausted"]
//! backoff = { base = "20ms", max = "200ms" }
//! budget = { ratio = 0.2, min_per_second = 10 }
//! [upstreams.catalog.outlier]
//! consecutive_failures = 5
//! base_ejection = "10s"
//! max_ejected_percent = 50
//! [upstreams.catalog.methods.ListProducts]
//! timeout = "500ms"
//! ```
//!
//! Every struct denies unknown keys; [`UpstreamPolicy::validate`] refuses
//! values that parse but make no sense, naming the key.
//!
//! - [`UpstreamPolicy`] and its parts (retry, backoff, budget, hedge,
//!   outlier, subsets, faults, per-method overrides), with their defaults
//!   and what a reload can change: `upstream.rs`;
//! - what makes a policy invalid ([`PolicyError`]): `validate.rs`;
//! - the policy of one call ([`EffectivePolicy`], [`EffectiveCache`]):
//!   `effective.rs`;
//! - the server side ([`ServerPolicy`]): `server.rs`;
//! - gRPC codes written by name ([`GrpcCode`]): `code.rs`.

mod code;
mod effective;
mod server;
mod upstream;
mod validate;

pub use code::GrpcCode;
pub use effective::{EffectiveCache, EffectivePolicy};
pub use server::ServerPolicy;
pub use upstream::{
    BackoffPolicy, BudgetPolicy, FaultPolicy, HedgePolicy, KeepalivePolicy, MethodPolicy,
    MethodRetryPolicy, OutlierPolicy, RetryPolicy, Subset, UpstreamPolicy,
};
pub use validate::{MAX_HEDGES, PolicyError};

#[cfg(test)]
mod tests;
