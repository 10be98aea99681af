//! A throwaway Postgres cluster.
//!
//! `initdb` into a temporary directory, then `postgres` in the foreground as
//! a child process on a free loopback port, so its PID is ours to signal.
//! Postgres refuses to run as root; when we are root, both run as the
//! `postgres` user if there is one, else `nobody`.
//!
//! Every login needs a password (SCRAM-SHA-256): the superuser's is made up
//! per cluster, and [`Postgres::create_service_database`] gives a service
//! a login role of its own that owns its database and nothing else, with
//! `CONNECT` revoked from `PUBLIC`, as a deployment would.

use crate::tools;
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// A running (or deliberately stopped) Postgres server.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    /// The superuser's password (made up per cluster).
    password: String,
    /// Whether commits are flushed to disk.
    fsync: bool,
    child: Option<Child>,
}

/// A password fit for a URL and an SQL literal: 32 hex digits.
fn new_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Postgres {
    /// Creates a cluster and starts it; ready for connections on return.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_fsync(false).await
    }

    /// [`Postgres::start`] with `fsync` on (every commit flushed to disk,
    /// as in production), and `pg_stat_statements` loaded when the
    /// installation has it: what benchmarks measure against and profile.
    pub async fn start_durable() -> anyhow::Result<Self> {
        Self::start_with_fsync(true).await
    }

    async fn start_with_fsync(fsync: bool) -> anyhow::Result<Self> {
        let bin = tools::postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("shop-pg-").tempdir()?;
        let owner = unprivileged_owner()?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid.into()), Some(gid.into()))
                .context("handing the Postgres directory to the unprivileged user")?;
        }
        let password = new_password();
        let pwfile = dir.path().join("superuser.pw");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        if let Some((uid, gid)) = owner {
            chown(&pwfile, Some(uid.into()), Some(gid.into()))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = tokio::task::spawn_blocking(move || initdb.output()).await??;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            owner,
            password,
            fsync,
            child: None,
        };
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = tools::free_port()?;
            match pg.launch().await {
                Ok(()) => {
                    pg.lock_down().await?;
                    return Ok(pg);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("five attempts were made"))
    }

    /// The port Postgres listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A connection URL for database `db` as the superuser `postgres`
    /// (for tests that look behind a service's back; services get their
    /// own role from [`Postgres::create_service_database`]).
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", &self.password, db)
    }

    /// A connection URL for database `db` as `role` with `password`.
    pub fn url_as(&self, role: &str, password: &str, db: &str) -> String {
        format!("postgres://{role}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// [`Postgres::url_as`] over the server's Unix socket instead of TCP
    /// loopback: what services on this machine use (no TCP stack, no
    /// Nagle, fewer copies per round trip).
    pub fn socket_url_as(&self, role: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{role}:{password}@localhost:{}/{db}?host={}",
            self.port,
            self.dir.path().display()
        )
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        // Identifiers cannot be bound; the name is ours and quoted.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        conn.close().await?;
        Ok(self.url(name))
    }

    /// Database `name` for service `role`: a login role of that name with a
    /// fresh password, owning the database (so its migrations run as it),
    /// which nobody else may connect to (`CONNECT` and `TEMPORARY` revoked
    /// from `PUBLIC`; the role has no `CREATEDB`, `CREATEROLE` or
    /// superuser rights). Returns the role's URL for the database.
    pub async fn create_service_database(&self, name: &str, role: &str) -> anyhow::Result<String> {
        self.create_service_database_with_password(name, role, &new_password())
            .await
    }

    /// [`Postgres::create_service_database`] with the role's password given
    /// (a deployment's Secret holds it); `password` must be hex or
    /// alphanumeric.
    pub async fn create_service_database_with_password(
        &self,
        name: &str,
        role: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        use sqlx::Connection as _;
        anyhow::ensure!(
            password.chars().all(|c| c.is_ascii_alphanumeric()),
            "role passwords here are alphanumeric"
        );
        let quote = |ident: &str| format!("\"{}\"", ident.replace('"', ""));
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        for sql in [
            format!(
                "CREATE ROLE {} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE",
                quote(role)
            ),
            format!("CREATE DATABASE {} OWNER {}", quote(name), quote(role)),
            format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                quote(name)
            ),
        ] {
            // Identifiers cannot be bound; the names are ours and quoted,
            // the password is alphanumeric.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating database {name} for role {role}"))?;
        }
        conn.close().await?;
        Ok(self.url_as(role, password, name))
    }

    /// Serves TLS with the certificate and key in `identity` (`tls.crt`,
    /// `tls.key`; copied into the cluster's directory, the key readable by
    /// the server's user alone), from now on and after restarts: the
    /// settings are written with `ALTER SYSTEM` and reloaded, no restart.
    /// Plaintext connections are still accepted; a client asks for TLS
    /// with [`Postgres::tls_params`].
    pub async fn enable_tls(&self, identity: &Path) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.dir.path().join("tls");
        std::fs::create_dir_all(&dir)?;
        for name in ["tls.crt", "tls.key"] {
            let to = dir.join(name);
            std::fs::copy(identity.join(name), &to)
                .with_context(|| format!("copying {}", identity.join(name).display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.owner {
                chown(&to, Some(uid.into()), Some(gid.into()))?;
            }
        }
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        for sql in [
            format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}'",
                dir.join("tls.crt").display()
            ),
            format!(
                "ALTER SYSTEM SET ssl_key_file = '{}'",
                dir.join("tls.key").display()
            ),
            "ALTER SYSTEM SET ssl = on".to_string(),
            "ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.3'".to_string(),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            // Paths are ours (a temporary directory, no quotes in it).
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .context("turning TLS on")?;
        }
        conn.close().await?;
        Ok(())
    }

    /// The URL parameters that make a client insist on TLS and verify the
    /// server's certificate (chain and host name) against `ca_file`.
    pub fn tls_params(ca_file: &Path) -> String {
        format!("sslmode=verify-full&sslrootcert={}", ca_file.display())
    }

    /// Nobody but the superuser may connect to the maintenance databases,
    /// so a service's role cannot look around the cluster from there.
    async fn lock_down(&self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        for db in ["postgres", "template1"] {
            let sql = format!("REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// `kill -9` the postmaster, as a crash would. Its backends notice that
    /// the postmaster died and exit by themselves.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL)?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port, after [`Postgres::kill`]
    /// (crash recovery runs) or [`Postgres::stop`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("Postgres is still running");
        }
        // Backends of a killed postmaster may hold the port for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "Postgres restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fast shutdown (SIGINT), bounded; SIGKILL if it does not stop in time.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::child::terminate(child, Signal::SIGINT, Duration::from_secs(10));
        }
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.log_path(), Some(uid.into()), Some(gid.into()))?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Without fsync: durable against a killed process (the OS keeps
            // the writes); tests do not simulate power loss.
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            .args(["-c", "max_connections=400"])
            // Warnings name the statement that caused them.
            .args(["-c", "log_min_error_statement=warning"])
            .args(self.profiling_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        as_owner(&mut cmd, self.owner);
        let mut child = cmd.spawn().context("starting postgres")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = self.url("postgres");
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "postgres exited ({status}) while starting; log:\n{}",
                    crate::child::tail(&self.log_path())
                );
            }
            if ready(&url).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "postgres not ready after 30s; log:\n{}",
                    crate::child::tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Postgres {
    /// `shared_preload_libraries=pg_stat_statements` for a durable cluster
    /// whose installation ships the module (a benchmark's profile); nothing
    /// otherwise.
    fn profiling_args(&self) -> Vec<String> {
        let installed = [
            "lib/pg_stat_statements.so",
            "lib/postgresql/pg_stat_statements.so",
        ]
        .iter()
        .any(|rel| {
            self.bin
                .parent()
                .is_some_and(|root| root.join(rel).is_file())
        });
        if self.fsync && installed {
            vec![
                "-c".into(),
                "shared_preload_libraries=pg_stat_statements".into(),
            ]
        } else {
            Vec::new()
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ready(url: &str) -> bool {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}

/// The user to run Postgres as, when we are root.
fn unprivileged_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) = User::from_name(name)? {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    bail!("running as root, and neither a `postgres` nor a `nobody` user exists")
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        // std drops supplementary groups when root changes uid.
        cmd.uid(uid).gid(gid);
    }
}
