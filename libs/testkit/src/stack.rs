//! Postgres, NATS and a set of services, started together, one database per
//! service, stopped together (services first) when dropped.

use crate::{Nats, Postgres, ServiceProcess};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use tempfile::TempDir;

/// How to start a [`Stack`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Services to start, in order (`users`, `catalog`...).
    pub services: Vec<String>,
    /// Fixed listen addresses by service; others bind port 0.
    pub listen: BTreeMap<String, SocketAddr>,
    /// Extra environment for every service (`RUST_LOG`...).
    pub env: Vec<(String, String)>,
    /// Extra environment for one service, by name (applied last).
    pub service_env: BTreeMap<String, Vec<(String, String)>>,
    /// Extra environment for one instance (`catalog-2`), applied last.
    pub instance_env: BTreeMap<String, Vec<(String, String)>>,
    /// Instances per service when more than one (`catalog` -> 3 starts
    /// `catalog`, `catalog-2`, `catalog-3` on one database).
    pub replicas: BTreeMap<String, usize>,
}

/// A running local system.
pub struct Stack {
    // Field order is drop order: services stop before NATS and Postgres.
    services: BTreeMap<String, ServiceProcess>,
    /// The NATS server.
    pub nats: Nats,
    /// The Postgres server.
    pub postgres: Postgres,
    dir: TempDir,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("services", &self.services)
            .field("nats", &self.nats)
            .field("postgres", &self.postgres)
            .finish()
    }
}

impl Stack {
    /// Starts `services` on free ports.
    pub async fn start(services: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(StackOptions {
            services: services.iter().map(|s| s.to_string()).collect(),
            ..StackOptions::default()
        })
        .await
    }

    /// Starts a stack as `options` say, reporting progress through
    /// `progress` (one line per step).
    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        Self::start_reporting(options, |_| {}).await
    }

    /// [`Stack::start_with`], calling `progress` with a line per step.
    pub async fn start_reporting(
        options: StackOptions,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("shop-stack-").tempdir()?;
        progress("starting postgres");
        let postgres = Postgres::start().await?;
        progress(&format!(
            "postgres ready on 127.0.0.1:{} (pid {})",
            postgres.port(),
            postgres.pid().unwrap_or(0)
        ));
        progress("starting nats-server with JetStream");
        let nats = Nats::start().await?;
        progress(&format!(
            "nats ready at {} (pid {})",
            nats.url(),
            nats.pid().unwrap_or(0)
        ));
        let mut stack = Stack {
            services: BTreeMap::new(),
            nats,
            postgres,
            dir,
        };
        for name in &options.services {
            progress(&format!("starting {name}"));
            let db_url = stack
                .postgres
                .create_database(&format!("shop_{name}"))
                .await?;
            let mut env = vec![
                ("DATABASE_URL".to_string(), db_url),
                ("NATS_URL".to_string(), stack.nats.url()),
                (
                    format!("SHOP_{}__DATABASE__PROBE_INTERVAL", name.to_uppercase()),
                    "200ms".to_string(),
                ),
            ];
            env.extend(service_env(name, &stack.services));
            env.extend(options.env.iter().cloned());
            if let Some(extra) = options.service_env.get(name) {
                env.extend(extra.iter().cloned());
            }
            let instances = options.replicas.get(name).copied().unwrap_or(1).max(1);
            for i in 1..=instances {
                let instance = if i == 1 {
                    name.clone()
                } else {
                    format!("{name}-{i}")
                };
                let listen = options.listen.get(&instance).copied();
                let mut env = env.clone();
                if let Some(extra) = options.instance_env.get(&instance) {
                    env.extend(extra.iter().cloned());
                }
                let process =
                    ServiceProcess::start_instance(name, &instance, env, stack.dir.path(), listen)
                        .await?;
                progress(&format!(
                    "{instance} SERVING on {} (pid {})",
                    process.addr(),
                    process.pid().unwrap_or(0)
                ));
                stack.services.insert(instance, process);
            }
        }
        Ok(stack)
    }

    /// A service of the stack; panics if it was not started.
    pub fn service(&self, name: &str) -> &ServiceProcess {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} is not part of this stack"))
    }

    /// A service of the stack, to kill or restart it.
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceProcess {
        self.services
            .get_mut(name)
            .unwrap_or_else(|| panic!("service {name} is not part of this stack"))
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceProcess> {
        self.services.values()
    }

    /// Where logs and address files live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What a service needs beyond the database and NATS: its secrets, made up
/// fresh for each stack, and the addresses of the services it calls (which
/// must have been started before it).
fn service_env(name: &str, started: &BTreeMap<String, ServiceProcess>) -> Vec<(String, String)> {
    match name {
        "users" => vec![(
            "SHOP_USERS__AUTH__TOKEN_SECRET".to_string(),
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        )],
        "orders" => {
            // Every catalog instance, for the mesh to balance over.
            let catalogs: Vec<String> = started
                .values()
                .filter(|p| p.service() == "catalog")
                .map(|p| format!("\"{}\"", p.url()))
                .collect();
            if catalogs.is_empty() {
                Vec::new()
            } else {
                vec![(
                    "SHOP_ORDERS__UPSTREAMS__CATALOG__ENDPOINTS".to_string(),
                    format!("[{}]", catalogs.join(", ")),
                )]
            }
        }
        _ => Vec::new(),
    }
}
