//! `just bench resilience`: three replicas of a server, steady open-loop
//! load of reads (NO_SIDE_EFFECTS) and writes (IDEMPOTENT, with an
//! idempotency key), through the mesh, through Envoy sidecars running the
//! same policy, and through bare tonic channels with no resilience, while
//! replicas are killed, frozen, slowed, made to fail, restarted in turn,
//! or offered twice what the path carries. See the binary
//! (`src/bin/shop-resilience.rs`) for the run.

pub mod load;
pub mod paths;
pub mod replicas;
pub mod report;
pub mod scenario;
