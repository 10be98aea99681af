//! The services the console watches, and its channels to their internal
//! ports as the operator (mutual TLS with the operator's certificate).

use shop_identity::files;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long connecting to a service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("reading the operator's identity {path}: {source}")]
    Identity {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("service {0:?}: expected NAME=HOST:PORT")]
    Service(String),
    #[error("the address of {name}: {source}")]
    Endpoint {
        name: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// One service instance and the operator's channel to it.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its instance name (`catalog`, `catalog-2`).
    pub name: String,
    /// Its internal (mesh) port.
    pub addr: SocketAddr,
    /// A lazy channel: a service that is down does not stop the others.
    pub channel: Channel,
}

/// Every service the console shows, in the order given.
#[derive(Debug, Clone, Default)]
pub struct Services(pub Vec<Service>);

impl Services {
    /// Channels as the identity in `identity_dir` (`ca.crt`, `tls.crt`,
    /// `tls.key`) to each `(name, address)`; the services' certificates
    /// must name `server_name` (local certificates name `localhost`).
    pub fn connect(
        identity_dir: &Path,
        server_name: &str,
        services: &[(String, SocketAddr)],
    ) -> Result<Services, AdminError> {
        let read = |name: &str| {
            let path = identity_dir.join(name);
            std::fs::read(&path).map_err(|source| AdminError::Identity {
                path: path.display().to_string(),
                source,
            })
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(files::CA)?))
            .identity(Identity::from_pem(read(files::CERT)?, read(files::KEY)?))
            .domain_name(server_name);
        let mut out = Vec::with_capacity(services.len());
        for (name, addr) in services {
            let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(|source| AdminError::Endpoint {
                    name: name.clone(),
                    source,
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                // Every call, the TLS handshake of a frozen peer included.
                .timeout(crate::overview::CALL_DEADLINE);
            out.push(Service {
                name: name.clone(),
                addr: *addr,
                channel: endpoint.connect_lazy(),
            });
        }
        Ok(Services(out))
    }

    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.0.iter().find(|s| s.name == name)
    }
}

/// `NAME=HOST:PORT`, as given on the command line.
pub fn parse_service(spec: &str) -> Result<(String, SocketAddr), AdminError> {
    let (name, addr) = spec
        .split_once('=')
        .ok_or_else(|| AdminError::Service(spec.to_string()))?;
    let addr = addr
        .parse()
        .map_err(|_| AdminError::Service(spec.to_string()))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(AdminError::Service(spec.to_string()));
    }
    Ok((name.to_string(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_name_equals_address() {
        let (name, addr) = parse_service("catalog-2=127.0.0.1:7112").unwrap();
        assert_eq!((name.as_str(), addr.port()), ("catalog-2", 7112));
        for bad in ["catalog", "=127.0.0.1:1", "a b=127.0.0.1:1", "x=localhost"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
    }
}
