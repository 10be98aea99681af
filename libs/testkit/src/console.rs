//! The operator console (`shop-console`) for a [`Stack`]: started with the
//! stack's operator identity and every service's internal port, on
//! loopback, serving the page `just web` built; stopped (by its PID) when
//! dropped.

use crate::identities::Identities;
use crate::stack::Stack;
use anyhow::Context as _;
use nix::sys::signal::Signal;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where `just web` writes the console's page, relative to the repository.
pub const CONSOLE_SITE_DIR: &str = "web/dist/console";

/// A running console.
#[derive(Debug)]
pub struct Console {
    child: Option<Child>,
    url: String,
}

impl Console {
    /// Starts `shop-console` for `stack` on `listen` (127.0.0.1:0 for a
    /// free port), with the page when it has been built.
    pub fn start(stack: &Stack, listen: SocketAddr) -> anyhow::Result<Console> {
        let binary = crate::tools::service_binary("shop-console")?;
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--identity")
            .arg(Identities::dir_in(stack.dir(), "operator"));
        for service in stack.services() {
            command
                .arg("--service")
                .arg(format!("{}={}", service.name(), service.addr()));
        }
        let site = crate::tools::repo_root().join(CONSOLE_SITE_DIR);
        if site.join("index.html").is_file() {
            command.arg("--site-dir").arg(site);
        }
        let log = std::fs::File::create(stack.dir().join("console.log"))?;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting shop-console")?;
        let stdout = child.stdout.take().context("the console's stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let Some(url) = first.trim().strip_prefix("console: ") else {
            crate::child::terminate(child, Signal::SIGTERM, Duration::from_secs(5));
            anyhow::bail!(
                "shop-console did not start: {}",
                crate::child::tail(&stack.dir().join("console.log"))
            );
        };
        Ok(Console {
            url: url.trim_end_matches('/').to_string(),
            child: Some(child),
        })
    }

    /// Its address, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::child::terminate(child, Signal::SIGTERM, Duration::from_secs(5));
        }
    }
}
