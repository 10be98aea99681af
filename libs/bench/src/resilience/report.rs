//! What one run of one scenario on one path came to, the table of them
//! all, which path won each scenario, and the plot.

use super::load::Record;
use super::scenario::{BEFORE, Scenario};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::Duration;

/// The paths, in report order.
pub const PATHS: [&str; 3] = ["mesh", "envoy", "bare"];

/// One scenario on one path.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The scenario.
    pub scenario: Scenario,
    /// `mesh`, `envoy` or `bare`.
    pub path: &'static str,
    /// Calls offered per second.
    pub rate: f64,
    /// Calls made.
    pub calls: usize,
    /// Share of calls that succeeded, as the caller saw them.
    pub success: f64,
    /// p50, p99, p99.9 of the successful calls, in microseconds.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub p999_us: u64,
    /// Attempts sent to replicas per call (1 where nothing retries).
    pub attempts: f64,
    /// CPU of every process on the path (generator, sidecars, replicas)
    /// per successful call, in microseconds.
    pub cpu_us: f64,
    /// From the fault to the first ejection.
    pub first_ejection: Option<Duration>,
    /// From the fault until every later 250 ms window had 99% of its
    /// calls succeed (`None`: not within the run).
    pub recovery: Option<Duration>,
    /// Failed calls by code, most first.
    pub failures: Vec<(tonic::Code, usize)>,
}

impl Summary {
    /// Summarises `records`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: Scenario,
        path: &'static str,
        rate: f64,
        records: &[Record],
        attempts: f64,
        cpu: Duration,
        first_ejection: Option<Duration>,
    ) -> Self {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
        let mut ok = 0usize;
        for r in records.iter().filter(|r| r.outcome.is_ok()) {
            ok += 1;
            let _ = hist.record((r.latency.as_micros() as u64).max(1));
        }
        let calls = records.len();
        let mut failures: std::collections::HashMap<tonic::Code, usize> = Default::default();
        for r in records {
            if let Err(code) = r.outcome {
                *failures.entry(code).or_default() += 1;
            }
        }
        let mut failures: Vec<_> = failures.into_iter().collect();
        failures.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        Self {
            failures,
            scenario,
            path,
            rate,
            calls,
            success: ok as f64 / calls.max(1) as f64,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            attempts,
            cpu_us: cpu.as_secs_f64() * 1e6 / ok.max(1) as f64,
            first_ejection,
            recovery: scenario.has_fault().then(|| recovery(records)).flatten(),
        }
    }
}

/// When, after the fault, the calls started in every 250 ms window from
/// then on succeeded at 99% or more (zero if no window after the fault
/// fell short).
fn recovery(records: &[Record]) -> Option<Duration> {
    const WINDOW: Duration = Duration::from_millis(250);
    let end = records.last()?.at;
    let mut last_bad: Option<Duration> = None;
    let mut from = BEFORE;
    while from + WINDOW <= end {
        let window: Vec<_> = records
            .iter()
            .filter(|r| r.at >= from && r.at < from + WINDOW)
            .collect();
        let ok = window.iter().filter(|r| r.outcome.is_ok()).count();
        if !window.is_empty() && (ok as f64) < 0.99 * window.len() as f64 {
            last_bad = Some(from + WINDOW);
        }
        from += WINDOW;
    }
    match last_bad {
        None => Some(Duration::ZERO),
        Some(t) if t + WINDOW * 2 > end => None,
        Some(t) => Some(t - BEFORE),
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{}", d.as_millis()))
}

/// The path that did best in a scenario: most calls succeeded, then (when
/// within half a point) the lower p99.
pub fn winner(summaries: &[&Summary]) -> &'static str {
    let best = summaries.iter().map(|s| s.success).fold(f64::MIN, f64::max);
    summaries
        .iter()
        .filter(|s| s.success >= best - 0.005)
        .min_by_key(|s| s.p99_us)
        .map_or("-", |s| s.path)
}

/// The whole report: a line per scenario and path, then the winners.
pub fn table(header: &str, summaries: &[Summary]) -> String {
    let mut out = String::from(header);
    out.push_str(
        "scenario         path    rate/s  calls   success   p50 ms   p99 ms  p99.9 ms  attempts  CPU us/ok  ejected ms  recovered ms  failures\n",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{:<16} {:<6} {:>7.0} {:>6} {:>8.2}% {:>8.1} {:>8.1} {:>9.1} {:>9.3} {:>10.1} {:>11} {:>13}  {}",
            s.scenario.name(),
            s.path,
            s.rate,
            s.calls,
            s.success * 100.0,
            s.p50_us as f64 / 1000.0,
            s.p99_us as f64 / 1000.0,
            s.p999_us as f64 / 1000.0,
            s.attempts,
            s.cpu_us,
            ms(s.first_ejection),
            ms(s.recovery),
            s.failures
                .iter()
                .map(|(code, n)| format!("{code:?} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    out.push_str("\nwinner per scenario (most calls succeeded, then lower p99):\n");
    for scenario in Scenario::ALL {
        let these: Vec<&Summary> = summaries
            .iter()
            .filter(|s| s.scenario == scenario)
            .collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {:<16} {}", scenario.name(), winner(&these));
    }
    out.push_str(&against_envoy(summaries));
    out
}

/// Per scenario, the mesh beside Envoy: failed calls, p99, and CPU per
/// successful call, over every process and above what the bare path spent
/// (the generator's and the replicas' own work, the same on every path).
fn against_envoy(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "\nmesh against envoy: failed calls, p99, CPU per ok call (whole path; and above bare tonic's)\n",
    );
    for scenario in Scenario::ALL {
        let find = |path: &str| {
            summaries
                .iter()
                .find(|s| s.scenario == scenario && s.path == path)
        };
        let (Some(m), Some(e)) = (find("mesh"), find("envoy")) else {
            continue;
        };
        let failed = |s: &Summary| s.failures.iter().map(|(_, n)| n).sum::<usize>();
        let above = |s: &Summary| find("bare").map(|b| s.cpu_us - b.cpu_us);
        let _ = writeln!(
            out,
            "  {:<16} failed {:>6} vs {:>6}   p99 {:>7.1} vs {:>7.1} ms   CPU {:.2} of envoy's{}",
            scenario.name(),
            failed(m),
            failed(e),
            m.p99_us as f64 / 1000.0,
            e.p99_us as f64 / 1000.0,
            m.cpu_us / e.cpu_us.max(1e-9),
            match (above(m), above(e)) {
                (Some(a), Some(b)) => format!(" ({a:+.0} vs {b:+.0} us/ok above bare)"),
                _ => String::new(),
            },
        );
    }
    out
}

/// Two panels: per scenario, the share of calls that succeeded and the
/// p99 of those, one bar per path.
pub fn plot(summaries: &[Summary], path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(127, 127, 127),
    ];
    let scenarios = Scenario::ALL.len();
    let p99_max = summaries
        .iter()
        .map(|s| s.p99_us as f64 / 1000.0)
        .fold(1.0, f64::max);
    for (area, title, max, value) in [
        (
            &top,
            "calls that succeeded (%)",
            100.0,
            (|s: &Summary| s.success * 100.0) as fn(&Summary) -> f64,
        ),
        (
            &bottom,
            "p99 of successful calls (ms)",
            p99_max * 1.1,
            |s: &Summary| s.p99_us as f64 / 1000.0,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..(scenarios as f64), 0.0..max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(scenarios * 2)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 && i < scenarios {
                    Scenario::ALL[i].name().to_string()
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (p, name) in PATHS.iter().enumerate() {
            let bars = summaries
                .iter()
                .filter(|s| s.path == *name)
                .filter_map(|s| {
                    let i = Scenario::ALL.iter().position(|x| *x == s.scenario)? as f64;
                    let x0 = i + 0.15 + 0.23 * p as f64;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + 0.2, value(s))],
                        colors[p].filled(),
                    ))
                });
            chart.draw_series(bars)?.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colors[p].filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ms: u64, ok: bool) -> Record {
        Record {
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(1),
            outcome: if ok {
                Ok(())
            } else {
                Err(tonic::Code::Unavailable)
            },
        }
    }

    #[test]
    fn recovery_is_the_end_of_the_last_window_that_fell_short() {
        // Calls every 10 ms for 10 s; failures from 4.0 s to 5.0 s.
        let records: Vec<Record> = (0..1000)
            .map(|i| record(i * 10, !(400..500).contains(&i)))
            .collect();
        assert_eq!(recovery(&records), Some(Duration::from_millis(1000)));
        let clean: Vec<Record> = (0..1000).map(|i| record(i * 10, true)).collect();
        assert_eq!(recovery(&clean), Some(Duration::ZERO));
        // Failing to the end: never recovered.
        let broken: Vec<Record> = (0..1000).map(|i| record(i * 10, i < 400)).collect();
        assert_eq!(recovery(&broken), None);
    }

    #[test]
    fn the_winner_succeeds_most_then_answers_fastest() {
        let s = |path, success, p99_us| Summary {
            scenario: Scenario::Kill,
            path,
            rate: 1.0,
            calls: 1,
            success,
            p50_us: 1,
            p99_us,
            p999_us: 1,
            attempts: 1.0,
            cpu_us: 1.0,
            first_ejection: None,
            recovery: None,
            failures: Vec::new(),
        };
        let (a, b, c) = (
            s("mesh", 0.999, 900),
            s("envoy", 0.997, 500),
            s("bare", 0.9, 1),
        );
        assert_eq!(winner(&[&a, &b, &c]), "envoy");
        let d = s("envoy", 0.98, 500);
        assert_eq!(winner(&[&a, &d, &c]), "mesh");
    }
}
