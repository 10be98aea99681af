//! The service catalog's SLOs and a run judged against them, RPC by RPC.

use crate::traffic::{Rpc, Run};
use anyhow::{Context as _, ensure};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// An SLO as the service catalog states it.
#[derive(Clone, Copy)]
pub(crate) struct Objective {
    /// The share of calls answered without the service's fault, 0 to 1.
    pub(crate) availability: f64,
    pub(crate) p99: Duration,
}

/// Every service's SLO (`services/service-catalog.yaml`), by service.
pub(crate) struct Slos(BTreeMap<String, Objective>);

impl Slos {
    /// Reads the catalog with the bootstrap's Python (PyYAML comes with
    /// kubernetes-validate).
    pub(crate) fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let python = shop_testkit::tools::find("shop-python")?;
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import sys, json, yaml; json.dump({n: s['slos'] for n, s in yaml.safe_load(open(sys.argv[1]))['services'].items()}, sys.stdout)",
            ])
            .arg(path)
            .output()?;
        ensure!(
            out.status.success(),
            "reading {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let raw: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_slice(&out.stdout)?;
        let mut slos = BTreeMap::new();
        for (service, s) in raw {
            let availability: f64 = s["availability"]
                .trim_end_matches('%')
                .parse::<f64>()
                .with_context(|| format!("{service}: availability"))?
                / 100.0;
            let p99 = &s["latency_p99"];
            let p99 = match p99.strip_suffix("ms") {
                Some(ms) => Duration::from_millis(ms.parse()?),
                None => Duration::from_secs(p99.trim_end_matches('s').parse()?),
            };
            slos.insert(service, Objective { availability, p99 });
        }
        Ok(Self(slos))
    }

    /// The SLO a gateway RPC answers to: the gateway's, and for PlaceOrder
    /// the orders service's as well (the stricter of the two).
    pub(crate) fn of(&self, rpc: &str) -> anyhow::Result<Slo> {
        let mut owners = vec!["gateway"];
        if rpc == "PlaceOrder" {
            owners.push("orders");
        }
        let mut best: Option<Slo> = None;
        for owner in owners {
            let objective = *self
                .0
                .get(owner)
                .with_context(|| format!("the service catalog has no SLOs for {owner}"))?;
            let stricter = best.as_ref().is_none_or(|b| {
                objective.availability > b.objective.availability || objective.p99 < b.objective.p99
            });
            if stricter {
                best = Some(Slo {
                    service: owner.to_string(),
                    objective,
                });
            }
        }
        Ok(best.expect("at least the gateway"))
    }
}

/// The SLO the report holds an RPC to, and whose it is.
pub(crate) struct Slo {
    pub(crate) service: String,
    pub(crate) objective: Objective,
}

/// Which part of its SLO an RPC missed.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Missed {
    Availability,
    P99,
}

/// One RPC of a run against its SLO.
pub(crate) struct Row {
    pub(crate) rpc: &'static str,
    pub(crate) slo: Slo,
    pub(crate) calls: u64,
    pub(crate) availability: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Answers that are not the service's fault: "CODE n".
    pub(crate) others: Vec<String>,
    pub(crate) missed: Vec<Missed>,
}

impl Row {
    fn new(rpc: &'static str, r: &Rpc, slo: Slo) -> Self {
        let availability = if r.calls == 0 {
            1.0
        } else {
            1.0 - r.failures as f64 / r.calls as f64
        };
        let (p50_ms, p99_ms, max_ms) = r.latency.as_ref().map_or((0.0, 0.0, 0.0), |h| {
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            )
        });
        let mut missed = Vec::new();
        if availability < slo.objective.availability {
            missed.push(Missed::Availability);
        }
        if p99_ms > slo.objective.p99.as_secs_f64() * 1000.0 {
            missed.push(Missed::P99);
        }
        Row {
            rpc,
            slo,
            calls: r.calls,
            availability,
            p50_ms,
            p99_ms,
            max_ms,
            others: r.answered.iter().map(|(c, n)| format!("{c} {n}")).collect(),
            missed,
        }
    }

    /// What was missed, e.g. "ListProducts p99 812 ms > 500 ms (gateway)".
    pub(crate) fn misses(&self) -> Vec<String> {
        let o = &self.slo.objective;
        self.missed
            .iter()
            .map(|m| match m {
                Missed::Availability => format!(
                    "{} availability {:.3}% < {:.2}% ({})",
                    self.rpc,
                    self.availability * 100.0,
                    o.availability * 100.0,
                    self.slo.service
                ),
                Missed::P99 => format!(
                    "{} p99 {:.1} ms > {} ms ({})",
                    self.rpc,
                    self.p99_ms,
                    o.p99.as_millis(),
                    self.slo.service
                ),
            })
            .collect()
    }
}

/// A run judged against the SLOs: every RPC's row, and the actions
/// dropped at the in-flight bound (any drop misses: the system did not
/// keep up).
pub(crate) struct Judged {
    pub(crate) rows: Vec<Row>,
    pub(crate) dropped: u64,
}

impl Judged {
    pub(crate) fn new(run: &Run, slos: &Slos) -> anyhow::Result<Self> {
        let rows = run
            .rpcs
            .iter()
            .map(|(rpc, r)| Ok(Row::new(rpc, r, slos.of(rpc)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Judged {
            rows,
            dropped: run.dropped,
        })
    }

    pub(crate) fn met(&self) -> bool {
        self.dropped == 0 && self.rows.iter().all(|r| r.missed.is_empty())
    }

    /// Every miss, one phrase each; empty when every SLO was met.
    pub(crate) fn misses(&self) -> Vec<String> {
        let mut misses: Vec<String> = self.rows.iter().flat_map(Row::misses).collect();
        if self.dropped > 0 {
            misses.push(format!("{} actions dropped", self.dropped));
        }
        misses
    }

    /// The table of RPCs with their verdicts, the drops, and the run's verdict.
    pub(crate) fn write_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9}  {:<28} verdict / other answers",
            "rpc", "calls", "avail", "p50 ms", "p99 ms", "max ms", "SLO (service)"
        );
        for r in &self.rows {
            let o = &r.slo.objective;
            let _ = writeln!(
                out,
                "{:<16} {:>6} {:>8.3}% {:>9.1} {:>9.1} {:>9.1}  {:<28} {}{}",
                r.rpc,
                r.calls,
                r.availability * 100.0,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                format!(
                    "{:.2}%, p99 {} ms ({})",
                    o.availability * 100.0,
                    o.p99.as_millis(),
                    r.slo.service
                ),
                if r.missed.is_empty() { "met" } else { "MISSED" },
                if r.others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", r.others.join(", "))
                }
            );
        }
        if self.dropped > 0 {
            let _ = writeln!(
                out,
                "{} actions dropped at the in-flight bound: the system did not keep up",
                self.dropped
            );
        }
        let _ = writeln!(
            out,
            "every SLO {}",
            if self.met() { "met" } else { "not met" }
        );
    }
}
