//! An identity directory kept current: re-read when its files change, so
//! a rotated certificate (cert-manager renews it in the mounted Secret; the
//! local stack rewrites it) is used by the next handshake without a
//! restart. Connections already open keep the certificate they were made
//! with until they close, as with any TLS server: nothing in flight is
//! dropped.
//!
//! The files are compared by content, not by modification time: Kubernetes
//! updates a mounted Secret by swapping a symlink, which leaves the old
//! files' times as they were. A change that cannot be read (a key that
//! does not match its certificate, half a rotation) is refused with the
//! reason logged, and the identity in force stays.

use crate::files;
use crate::material::{ClientAuth, IdentityError, Material};
use crate::spiffe::SpiffeId;
use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A workload's identity, shared by its server and its mesh clients.
/// `Clone`: clones share the identity in force.
#[derive(Clone)]
pub struct Identity {
    dir: PathBuf,
    client_auth: ClientAuth,
    current: Arc<RwLock<Arc<Loaded>>>,
}

struct Loaded {
    material: Material,
    server: Arc<ServerConfig>,
    /// The three files as read, to notice a change.
    contents: [Vec<u8>; 3],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("id", &self.id().as_str())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the identity in `dir`; its server asks clients for
    /// certificates as `client_auth` says.
    pub fn load(dir: &Path, client_auth: ClientAuth) -> Result<Self, IdentityError> {
        let loaded = Loaded::read(dir, client_auth)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            client_auth,
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().expect("not poisoned").clone()
    }

    /// This workload's SPIFFE ID.
    pub fn id(&self) -> SpiffeId {
        self.loaded().material.id().clone()
    }

    /// The server configuration in force.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded().server.clone()
    }

    /// A client configuration in force, accepting only `expected`.
    pub fn client_config(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, IdentityError> {
        self.loaded().material.client_config(expected)
    }

    /// Reads the directory again; `Ok(true)` if it changed and the new
    /// identity is now in force, `Ok(false)` if nothing changed, an error
    /// (and the identity in force kept) if the change cannot be used.
    pub fn reload(&self) -> Result<bool, IdentityError> {
        let contents = read_all(&self.dir)?;
        if contents == self.loaded().contents {
            return Ok(false);
        }
        let loaded = Loaded::from_contents(&self.dir, self.client_auth, contents)?;
        let id = loaded.material.id().clone();
        *self.current.write().expect("not poisoned") = Arc::new(loaded);
        tracing::info!(dir = %self.dir.display(), %id, "identity reloaded");
        Ok(true)
    }

    /// Reloads every `interval` until `shutdown`; a change that cannot be
    /// used is logged (once per change) and the identity in force kept.
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut last_error = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.reload() {
                Ok(_) => last_error = None,
                Err(error) => {
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::error!(error = %message, "identity change refused; the identity in force stays");
                        last_error = Some(message);
                    }
                }
            }
        }
    }
}

impl Loaded {
    fn read(dir: &Path, client_auth: ClientAuth) -> Result<Self, IdentityError> {
        Self::from_contents(dir, client_auth, read_all(dir)?)
    }

    fn from_contents(
        dir: &Path,
        client_auth: ClientAuth,
        contents: [Vec<u8>; 3],
    ) -> Result<Self, IdentityError> {
        let [cert, key, ca] = &contents;
        let material = Material::from_pem(dir, cert, key, ca)?;
        let server = material.server_config(client_auth)?;
        Ok(Self {
            material,
            server,
            contents,
        })
    }
}

fn read_all(dir: &Path) -> Result<[Vec<u8>; 3], IdentityError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| IdentityError::Read { path, source })
    };
    Ok([read(files::CERT)?, read(files::KEY)?, read(files::CA)?])
}
