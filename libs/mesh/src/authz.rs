//! Per-method authorization by caller identity, in the server stack.
//!
//! Configuration (`[server.mesh.authorization]`, reloaded live) maps a
//! service (`"shop.inventory.v1.InventoryService"`) or one method
//! (`"shop.inventory.v1.InventoryService/SetStock"`, which wins over its
//! service) to the callers allowed:
//!
//! - a workload name (`"gateway"`, `"operator"`): the caller's SPIFFE ID
//!   is `spiffe://<td>/ns/<ns>/sa/<name>` in the server's own trust domain
//!   and namespace (another namespace's `operator` is not ours);
//! - a full SPIFFE ID;
//! - `"*"`: any caller whose certificate chains to the trust bundle;
//! - `"public"`: anyone, with or without a certificate (the gateway's API:
//!   end users authenticate with tokens, not certificates).
//!
//! Everything not allowed is refused: a method with no rule for it or its
//! service is PERMISSION_DENIED to everyone. Health is open to all (probes
//! and balancers call it); reflection is open to any workload of the
//! bundle, MeshAdmin, EventsAdmin and FlagsAdmin to `operator`, unless configured
//! otherwise.
//!
//! A caller without an identity (no certificate, or one without a SPIFFE
//! ID) on a method that is not public gets UNAUTHENTICATED; one whose
//! identity is not allowed gets PERMISSION_DENIED. Both are counted per
//! method and caller, for MeshAdmin.
//!
//! Identities come from the connection (a [`Peer`] in the request's
//! extensions, put there by the server's TLS acceptor). A plaintext
//! connection has none, and is not checked: a server without `server.tls`
//! is a development server, and says so at start.

use crate::policy::PolicyError;
use shop_identity::Peer;
use shop_identity::spiffe::{SpiffeId, is_workload};
use std::collections::{BTreeMap, HashMap};

/// Any caller with a certificate of the bundle.
pub const ANY_WORKLOAD: &str = "*";
/// Anyone, also without a certificate.
pub const PUBLIC: &str = "public";

const HEALTH: &str = "grpc.health.v1.Health";
const MESH_ADMIN: &str = "shop.mesh.v1.MeshAdminService";
const EVENTS_ADMIN: &str = "shop.events.v1.EventsAdminService";
const FLAGS_ADMIN: &str = "shop.flags.v1.FlagsAdminService";
const REFLECTION: &[&str] = &[
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The callers allowed per service or method, as configured.
pub type AuthorizationPolicy = BTreeMap<String, Vec<String>>;

/// Checks the policy's keys and callers: every key names a service or
/// method of the contracts (or an infrastructure service), every caller is
/// a known workload, a SPIFFE ID, `*` or `public`. The error names the key.
pub fn validate(policy: &AuthorizationPolicy) -> Result<(), PolicyError> {
    let methods = shop_proto::methods();
    for (key, callers) in policy {
        let err = |message: String| {
            Err(PolicyError {
                key: format!("server.mesh.authorization.\"{key}\""),
                message,
            })
        };
        let known = match key.split_once('/') {
            Some(_) => methods.iter().any(|m| m.path[1..] == *key),
            None => {
                methods.iter().any(|m| m.service == *key)
                    || key == MESH_ADMIN
                    || REFLECTION.contains(&key.as_str())
            }
        };
        if !known {
            return err(format!(
                "{key:?} is neither a service (shop.catalog.v1.CatalogService) nor a method (shop.catalog.v1.CatalogService/GetProduct) of the contracts"
            ));
        }
        if key == HEALTH {
            return err("health is open to every caller".into());
        }
        for caller in callers {
            let valid = caller == ANY_WORKLOAD
                || caller == PUBLIC
                || is_workload(caller)
                || (caller.starts_with("spiffe://") && SpiffeId::parse(caller).is_ok());
            if !valid {
                return err(format!(
                    "unknown caller {caller:?}: give a workload ({}), a spiffe:// ID, \"*\" or \"public\"",
                    shop_identity::spiffe::WORKLOADS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// No identity, on a method that needs one.
    Unauthenticated,
    /// An identity the policy does not allow.
    PermissionDenied,
}

/// A policy compiled for lookups by path.
#[derive(Debug, Default, Clone)]
pub struct Authorizer {
    /// `/pkg.Service/Method` or `pkg.Service` -> callers.
    rules: HashMap<String, Vec<String>>,
}

impl Authorizer {
    /// Compiles a (validated) policy.
    pub fn new(policy: &AuthorizationPolicy) -> Self {
        let mut rules: HashMap<String, Vec<String>> = HashMap::new();
        rules.insert(HEALTH.into(), vec![PUBLIC.into()]);
        rules.insert(MESH_ADMIN.into(), vec!["operator".into()]);
        rules.insert(EVENTS_ADMIN.into(), vec!["operator".into()]);
        rules.insert(FLAGS_ADMIN.into(), vec!["operator".into()]);
        for service in REFLECTION {
            rules.insert((*service).into(), vec![ANY_WORKLOAD.into()]);
        }
        for (key, callers) in policy.iter().filter(|(k, _)| *k != HEALTH) {
            let key = if key.contains('/') {
                format!("/{key}")
            } else {
                key.clone()
            };
            rules.insert(key, callers.clone());
        }
        Self { rules }
    }

    /// Every rule, defaults included: a method (`/pkg.Service/Method`) or
    /// a service (`pkg.Service`) and its callers, sorted by key (what
    /// another data plane needs to enforce the same policy).
    pub fn rules(&self) -> impl Iterator<Item = (&str, &[String])> {
        let mut rules: Vec<_> = self
            .rules
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        rules.sort_by_key(|(k, _)| *k);
        rules.into_iter()
    }

    /// The callers allowed to call `path` (`/pkg.Service/Method`): the
    /// method's rule, else its service's; empty for nobody.
    pub fn allowed(&self, path: &str) -> &[String] {
        if let Some(callers) = self.rules.get(path) {
            return callers;
        }
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map(|(service, _)| service);
        service
            .and_then(|s| self.rules.get(s))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `peer` may call `path`. A request without a TLS peer is not
    /// checked (see the module docs).
    pub fn decide(&self, path: &str, peer: Option<&Peer>) -> Decision {
        let Some(peer) = peer.filter(|p| p.tls) else {
            return Decision::Allow;
        };
        let allowed = self.allowed(path);
        if allowed.iter().any(|c| c == PUBLIC) {
            return Decision::Allow;
        }
        let Some(identity) = &peer.identity else {
            return Decision::Unauthenticated;
        };
        // A short name is a workload of the server's own trust domain and
        // namespace.
        let ours = peer.server.as_ref().is_some_and(|server| {
            server.trust_domain() == identity.trust_domain()
                && server.namespace().is_some()
                && server.namespace() == identity.namespace()
        });
        let name = identity.service_account().filter(|_| ours);
        if allowed
            .iter()
            .any(|c| c == ANY_WORKLOAD || Some(c.as_str()) == name || c == identity.as_str())
        {
            Decision::Allow
        } else {
            Decision::PermissionDenied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(sa: Option<&str>) -> Peer {
        Peer {
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            tls: true,
            identity: sa.map(|sa| SpiffeId::workload("shop.test", "shop", sa).unwrap()),
            server: Some(SpiffeId::workload("shop.test", "shop", "inventory").unwrap()),
        }
    }

    #[test]
    fn a_workload_name_means_the_servers_own_trust_domain_and_namespace() {
        let authz = Authorizer::new(&policy(&[(
            "shop.inventory.v1.InventoryService",
            &["operator"],
        )]));
        for foreign in [
            SpiffeId::workload("other.test", "shop", "operator").unwrap(),
            SpiffeId::workload("shop.test", "dev", "operator").unwrap(),
        ] {
            let caller = Peer {
                identity: Some(foreign.clone()),
                ..peer(None)
            };
            assert_eq!(
                authz.decide(SET_STOCK, Some(&caller)),
                Decision::PermissionDenied,
                "{foreign}"
            );
        }
        assert_eq!(
            authz.decide(SET_STOCK, Some(&peer(Some("operator")))),
            Decision::Allow
        );
    }

    fn policy(entries: &[(&str, &[&str])]) -> AuthorizationPolicy {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|c| c.to_string()).collect()))
            .collect()
    }

    const SET_STOCK: &str = "/shop.inventory.v1.InventoryService/SetStock";
    const GET_STOCK: &str = "/shop.inventory.v1.InventoryService/GetStock";

    #[test]
    fn a_method_rule_wins_over_its_service_and_the_rest_is_denied() {
        let authz = Authorizer::new(&policy(&[
            (
                "shop.inventory.v1.InventoryService",
                &["gateway", "operator"],
            ),
            ("shop.inventory.v1.InventoryService/SetStock", &["operator"]),
        ]));
        assert_eq!(
            authz.decide(GET_STOCK, Some(&peer(Some("gateway")))),
            Decision::Allow
        );
        assert_eq!(
            authz.decide(SET_STOCK, Some(&peer(Some("gateway")))),
            Decision::PermissionDenied
        );
        assert_eq!(
            authz.decide(SET_STOCK, Some(&peer(Some("operator")))),
            Decision::Allow
        );
        assert_eq!(
            authz.decide(
                "/shop.orders.v1.OrderService/CancelOrder",
                Some(&peer(Some("operator")))
            ),
            Decision::PermissionDenied,
            "no rule: nobody"
        );
        assert_eq!(
            authz.decide(GET_STOCK, Some(&peer(None))),
            Decision::Unauthenticated
        );
    }

    #[test]
    fn health_is_open_reflection_needs_a_workload_and_admin_the_operator() {
        let authz = Authorizer::new(&AuthorizationPolicy::new());
        assert_eq!(
            authz.decide("/grpc.health.v1.Health/Check", Some(&peer(None))),
            Decision::Allow
        );
        let reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        assert_eq!(
            authz.decide(reflection, Some(&peer(Some("orders")))),
            Decision::Allow
        );
        assert_eq!(
            authz.decide(reflection, Some(&peer(None))),
            Decision::Unauthenticated
        );
        let admin = "/shop.mesh.v1.MeshAdminService/GetStats";
        assert_eq!(
            authz.decide(admin, Some(&peer(Some("orders")))),
            Decision::PermissionDenied
        );
        assert_eq!(
            authz.decide(admin, Some(&peer(Some("operator")))),
            Decision::Allow
        );
    }

    #[test]
    fn public_any_workload_and_full_ids() {
        let authz = Authorizer::new(&policy(&[
            ("shop.gateway.v1.ShopGatewayService", &["public"]),
            ("shop.catalog.v1.CatalogService", &["*"]),
            (
                "shop.inventory.v1.InventoryService",
                &["spiffe://shop.test/ns/shop/sa/orders"],
            ),
        ]));
        let login = "/shop.gateway.v1.ShopGatewayService/LogIn";
        assert_eq!(authz.decide(login, Some(&peer(None))), Decision::Allow);
        let get = "/shop.catalog.v1.CatalogService/GetProduct";
        assert_eq!(
            authz.decide(get, Some(&peer(Some("analytics")))),
            Decision::Allow
        );
        assert_eq!(
            authz.decide(get, Some(&peer(None))),
            Decision::Unauthenticated
        );
        assert_eq!(
            authz.decide(GET_STOCK, Some(&peer(Some("orders")))),
            Decision::Allow
        );
        assert_eq!(
            authz.decide(GET_STOCK, Some(&peer(Some("payments")))),
            Decision::PermissionDenied
        );
    }

    #[test]
    fn plaintext_is_not_checked() {
        let authz = Authorizer::new(&AuthorizationPolicy::new());
        let plain = Peer::plaintext("127.0.0.1:1".parse().unwrap());
        assert_eq!(authz.decide(SET_STOCK, Some(&plain)), Decision::Allow);
        assert_eq!(authz.decide(SET_STOCK, None), Decision::Allow);
    }

    #[test]
    fn unknown_keys_and_callers_are_refused_naming_the_key() {
        let err = validate(&policy(&[(
            "shop.inventory.v1.InventoryService/SetStok",
            &["operator"],
        )]))
        .unwrap_err();
        assert_eq!(
            err.key,
            "server.mesh.authorization.\"shop.inventory.v1.InventoryService/SetStok\""
        );
        let err = validate(&policy(&[(
            "shop.inventory.v1.InventoryService",
            &["opertor"],
        )]))
        .unwrap_err();
        assert!(err.message.contains("unknown caller \"opertor\""), "{err}");
        let err = validate(&policy(&[(
            "shop.inventory.v1.InventoryService",
            &["spiffe://Bad"],
        )]))
        .unwrap_err();
        assert!(err.message.contains("unknown caller"), "{err}");
        validate(&policy(&[
            (
                "shop.inventory.v1.InventoryService",
                &["gateway", "*", "public"],
            ),
            ("shop.mesh.v1.MeshAdminService", &["operator"]),
            ("grpc.reflection.v1alpha.ServerReflection", &["*"]),
        ]))
        .unwrap();
    }
}
