//! Which fault policy applies to a request: the client side's
//! ([`ClientFaults`]) and the server side's ([`ServerFaults`]).

use super::FaultSource;
use crate::policy::{FaultPolicy, ServerPolicy, UpstreamPolicy};
use std::sync::Arc;
use tokio::sync::watch;

/// The client-side [`FaultSource`]: the upstream's policy, per method, as
/// the policy watch currently has it.
#[derive(Debug, Clone)]
pub struct ClientFaults {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    current: Arc<UpstreamPolicy>,
}

/// The server-side [`FaultSource`]: `ServerPolicy.methods[method]`, falling
/// back to `ServerPolicy.fault`. Health, reflection and mesh admin calls
/// (see [`crate::infrastructure::is_infrastructure`]) are never faulted.
#[derive(Debug, Clone)]
pub struct ServerFaults {
    policy: watch::Receiver<Arc<ServerPolicy>>,
    current: Arc<ServerPolicy>,
}

/// The method name of an HTTP/2 path (`GetProduct`).
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

// === impl ClientFaults ===

impl ClientFaults {
    /// Follows `policy`.
    pub fn new(mut policy: watch::Receiver<Arc<UpstreamPolicy>>) -> Self {
        let current = policy.borrow_and_update().clone();
        Self { policy, current }
    }
}

impl FaultSource for ClientFaults {
    /// The same as `UpstreamPolicy::effective(path).fault`, without
    /// computing the rest of the effective policy on every request.
    fn fault(&mut self, path: &str) -> FaultPolicy {
        if self.policy.has_changed().unwrap_or(false) {
            self.current = self.policy.borrow_and_update().clone();
        }
        self.current
            .methods
            .get(method_name(path))
            .and_then(|m| m.fault)
            .unwrap_or(self.current.fault)
    }
}

// === impl ServerFaults ===

impl ServerFaults {
    /// Follows `policy`.
    pub fn new(mut policy: watch::Receiver<Arc<ServerPolicy>>) -> Self {
        let current = policy.borrow_and_update().clone();
        Self { policy, current }
    }
}

impl FaultSource for ServerFaults {
    fn fault(&mut self, path: &str) -> FaultPolicy {
        if crate::infrastructure::is_infrastructure(path) {
            return FaultPolicy::default();
        }
        if self.policy.has_changed().unwrap_or(false) {
            self.current = self.policy.borrow_and_update().clone();
        }
        self.current
            .methods
            .get(method_name(path))
            .copied()
            .unwrap_or(self.current.fault)
    }
}
