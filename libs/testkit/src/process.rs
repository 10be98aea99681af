//! A service binary of this workspace running as a child process.
//!
//! It binds port 0 (or a given address) and reports the address it bound
//! through `server.addr_file`, and a plaintext health-only port through
//! `server.health_addr_file`; [`ServiceProcess::start`] returns once the
//! health port answers SERVING. A service given an identity
//! (`SHOP_<SVC>__SERVER__TLS__DIR`) serves mutual TLS: [`ServiceProcess::channel`]
//! calls it as the stack's `operator`. Its output goes to a log file
//! (and, for the local stack, to our stdout as well).

use crate::tools;
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A running (or deliberately stopped) service process.
pub struct ServiceProcess {
    name: String,
    service: String,
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    /// The identity tests call it with (the operator's), when it serves
    /// mTLS.
    client_identity: Option<PathBuf>,
    child: Option<Child>,
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ServiceProcess {
    /// Starts service `name` with `env` on `listen` (port 0 when `None`),
    /// keeping its files in `dir`, and waits until it is SERVING.
    pub async fn start(
        name: &str,
        env: Vec<(String, String)>,
        dir: &Path,
        listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::start_instance(name, name, env, dir, listen).await
    }

    /// Starts instance `instance` (`catalog-2`) of service `service`: a
    /// replica, with its own address and log.
    pub async fn start_instance(
        service: &str,
        instance: &str,
        env: Vec<(String, String)>,
        dir: &Path,
        listen: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let tls_key = format!("SHOP_{}__SERVER__TLS__DIR", service.to_uppercase());
        let client_identity = env
            .iter()
            .any(|(k, _)| *k == tls_key)
            .then(|| crate::identities::Identities::dir_in(dir, "operator"));
        let mut process = ServiceProcess {
            name: instance.to_string(),
            service: service.to_string(),
            bin: tools::service_binary(service)?,
            dir: dir.to_path_buf(),
            env,
            args: Vec::new(),
            addr: listen,
            health_addr: None,
            client_identity,
            child: None,
        };
        process.launch().await?;
        Ok(process)
    }

    /// Starts `service` with the command-line `args` and `env` a deployment
    /// gives it (its configuration file among them), on a free loopback
    /// port; `operator` is the identity directory tests call it with when
    /// its configuration makes it serve mutual TLS.
    pub async fn start_deployed(
        service: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: &Path,
        operator: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut process = ServiceProcess {
            name: service.to_string(),
            service: service.to_string(),
            bin: tools::service_binary(service)?,
            dir: dir.to_path_buf(),
            env,
            args,
            addr: None,
            health_addr: None,
            client_identity: operator,
            child: None,
        };
        process.launch().await?;
        Ok(process)
    }

    /// The instance's name (`users`, `catalog-2`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service it is an instance of (`catalog`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the service has been started once")
    }

    /// `https://<addr>` when it serves mTLS, else `http://<addr>`.
    pub fn url(&self) -> String {
        let scheme = if self.client_identity.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// Whether it serves mutual TLS.
    pub fn is_tls(&self) -> bool {
        self.client_identity.is_some()
    }

    /// The plaintext port that serves health and nothing else.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr.expect("the service has been started once")
    }

    /// A channel to it as an end user would open one: TLS trusting the
    /// stack's CA, no client certificate (the gateway's public port).
    pub async fn public_channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        self.connect(crate::identities::server_only_tls).await
    }

    /// A REST/JSON client of it as an end user (TLS trusting the stack's
    /// CA, no client certificate) speaking `version`.
    pub fn rest(&self, version: crate::rest::Version) -> anyhow::Result<crate::rest::Rest> {
        let dir = self
            .client_identity
            .as_deref()
            .context("the service serves plaintext; the REST client speaks TLS")?;
        crate::rest::Rest::new(self.addr(), dir, version)
    }

    /// The CA file that signed its certificate (`ca.crt` of the identity
    /// tests call it with), when it serves TLS: what a proxy in front of it
    /// trusts.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.client_identity
            .as_deref()
            .map(|dir| dir.join(shop_identity::files::CA))
    }

    /// A channel to it, as the stack's operator when it serves mTLS.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        self.connect(crate::identities::client_tls).await
    }

    /// A channel to it presenting the identity in `dir` (another workload's,
    /// as `Identities::dir_in` names it, or one a test minted): how a test
    /// calls as someone other than the operator. An error if the service
    /// serves plaintext (no identity could be presented) or the connection
    /// fails; a server that refuses the certificate after the TLS 1.3
    /// handshake fails the first call instead.
    pub async fn channel_as(&self, dir: &Path) -> anyhow::Result<tonic::transport::Channel> {
        anyhow::ensure!(
            self.is_tls(),
            "{} serves plaintext: no identity can be presented",
            self.name
        );
        self.open(Some(crate::identities::client_tls(dir)?)).await
    }

    /// A channel to it, with the TLS `tls` makes of the operator's identity
    /// directory when it serves TLS, plaintext otherwise.
    async fn connect(
        &self,
        tls: fn(&Path) -> anyhow::Result<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let tls = match &self.client_identity {
            Some(dir) => Some(tls(dir)?),
            None => None,
        };
        self.open(tls).await
    }

    async fn open(
        &self,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.url())?
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint.connect().await?)
    }

    /// The PID while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The service's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// What the service has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the service is not running")?;
        kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// `kill -9`, and reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `within` for the exit status.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("the service is not running")?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {within:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs another build of the service from its next (re)start, e.g.
    /// `payments-failpoints` (a binary of the same package in the
    /// workspace's target directory).
    pub fn use_binary(&mut self, binary: &str) -> anyhow::Result<()> {
        self.bin = tools::service_binary(binary)?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable from its
    /// next (re)start on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_string(), value.to_string()));
        }
    }

    /// Waits up to `within` for the process to exit by itself, and reaps
    /// it: its exit status.
    pub async fn exited(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("the service is not running")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the service again on the address it had, after `kill`/`stop`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.name);
        }
        self.launch().await
    }

    /// The service's own health answer (from its health port), with a
    /// short timeout.
    pub async fn health(&self) -> anyhow::Result<ServingStatus> {
        health(self.health_addr()).await
    }

    /// The status of one entry of its health (`liveness`, a gRPC service
    /// name), from its health port.
    pub async fn health_of(&self, entry: &str) -> anyhow::Result<ServingStatus> {
        health_entry(self.health_addr(), entry).await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let prefix = format!("SHOP_{}__SERVER__", self.service.to_uppercase());
        let addr_file = self.dir.join(format!("{}.addr", self.name));
        let health_file = self.dir.join(format!("{}.health.addr", self.name));
        let _ = std::fs::remove_file(&addr_file);
        let _ = std::fs::remove_file(&health_file);
        let listen = self
            .addr
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(format!("{prefix}LISTEN"), listen)
            .env(format!("{prefix}ADDR_FILE"), &addr_file)
            .env(format!("{prefix}HEALTH_LISTEN"), "127.0.0.1:0")
            .env(format!("{prefix}HEALTH_ADDR_FILE"), &health_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;

        let deadline = Instant::now() + Duration::from_secs(60);
        let mut addr = None;
        let mut health_addr = None;
        let read = |file: &Path| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
        };
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) while starting; log:\n{}",
                    self.name,
                    crate::child::tail(&self.log_path())
                );
            }
            if addr.is_none() {
                addr = read(&addr_file);
            }
            if health_addr.is_none() {
                health_addr = read(&health_file);
            }
            if let (Some(a), Some(h)) = (addr, health_addr)
                && matches!(health(h).await, Ok(ServingStatus::Serving))
            {
                self.addr = Some(a);
                self.health_addr = Some(h);
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} not SERVING after 60s; log:\n{}",
                    self.name,
                    crate::child::tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::child::terminate(child, Signal::SIGTERM, Duration::from_secs(15));
        }
    }
}

/// `grpc.health.v1.Health/Check` of the whole server (service `""`).
pub async fn health(addr: SocketAddr) -> anyhow::Result<ServingStatus> {
    health_entry(addr, "").await
}

/// `grpc.health.v1.Health/Check` of entry `service`.
pub async fn health_entry(addr: SocketAddr, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(match response.into_inner().status {
        1 => ServingStatus::Serving,
        2 => ServingStatus::NotServing,
        _ => ServingStatus::Unknown,
    })
}
