//! An adaptive concurrency limit for the server: how many calls it serves
//! at once follows the latency it measures, as Envoy's
//! `adaptive_concurrency` filter and Netflix's concurrency-limits
//! (`Gradient2Limit`) do. `server.mesh.max_concurrency` stays the ceiling.
//!
//! Every answered call is a latency sample. Each `sample_interval` the
//! average of the window (the short-term latency) is compared with an
//! exponential average over about `long_window` windows (the latency the
//! server has when it is not queueing):
//!
//! ```text
//! gradient  = clamp(tolerance × long / short, 0.5, 1.0)
//! new_limit = limit × gradient + sqrt(limit)
//! limit     = limit × (1 - smoothing) + new_limit × smoothing
//! ```
//!
//! While latency holds, the gradient is 1 and the limit grows by its square
//! root (room for a queue); once calls queue and latency rises past
//! `tolerance` times its usual level, the limit shrinks (at most by half a
//! window), and calls beyond it are shed at once with RESOURCE_EXHAUSTED
//! and a pushback, instead of queueing until their deadline. A server that
//! is not using half its limit does not grow it. While overloaded, the
//! long-term average follows ten times slower, so queueing is not soon
//! taken for the new normal (a lasting change of the service's own
//! latency is, after a few minutes). When the short-term latency falls far
//! below the long-term one (load came and went), the long-term average is
//! pulled down with it.
//!
//! ```toml
//! [server.mesh.adaptive_concurrency]
//! enabled = true
//! min_limit = 16          # never below
//! initial_limit = 64
//! tolerance = 2.0         # latency may double before the limit falls
//! latency_floor = "100ms" # latency under this is never queueing
//! sample_interval = "250ms"
//! ```

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// `server.mesh.adaptive_concurrency`; off unless enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptivePolicy {
    /// Whether the limit adapts (else `max_concurrency` alone applies).
    #[serde(default)]
    pub enabled: bool,
    /// The limit never falls below this.
    #[serde(default = "d_min_limit")]
    pub min_limit: usize,
    /// The limit at start (and after a policy change).
    #[serde(default = "d_initial_limit")]
    pub initial_limit: usize,
    /// How many times its long-term average the short-term latency may be
    /// before the limit shrinks.
    #[serde(default = "d_tolerance")]
    pub tolerance: f64,
    /// How much of each new estimate the limit takes (0 to 1].
    #[serde(default = "d_smoothing")]
    pub smoothing: f64,
    /// How often the limit is recomputed from the calls answered since.
    #[serde(with = "humantime_serde", default = "d_sample_interval")]
    pub sample_interval: Duration,
    /// How many intervals the long-term latency averages over.
    #[serde(default = "d_long_window")]
    pub long_window: u32,
    /// Latency that never counts as queueing: the limit only shrinks once
    /// the short-term latency passes `tolerance` times the larger of this
    /// and the long-term latency. A fraction of the service's latency SLO
    /// keeps a server at its capacity from shedding for a few ms of queue
    /// when its callers would wait hundreds (default 0: the pure gradient).
    #[serde(with = "humantime_serde", default)]
    pub latency_floor: Duration,
}

fn d_min_limit() -> usize {
    16
}
fn d_initial_limit() -> usize {
    64
}
fn d_tolerance() -> f64 {
    2.0
}
fn d_smoothing() -> f64 {
    0.2
}
fn d_sample_interval() -> Duration {
    Duration::from_millis(250)
}
fn d_long_window() -> u32 {
    100
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            min_limit: d_min_limit(),
            initial_limit: d_initial_limit(),
            tolerance: d_tolerance(),
            smoothing: d_smoothing(),
            sample_interval: d_sample_interval(),
            long_window: d_long_window(),
            latency_floor: Duration::ZERO,
        }
    }
}

impl AdaptivePolicy {
    /// The key of the first nonsensical setting and what is wrong with it.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.min_limit == 0 {
            return Some(("min_limit", "must be positive"));
        }
        if self.initial_limit < self.min_limit {
            return Some(("initial_limit", "must be at least min_limit"));
        }
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Some(("tolerance", "must be at least 1"));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Some(("smoothing", "must be in (0, 1]"));
        }
        if self.sample_interval.is_zero() {
            return Some(("sample_interval", "must be positive"));
        }
        if self.long_window == 0 {
            return Some(("long_window", "must be positive"));
        }
        None
    }
}

/// The limit's arithmetic, fed samples with their time: no clock, no I/O.
#[derive(Debug)]
struct Gradient {
    policy: AdaptivePolicy,
    ceiling: usize,
    limit: f64,
    /// Exponential average of the windows' latencies, in seconds.
    long: Option<f64>,
    window_start: Instant,
    window_sum: f64,
    window_count: u32,
    /// The most calls in flight during the window.
    window_peak: usize,
}

impl Gradient {
    fn new(policy: AdaptivePolicy, ceiling: usize, now: Instant) -> Self {
        let limit = policy.initial_limit.min(ceiling).max(1) as f64;
        Self {
            policy,
            ceiling: ceiling.max(1),
            limit,
            long: None,
            window_start: now,
            window_sum: 0.0,
            window_count: 0,
            window_peak: 0,
        }
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    /// A call answered after `latency` with `in_flight` calls running.
    fn sample(&mut self, latency: Duration, in_flight: usize, now: Instant) {
        self.window_sum += latency.as_secs_f64();
        self.window_count += 1;
        self.window_peak = self.window_peak.max(in_flight);
        if now.duration_since(self.window_start) < self.policy.sample_interval {
            return;
        }
        let short = self.window_sum / f64::from(self.window_count);
        let peak = self.window_peak;
        self.window_start = now;
        self.window_sum = 0.0;
        self.window_count = 0;
        self.window_peak = 0;
        if short <= 0.0 {
            return;
        }

        let alpha = 2.0 / (f64::from(self.policy.long_window) + 1.0);
        let long = match self.long {
            None => short,
            // While overloaded the usual latency moves ten times slower:
            // else queueing would soon pass for the new normal and the
            // limit would climb back while calls still queue.
            Some(long) if short > self.policy.tolerance * long => {
                long + alpha / 10.0 * (short - long)
            }
            Some(long) => long + alpha * (short - long),
        };
        // Load came and went: what is usual now is lower.
        let long = if long / short > 2.0 {
            long * 0.95
        } else {
            long
        };
        self.long = Some(long);

        // A server using less than half its limit learns nothing about it.
        if (peak as f64) < self.limit / 2.0 {
            return;
        }
        let usual = long.max(self.policy.latency_floor.as_secs_f64());
        let gradient = (self.policy.tolerance * usual / short).clamp(0.5, 1.0);
        let estimate = self.limit * gradient + self.limit.sqrt();
        let smoothing = self.policy.smoothing;
        self.limit = (self.limit * (1.0 - smoothing) + estimate * smoothing).clamp(
            self.policy.min_limit.min(self.ceiling) as f64,
            self.ceiling as f64,
        );
    }
}

/// The adaptive limit of one server, shared by every connection.
#[derive(Debug)]
pub struct AdaptiveLimiter {
    gradient: Mutex<Gradient>,
    /// `gradient.limit()`, for the admission check without the lock.
    limit: AtomicUsize,
    in_flight: AtomicUsize,
}

impl AdaptiveLimiter {
    /// A limiter starting at `policy.initial_limit`, never above `ceiling`.
    pub fn new(policy: &AdaptivePolicy, ceiling: usize) -> Self {
        let gradient = Gradient::new(policy.clone(), ceiling, Instant::now());
        Self {
            limit: AtomicUsize::new(gradient.limit()),
            gradient: Mutex::new(gradient),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A slot for a call, or `None` when the limit is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<AdaptivePermit> {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(AdaptivePermit {
            limiter: self.clone(),
            started: Instant::now(),
            answered: false,
        })
    }
}

/// A call's slot: its latency is a sample once it is answered; a call
/// dropped unanswered (its caller went away) only frees the slot.
#[derive(Debug)]
pub struct AdaptivePermit {
    limiter: Arc<AdaptiveLimiter>,
    started: Instant,
    answered: bool,
}

impl AdaptivePermit {
    /// The call was answered: its latency counts.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        let in_flight = self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.answered {
            let now = Instant::now();
            let mut gradient = self.limiter.gradient.lock().expect("not poisoned");
            gradient.sample(now.duration_since(self.started), in_flight, now);
            self.limiter
                .limit
                .store(gradient.limit(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdaptivePolicy {
        AdaptivePolicy {
            enabled: true,
            ..AdaptivePolicy::default()
        }
    }

    /// Feeds `windows` sample windows of calls taking `latency` with
    /// `in_flight` running, ten calls a window.
    fn feed(
        g: &mut Gradient,
        now: &mut Instant,
        windows: u32,
        latency: Duration,
        in_flight: usize,
    ) {
        for _ in 0..windows {
            for _ in 0..10 {
                *now += g.policy.sample_interval / 10;
                g.sample(latency, in_flight, *now);
            }
        }
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_falls_when_calls_queue() {
        let mut now = Instant::now();
        let mut g = Gradient::new(policy(), 1024, now);
        assert_eq!(g.limit(), 64);
        // Busy, latency steady: room grows.
        feed(&mut g, &mut now, 50, Duration::from_millis(10), 64);
        let grown = g.limit();
        assert!(grown > 100, "{grown}");
        // Calls queue: latency five times its usual level, the limit falls.
        let busy = g.limit();
        feed(&mut g, &mut now, 20, Duration::from_millis(50), busy);
        let fallen = g.limit();
        assert!(fallen < grown / 2, "{grown} -> {fallen}");
        // Never below the floor, however bad.
        feed(&mut g, &mut now, 100, Duration::from_secs(2), 1024);
        assert_eq!(g.limit(), 16);
    }

    #[test]
    fn latency_under_the_floor_never_shrinks_the_limit() {
        let mut now = Instant::now();
        let policy = AdaptivePolicy {
            latency_floor: Duration::from_millis(100),
            ..policy()
        };
        let mut g = Gradient::new(policy, 1024, now);
        feed(&mut g, &mut now, 20, Duration::from_millis(5), 64);
        let before = g.limit();
        // Ten times slower, still under twice the floor: no shrinking.
        feed(&mut g, &mut now, 20, Duration::from_millis(50), before);
        assert!(g.limit() >= before, "{before} -> {}", g.limit());
        // Past it: the limit falls.
        let busy = g.limit();
        feed(&mut g, &mut now, 20, Duration::from_millis(500), busy);
        assert!(g.limit() < busy / 2, "{busy} -> {}", g.limit());
    }

    #[test]
    fn an_idle_server_does_not_grow_its_limit_and_the_ceiling_holds() {
        let mut now = Instant::now();
        let mut g = Gradient::new(policy(), 1024, now);
        feed(&mut g, &mut now, 50, Duration::from_millis(10), 3);
        assert_eq!(g.limit(), 64, "3 calls at once say nothing about 64");
        let mut g = Gradient::new(policy(), 80, now);
        feed(&mut g, &mut now, 50, Duration::from_millis(10), 80);
        assert_eq!(g.limit(), 80);
    }

    #[test]
    fn after_an_overload_the_limit_recovers() {
        let mut now = Instant::now();
        let mut g = Gradient::new(policy(), 1024, now);
        feed(&mut g, &mut now, 20, Duration::from_millis(10), 64);
        feed(&mut g, &mut now, 40, Duration::from_millis(200), 1024);
        let low = g.limit();
        feed(&mut g, &mut now, 100, Duration::from_millis(10), 1024);
        assert!(g.limit() > low * 4, "{low} -> {}", g.limit());
    }

    #[tokio::test]
    async fn permits_stop_at_the_limit_and_free_their_slot() {
        let limiter = Arc::new(AdaptiveLimiter::new(
            &AdaptivePolicy {
                initial_limit: 16,
                ..policy()
            },
            1024,
        ));
        let held: Vec<_> = (0..16).map(|_| limiter.try_acquire().unwrap()).collect();
        assert!(limiter.try_acquire().is_none());
        drop(held);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn nonsense_is_named() {
        let p = AdaptivePolicy {
            initial_limit: 4,
            ..policy()
        };
        assert_eq!(p.problem().map(|(k, _)| k), Some("initial_limit"));
        let p = AdaptivePolicy {
            tolerance: 0.5,
            ..policy()
        };
        assert_eq!(p.problem().map(|(k, _)| k), Some("tolerance"));
    }
}
