//! Authorization ([`crate::authz`]): the caller's identity against the
//! callers the policy allows for the method. A refusal is answered at once
//! (UNAUTHENTICATED or PERMISSION_DENIED), counted per method and caller,
//! and logged; it takes no slot of the limits below.

use super::ServerService;
use crate::authz::Decision;

impl<S> ServerService<S> {
    /// Whether `peer` may call `path`; a refusal, logged and counted, is
    /// the status to answer with.
    pub(super) fn authorize(
        &self,
        path: &str,
        peer: Option<&shop_identity::Peer>,
    ) -> Result<(), tonic::Status> {
        let decision = self.authorizer.decide(path, peer);
        if decision != Decision::Allow {
            let caller = peer.and_then(|p| p.identity.as_ref()).map(|id| id.as_str());
            let status = match decision {
                Decision::Unauthenticated => tonic::Status::unauthenticated(
                    "a client certificate with a SPIFFE ID of this mesh's trust bundle is required",
                ),
                _ => tonic::Status::permission_denied(format!(
                    "{} may not call {path}",
                    caller.unwrap_or("this caller")
                )),
            };
            // Logged under the server stack's target, which log filters name.
            tracing::warn!(target: "shop_mesh::server", method = path, caller = caller.unwrap_or(""), code = ?status.code(), "call refused by authorization");
            self.stats
                .server
                .denied(counted_method(path), caller, status.code());
            return Err(status);
        }
        Ok(())
    }
}

/// The method a refusal is counted under: its path if the contracts (or
/// reflection) define it, else `other`, so that callers sending made-up
/// paths cannot grow the table.
fn counted_method(path: &str) -> &str {
    const REFLECTION: &[&str] = &[
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    if REFLECTION.contains(&path) || shop_proto::methods().iter().any(|m| m.path == path) {
        path
    } else {
        "other"
    }
}
