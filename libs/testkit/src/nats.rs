//! A throwaway `nats-server` with JetStream on file storage, every write
//! synced (`sync_interval: always`), so a `kill -9` loses nothing acked.
//!
//! [`Nats::start_for_services`] runs it as a deployment would: no
//! anonymous access, one user per service with the least-privilege subject
//! permissions of `shop_events::permissions`, and an `admin` user with
//! every right for tests and operators; [`Nats::start_secure`] adds TLS
//! (clients verify the server's certificate and present their own, chained
//! to the same CA).

use crate::tools;
use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// A running (or deliberately stopped) NATS server.
pub struct Nats {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// `(user, password, permissions)`; `None` permissions = every right.
    /// Empty: no authorization at all.
    users: Vec<User>,
    /// The server's identity directory, when it serves TLS.
    tls: Option<PathBuf>,
    child: Option<Child>,
}

/// A user: name, password, and permissions (`None`: every right).
type User = (
    String,
    String,
    Option<shop_events::permissions::Permissions>,
);

/// The user with every right, when the server has users.
pub const ADMIN: &str = "admin";

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Nats {
    /// Starts a server that anyone may use for anything; JetStream is
    /// ready on return.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_users(Vec::new(), None).await
    }

    /// Starts a server with [`ADMIN`] and one user per service of
    /// `services`, each with its least-privilege permissions and a fresh
    /// password; nobody else may connect.
    pub async fn start_for_services(services: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_users(service_users(services), None).await
    }

    /// [`Nats::start_for_services`], over TLS only: the server presents the
    /// certificate in `identity` (`tls.crt`, `tls.key`) and requires client
    /// certificates chained to its `ca.crt`.
    pub async fn start_secure(
        services: &[&str],
        identity: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::start_with_users(service_users(services), Some(identity.to_path_buf())).await
    }

    async fn start_with_users(users: Vec<User>, tls: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut nats = Nats {
            dir: tempfile::Builder::new().prefix("shop-nats-").tempdir()?,
            bin: tools::find("nats-server")?,
            port: 0,
            users,
            tls,
            child: None,
        };
        let mut last_err = None;
        for _ in 0..5 {
            nats.port = tools::free_port()?;
            match nats.launch().await {
                Ok(()) => return Ok(nats),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("five attempts were made"))
    }

    /// Whether clients must speak TLS to it.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// [`ADMIN`] and one user per service, each with its least-privilege
/// permissions and a fresh password.
fn service_users(services: &[&str]) -> Vec<User> {
    let password = || uuid::Uuid::new_v4().simple().to_string();
    let mut users = vec![(ADMIN.to_string(), password(), None)];
    for service in services {
        users.push((
            service.to_string(),
            password(),
            Some(shop_events::permissions::for_service(service)),
        ));
    }
    users
}

impl Nats {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The user name and password of `user`, if the server has users.
    pub fn credentials(&self, user: &str) -> Option<(String, String)> {
        self.users
            .iter()
            .find(|(u, ..)| u == user)
            .map(|(u, p, _)| (u.clone(), p.clone()))
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// `kill -9` the server.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("nats-server is still running");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "nats restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Graceful stop (SIGTERM), bounded.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::child::terminate(child, Signal::SIGTERM, Duration::from_secs(10));
        }
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let config = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("jetstream");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 server_name: shop_test\n\
                 jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n{tls}{auth}",
                port = self.port,
                tls = tls_block(self.tls.as_deref()),
                auth = authorization(&self.users, |_, password| format!("{password:?}")),
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited ({status}) while starting; log:\n{}",
                    crate::child::tail(&self.log_path())
                );
            }
            if jetstream_ready(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nats-server not ready after 20s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nats-server's `tls` block for the identity in `dir` (empty without one):
/// TLS required, client certificates verified against the bundle.
fn tls_block(dir: Option<&std::path::Path>) -> String {
    let Some(dir) = dir else {
        return String::new();
    };
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("ca.crt"),
    )
}

/// The `authorization` block of a deployed NATS (`k8s/base/nats/auth.conf`
/// is this text, checked by `tests/deploy.rs`): [`ADMIN`] and one user per
/// service in `services` with its least-privilege permissions, each
/// password read from the server's environment, `$NATS_<USER>_PASSWORD`
/// (set from the `nats-users` Secret).
pub fn deployed_authorization(services: &[&str]) -> String {
    let mut users = vec![(ADMIN.to_string(), String::new(), None)];
    users.extend(services.iter().map(|service| {
        (
            service.to_string(),
            String::new(),
            Some(shop_events::permissions::for_service(service)),
        )
    }));
    authorization(&users, |user, _| password_variable(user))
}

/// The environment variable a deployed NATS reads `user`'s password from.
pub fn password_variable(user: &str) -> String {
    format!("$NATS_{}_PASSWORD", user.to_uppercase())
}

/// nats-server's `authorization` block for `users` (empty without users),
/// each password as `password(user, its password)` writes it (a quoted
/// literal or a `$VARIABLE`). Subjects are quoted strings, so `$JS...` is
/// not read as a variable.
fn authorization(users: &[User], password: impl Fn(&str, &str) -> String) -> String {
    if users.is_empty() {
        return String::new();
    }
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for (user, secret, permissions) in users {
        out.push_str(&format!(
            "    {{ user: {user:?}, password: {}",
            password(user, secret)
        ));
        if let Some(p) = permissions {
            out.push_str(&format!(
                ", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }}",
                list(&p.publish),
                list(&p.subscribe)
            ));
        }
        out.push_str(" }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

/// Whether the server greets clients with an INFO that announces JetStream.
fn jetstream_ready(port: u16) -> bool {
    let Ok(stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok()
        && line.starts_with("INFO ")
        && line.contains("\"jetstream\":true")
}
