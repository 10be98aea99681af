//! [`Endpoint`]: one endpoint's detector, its counts and its ejections.

use super::EjectionPool;
use crate::stats::{self, EjectionReason, EndpointState, EndpointStats};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One endpoint's detector, shared by the [`Outlier`] and its calls in
/// flight. Leaves the pool when the last of them is gone.
#[derive(Debug)]
pub struct Endpoint {
    pub(super) address: String,
    pub(super) pool: Arc<EjectionPool>,
    pub(super) stats: Arc<EndpointStats>,
    pub(super) detector: Mutex<Detector>,
}

/// The state of one endpoint's detector.
///
/// ```text
///             failures reach a threshold, and the cap allows
///   In pool -------------------------------------------------> Ejected
///   (counting)   <----------------------------------------     (until)
///                  readmitted when polled at or after `until`;
///                  counts start afresh
/// ```
#[derive(Debug)]
pub(super) struct Detector {
    /// Failures in a row.
    pub(super) consecutive: u32,
    /// Calls and failures in the current `interval`.
    pub(super) window: Window,
    /// Set while ejected.
    pub(super) ejected_until: Option<Instant>,
    /// Grows with each ejection, decays while in the pool.
    pub(super) multiplier: u32,
    /// Since when the endpoint has been in the pool (creation or last
    /// readmission), for the decay of the multiplier.
    pub(super) in_pool_since: Instant,
}

/// A tumbling window of `interval`: starts afresh once `interval` has
/// passed since it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) requests: u32,
    pub(super) failures: u32,
}

/// What a call or a readiness check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    /// A status or HTTP code saying the endpoint is unwell.
    Failed,
    /// The endpoint could not be reached (an error, not a response).
    Unreachable,
    /// The endpoint did not answer within the attempt's per-try timeout.
    TimedOut,
}

// === impl Endpoint ===

impl Endpoint {
    /// A new member of `pool` at `address`, healthy.
    pub(super) fn join(address: &str, pool: &Arc<EjectionPool>) -> Arc<Self> {
        let stats = pool.stats.endpoint(address);
        stats.set_state(EndpointState::Healthy);
        pool.members.fetch_add(1, Ordering::AcqRel);
        let now = Instant::now();
        Arc::new(Endpoint {
            address: address.to_string(),
            pool: pool.clone(),
            stats,
            detector: Mutex::new(Detector {
                consecutive: 0,
                window: Window::new(now),
                ejected_until: None,
                multiplier: 0,
                in_pool_since: now,
            }),
        })
    }

    /// The endpoint's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until(Instant::now()).is_some()
    }

    /// The readmission instant while ejected; readmits the endpoint if that
    /// instant has come.
    pub(super) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let mut d = self.detector.lock().expect("not poisoned");
        let until = d.ejected_until?;
        if now < until {
            return Some(until);
        }
        d.ejected_until = None;
        d.in_pool_since = now;
        d.consecutive = 0;
        d.window = Window::new(now);
        drop(d);
        self.pool.release();
        self.stats.set_state(EndpointState::Healthy);
        tracing::info!(endpoint = %self.address, "endpoint readmitted");
        None
    }

    /// Counts an outcome, and ejects the endpoint if it crossed a threshold
    /// and the cap allows.
    pub(super) fn record(&self, outcome: Outcome) {
        let policy = self.pool.policy();
        let now = Instant::now();
        let mut d = self.detector.lock().expect("not poisoned");
        if d.ejected_until.is_some() {
            // A late answer to a call sent before the ejection.
            return;
        }
        d.window.roll(now, policy.interval);
        d.window.requests += 1;
        if outcome == Outcome::Success {
            d.consecutive = 0;
            return;
        }
        d.consecutive += 1;
        d.window.failures += 1;

        let reason =
            if policy.consecutive_failures > 0 && d.consecutive >= policy.consecutive_failures {
                if outcome == Outcome::Unreachable {
                    EjectionReason::ConnectFailure
                } else {
                    EjectionReason::ConsecutiveFailures
                }
            } else if policy.failure_rate.is_some_and(|rate| {
                d.window.requests >= policy.failure_rate_min_requests.max(1)
                    && f64::from(d.window.failures) >= rate * f64::from(d.window.requests)
            }) {
                EjectionReason::FailureRate
            } else {
                return;
            };
        if !self.pool.try_eject(policy.max_ejected_percent) {
            tracing::debug!(endpoint = %self.address, ?reason, "not ejected: too many endpoints out already");
            return;
        }

        let intervals_in_pool = now.saturating_duration_since(d.in_pool_since).as_nanos()
            / policy.interval.as_nanos().max(1);
        let decay = u32::try_from(intervals_in_pool).unwrap_or(u32::MAX);
        d.multiplier = d.multiplier.saturating_sub(decay).saturating_add(1);
        let duration = policy
            .base_ejection
            .saturating_mul(d.multiplier)
            .min(policy.max_ejection);
        d.ejected_until = Some(now + duration);
        d.consecutive = 0;
        d.window = Window::new(now);
        let count = d.multiplier;
        drop(d);

        let since = SystemTime::now();
        self.stats.set_state(EndpointState::Ejected {
            since,
            until: since + duration,
            reason,
            count,
        });
        stats::incr(&self.pool.stats.counters.ejections);
        tracing::warn!(endpoint = %self.address, ?reason, ?duration, count, "endpoint ejected");
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.pool.members.fetch_sub(1, Ordering::AcqRel);
        if self
            .detector
            .get_mut()
            .map(|d| d.ejected_until.is_some())
            .unwrap_or(false)
        {
            self.pool.release();
        }
    }
}

// === impl Window ===

impl Window {
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            requests: 0,
            failures: 0,
        }
    }

    pub(super) fn roll(&mut self, now: Instant, interval: Duration) {
        if now.saturating_duration_since(self.start) >= interval {
            *self = Self::new(now);
        }
    }
}
