//! What every connection's clone of the server stack shares, each rebuilt
//! when its part of the policy changes: the semaphore of
//! `max_concurrency`, the rate limits' buckets and the adaptive limiter.

use crate::adaptive::{AdaptiveLimiter, AdaptivePolicy};
use crate::policy::ServerPolicy;
use crate::rate_limit::{RateLimitPolicy, RateLimits};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The semaphore of the concurrency limit, shared by every clone of the
/// service and rebuilt when `max_concurrency` changes.
#[derive(Debug)]
pub(super) struct Limiter {
    max: usize,
    semaphore: Arc<Semaphore>,
}

/// The buckets of the rate limits, shared by every clone of the service
/// and rebuilt (full) when `rate_limit` changes.
#[derive(Debug)]
pub(super) struct Rates {
    policy: RateLimitPolicy,
    limits: Arc<RateLimits>,
}

impl Rates {
    pub(super) fn new(policy: &RateLimitPolicy) -> Self {
        Self {
            policy: policy.clone(),
            limits: Arc::new(RateLimits::new(policy)),
        }
    }

    /// The buckets of `policy`, rebuilt if it changed.
    pub(super) fn limits_for(&mut self, policy: &RateLimitPolicy) -> Arc<RateLimits> {
        if *policy != self.policy {
            *self = Rates::new(policy);
        }
        self.limits.clone()
    }
}

/// The adaptive limiter, shared by every clone of the service and rebuilt
/// (at its initial limit) when its policy or the ceiling changes.
#[derive(Debug)]
pub(super) struct Adaptive {
    key: (AdaptivePolicy, usize),
    limiter: Option<Arc<AdaptiveLimiter>>,
}

impl Adaptive {
    pub(super) fn new(policy: &ServerPolicy) -> Self {
        let key = (policy.adaptive_concurrency.clone(), policy.max_concurrency);
        let limiter = key
            .0
            .enabled
            .then(|| Arc::new(AdaptiveLimiter::new(&key.0, key.1)));
        Self { key, limiter }
    }

    pub(super) fn limiter_for(&mut self, policy: &ServerPolicy) -> Option<Arc<AdaptiveLimiter>> {
        if (&policy.adaptive_concurrency, policy.max_concurrency) != (&self.key.0, self.key.1) {
            *self = Adaptive::new(policy);
        }
        self.limiter.clone()
    }
}

impl Limiter {
    pub(super) fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            max,
            semaphore: Arc::new(Semaphore::new(max)),
        }
    }

    /// The semaphore for `max` permits, rebuilt if `max` changed.
    pub(super) fn semaphore_for(&mut self, max: usize) -> Arc<Semaphore> {
        if max.min(Semaphore::MAX_PERMITS) != self.max {
            *self = Limiter::new(max);
        }
        self.semaphore.clone()
    }
}
