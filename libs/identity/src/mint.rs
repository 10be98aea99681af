//! A certificate authority made on the spot, for the local stack and the
//! tests: a self-signed CA and workload certificates carrying SPIFFE IDs,
//! written in the layout cert-manager gives a Secret. A real deployment
//! brings its own CA (cert-manager's CA issuer, Vault, SPIRE...).

use crate::files;
use crate::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// rcgen refused the parameters.
    #[error("making a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing the files failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A CA that issues workload certificates for one trust domain.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// What a workload certificate says besides its SPIFFE ID.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    /// DNS names (for clients that check them: grpcurl, browsers).
    pub dns: &'a [&'a str],
    /// IP addresses (the same, for clients that dial an address).
    pub ips: &'a [IpAddr],
    /// Valid from (a moment ago, to allow for clock skew).
    pub not_before: OffsetDateTime,
    /// Valid until.
    pub not_after: OffsetDateTime,
}

impl<'a> Leaf<'a> {
    /// Valid from a minute ago for `lifetime`, for `localhost` and
    /// 127.0.0.1: what the local stack uses.
    pub fn local(lifetime: Duration) -> Leaf<'static> {
        const IPS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
        Leaf::named(&["localhost"], IPS, lifetime)
    }

    /// Valid from a minute ago (clock skew) for `lifetime`, for `dns` and
    /// `ips`.
    pub fn named(dns: &'a [&'a str], ips: &'a [IpAddr], lifetime: Duration) -> Leaf<'a> {
        let now = OffsetDateTime::now_utc();
        Leaf {
            dns,
            ips,
            not_before: now - time::Duration::minutes(1),
            not_after: now + lifetime,
        }
    }
}

impl Authority {
    /// A fresh CA (ECDSA P-256) for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, MintError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("shop CA for {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The CA certificate, PEM: the trust bundle.
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A certificate for `id`, usable as server and as client.
    pub fn issue(&self, id: &SpiffeId, leaf: &Leaf<'_>) -> Result<Issued, MintError> {
        let mut params =
            CertificateParams::new(leaf.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            id.service_account().unwrap_or(id.path()).to_string(),
        );
        params
            .subject_alt_names
            .push(SanType::URI(id.as_str().try_into()?));
        params
            .subject_alt_names
            .extend(leaf.ips.iter().copied().map(SanType::IpAddress));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `id` into `dir` (`tls.crt`, `tls.key`,
    /// `ca.crt`), each file written whole then renamed into place (so no
    /// file is ever half written). The three renames are not one: a reader
    /// between them may see a new key with the old certificate, which
    /// [`crate::Identity::reload`] refuses until the set is complete.
    pub fn write(&self, dir: &Path, id: &SpiffeId, leaf: &Leaf<'_>) -> Result<(), MintError> {
        let issued = self.issue(id, leaf)?;
        write_identity(dir, &issued, &self.pem)
    }
}

/// Writes an identity directory from its three parts.
pub fn write_identity(dir: &Path, issued: &Issued, ca_pem: &str) -> Result<(), MintError> {
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, contents))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| MintError::Write { path, source })
    };
    write(files::CA, ca_pem)?;
    write(files::KEY, &issued.key_pem)?;
    write(files::CERT, &issued.cert_pem)
}
