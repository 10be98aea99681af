//! Who is on the other side of an accepted connection. The server puts a
//! [`Peer`] in every request's extensions (tonic's `Connected`), so the
//! authorization layer and the handlers read the caller from there.

use crate::SpiffeId;
use std::net::SocketAddr;

/// The caller of a request, as its connection established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer.
    pub remote_addr: SocketAddr,
    /// Whether the connection is TLS. Without TLS there are no identities
    /// (a development server), and authorization is not enforced.
    pub tls: bool,
    /// The SPIFFE ID of the client certificate, verified against the trust
    /// bundle during the handshake; `None` without a certificate (an end
    /// user at the gateway) or without one in the certificate's URI SANs.
    pub identity: Option<SpiffeId>,
    /// The identity this server presented on the connection: its trust
    /// domain and namespace are the ones workload names are read in.
    pub server: Option<SpiffeId>,
}

impl Peer {
    /// A plaintext peer.
    pub fn plaintext(remote_addr: SocketAddr) -> Self {
        Self {
            remote_addr,
            tls: false,
            identity: None,
            server: None,
        }
    }

    /// The caller of `request`, if the server recorded one.
    pub fn of<T>(request: &http::Request<T>) -> Option<&Peer> {
        request.extensions().get::<Peer>()
    }
}
