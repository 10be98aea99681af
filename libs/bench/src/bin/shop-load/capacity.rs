//! `--find-capacity`: the highest offered rate at which the gateway meets
//! every SLO, on this machine, in this run.
//!
//! Steps of `step_secs` each (the same open loop and the same verdict as a
//! fixed run: availability and p99 of every RPC, and no action dropped),
//! at `from` actions/s, then `factor` times the last while every SLO is met
//! (or `factor` times less while the first steps miss), then `refine`
//! bisections between the highest rate met and the lowest missed. It stops
//! by itself: after the bisections, at `max_rate`, after `max_steps` steps
//! or before a step would end past `max_secs`.
//!
//! Before each step after the first, the stack settles (consumers catch up
//! on the last step's events): at least 2 s, then until the stack's
//! processes together use under a fifth of a core over a second, at most
//! `settle_secs`. Over every step, the CPU time of this process and of
//! every child of the stack's process (`shop-stack`, found by name or given
//! with `--stack-pid`; Postgres with its backends), and of the whole
//! machine: what bounds the capacity.

mod report;

use crate::slo::{Judged, Slos};
use crate::traffic::Load;
use report::{plot, report, step_header, step_line};
use shop_bench::procstat;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the search runs.
#[derive(Clone, PartialEq, Debug)]
pub(crate) struct Search {
    /// The first offered rate (actions/s).
    pub(crate) from: f64,
    /// Each step offers this many times the last (or this many times less
    /// while no step has met every SLO).
    pub(crate) factor: f64,
    pub(crate) step_secs: u64,
    /// Bisections between the highest rate met and the lowest missed.
    pub(crate) refine: u32,
    /// The search offers no more than this (the generator's own limit).
    pub(crate) max_rate: f64,
    pub(crate) max_steps: usize,
    /// No step starts that would end past this many seconds of search.
    pub(crate) max_secs: u64,
    /// The longest wait for the stack to settle between steps.
    pub(crate) settle_secs: u64,
    /// The stack's process (`shop-stack`), whose children's CPU is sampled;
    /// by default the one process of that name, if there is one.
    pub(crate) stack_pid: Option<u32>,
    pub(crate) max_in_flight: usize,
}

impl Default for Search {
    fn default() -> Self {
        Search {
            from: 20.0,
            factor: 1.5,
            step_secs: 30,
            refine: 3,
            max_rate: 1000.0,
            max_steps: 16,
            max_secs: 1200,
            settle_secs: 30,
            stack_pid: None,
            max_in_flight: 256,
        }
    }
}

/// A search that cannot run as asked.
#[derive(Debug, PartialEq)]
pub(crate) enum Invalid {
    From(f64),
    Factor(f64),
    StepSecs(u64),
    MaxRate(f64),
    MaxSteps(usize),
    Refine(u32),
    Budget { max_secs: u64, step_secs: u64 },
    SettleSecs(u64),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::From(v) => write!(f, "--from {v}: between 1 and --max-rate"),
            Invalid::Factor(v) => write!(f, "--factor {v}: between 1.05 and 4"),
            Invalid::StepSecs(v) => write!(f, "--step-secs {v}: between 5 and 300"),
            Invalid::MaxRate(v) => write!(f, "--max-rate {v}: between 1 and 2000 actions/s"),
            Invalid::MaxSteps(v) => write!(f, "--max-steps {v}: between 1 and 40"),
            Invalid::Refine(v) => write!(f, "--refine {v}: at most 8"),
            Invalid::Budget {
                max_secs,
                step_secs,
            } => write!(
                f,
                "--max-secs {max_secs}: at most 3600, and room for a step of {step_secs} s"
            ),
            Invalid::SettleSecs(v) => write!(f, "--settle-secs {v}: at most 120"),
        }
    }
}

impl std::error::Error for Invalid {}

impl Search {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        if !(1.0..=2000.0).contains(&self.max_rate) {
            return Err(Invalid::MaxRate(self.max_rate));
        }
        if !(1.0..=self.max_rate).contains(&self.from) {
            return Err(Invalid::From(self.from));
        }
        if !(1.05..=4.0).contains(&self.factor) {
            return Err(Invalid::Factor(self.factor));
        }
        if !(5..=300).contains(&self.step_secs) {
            return Err(Invalid::StepSecs(self.step_secs));
        }
        if !(1..=40).contains(&self.max_steps) {
            return Err(Invalid::MaxSteps(self.max_steps));
        }
        if self.refine > 8 {
            return Err(Invalid::Refine(self.refine));
        }
        if self.max_secs > 3600 || self.max_secs < self.step_secs {
            return Err(Invalid::Budget {
                max_secs: self.max_secs,
                step_secs: self.step_secs,
            });
        }
        if self.settle_secs > 120 {
            return Err(Invalid::SettleSecs(self.settle_secs));
        }
        Ok(())
    }
}

/// Why the search stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// Bisected `refine` times, or down to neighbouring whole rates.
    Bracketed,
    /// Every SLO met at `max_rate`.
    MaxRate,
    /// A step at 1 action/s missed.
    NothingMet,
    MaxSteps,
    TimeBudget,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Bracketed => "bisected between the highest rate met and the lowest missed",
            Stop::MaxRate => "every SLO met at --max-rate",
            Stop::NothingMet => "an SLO missed even at 1 action/s",
            Stop::MaxSteps => "--max-steps reached",
            Stop::TimeBudget => "the next step would end past --max-secs",
        })
    }
}

/// A process whose CPU time a step is charged with.
struct Process {
    label: String,
    pid: u32,
}

/// This process, and every child of the stack's process, labelled by
/// command name (a second instance of a name gets `#2`).
fn processes(stack: Option<u32>) -> Vec<Process> {
    let mut list = vec![Process {
        label: "shop-load".into(),
        pid: std::process::id(),
    }];
    for pid in stack.map(procstat::children).unwrap_or_default() {
        let Some(name) = procstat::command(pid) else {
            continue;
        };
        let same = list
            .iter()
            .filter(|p| p.label.split('#').next() == Some(name.as_str()))
            .count();
        let label = if same == 0 {
            name
        } else {
            format!("{name}#{}", same + 1)
        };
        list.push(Process { label, pid });
    }
    list
}

/// CPU time of each process (with its children: Postgres's backends).
fn cpu(list: &[Process]) -> Vec<Duration> {
    list.iter().map(|p| procstat::cpu_of_tree(p.pid)).collect()
}

/// One step of the search.
struct Step {
    rate: f64,
    actions: u64,
    elapsed: Duration,
    judged: Judged,
    /// CPU over the step by process label, in % of one core.
    cpu: Vec<(String, f64)>,
    /// The whole machine's busy time over the step, in % of one core.
    machine: Option<f64>,
    /// How long the stack took to settle before the step.
    settled: Duration,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Waits at least 2 s, then until the stack's processes together use
/// under a fifth of a core over a second, at most `limit` in all.
async fn settle(stack: &[Process], limit: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2).min(limit)).await;
    let stack = &stack[1..];
    while started.elapsed() < limit && !stack.is_empty() {
        let before: Duration = cpu(stack).iter().sum();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used: Duration = cpu(stack).iter().sum::<Duration>().saturating_sub(before);
        if used < Duration::from_millis(200) {
            break;
        }
    }
    started.elapsed()
}

async fn measure(
    load: &Arc<Load>,
    search: &Search,
    slos: &Slos,
    stack: Option<u32>,
    rate: f64,
    first: bool,
) -> anyhow::Result<Step> {
    let settled = if first {
        Duration::ZERO
    } else {
        settle(&processes(stack), Duration::from_secs(search.settle_secs)).await
    };
    let list = processes(stack);
    let (cpu_before, machine_before) = (cpu(&list), procstat::machine());
    let run = load.run(rate, search.step_secs, search.max_in_flight).await;
    let (cpu_after, machine_after) = (cpu(&list), procstat::machine());
    let secs = run.elapsed.as_secs_f64();
    let pct = |d: Duration| d.as_secs_f64() / secs * 100.0;
    Ok(Step {
        rate,
        actions: run.actions,
        elapsed: run.elapsed,
        judged: Judged::new(&run, slos)?,
        cpu: list
            .iter()
            .zip(cpu_before.iter().zip(&cpu_after))
            .map(|(p, (b, a))| (p.label.clone(), pct(a.saturating_sub(*b))))
            .collect(),
        machine: machine_before
            .zip(machine_after)
            .map(|((b, _), (a, _))| pct(a.saturating_sub(b))),
        settled,
    })
}

/// Runs the search, prints each step as it ends, writes the plot to `svg`
/// and returns the report.
pub(crate) async fn find(
    load: &Arc<Load>,
    search: &Search,
    slos: &Slos,
    gateway: SocketAddr,
    svg: &Path,
) -> anyhow::Result<String> {
    let stack = search
        .stack_pid
        .or_else(|| match procstat::named("shop-stack")[..] {
            [pid] => Some(pid),
            _ => None,
        });
    let mut head = String::new();
    let _ = writeln!(
        head,
        "shop-load --find-capacity against the gateway at {gateway}: steps of {} s (at most {} actions in flight), \
         from {:.0} actions/s x{} while every SLO is met, then up to {} bisections; before each step the stack \
         settles (at least 2 s, then until it uses under 20% of a core over a second, at most {} s)",
        search.step_secs,
        search.max_in_flight,
        search.from,
        search.factor,
        search.refine,
        search.settle_secs
    );
    let _ = writeln!(
        head,
        "{}; {} cores",
        match stack {
            Some(pid) => format!(
                "CPU sampled from /proc for this process and the children of shop-stack (pid {pid})"
            ),
            None => "no CPU profile of the stack: no single shop-stack process (give --stack-pid)"
                .into(),
        },
        cores()
    );
    print!("{head}\n{}", step_header());

    let started = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = search.from;
    let mut bisections = 0;
    let stop = loop {
        if steps.len() >= search.max_steps {
            break Stop::MaxSteps;
        }
        let expected = Duration::from_secs(search.step_secs + if steps.is_empty() { 0 } else { 2 });
        if started.elapsed() + expected > Duration::from_secs(search.max_secs) {
            break Stop::TimeBudget;
        }
        let step = measure(load, search, slos, stack, rate, steps.is_empty()).await?;
        println!("{}", step_line(steps.len() + 1, &step));
        steps.push(step);
        match next(search, &outcomes(&steps), &mut bisections) {
            Ok(r) => rate = r,
            Err(stop) => break stop,
        }
    };
    let report = report(&head, &steps, stop, started.elapsed());
    print!("\n{}", &report[head.len()..]);
    plot(&steps, svg)?;
    Ok(report)
}

fn outcomes(steps: &[Step]) -> Vec<(f64, bool)> {
    steps.iter().map(|s| (s.rate, s.judged.met())).collect()
}

/// Of `outcomes` (offered rate, every SLO met), the index of the highest
/// rate met and of the lowest missed.
fn bracket(outcomes: &[(f64, bool)]) -> (Option<usize>, Option<usize>) {
    let mut good: Option<usize> = None;
    let mut bad: Option<usize> = None;
    for (i, &(rate, met)) in outcomes.iter().enumerate() {
        if met && good.is_none_or(|g| rate > outcomes[g].0) {
            good = Some(i);
        }
        if !met && bad.is_none_or(|b| rate < outcomes[b].0) {
            bad = Some(i);
        }
    }
    (good, bad)
}

/// The rate to offer after `outcomes` (up by `factor` while every step
/// met, down while every step missed, then bisections, counted in
/// `bisections`), or why to stop.
fn next(search: &Search, outcomes: &[(f64, bool)], bisections: &mut u32) -> Result<f64, Stop> {
    let rate = |i: usize| outcomes[i].0;
    match bracket(outcomes) {
        (Some(g), None) if rate(g) >= search.max_rate => Err(Stop::MaxRate),
        (Some(g), None) => Ok((rate(g) * search.factor).round().min(search.max_rate)),
        (None, Some(b)) if rate(b) <= 1.0 => Err(Stop::NothingMet),
        (None, Some(b)) => Ok((rate(b) / search.factor).round().max(1.0)),
        (Some(g), Some(b)) => {
            let mid = ((rate(g) + rate(b)) / 2.0).round();
            if *bisections >= search.refine || mid <= rate(g) || mid >= rate(b) {
                return Err(Stop::Bracketed);
            }
            *bisections += 1;
            Ok(mid)
        }
        (None, None) => Err(Stop::MaxSteps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_a_valid_search_and_bad_ones_are_named() {
        assert_eq!(Search::default().check(), Ok(()));
        let bad = Search {
            factor: 1.0,
            ..Search::default()
        };
        assert_eq!(bad.check(), Err(Invalid::Factor(1.0)));
        let bad = Search {
            max_secs: 10,
            ..Search::default()
        };
        assert!(matches!(bad.check(), Err(Invalid::Budget { .. })));
    }

    /// The search against a system whose every SLO holds up to `capacity`:
    /// the rates it offers and why it stops.
    fn simulate(search: &Search, capacity: f64) -> (Vec<f64>, Stop) {
        let (mut outcomes, mut bisections, mut rate) = (Vec::new(), 0, search.from);
        loop {
            outcomes.push((rate, rate <= capacity));
            match next(search, &outcomes, &mut bisections) {
                Ok(r) => rate = r,
                Err(stop) => return (outcomes.iter().map(|o| o.0).collect(), stop),
            }
        }
    }

    #[test]
    fn it_steps_up_until_a_miss_then_bisects() {
        let (rates, stop) = simulate(&Search::default(), 300.0);
        assert_eq!(
            rates,
            [
                20.0, 30.0, 45.0, 68.0, 102.0, 153.0, 230.0, 345.0, 288.0, 317.0, 303.0
            ]
        );
        assert_eq!(stop, Stop::Bracketed);
        let outcomes: Vec<(f64, bool)> = rates.iter().map(|&r| (r, r <= 300.0)).collect();
        let (good, bad) = bracket(&outcomes);
        assert_eq!((rates[good.unwrap()], rates[bad.unwrap()]), (288.0, 303.0));
    }

    #[test]
    fn it_steps_down_when_the_first_rate_misses_and_stops_at_the_bounds() {
        let (rates, stop) = simulate(&Search::default(), 12.0);
        assert_eq!(rates[..3], [20.0, 13.0, 9.0]);
        assert_eq!(stop, Stop::Bracketed);
        let (_, stop) = simulate(&Search::default(), 0.5);
        assert_eq!(stop, Stop::NothingMet);
        let small = Search {
            max_rate: 100.0,
            ..Search::default()
        };
        let (rates, stop) = simulate(&small, 1e9);
        assert_eq!((*rates.last().unwrap(), stop), (100.0, Stop::MaxRate));
    }
}
