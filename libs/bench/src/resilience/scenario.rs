//! The scenarios: what happens to the replicas, and when, while the load
//! runs. Each is the same for every path: the faults are the replicas'
//! own (signals, or their application slowing down or failing).

use super::replicas::Replicas;
use nix::sys::signal::Signal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load before the fault.
pub const BEFORE: Duration = Duration::from_secs(4);
/// A run's whole length.
pub const LENGTH: Duration = Duration::from_secs(18);

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing happens.
    Steady,
    /// Replica 0 killed (SIGKILL), started again 4 s later.
    Kill,
    /// Replica 0 frozen (SIGSTOP: a half-open peer), resumed 6 s later.
    Freeze,
    /// Replica 0 answers 200 ms later than it should, for 8 s.
    Slow,
    /// Replica 0 fails 20% of calls with UNAVAILABLE, for 8 s.
    Fail,
    /// Every replica in turn: SIGTERM, drained, started again; 2 s apart.
    Rolling,
    /// Twice the path's capacity offered, nothing broken.
    Overload,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 7] = [
        Scenario::Steady,
        Scenario::Kill,
        Scenario::Freeze,
        Scenario::Slow,
        Scenario::Fail,
        Scenario::Rolling,
        Scenario::Overload,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Kill => "kill",
            Scenario::Freeze => "freeze",
            Scenario::Slow => "slow 200ms",
            Scenario::Fail => "fail 20%",
            Scenario::Rolling => "rolling restart",
            Scenario::Overload => "2x capacity",
        }
    }

    /// Whether something happens to a replica (and ejection is timed).
    pub fn has_fault(self) -> bool {
        !matches!(self, Scenario::Steady | Scenario::Overload)
    }

    /// Plays the scenario against `replicas` from `start` (on this
    /// thread: it sleeps), leaving every replica running and healthy.
    pub fn play(self, replicas: &Arc<Mutex<Replicas>>, start: Instant) -> anyhow::Result<()> {
        let at = |offset: Duration| {
            let when = start + BEFORE + offset;
            if let Some(wait) = when.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        };
        let lock = || replicas.lock().expect("not poisoned");
        at(Duration::ZERO);
        match self {
            Scenario::Steady | Scenario::Overload => {}
            Scenario::Kill => {
                lock().kill(0)?;
                at(Duration::from_secs(4));
                lock().spawn(0)?;
            }
            Scenario::Freeze => {
                lock().signal(0, Signal::SIGSTOP)?;
                at(Duration::from_secs(6));
                lock().signal(0, Signal::SIGCONT)?;
            }
            Scenario::Slow | Scenario::Fail => {
                let command = if self == Scenario::Slow {
                    "delay 200"
                } else {
                    "fail 20"
                };
                lock().fault(0, command)?;
                at(Duration::from_secs(8));
                lock().fault(0, "ok")?;
            }
            Scenario::Rolling => {
                let n = lock().slots.len();
                for i in 0..n {
                    at(Duration::from_secs(2 * i as u64));
                    let mut replicas = lock();
                    replicas.terminate(i, Duration::from_secs(6))?;
                    replicas.spawn(i)?;
                }
            }
        }
        Ok(())
    }
}
