//! The sidecars' mutual TLS: certificates from files, as Istio's sidecars
//! get theirs (there over SDS; here the files `shop_identity::mint`
//! writes: `tls.crt`, `tls.key`, `ca.crt`).

use super::typed;
use serde_json::{Value, json};
use shop_identity::SpiffeId;
use shop_identity::files;
use std::path::{Path, PathBuf};

/// One workload's certificate, key and trust bundle.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The directory holding `tls.crt`, `tls.key` and `ca.crt`.
    pub dir: PathBuf,
}

impl Certs {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> Value {
        json!({"filename": self.dir.join(name).display().to_string()})
    }

    /// Its certificate and key, ALPN h2, and the bundle to check peers
    /// with; when `peer` is given, the peer's certificate must carry that
    /// SPIFFE ID as its URI SAN.
    fn common(&self, peer: Option<&SpiffeId>) -> Value {
        let mut validation = json!({"trusted_ca": self.file(files::CA)});
        if let Some(peer) = peer {
            validation["match_typed_subject_alt_names"] = json!([{
                "san_type": "URI",
                "matcher": {"exact": peer.as_str()},
            }]);
        }
        json!({
            "tls_certificates": [{
                "certificate_chain": self.file(files::CERT),
                "private_key": self.file(files::KEY),
            }],
            "validation_context": validation,
            "alpn_protocols": ["h2"],
            // TLS 1.3 only, as the mesh (rustls) speaks it; an Envoy client
            // otherwise offers at most TLS 1.2.
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_3",
                "tls_maximum_protocol_version": "TLSv1_3",
            },
        })
    }

    /// The client sidecar's side: presents its certificate, and accepts
    /// only a server presenting `server`.
    pub(super) fn upstream(&self, server: &SpiffeId) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                json!({"common_tls_context": self.common(Some(server)), "sni": "localhost"}),
            ),
        })
    }

    /// The server sidecar's side: demands a client certificate of the
    /// bundle (who may call what is the RBAC filter's business).
    pub(super) fn downstream(&self) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                json!({
                    "common_tls_context": self.common(None),
                    "require_client_certificate": true,
                }),
            ),
        })
    }
}
