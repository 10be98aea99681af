//! `services/service-catalog.yaml` against the system it describes: what
//! the running services subscribe and call (read from them), the event
//! registry (`shop_events::catalog`) and the migrations on disk.

#![allow(unreachable_pub)]

use anyhow::Context as _;
use serde::Deserialize;
use shop_events::catalog::{EVENTS, STREAMS};
use shop_testkit::stack::{SERVICES, STATELESS};
use shop_testkit::tools;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

pub const CATALOG: &str = "services/service-catalog.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub services: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub owner: String,
    pub bounded_context: String,
    pub database: Option<String>,
    pub publishes: Vec<String>,
    /// Consumer name → the subjects it subscribes.
    pub consumes: BTreeMap<String, Vec<String>>,
    pub depends_on: DependsOn,
    pub slos: Slos,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    /// Services it calls through the mesh.
    pub sync: Vec<String>,
    /// Services whose events it consumes.
    #[serde(rename = "async")]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slos {
    /// `99.95%`
    pub availability: String,
    /// `500ms`
    pub latency_p99: String,
}

impl Slos {
    /// The availability target as a fraction (0.9995).
    pub fn availability(&self) -> anyhow::Result<f64> {
        let percent: f64 = self
            .availability
            .strip_suffix('%')
            .context("availability is a percentage")?
            .parse()?;
        anyhow::ensure!(
            (50.0..100.0).contains(&percent),
            "availability {percent}% is not a target"
        );
        Ok(percent / 100.0)
    }

    /// The p99 latency target.
    pub fn latency_p99(&self) -> anyhow::Result<std::time::Duration> {
        let text = &self.latency_p99;
        let (digits, unit) = text
            .find(|c: char| !c.is_ascii_digit())
            .map(|i| text.split_at(i))
            .context("latency_p99 has a unit")?;
        let n: u64 = digits.parse()?;
        Ok(match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            other => anyhow::bail!("latency_p99: unit {other:?} (ms or s)"),
        })
    }
}

impl Catalog {
    /// The catalog file under `root`.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let out = Command::new(tools::find("shop-python")?)
            .args([
                "-c",
                "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            ])
            .arg(root.join(CATALOG))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{CATALOG}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// What the running services say of themselves.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Service → consumer → subjects (EventsAdminService/ListConsumers).
    pub consumers: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Service → upstreams (MeshAdminService/ListUpstreams).
    pub upstreams: BTreeMap<String, BTreeSet<String>>,
}

/// The service owning the stream that stores `subject` (or a wildcard
/// over one stream).
fn owner_of(subject: &str) -> Option<&'static str> {
    STREAMS
        .iter()
        .find(|s| {
            let prefix = s.subjects.trim_end_matches('>');
            subject.starts_with(prefix)
        })
        .map(|s| s.owner)
}

/// Where the catalog and the system disagree, one line each.
pub fn problems(catalog: &Catalog, observed: &Observed, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let listed: BTreeSet<&str> = catalog.services.keys().map(String::as_str).collect();
    let services: BTreeSet<&str> = SERVICES.iter().copied().collect();
    if listed != services {
        out.push(format!(
            "the catalog lists {listed:?}; the system has {services:?}"
        ));
    }
    for (name, entry) in &catalog.services {
        let at = |what: String| format!("{name}: {what}");
        if entry.owner.trim().is_empty() || entry.bounded_context.trim().is_empty() {
            out.push(at("no owner or bounded context".into()));
        }
        // The database: one per service with migrations.
        let migrations = root.join("migrations").join(name).is_dir();
        let expected =
            (migrations && !STATELESS.contains(&name.as_str())).then(|| format!("shop_{name}"));
        if entry.database != expected {
            out.push(at(format!(
                "database {:?}, but the system has {expected:?} (migrations/{name} {})",
                entry.database,
                if migrations {
                    "exists"
                } else {
                    "does not exist"
                }
            )));
        }
        // Published: registered events of its own stream.
        for subject in &entry.publishes {
            match EVENTS.iter().find(|e| e.subject == subject) {
                None => out.push(at(format!(
                    "publishes {subject}, which is no registered event"
                ))),
                Some(e) if e.stream.owner != name => out.push(at(format!(
                    "publishes {subject}, which is {}'s stream {}",
                    e.stream.owner, e.stream.name
                ))),
                Some(_) => {}
            }
        }
        // Consumed: exactly what its consumers subscribe.
        let catalog_consumers: BTreeMap<&str, BTreeSet<&str>> = entry
            .consumes
            .iter()
            .map(|(c, subjects)| (c.as_str(), subjects.iter().map(String::as_str).collect()))
            .collect();
        let running: BTreeMap<&str, BTreeSet<&str>> = observed
            .consumers
            .get(name)
            .into_iter()
            .flatten()
            .map(|(c, subjects)| (c.as_str(), subjects.iter().map(String::as_str).collect()))
            .collect();
        if catalog_consumers != running {
            out.push(at(format!(
                "consumes {catalog_consumers:?}, but its consumers subscribe {running:?}"
            )));
        }
        // Asynchronous dependencies: the owners of what it consumes.
        let owners: BTreeSet<&str> = running
            .values()
            .flatten()
            .filter_map(|s| owner_of(s))
            .collect();
        let declared: BTreeSet<&str> = entry.depends_on.events.iter().map(String::as_str).collect();
        if declared != owners {
            out.push(at(format!(
                "depends_on.async {declared:?}, but it consumes events of {owners:?}"
            )));
        }
        // Synchronous dependencies: its mesh's upstreams.
        let sync: BTreeSet<&str> = entry.depends_on.sync.iter().map(String::as_str).collect();
        let upstreams: BTreeSet<&str> = observed
            .upstreams
            .get(name)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if sync != upstreams {
            out.push(at(format!(
                "depends_on.sync {sync:?}, but its mesh calls {upstreams:?}"
            )));
        }
        if let Err(e) = entry.slos.availability() {
            out.push(at(format!("slos.availability: {e}")));
        }
        if let Err(e) = entry.slos.latency_p99() {
            out.push(at(format!("slos.latency_p99: {e}")));
        }
    }
    // Every subject somebody consumes has a publisher (or a wildcard's
    // stream an owner).
    let published: BTreeSet<&str> = catalog
        .services
        .values()
        .flat_map(|e| e.publishes.iter().map(String::as_str))
        .collect();
    for (name, entry) in &catalog.services {
        for subject in entry.consumes.values().flatten() {
            let wildcard = subject.ends_with('>');
            if !wildcard && !published.contains(subject.as_str()) {
                out.push(format!(
                    "{name}: consumes {subject}, which no service of the catalog publishes"
                ));
            }
        }
    }
    out
}
