//! `shop.mesh.v1.MeshAdminService`: the mesh seen from inside, answered by
//! every service (`grpcurl -plaintext host:port shop.mesh.v1.MeshAdminService/ListEndpoints`).
//!
//! [`MeshAdmin`] reads three things and owns none of them: the counters and
//! endpoint states in [`MeshStats`], each upstream's policy watch, and the
//! server policy watch. What it answers is computed on each call, so it is
//! always the live state.
//!
//! # Which methods an upstream has
//!
//! An upstream is named after the package segment of the contract it
//! serves: upstream `catalog` calls the services of `shop.catalog.*`
//! (`shop.catalog.v1.CatalogService`), found in
//! [`shop_proto::FILE_DESCRIPTOR_SET`]. Its effective policy lists every
//! method of those services, plus any method its `methods` table names that
//! no service defines (a typo worth seeing), shown under each of the
//! package's services, or by bare name if the package is unknown.
//!
//! # What it cannot answer yet
//!
//! The stats hold no per-method client counters, no consecutive-failure
//! run and no discovery times or errors; those fields are left at their
//! defaults.
//!
//! # Where things are
//!
//! The service is answered in `service.rs`, from the policies and stats
//! turned into messages by `convert.rs`; `descriptors.rs` knows the methods
//! the contracts define, and `paging.rs` the page sizes and tokens of the
//! list methods.

mod convert;
mod descriptors;
mod paging;
mod service;
#[cfg(test)]
mod tests;

use crate::policy::{ServerPolicy, UpstreamPolicy};
use crate::stats::MeshStats;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio::sync::watch;

/// The admin service. Build it at start-up (its creation time is the
/// `start_time` of GetStats), register each upstream's policy, then serve it
/// with `MeshAdminServiceServer::from_arc`.
#[derive(Debug)]
pub struct MeshAdmin {
    stats: Arc<MeshStats>,
    server: watch::Receiver<Arc<ServerPolicy>>,
    upstreams: RwLock<BTreeMap<String, watch::Receiver<Arc<UpstreamPolicy>>>>,
    /// Per upstream, the configured keys its running client does not apply
    /// (they need a restart).
    pending: RwLock<BTreeMap<String, Vec<String>>>,
    /// Services this process serves (`shop.orders.v1.OrderService`).
    served: RwLock<BTreeSet<String>>,
    version: Mutex<PolicyVersion>,
    start_time: SystemTime,
    /// This server's SPIFFE ID (None: plaintext, nothing enforced), and
    /// each upstream's expected one.
    identities: RwLock<Identities>,
}

#[derive(Debug, Default)]
struct Identities {
    own: Option<String>,
    upstreams: BTreeMap<String, String>,
}

/// Which version of the policy is in force.
#[derive(Debug, Clone)]
struct PolicyVersion {
    generation: i64,
    load_time: SystemTime,
    source: String,
}

// === impl MeshAdmin ===

impl MeshAdmin {
    /// An admin over `stats` and the server policy `server`; the policy as
    /// it is now is generation 1.
    pub fn new(stats: Arc<MeshStats>, server: watch::Receiver<Arc<ServerPolicy>>) -> Self {
        let now = SystemTime::now();
        Self {
            stats,
            server,
            upstreams: RwLock::default(),
            pending: RwLock::default(),
            served: RwLock::default(),
            version: Mutex::new(PolicyVersion {
                generation: 1,
                load_time: now,
                source: String::new(),
            }),
            start_time: now,
            identities: RwLock::default(),
        }
    }

    /// Records this server's SPIFFE ID: it serves mTLS, and authorization
    /// is enforced.
    pub fn set_identity(&self, id: &str) {
        self.identities.write().expect("not poisoned").own = Some(id.to_string());
    }

    /// Records the SPIFFE ID `upstream`'s endpoints must present.
    pub fn set_upstream_identity(&self, upstream: &str, id: &str) {
        self.identities
            .write()
            .expect("not poisoned")
            .upstreams
            .insert(upstream.to_string(), id.to_string());
    }

    /// Names where the policy was loaded from (the config file path).
    pub fn with_source(self, source: impl Into<String>) -> Self {
        self.version.lock().expect("not poisoned").source = source.into();
        self
    }

    /// Adds upstream `name` (`catalog`), whose policy `policy` follows.
    pub fn register_upstream(&self, name: &str, policy: watch::Receiver<Arc<UpstreamPolicy>>) {
        self.upstreams
            .write()
            .expect("not poisoned")
            .insert(name.to_string(), policy);
    }

    /// Adds a service this process serves, by its full name
    /// (`shop.orders.v1.OrderService`, tonic's `NamedService::NAME`), so the
    /// server policy lists its methods.
    pub fn register_service(&self, name: &str) {
        self.served
            .write()
            .expect("not poisoned")
            .insert(name.to_string());
    }

    /// Records a successful policy reload: the generation goes up by one.
    pub fn policy_reloaded(&self) {
        let mut version = self.version.lock().expect("not poisoned");
        version.generation += 1;
        version.load_time = SystemTime::now();
    }

    /// Records the keys of `upstream`'s configuration that its running
    /// client does not apply (empty: none).
    pub fn set_pending_restart(&self, upstream: &str, keys: Vec<String>) {
        self.pending
            .write()
            .expect("not poisoned")
            .insert(upstream.to_string(), keys);
    }

    /// The keys of `upstream`'s configuration pending a restart.
    pub fn pending_restart(&self, upstream: &str) -> Vec<String> {
        self.pending
            .read()
            .expect("not poisoned")
            .get(upstream)
            .cloned()
            .unwrap_or_default()
    }

    fn upstream_policy(&self, name: &str) -> Option<Arc<UpstreamPolicy>> {
        self.upstreams
            .read()
            .expect("not poisoned")
            .get(name)
            .map(|rx| rx.borrow().clone())
    }

    /// Every upstream name, registered or seen by the stats, in order.
    fn upstream_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .upstreams
            .read()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        names.extend(self.stats.upstreams().iter().map(|u| u.name.clone()));
        names
    }
}
