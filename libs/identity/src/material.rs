//! An identity directory read into rustls configurations.
//!
//! The directory holds what cert-manager writes into a Secret: `tls.crt`
//! (the chain, leaf first), `tls.key` (the leaf's key) and `ca.crt` (the
//! trust bundle). The leaf must carry a SPIFFE ID in its URI SANs: that is
//! the workload's identity.
//!
//! Both sides verify the peer's chain against the bundle only (not the
//! system roots), with rustls' WebPKI verifier, which also checks validity
//! dates and key usage. A client then checks the server's SPIFFE ID
//! against the one it expects for that upstream: chaining to the CA is not
//! enough, since any workload of the mesh chains to it, and one compromised
//! pod must not be able to pose as another service.

use crate::files;
use crate::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every client presents a certificate chained to the bundle
    /// (service-to-service ports).
    #[default]
    Required,
    /// A certificate is verified when presented, and not needed (the
    /// gateway's public port: end users authenticate with tokens, an
    /// operator with a certificate).
    Optional,
}

/// Why an identity could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds nothing usable of what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the
    /// certificate, an empty bundle...).
    #[error("building the TLS configuration from {dir}: {reason}")]
    Tls {
        /// The identity directory.
        dir: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// A workload's identity as read from its directory.
pub struct Material {
    dir: PathBuf,
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("dir", &self.dir)
            .field("id", &self.id)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Reads `dir/tls.crt`, `dir/tls.key` and `dir/ca.crt`, and checks that
    /// they make a usable identity (the key matches the certificate, the
    /// leaf has a SPIFFE ID, the bundle holds at least one CA).
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| IdentityError::Read { path, source })
        };
        Self::from_pem(
            dir,
            &read(files::CERT)?,
            &read(files::KEY)?,
            &read(files::CA)?,
        )
    }

    /// [`Material::load`] from the three files' contents; `dir` names them
    /// in errors.
    pub fn from_pem(dir: &Path, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, IdentityError> {
        let invalid = |name: &str, reason: String| IdentityError::Invalid {
            path: dir.join(name),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(files::CERT, format!("not PEM certificates: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid(files::CERT, "no certificate in it".into()))?;
        let id = spiffe_id_of(leaf).map_err(|reason| invalid(files::CERT, reason))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| invalid(files::KEY, format!("not a PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert =
                cert.map_err(|e| invalid(files::CA, format!("not PEM certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(files::CA, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(files::CA, "no CA certificate in it".into()));
        }
        let material = Self {
            dir: dir.to_path_buf(),
            id,
            chain,
            key,
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        // Proves the key matches the certificate, and the bundle is usable.
        material.server_config(ClientAuth::Required)?;
        Ok(material)
    }

    /// This workload's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The directory it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server configuration presenting this identity, asking clients for
    /// certificates as `client_auth` says; ALPN `h2`.
    pub fn server_config(
        &self,
        client_auth: ClientAuth,
    ) -> Result<Arc<ServerConfig>, IdentityError> {
        let tls = |e: &dyn std::fmt::Display| IdentityError::Tls {
            dir: self.dir.clone(),
            reason: e.to_string(),
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        let verifier = match client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| tls(&e))?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration presenting this identity and accepting only a
    /// server whose certificate chains to the bundle and names `expected`;
    /// ALPN `h2`.
    pub fn client_config(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, IdentityError> {
        let tls = |e: &dyn std::fmt::Display| IdentityError::Tls {
            dir: self.dir.clone(),
            reason: e.to_string(),
        };
        let verifier = Arc::new(SpiffeVerifier {
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            expected: expected.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The SPIFFE ID in a certificate's URI SANs (exactly one, as the X.509
/// SVID specification requires).
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("not a usable X.509 certificate: {e}"))?;
    let mut ids = parsed
        .valid_uri_names()
        .filter(|u| u.starts_with("spiffe://"));
    let id = ids
        .next()
        .ok_or_else(|| "the certificate has no spiffe:// URI SAN".to_string())?;
    if ids.next().is_some() {
        return Err("the certificate has more than one spiffe:// URI SAN".into());
    }
    SpiffeId::parse(id).map_err(|e| e.to_string())
}

/// Why a server's certificate was refused although it chains to the
/// bundle.
#[derive(Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, the server presented {presented}")]
pub struct PeerIdentityMismatch {
    /// The identity configured for the upstream.
    pub expected: SpiffeId,
    /// What the certificate names (or why it names nothing).
    pub presented: String,
}

/// Verifies a server's chain against the bundle, then its SPIFFE ID
/// against the one expected; the DNS name the client dialled plays no part.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id_of(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            presented => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    PeerIdentityMismatch {
                        expected: self.expected.clone(),
                        presented: presented.map_or_else(|e| e, |id| id.to_string()),
                    },
                ))),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
