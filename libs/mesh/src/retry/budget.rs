//! The retry budget of one upstream.
//!
//! tower's [`TpsBudget`]: every call deposits, every retry (or hedge)
//! withdraws; what may be withdrawn is `ratio` of the calls of the last
//! `ttl` plus a reserve of `min_per_second * ttl`. So over any `ttl`
//! window, attempts stay within `calls * (1 + ratio) + min_per_second *
//! ttl`, however badly the upstream fails.
//!
//! The budget is the upstream's (`retry.budget` of the upstream policy,
//! not a method's); when a new policy changes it, a fresh budget replaces
//! the old one.

use crate::policy::BudgetPolicy;
use crate::stats::UpstreamStats;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::retry::budget::{Budget as _, TpsBudget};

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

// === impl Budget ===

impl Budget {
    /// A full budget for `policy`, reporting its level into `stats`.
    pub(super) fn new(policy: &BudgetPolicy, stats: Arc<UpstreamStats>) -> Self {
        let budget = Arc::new(build(policy));
        publish(&budget, &stats);
        Self {
            current: Mutex::new((*policy, budget)),
            stats,
        }
    }

    /// The budget for `policy`: the current one, or a fresh one if the
    /// policy changed since.
    pub(super) fn tokens(&self, policy: &BudgetPolicy) -> Tokens {
        let mut current = self.current.lock().expect("not poisoned");
        if current.0 != *policy {
            *current = (*policy, Arc::new(build(policy)));
        }
        Tokens {
            budget: current.1.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// A [`TpsBudget`] for `policy`, its values brought into the ranges
/// tower accepts (it panics outside them).
fn build(policy: &BudgetPolicy) -> TpsBudget {
    let ttl = policy
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let min_per_second = policy.min_per_second.min(i32::MAX as u32 - 1);
    let ratio = if policy.ratio.is_finite() {
        policy.ratio.clamp(0.0, 1000.0) as f32
    } else {
        0.0
    };
    TpsBudget::new(ttl, min_per_second, ratio)
}

// === impl Tokens ===

impl Tokens {
    /// Records a call.
    pub(super) fn deposit(&self) {
        self.budget.deposit();
        publish(&self.budget, &self.stats);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub(super) fn withdraw(&self) -> bool {
        let ok = self.budget.withdraw();
        publish(&self.budget, &self.stats);
        ok
    }
}

/// Mirrors the retries `budget` allows into `stats.budget_available`.
fn publish(budget: &TpsBudget, stats: &UpstreamStats) {
    if let Some(available) = available(budget) {
        stats.budget_available.store(available, Ordering::Relaxed);
    }
}

/// The retries `budget` would allow now.
///
/// tower 0.5 keeps the level private and shows it only through `Debug`
/// (`Budget { deposit: 1, withdraw: 5, balance: 42 }`, in tokens; a retry
/// costs `withdraw` tokens). It is read from there, for a gauge only: if a
/// tower release changes the format this returns `None` and the gauge
/// stays where it was (the test below says so first).
fn available(budget: &TpsBudget) -> Option<i64> {
    let shown = format!("{budget:?}");
    let field = |name: &str| -> Option<i64> {
        let start = shown.find(&format!("{name}: "))? + name.len() + 2;
        let rest = &shown[start..];
        let end = rest
            .find(|c: char| c != '-' && !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let balance = field("balance")?;
    let cost = field("withdraw")?.max(1);
    Some((balance / cost).max(0))
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
