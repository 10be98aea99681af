//! The search's report: every step with its verdict, the CPU of every
//! process per step, the capacity and the RPCs at it and at the miss above
//! it; and p99 by offered rate as SVG.

use super::{Step, Stop, bracket, cores, outcomes};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

impl Step {
    /// The RPC with the highest p99: (rpc, ms).
    fn worst_p99(&self) -> Option<(&str, f64)> {
        self.judged
            .rows
            .iter()
            .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
            .map(|r| (r.rpc, r.p99_ms))
    }

    /// The processes by CPU, most first: "gateway 81%, postgres 40%...".
    fn cpu_ranking(&self) -> String {
        let mut by_cpu: Vec<&(String, f64)> = self.cpu.iter().collect();
        by_cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut text: Vec<String> = by_cpu
            .iter()
            .map(|(label, pct)| format!("{label} {pct:.0}%"))
            .collect();
        if let Some(machine) = self.machine {
            let ours: f64 = self.cpu.iter().map(|(_, p)| p).sum();
            text.push(format!(
                "(machine busy {machine:.0}% of {}00%, {:.0}% outside these processes)",
                cores(),
                (machine - ours).max(0.0)
            ));
        }
        text.join(", ")
    }
}

fn verdict(step: &Step) -> String {
    let misses = step.judged.misses();
    if misses.is_empty() {
        "every SLO met".into()
    } else {
        format!("MISSED: {}", misses.join("; "))
    }
}

pub(super) fn step_header() -> String {
    format!(
        "{:>4} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:<16} verdict\n",
        "step", "offered/s", "actions", "dropped", "secs", "settle s", "p99 max", "(rpc)"
    )
}

pub(super) fn step_line(n: usize, step: &Step) -> String {
    let (rpc, p99) = step.worst_p99().unwrap_or(("-", 0.0));
    format!(
        "{n:>4} {:>9.0} {:>8} {:>8} {:>9.1} {:>9.1} {:>9.1} {:<16} {}",
        step.rate,
        step.actions,
        step.judged.dropped,
        step.elapsed.as_secs_f64(),
        step.settled.as_secs_f64(),
        p99,
        rpc,
        verdict(step)
    )
}

pub(super) fn report(head: &str, steps: &[Step], stop: Stop, took: Duration) -> String {
    let mut out = format!("{head}\n{}", step_header());
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(out, "{}", step_line(i + 1, step));
    }

    // CPU by process and step, in % of one core.
    let mut labels: Vec<&str> = Vec::new();
    for step in steps {
        for (label, _) in &step.cpu {
            if !labels.contains(&label.as_str()) {
                labels.push(label);
            }
        }
    }
    let _ = writeln!(
        out,
        "\nCPU over each step, % of one core ({} cores: {}00% is all of them; machine = every process on it)",
        cores(),
        cores()
    );
    let _ = write!(out, "{:>4} {:>9}", "step", "offered/s");
    for label in &labels {
        let _ = write!(out, " {:>width$}", label, width = label.len().max(5));
    }
    let _ = writeln!(out, " {:>7}", "machine");
    for (i, step) in steps.iter().enumerate() {
        let _ = write!(out, "{:>4} {:>9.0}", i + 1, step.rate);
        for label in &labels {
            let pct = step.cpu.iter().find(|(l, _)| l == label).map(|(_, p)| *p);
            let cell = pct.map_or("-".into(), |p| format!("{p:.0}"));
            let _ = write!(out, " {:>width$}", cell, width = label.len().max(5));
        }
        let machine = step.machine.map_or("-".into(), |m| format!("{m:.0}"));
        let _ = writeln!(out, " {machine:>7}");
    }

    let (good, bad) = bracket(&outcomes(steps));
    let _ = writeln!(out);
    match good {
        Some(g) => {
            let _ = writeln!(
                out,
                "capacity: {}{:.0} actions/s with every SLO met (step {})",
                if bad.is_none() { "at least " } else { "" },
                steps[g].rate,
                g + 1
            );
        }
        None => {
            let _ = writeln!(
                out,
                "capacity: below {:.0} actions/s: no step met every SLO",
                bad.map_or(0.0, |b| steps[b].rate)
            );
        }
    }
    if let Some(b) = bad {
        let _ = writeln!(
            out,
            "lowest rate missed: {:.0} actions/s (step {}): {}",
            steps[b].rate,
            b + 1,
            steps[b].judged.misses().join("; ")
        );
    }
    if let Some(first) = steps.iter().position(|s| !s.judged.met()) {
        let _ = writeln!(
            out,
            "first miss: step {} at {:.0} actions/s: {}",
            first + 1,
            steps[first].rate,
            steps[first].judged.misses().join("; ")
        );
    }
    let _ = writeln!(
        out,
        "stopped: {stop}; {} steps in {:.0} s",
        steps.len(),
        took.as_secs_f64()
    );
    for (title, i) in [("at capacity", good), ("at the lowest rate missed", bad)] {
        let Some(i) = i else { continue };
        let step = &steps[i];
        let _ = writeln!(
            out,
            "\n{title}: {:.0} actions/s for {:.1} s ({} actions, {} dropped)",
            step.rate,
            step.elapsed.as_secs_f64(),
            step.actions,
            step.judged.dropped
        );
        step.judged.write_table(&mut out);
        let _ = writeln!(out, "CPU, % of one core: {}", step.cpu_ranking());
    }
    out
}

/// p99 of every RPC by offered rate, with the SLOs and the capacity.
pub(super) fn plot(steps: &[Step], svg: &Path) -> anyhow::Result<()> {
    let mut by_rate: Vec<&Step> = steps.iter().collect();
    by_rate.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let rpcs: BTreeSet<&str> = steps
        .iter()
        .flat_map(|s| s.judged.rows.iter().map(|r| r.rpc))
        .collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = rpcs
        .iter()
        .map(|rpc| {
            let points = by_rate
                .iter()
                .filter_map(|s| {
                    let row = s.judged.rows.iter().find(|r| r.rpc == *rpc)?;
                    (row.calls > 0).then_some((s.rate, row.p99_ms))
                })
                .collect();
            (rpc.to_string(), points)
        })
        .collect();
    let slos: BTreeSet<u128> = steps
        .iter()
        .flat_map(|s| {
            s.judged
                .rows
                .iter()
                .map(|r| r.slo.objective.p99.as_millis())
        })
        .collect();
    let slos: Vec<(f64, String)> = slos
        .into_iter()
        .map(|ms| (ms as f64, format!("SLO: p99 {ms} ms")))
        .collect();
    let (good, bad) = bracket(&outcomes(steps));
    let mut marks = Vec::new();
    if let Some(g) = good {
        marks.push((steps[g].rate, format!("capacity {:.0}/s", steps[g].rate)));
    }
    if let Some(b) = bad {
        marks.push((
            steps[b].rate,
            format!("lowest missed {:.0}/s", steps[b].rate),
        ));
    }
    shop_bench::plot::by_rate(
        svg,
        "p99 through the gateway by offered rate (open loop)",
        &series,
        &slos,
        &marks,
    )
}
