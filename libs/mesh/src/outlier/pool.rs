//! [`EjectionPool`]: the endpoints of one balancer, and the cap on how many
//! of them are out at once.

use crate::policy::{OutlierPolicy, UpstreamPolicy};
use crate::stats::UpstreamStats;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// The endpoints of one balancer, for the cap on how many are ejected, and
/// the policy and stats they share.
#[derive(Debug)]
pub struct EjectionPool {
    pub(super) policy: watch::Receiver<Arc<UpstreamPolicy>>,
    pub(super) stats: Arc<UpstreamStats>,
    pub(super) members: AtomicUsize,
    pub(super) ejected: AtomicUsize,
}

// === impl EjectionPool ===

impl EjectionPool {
    /// A pool for the endpoints of one balancer of an upstream.
    pub fn new(
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            stats,
            members: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
        })
    }

    /// Endpoints in the pool (ejected or not).
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Acquire)
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    /// How many of `members` endpoints may be out at once with
    /// `max_ejected_percent`: `floor(members * percent / 100)`, at least one
    /// when the percent is above zero and there are two endpoints or more.
    pub fn max_ejected(members: usize, max_ejected_percent: u32) -> usize {
        let share = members * max_ejected_percent.min(100) as usize / 100;
        if max_ejected_percent > 0 && members > 1 {
            share.max(1)
        } else {
            share
        }
    }

    pub(super) fn policy(&self) -> OutlierPolicy {
        self.policy.borrow().outlier
    }

    /// Takes an ejection slot if the cap allows.
    pub(super) fn try_eject(&self, max_ejected_percent: u32) -> bool {
        let cap = Self::max_ejected(self.members(), max_ejected_percent);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn release(&self) {
        self.ejected.fetch_sub(1, Ordering::AcqRel);
    }
}
