//! `[server.connections]`: what one client, and all of them, may hold of a
//! server port, with defaults safe for a port on the internet.

use serde::Deserialize;
use std::time::Duration;

/// Limits on the connections of a server port and on what each may carry.
///
/// ```toml
/// [server.connections]
/// handshake_timeout = "3s"
/// idle_timeout = "5m"
/// max_connections = 4096
/// max_connections_per_peer = 128
/// max_concurrent_streams = 256
/// max_header_list_size = 16384
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// How long a client has to complete the TLS handshake.
    #[serde(with = "humantime_serde", default = "d_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// A connection on which nothing is read or written this long is
    /// closed.
    #[serde(with = "humantime_serde", default = "d_idle_timeout")]
    pub idle_timeout: Duration,
    /// Connections the port holds at once (handshaking ones included).
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Connections one address (one /64 for IPv6) holds at once.
    #[serde(default = "d_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// HTTP/2 streams (calls) one connection carries at once; a client
    /// opening more gets them refused (`REFUSED_STREAM`).
    #[serde(default = "d_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Largest header list (HPACK-decoded) of a request, in bytes.
    #[serde(default = "d_max_header_list_size")]
    pub max_header_list_size: u32,
    /// Streams a client may open and reset before the server has accepted
    /// them, before the connection is closed ("rapid reset").
    #[serde(default = "d_max_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors (frames
    /// on a stream it refused or closed, say) before it closes the
    /// connection with ENHANCE_YOUR_CALM: each reset is queued, so without
    /// a bound one connection ignoring REFUSED_STREAM costs tens of MB.
    #[serde(default = "d_max_local_error_reset_streams")]
    pub max_local_error_reset_streams: usize,
}

fn d_handshake_timeout() -> Duration {
    Duration::from_secs(3)
}
fn d_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn d_max_connections() -> usize {
    4096
}
fn d_max_connections_per_peer() -> usize {
    128
}
fn d_max_concurrent_streams() -> u32 {
    256
}
fn d_max_header_list_size() -> u32 {
    16 * 1024
}
fn d_max_local_error_reset_streams() -> usize {
    1024
}
fn d_max_pending_accept_reset_streams() -> usize {
    20
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: d_handshake_timeout(),
            idle_timeout: d_idle_timeout(),
            max_connections: d_max_connections(),
            max_connections_per_peer: d_max_connections_per_peer(),
            max_concurrent_streams: d_max_concurrent_streams(),
            max_header_list_size: d_max_header_list_size(),
            max_pending_accept_reset_streams: d_max_pending_accept_reset_streams(),
            max_local_error_reset_streams: d_max_local_error_reset_streams(),
        }
    }
}

impl ConnectionLimits {
    /// Refuses limits that would shut the port or make no sense, naming
    /// the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("handshake_timeout", !self.handshake_timeout.is_zero()),
            ("idle_timeout", !self.idle_timeout.is_zero()),
            ("max_connections", self.max_connections > 0),
            (
                "max_connections_per_peer",
                self.max_connections_per_peer > 0,
            ),
            ("max_concurrent_streams", self.max_concurrent_streams > 0),
            ("max_header_list_size", self.max_header_list_size >= 1024),
        ];
        for (key, ok) in positive {
            anyhow::ensure!(
                ok,
                "server.connections.{key} must be positive (max_header_list_size at least 1024)"
            );
        }
        anyhow::ensure!(
            self.max_connections_per_peer <= self.max_connections,
            "server.connections.max_connections_per_peer ({}) exceeds max_connections ({})",
            self.max_connections_per_peer,
            self.max_connections
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused_by_name() {
        ConnectionLimits::default().validate().unwrap();
        let zero = ConnectionLimits {
            max_concurrent_streams: 0,
            ..ConnectionLimits::default()
        };
        let error = zero.validate().unwrap_err().to_string();
        assert!(error.contains("max_concurrent_streams"), "{error}");
        let inverted = ConnectionLimits {
            max_connections: 10,
            max_connections_per_peer: 20,
            ..ConnectionLimits::default()
        };
        let error = inverted.validate().unwrap_err().to_string();
        assert!(error.contains("max_connections_per_peer"), "{error}");
    }
}
