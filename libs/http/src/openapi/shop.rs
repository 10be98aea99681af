//! The shop's documents: one per service of its contracts, committed under
//! `docs/openapi/` and checked against the contracts by `shop-openapi
//! check` (in `just lint`) and by this crate's unit tests.

use super::{Info, OpenApiError, document, to_bytes};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The public entry point, whose document the gateway serves.
pub const GATEWAY: &str = "shop.gateway.v1.ShopGatewayService";

/// Packages whose services get no document: the benchmarks' own
/// (`shop.bench.v1.ReplicaService` is served by a benchmark only).
const EXCLUDED_PACKAGES: &[&str] = &["shop.bench."];

/// The descriptors of the shop's contracts and the error details.
pub fn pool() -> Result<prost_reflect::DescriptorPool, OpenApiError> {
    Ok(crate::descriptor_pool(shop_proto::FILE_DESCRIPTOR_SET)?)
}

/// The services that get a document, by full name, sorted.
pub fn services(pool: &prost_reflect::DescriptorPool) -> Vec<String> {
    let mut names: Vec<String> = pool
        .services()
        .map(|s| s.full_name().to_string())
        .filter(|name| name.starts_with("shop."))
        .filter(|name| !EXCLUDED_PACKAGES.iter().any(|p| name.starts_with(p)))
        .collect();
    names.sort();
    names
}

/// The file a service's document is committed as.
pub fn file_name(service: &str) -> String {
    format!("{service}.json")
}

/// Every document, by file name.
pub fn documents() -> Result<BTreeMap<String, Bytes>, OpenApiError> {
    let pool = pool()?;
    let mut out = BTreeMap::new();
    for name in services(&pool) {
        let service = pool
            .get_service_by_name(&name)
            .ok_or_else(|| OpenApiError::NoService(name.clone()))?;
        let doc = document(&pool, &name, &Info::of(&service))?;
        out.insert(file_name(&name), to_bytes(&doc));
    }
    Ok(out)
}

/// The gateway's document, the bytes of its committed file, for
/// [`crate::HttpFace::with_openapi`].
pub fn gateway_document() -> Result<Bytes, OpenApiError> {
    let pool = pool()?;
    let service = pool
        .get_service_by_name(GATEWAY)
        .ok_or_else(|| OpenApiError::NoService(GATEWAY.to_string()))?;
    Ok(to_bytes(&document(&pool, GATEWAY, &Info::of(&service))?))
}

/// How a directory of documents differs from the generated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A document that is not there.
    Missing(String),
    /// A document whose contents differ.
    Differs(String),
    /// A `.json` file that no service generates.
    Extra(String),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Missing(name) => write!(f, "{name}: missing"),
            Drift::Differs(name) => write!(f, "{name}: differs from the contracts"),
            Drift::Extra(name) => write!(f, "{name}: no service generates it"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenApiError + '_ {
    move |source| OpenApiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `.json` files in `dir` (none if it does not exist).
fn json_files(dir: &Path) -> Result<Vec<String>, OpenApiError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Compares `dir` with the generated documents: empty when in step.
pub fn check(dir: &Path) -> Result<Vec<Drift>, OpenApiError> {
    let documents = documents()?;
    let mut drift = Vec::new();
    for (name, bytes) in &documents {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(committed) if committed == bytes.as_ref() => {}
            Ok(_) => drift.push(Drift::Differs(name.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                drift.push(Drift::Missing(name.clone()));
            }
            Err(e) => return Err(io(&path)(e)),
        }
    }
    for name in json_files(dir)? {
        if !documents.contains_key(&name) {
            drift.push(Drift::Extra(name));
        }
    }
    Ok(drift)
}

/// Writes every document into `dir` and removes the `.json` files no
/// service generates; returns the files written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, OpenApiError> {
    let documents = documents()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for name in json_files(dir)? {
        if !documents.contains_key(&name) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    let mut written = Vec::new();
    for (name, bytes) in documents {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
