//! The run's certificates.

use std::time::Duration;

/// A CA for the run and two identities: the server's (`catalog`, which
/// the mesh client expects) and the load generator's (`operator`, which
/// MeshAdmin allows); the directory of each, and PEMs for HAProxy.
pub(crate) struct Pki {
    pub(crate) ca: std::path::PathBuf,
    pub(crate) server: std::path::PathBuf,
    pub(crate) client: std::path::PathBuf,
    pub(crate) server_pem: std::path::PathBuf,
    pub(crate) client_pem: std::path::PathBuf,
}

pub(crate) fn mint_pki(dir: &std::path::Path) -> anyhow::Result<Pki> {
    use shop_identity::files;
    use shop_identity::mint::{Authority, Leaf};
    let ca = Authority::generate("bench.local")?;
    let leaf = Leaf::local(Duration::from_secs(3600));
    let id = |sa| shop_identity::SpiffeId::workload("bench.local", "bench", sa);
    let server = dir.join("pki/catalog");
    let client = dir.join("pki/operator");
    ca.write(&server, &id("catalog")?, &leaf)?;
    ca.write(&client, &id("operator")?, &leaf)?;
    let pem = |d: &std::path::Path, name: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("pki/{name}.pem"));
        let mut both = std::fs::read(d.join(files::CERT))?;
        both.extend(std::fs::read(d.join(files::KEY))?);
        std::fs::write(&path, both)?;
        Ok(path)
    };
    Ok(Pki {
        ca: server.join(files::CA),
        server_pem: pem(&server, "server")?,
        client_pem: pem(&client, "client")?,
        server,
        client,
    })
}
