//! The retry budget of one upstream.
//!
//! A TPS budget, as tower's `TpsBudget` (and Finagle's): every call
//! deposits, every retry (or hedge) withdraws; what may be withdrawn is
//! `ratio` of the calls of the last `ttl` plus a reserve of
//! `min_per_second * ttl`. So over any `ttl` window, attempts stay within
//! `calls * (1 + ratio) + min_per_second * ttl`, however badly the
//! upstream fails.
//!
//! Ours rather than tower's because the level has to be published (the
//! `budget_available` stat MeshAdmin shows) on every deposit, and tower's
//! keeps its balance private.
//!
//! The budget is the upstream's (`retry.budget` of the upstream policy,
//! not a method's); when a new policy changes it, a fresh budget replaces
//! the old one.

use crate::policy::BudgetPolicy;
use crate::stats::UpstreamStats;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The budget of one upstream, rebuilt when its policy changes.
#[derive(Debug)]
pub(super) struct Budget {
    current: Mutex<(BudgetPolicy, Arc<TpsBudget>)>,
    stats: Arc<UpstreamStats>,
}

/// The budget as one call uses it.
#[derive(Debug, Clone)]
pub(super) struct Tokens {
    budget: Arc<TpsBudget>,
    stats: Arc<UpstreamStats>,
}

/// Slots the `ttl` window is divided into: deposits expire a slot at a
/// time.
const SLOTS: usize = 10;

/// Deposits and withdrawals over a sliding `ttl` window, in integer units:
/// a call deposits `deposit`, a retry costs `withdraw` (their ratio is the
/// policy's `ratio`).
#[derive(Debug)]
struct TpsBudget {
    deposit: i64,
    withdraw: i64,
    /// `min_per_second * ttl` retries, in units.
    reserve: i64,
    /// One slot's share of the window.
    slot: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Net units per slot; `current` is being filled.
    slots: [i64; SLOTS],
    current: usize,
    /// When `current` started.
    started: Instant,
}

// === impl Budget ===

impl Budget {
    /// A budget following `policy`, publishing its level into `stats`.
    pub(super) fn new(policy: &BudgetPolicy, stats: Arc<UpstreamStats>) -> Self {
        let budget = Arc::new(TpsBudget::new(policy));
        publish(&stats, budget.put(0));
        Self {
            current: Mutex::new((*policy, budget)),
            stats,
        }
    }

    /// The budget for a call under `policy` (a fresh one if the policy
    /// changed since the last call).
    pub(super) fn tokens(&self, policy: &BudgetPolicy) -> Tokens {
        let mut current = self.current.lock().expect("not poisoned");
        if current.0 != *policy {
            *current = (*policy, Arc::new(TpsBudget::new(policy)));
        }
        Tokens {
            budget: current.1.clone(),
            stats: self.stats.clone(),
        }
    }
}

// === impl Tokens ===

impl Tokens {
    /// Records a call.
    pub(super) fn deposit(&self) {
        let available = self.budget.put(self.budget.deposit);
        publish(&self.stats, available);
    }

    /// Takes one retry's worth, if the budget has it.
    pub(super) fn withdraw(&self) -> bool {
        let (ok, available) = self.budget.take();
        publish(&self.stats, available);
        ok
    }
}

fn publish(stats: &UpstreamStats, available: i64) {
    stats.budget_available.store(available, Ordering::Relaxed);
}

// === impl TpsBudget ===

impl TpsBudget {
    fn new(policy: &BudgetPolicy) -> Self {
        let ttl = policy
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if policy.ratio.is_finite() {
            policy.ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        // Units chosen so both amounts are whole: a retry costs 1000, a
        // call deposits `ratio` of that.
        let withdraw = 1000;
        let deposit = (ratio * 1000.0).round() as i64;
        let reserve = i64::from(policy.min_per_second)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(withdraw);
        Self {
            deposit,
            withdraw,
            reserve,
            slot: ttl / SLOTS as u32,
            window: Mutex::new(Window {
                slots: [0; SLOTS],
                current: 0,
                started: Instant::now(),
            }),
        }
    }

    /// Adds `units`; the retries then available.
    fn put(&self, units: i64) -> i64 {
        let mut window = self.window.lock().expect("not poisoned");
        window.expire(Instant::now(), self.slot);
        let current = window.current;
        window.slots[current] = window.slots[current].saturating_add(units);
        self.available(&window)
    }

    /// Takes a retry's cost if the budget has it; whether it did, and the
    /// retries then available.
    fn take(&self) -> (bool, i64) {
        let mut window = self.window.lock().expect("not poisoned");
        window.expire(Instant::now(), self.slot);
        let ok = self.reserve + window.sum() >= self.withdraw;
        if ok {
            let current = window.current;
            window.slots[current] -= self.withdraw;
        }
        (ok, self.available(&window))
    }

    fn available(&self, window: &Window) -> i64 {
        ((self.reserve + window.sum()) / self.withdraw).max(0)
    }
}

// === impl Window ===

impl Window {
    /// Empties the slots older than the window at `now`.
    fn expire(&mut self, now: Instant, slot: Duration) {
        let elapsed = now.saturating_duration_since(self.started);
        let passed = elapsed.as_nanos() / slot.as_nanos().max(1);
        if passed == 0 {
            return;
        }
        for _ in 0..passed.min(SLOTS as u128) {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = 0;
        }
        self.started += slot * u32::try_from(passed).unwrap_or(u32::MAX);
    }

    fn sum(&self) -> i64 {
        self.slots.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::MeshStats;

    fn policy(ratio: f64, min_per_second: u32) -> BudgetPolicy {
        BudgetPolicy {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_level_is_published_as_retries_available() {
        let stats = MeshStats::default().upstream("catalog");
        let budget = Budget::new(&policy(0.2, 10), stats.clone());
        let gauge = || stats.budget_available.load(Ordering::Relaxed);
        assert_eq!(gauge(), 10, "the reserve: 10 per second over a 1 s ttl");

        let tokens = budget.tokens(&policy(0.2, 10));
        for _ in 0..10 {
            tokens.deposit();
        }
        assert_eq!(gauge(), 12, "plus one retry per five calls");
        assert!(tokens.withdraw());
        assert_eq!(gauge(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let stats = MeshStats::default().upstream("catalog");
        let budget = Budget::new(&policy(0.5, 0), stats.clone());
        let tokens = budget.tokens(&policy(0.5, 0));
        assert!(!tokens.withdraw(), "no reserve, no calls yet");
        for _ in 0..4 {
            tokens.deposit();
        }
        assert!(tokens.withdraw());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            tokens.withdraw(),
            "half a ttl later the deposits still count"
        );
        assert!(!tokens.withdraw(), "two retries for four calls at 50%");
        tokens.deposit();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !tokens.withdraw(),
            "the first four calls and their retry expired; the fifth call \
             does not cover the second retry"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokens.deposit();
        tokens.deposit();
        assert!(
            tokens.withdraw(),
            "everything earlier expired; two calls: one retry"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!tokens.withdraw(), "all expired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_policy_gets_a_fresh_budget() {
        let stats = MeshStats::default().upstream("catalog");
        let budget = Budget::new(&policy(0.0, 1), stats);
        let tokens = budget.tokens(&policy(0.0, 1));
        assert!(tokens.withdraw());
        assert!(!tokens.withdraw());

        let tokens = budget.tokens(&policy(0.0, 2));
        assert!(tokens.withdraw());
        assert!(tokens.withdraw());
        assert!(!tokens.withdraw());
    }
}
