//! Workload identities, as Istio gives them: every process holds an X.509
//! certificate whose URI SAN is its SPIFFE ID,
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, issued by
//! a CA the deployment provides, and every gRPC hop is mutual TLS between
//! two such certificates.
//!
//! - [`spiffe`]: the SPIFFE ID type and the names it is written with in
//!   configuration.
//! - [`material`]: an identity directory in the layout cert-manager writes
//!   (`tls.crt`, `tls.key`, `ca.crt`), read into rustls configurations: a
//!   server that requires (or accepts) client certificates chained to the
//!   bundle, and a client that accepts only the one SPIFFE ID it expects.
//! - [`reload`]: the same directory re-read when its files change, without a
//!   restart; a change that cannot be read is refused and the identity in
//!   force stays.
//! - [`peer`]: who is on the other side of an accepted connection, as
//!   request extensions carry it.
//! - [`mint`]: a CA and workload certificates made with rcgen, for the local
//!   stack and the tests.

pub mod material;
pub mod mint;
pub mod peer;
pub mod reload;
pub mod spiffe;

pub use material::{ClientAuth, IdentityError, Material};
pub use peer::Peer;
pub use reload::Identity;
pub use spiffe::SpiffeId;

/// The file names of an identity directory (a cert-manager Secret mounted
/// as files).
pub mod files {
    /// The certificate chain, leaf first (PEM).
    pub const CERT: &str = "tls.crt";
    /// The leaf's private key (PKCS#8 PEM).
    pub const KEY: &str = "tls.key";
    /// The trust bundle: the CA certificates peers must chain to (PEM).
    pub const CA: &str = "ca.crt";
}
