//! The replicas of `just bench resilience`: `bench-replica` processes on
//! fixed ports, so that one killed or restarted comes back where every
//! data plane expects it, with their faults set through stdin and their
//! signals sent by PID.

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// One replica's ports and, while it runs, its process.
#[derive(Debug)]
pub struct Slot {
    /// `r0`, `r1`...
    pub name: String,
    /// Its plaintext port (behind an Envoy sidecar, or bare).
    pub bare: u16,
    /// Its mesh port (mTLS, the mesh's server stack).
    pub mesh: u16,
    child: Option<(Child, ChildStdin)>,
}

/// The replicas, all started from one binary with one identity.
#[derive(Debug)]
pub struct Replicas {
    binary: PathBuf,
    tls: PathBuf,
    allow: String,
    core: String,
    work_us: u64,
    /// The replicas, in order.
    pub slots: Vec<Slot>,
}

impl Replicas {
    /// Starts `n` replicas of `binary` with the identity in `tls`,
    /// authorizing the workload `allow`, pinned to `core`, each call
    /// burning `work_us` of CPU.
    pub fn start(
        binary: PathBuf,
        tls: PathBuf,
        allow: &str,
        (n, work_us): (usize, u64),
        core: &str,
    ) -> anyhow::Result<Self> {
        let mut replicas = Self {
            binary,
            tls,
            allow: allow.into(),
            core: core.into(),
            work_us,
            slots: Vec::new(),
        };
        for i in 0..n {
            replicas.slots.push(Slot {
                name: format!("r{i}"),
                bare: crate::free_port()?,
                mesh: crate::free_port()?,
                child: None,
            });
        }
        for i in 0..n {
            replicas.spawn(i)?;
        }
        Ok(replicas)
    }

    /// Starts replica `i` (again) on its ports; returns once it listens.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &self.slots[i];
        let started = Instant::now();
        loop {
            let mut command = if std::path::Path::new("/usr/bin/taskset").exists() {
                let mut c = Command::new("/usr/bin/taskset");
                c.args(["-c", &self.core]).arg(&self.binary);
                c
            } else {
                Command::new(&self.binary)
            };
            let mut child = command
                .args(["--name", &slot.name])
                .args(["--bare", &slot.bare.to_string()])
                .args(["--mesh", &slot.mesh.to_string()])
                .arg("--tls")
                .arg(&self.tls)
                .args(["--allow", &self.allow])
                .args(["--work-us", &self.work_us.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting bench-replica")?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if line.trim() == "ready" {
                let stdin = child.stdin.take().context("stdin")?;
                self.slots[i].child = Some((child, stdin));
                return Ok(());
            }
            // Its port may still be held by the process it replaces.
            let _ = child.wait();
            if started.elapsed() > Duration::from_secs(10) {
                bail!("replica {} did not start on its ports", self.slots[i].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self, i: usize) -> Option<Pid> {
        self.slots[i]
            .child
            .as_ref()
            .map(|(c, _)| Pid::from_raw(c.id() as i32))
    }

    /// Sends `signal` to replica `i`.
    pub fn signal(&self, i: usize, signal: Signal) -> anyhow::Result<()> {
        if let Some(pid) = self.pid(i) {
            kill(pid, signal)?;
        }
        Ok(())
    }

    /// Kills replica `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some((mut child, _)) = self.slots[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM to replica `i` and waits for it to drain and exit
    /// (SIGKILL after `patience`).
    pub fn terminate(&mut self, i: usize, patience: Duration) -> anyhow::Result<()> {
        self.signal(i, Signal::SIGTERM)?;
        if let Some((mut child, _)) = self.slots[i].child.take() {
            let started = Instant::now();
            while child.try_wait()?.is_none() {
                if started.elapsed() > patience {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Sets replica `i`'s faults (`delay <ms>`, `fail <percent>`, `ok`).
    pub fn fault(&mut self, i: usize, command: &str) -> anyhow::Result<()> {
        if let Some((_, stdin)) = self.slots[i].child.as_mut() {
            writeln!(stdin, "{command}")?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// The PIDs of the replicas running now.
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.child.as_ref().map(|(c, _)| c.id()))
            .collect()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            let _ = self.signal(i, Signal::SIGCONT);
            let _ = self.kill(i);
        }
    }
}
