//! Where the external programs are.
//!
//! Order: `.tools/bin` and `.tools/pg/bin` (pinned versions installed by
//! `libs/testkit/bootstrap.py`), then `PATH`, then, for Postgres, the newest
//! `/usr/lib/postgresql/*/bin`.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The repository root (where `Cargo.toml` of the workspace lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

fn search_dirs() -> Vec<PathBuf> {
    let root = repo_root();
    let mut dirs = vec![root.join(".tools/bin"), root.join(".tools/pg/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut pg: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    // Newest major version first.
    pg.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    dirs.extend(pg);
    dirs
}

/// The path of program `name`.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    for dir in search_dirs() {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` not found in .tools/, PATH or /usr/lib/postgresql/*/bin; \
         run `python3 libs/testkit/bootstrap.py` to install the pinned tools"
    )
}

/// The directory holding Postgres server programs (`initdb`, `postgres`).
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let initdb = find("initdb")?;
    let dir = initdb.parent().context("initdb has no parent dir")?;
    // `.tools/pg/bin` holds symlinks; Postgres finds its share/ and lib/
    // relative to the real binary, so resolve them.
    let real = std::fs::canonicalize(&initdb)?;
    let real_dir = real
        .parent()
        .context("initdb has no parent dir")?
        .to_path_buf();
    if real_dir.join("postgres").is_file() {
        Ok(real_dir)
    } else {
        Ok(dir.to_path_buf())
    }
}

/// The directory holding this workspace's built binaries: the directory of
/// the running executable, or its parent when that is `deps/` (a test).
pub fn workspace_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHOP_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no parent")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A service binary built from this workspace (`users`, `catalog`...).
pub fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_bin_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "service binary {} is missing; build it with `cargo build -p {name}`",
            path.display()
        )
    }
}

/// A free TCP port on 127.0.0.1, for programs that cannot bind port 0 and
/// report it (Postgres). The port is released before returning, so callers
/// retry if another process takes it first.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
