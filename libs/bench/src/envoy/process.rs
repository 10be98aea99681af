//! One Envoy process: the bootstrap written to a file, the binary the
//! bootstrap installs (`.tools/bin/envoy`, or `ENVOY`), one worker thread,
//! pinned to a core like the processes it sits beside.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Envoy, killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: String,
}

/// The Envoy binary: `ENVOY`, else the one the bootstrap installed in
/// this workspace's `.tools/bin`, else `envoy` on the PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY") {
        return PathBuf::from(path);
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("envoy")
}

impl Envoy {
    /// Writes `config` to `dir/<name>.json` and starts Envoy on it, pinned
    /// to `core` (a `taskset` list), with one worker; returns once its
    /// admin interface answers.
    pub fn start(
        dir: &Path,
        name: &str,
        config: &serde_json::Value,
        core: &str,
    ) -> anyhow::Result<Self> {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
        let admin_path = dir.join(format!("{name}.admin"));
        let _ = std::fs::remove_file(&admin_path);
        let mut command = if Path::new("/usr/bin/taskset").exists() {
            let mut taskset = Command::new("/usr/bin/taskset");
            taskset.args(["-c", core]).arg(binary());
            taskset
        } else {
            Command::new(binary())
        };
        let child = command
            .arg("-c")
            .arg(&file)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l"])
            // `SHOP_ENVOY_LOG=debug` to see what Envoy does.
            .arg(std::env::var("SHOP_ENVOY_LOG").unwrap_or_else(|_| "error".into()))
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting envoy (the bootstrap installs it under .tools/bin)")?;
        let mut envoy = Self {
            child,
            admin: String::new(),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("envoy {name} exited at start: {status}");
            }
            if let Ok(addr) = std::fs::read_to_string(&admin_path)
                && !addr.trim().is_empty()
            {
                envoy.admin = addr.trim().to_string();
                return Ok(envoy);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("envoy {name} did not start within 20 s")
    }

    /// Its process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its admin interface (`127.0.0.1:port`), for `/stats`.
    pub fn admin(&self) -> &str {
        &self.admin
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Has Envoy check `config` without serving it (`--mode validate`):
/// every field, type and reference as Envoy reads them.
pub fn validate(dir: &Path, name: &str, config: &serde_json::Value) -> anyhow::Result<()> {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
    let out = Command::new(binary())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&file)
        .output()
        .context("running envoy --mode validate")?;
    if !out.status.success() {
        bail!(
            "envoy refused {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
