//! The mesh inside a service: its server policy and upstream policies, the
//! clients it builds for upstreams, the admin API, and live policy reload.
//!
//! Policies are configuration (`[server.mesh]`, `[upstreams.<name>]`) read
//! with the rest at start (an invalid policy stops the service, naming the
//! key). While running, the configuration file is watched: a changed
//! policy is validated and swapped in without a restart; an invalid change
//! is logged and the previous policy kept.

use shop_identity::{Identity, SpiffeId};
use shop_mesh::client::MeshChannel;
use shop_mesh::policy::{PolicyError, ServerPolicy, UpstreamPolicy};
use shop_mesh::stats::MeshStats;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One process's mesh: stats, policies, and the means to change them.
pub struct MeshRuntime {
    stats: Arc<MeshStats>,
    /// The service's workload identity: with it every upstream is called
    /// over mTLS.
    identity: Option<Identity>,
    server: watch::Sender<Arc<ServerPolicy>>,
    upstreams: Mutex<BTreeMap<String, Upstream>>,
    admin: Arc<shop_mesh::admin::MeshAdmin>,
}

/// An upstream's client as built: the policy it was built with (what fixes
/// its endpoints and subsets), and the sender of the policy in force.
type Upstream = (UpstreamPolicy, watch::Sender<Arc<UpstreamPolicy>>);

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime").finish_non_exhaustive()
    }
}

impl MeshRuntime {
    /// A mesh with `server` as the server-side policy, and `identity` (if
    /// any) as the service's workload identity.
    pub fn new(server: ServerPolicy, identity: Option<Identity>) -> Arc<Self> {
        let stats = Arc::new(MeshStats::default());
        let (server, server_rx) = watch::channel(Arc::new(server));
        let admin = Arc::new(shop_mesh::admin::MeshAdmin::new(stats.clone(), server_rx));
        if let Some(identity) = &identity {
            admin.set_identity(identity.id().as_str());
        }
        Arc::new(Self {
            stats,
            identity,
            server,
            upstreams: Mutex::new(BTreeMap::new()),
            admin,
        })
    }

    /// Counters and endpoint states.
    pub fn stats(&self) -> Arc<MeshStats> {
        self.stats.clone()
    }

    /// The server-side layer to install in front of the service.
    pub fn server_layer(&self) -> shop_mesh::server::ServerLayer {
        shop_mesh::server::ServerLayer::new(self.server.subscribe(), self.stats.clone())
    }

    /// `shop.mesh.v1.MeshAdminService` over this mesh.
    pub fn admin(&self) -> Arc<shop_mesh::admin::MeshAdmin> {
        self.admin.clone()
    }

    /// A client channel for upstream `name` under `policy` (validated: the
    /// error names the key). Hand it to a generated tonic client.
    pub fn upstream(&self, name: &str, policy: &UpstreamPolicy) -> anyhow::Result<MeshChannel> {
        policy.validate(name)?;
        let tls = match &self.identity {
            Some(identity) => {
                let expected = expected_identity(&identity.id(), name, policy)?;
                self.admin.set_upstream_identity(name, expected.as_str());
                Some(shop_mesh::connection::ClientTls {
                    identity: identity.clone(),
                    expected,
                })
            }
            None => None,
        };
        let (tx, rx) = watch::channel(Arc::new(policy.clone()));
        self.admin.register_upstream(name, rx.clone());
        self.upstreams
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), (policy.clone(), tx));
        let trace: shop_mesh::client::TraceContext =
            Arc::new(crate::telemetry::current_traceparent);
        let options = shop_mesh::client::Options {
            trace: Some(trace),
            tls,
        };
        MeshChannel::with_options(name, rx, self.stats.clone(), options)
            .map_err(|e| anyhow::anyhow!("building the mesh client for {name}: {e}"))
    }

    /// Applies reloaded policies: all or nothing (the server policy is
    /// validated too). Upstreams that were not
    /// configured at start are ignored (their clients do not exist); keys a
    /// running client cannot change (its endpoints, DNS name, connect
    /// timeout, subsets: see [`UpstreamPolicy::reloadable`]) are kept as
    /// they are and reported by MeshAdmin as pending a restart.
    pub fn apply(
        &self,
        server: ServerPolicy,
        upstreams: &BTreeMap<String, UpstreamPolicy>,
    ) -> Result<usize, PolicyError> {
        server.validate()?;
        for (name, policy) in upstreams {
            policy.validate(name)?;
        }
        let senders = self.upstreams.lock().expect("not poisoned");
        let mut updates = Vec::new();
        for (name, policy) in upstreams {
            match senders.get(name) {
                Some((built, tx)) => {
                    let (next, pending) = built.reloadable(policy);
                    next.validate(name)?;
                    updates.push((name, tx, next, pending));
                }
                None => {
                    tracing::warn!(upstream = %name, "new upstream in reloaded config ignored; restart to add it")
                }
            }
        }
        let mut changed = 0;
        if **self.server.borrow() != server {
            self.server.send_replace(Arc::new(server));
            changed += 1;
        }
        for (name, tx, next, pending) in updates {
            if !pending.is_empty() {
                tracing::warn!(upstream = %name, ?pending, "policy changes that need a restart are not applied");
            }
            self.admin.set_pending_restart(name, pending);
            if **tx.borrow() != next {
                tx.send_replace(Arc::new(next));
                changed += 1;
            }
        }
        if changed > 0 {
            self.admin.policy_reloaded();
        }
        Ok(changed)
    }
}

/// The SPIFFE ID upstream `name`'s endpoints must present: the policy's
/// `identity` (a full SPIFFE ID, or a workload of our own trust domain and
/// namespace), else the workload named like the upstream.
fn expected_identity(
    own: &SpiffeId,
    name: &str,
    policy: &UpstreamPolicy,
) -> anyhow::Result<SpiffeId> {
    let key = format!("upstreams.{name}.identity");
    match policy.identity.as_deref() {
        Some(id) if id.starts_with("spiffe://") => {
            SpiffeId::parse(id).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        }
        Some(workload) => own
            .sibling(workload)
            .map_err(|e| anyhow::anyhow!("{key}: {e}")),
        None => own
            .sibling(name)
            .map_err(|e| anyhow::anyhow!("{key}: no identity given, and none can be derived: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(endpoint: &str) -> UpstreamPolicy {
        shop_mesh::client::bench_policy(endpoint)
    }

    #[tokio::test]
    async fn a_valid_change_is_applied_and_an_invalid_one_keeps_the_previous_policy() {
        let mesh = MeshRuntime::new(ServerPolicy::default(), None);
        let _client = mesh
            .upstream("catalog", &policy("http://127.0.0.1:7102"))
            .unwrap();
        let rx = mesh.upstreams.lock().unwrap()["catalog"].1.subscribe();

        let mut changed = policy("http://127.0.0.1:7102");
        changed.timeout = std::time::Duration::from_millis(750);
        let n = mesh
            .apply(
                ServerPolicy::default(),
                &BTreeMap::from([("catalog".into(), changed.clone())]),
            )
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(rx.borrow().timeout, changed.timeout);

        let mut invalid = changed.clone();
        invalid.retry.max_attempts = 0;
        let err = mesh
            .apply(
                ServerPolicy::default(),
                &BTreeMap::from([("catalog".into(), invalid)]),
            )
            .unwrap_err();
        assert_eq!(err.key, "upstreams.catalog.retry.max_attempts");
        assert_eq!(**rx.borrow(), changed, "the previous policy is kept");
    }

    #[tokio::test]
    async fn new_endpoints_are_kept_pending_and_the_rest_applies() {
        let mesh = MeshRuntime::new(ServerPolicy::default(), None);
        let _client = mesh
            .upstream("catalog", &policy("http://127.0.0.1:7102"))
            .unwrap();
        let rx = mesh.upstreams.lock().unwrap()["catalog"].1.subscribe();
        let mut moved = policy("http://127.0.0.1:7999");
        moved.timeout = std::time::Duration::from_millis(750);
        mesh.apply(
            ServerPolicy::default(),
            &BTreeMap::from([("catalog".into(), moved)]),
        )
        .unwrap();
        assert_eq!(rx.borrow().endpoints, ["http://127.0.0.1:7102"]);
        assert_eq!(rx.borrow().timeout, std::time::Duration::from_millis(750));
        assert_eq!(mesh.admin.pending_restart("catalog"), ["endpoints"]);
    }

    #[tokio::test]
    async fn an_invalid_policy_at_start_is_refused_naming_the_key() {
        let mesh = MeshRuntime::new(ServerPolicy::default(), None);
        let mut bad = policy("http://127.0.0.1:7102");
        bad.outlier.max_ejected_percent = 101;
        let err = mesh.upstream("catalog", &bad).unwrap_err().to_string();
        assert!(
            err.contains("upstreams.catalog.outlier.max_ejected_percent"),
            "{err}"
        );
    }
}
