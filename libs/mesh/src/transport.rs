//! What went wrong on the way to an endpoint, by type: the errors a
//! [`Connection`](crate::connection::Connection) returns, so outlier
//! detection, retry and MeshAdmin tell a refused connection from a TLS
//! failure or an impostor without reading strings.

use shop_identity::SpiffeId;
use std::time::Duration;

/// A failure below gRPC: connecting, the TLS and HTTP/2 handshakes, or a
/// connection lost under a call.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing listens at the address (TCP RST).
    #[error("connecting to {address}: connection refused")]
    ConnectRefused {
        /// The endpoint.
        address: String,
    },
    /// The TCP connection, the TLS handshake or the first PING did not
    /// complete within the connect timeout.
    #[error("connecting to {address} timed out after {after:?}")]
    ConnectTimeout {
        /// The endpoint.
        address: String,
        /// The connect timeout.
        after: Duration,
    },
    /// Another I/O error while connecting (unreachable network...).
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The endpoint.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS handshake failed: a certificate that does not chain to the
    /// bundle or has expired, a peer that refused ours, no common ALPN...
    #[error("TLS handshake with {address} failed: {reason}")]
    Tls {
        /// The endpoint.
        address: String,
        /// rustls' reason.
        reason: String,
    },
    /// The endpoint's certificate is valid but names another workload than
    /// the upstream's: an impostor, or a misrouted address.
    #[error("{address} is not {expected}: its certificate names {presented}")]
    PeerIdentity {
        /// The endpoint.
        address: String,
        /// The identity configured for the upstream.
        expected: SpiffeId,
        /// What the certificate names.
        presented: String,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {address}: {source}")]
    Handshake {
        /// The endpoint.
        address: String,
        /// h2's error.
        source: h2::Error,
    },
    /// The peer is closing the connection (GOAWAY): the call was not
    /// processed if its stream was above the last stream id.
    #[error("the peer sent GOAWAY ({reason})")]
    GoAway {
        /// The HTTP/2 error code.
        reason: h2::Reason,
    },
    /// The peer reset the call's stream.
    #[error("the stream was reset ({reason})")]
    Reset {
        /// The HTTP/2 error code.
        reason: h2::Reason,
    },
    /// The connection failed under the call (the peer went away, we reset
    /// the stream or closed the connection, or the peer did not answer a
    /// keepalive PING in time).
    #[error("the connection was lost: {source}")]
    ConnectionLost {
        /// h2's error.
        source: h2::Error,
    },
}

impl TransportError {
    /// A short name of the kind, for logs, metrics and ejection details.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConnectRefused { .. } => "connect_refused",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::Connect { .. } => "connect_error",
            Self::Tls { .. } => "tls_failure",
            Self::PeerIdentity { .. } => "peer_identity_mismatch",
            Self::Handshake { .. } => "http2_handshake",
            Self::GoAway { .. } => "goaway",
            Self::Reset { .. } => "reset",
            Self::ConnectionLost { .. } => "connection_lost",
        }
    }

    /// The error of a TCP connect.
    pub(crate) fn connect(address: &str, source: std::io::Error) -> Self {
        let address = address.to_string();
        match source.kind() {
            std::io::ErrorKind::ConnectionRefused => Self::ConnectRefused { address },
            _ => Self::Connect { address, source },
        }
    }

    /// The error of a TLS handshake, telling an identity mismatch (our
    /// verifier's) from the rest.
    pub(crate) fn tls(address: &str, error: std::io::Error) -> Self {
        let address = address.to_string();
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            rustls_error
            && let Some(mismatch) = (&*other.0 as &(dyn std::error::Error + 'static))
                .downcast_ref::<shop_identity::material::PeerIdentityMismatch>()
        {
            return Self::PeerIdentity {
                address,
                expected: mismatch.expected.clone(),
                presented: mismatch.presented.clone(),
            };
        }
        Self::Tls {
            address,
            reason: rustls_error.map_or_else(|| error.to_string(), ToString::to_string),
        }
    }
}

impl From<h2::Error> for TransportError {
    /// An error of a call on an open connection.
    fn from(source: h2::Error) -> Self {
        match source.reason() {
            Some(reason) if source.is_go_away() && source.is_remote() => Self::GoAway { reason },
            Some(reason) if source.is_reset() && source.is_remote() => Self::Reset { reason },
            _ => Self::ConnectionLost { source },
        }
    }
}

/// The transport error under `error`, if it is one.
pub fn transport_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a TransportError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<TransportError>() {
            return Some(t);
        }
        current = e.source();
    }
    None
}
