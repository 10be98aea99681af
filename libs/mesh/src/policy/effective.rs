//! The policy of one call ([`EffectivePolicy`]), and the cache the layers
//! look it up in ([`EffectiveCache`]).

use super::{FaultPolicy, HedgePolicy, RetryPolicy, UpstreamPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The policy that applies to one call: upstream policy with the method's
/// overrides applied, and what the contract says about retrying.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectivePolicy {
    /// Overall deadline.
    pub timeout: Duration,
    /// Retries; `max_attempts` is 1 when the method is not safe to retry.
    pub retry: RetryPolicy,
    /// Hedging, only for NO_SIDE_EFFECTS methods.
    pub hedge: Option<HedgePolicy>,
    /// Fault injection.
    pub fault: FaultPolicy,
    /// The contract's idempotency level (`None`: not in any contract).
    pub idempotency: Option<shop_proto::Idempotency>,
}

impl UpstreamPolicy {
    /// The policy for the method at HTTP/2 `path`
    /// (`/shop.catalog.v1.CatalogService/ListProducts`).
    pub fn effective(&self, path: &str) -> EffectivePolicy {
        let name = path.rsplit('/').next().unwrap_or("");
        let over = self.methods.get(name);
        let idempotency = shop_proto::idempotency_level(path);
        let mut retry = over
            .and_then(|m| m.retry.as_ref())
            .map(|r| r.with_budget(self.retry.budget))
            .unwrap_or_else(|| self.retry.clone());
        if !idempotency.is_some_and(|i| i.is_retry_safe()) {
            retry.max_attempts = 1;
        }
        let hedge = over
            .and_then(|m| m.hedge)
            .or(self.hedge)
            .filter(|_| idempotency == Some(shop_proto::Idempotency::NoSideEffects));
        EffectivePolicy {
            timeout: over.and_then(|m| m.timeout).unwrap_or(self.timeout),
            retry,
            hedge,
            fault: over.and_then(|m| m.fault).unwrap_or(self.fault),
            idempotency,
        }
    }
}

/// Effective policies per method for one policy version: the layers look
/// one up on every call, and working it out (two map lookups, a clone of
/// the retry policy) costs more than the lookup.
///
/// A new policy version (a different `Arc`, after a reload) empties the
/// cache; it holds at most [`EffectiveCache::CAPACITY`] methods (paths come
/// from generated clients, but nothing bounds what a caller sends).
#[derive(Debug, Default)]
pub struct EffectiveCache {
    pub(super) inner: Mutex<CacheState>,
}

#[derive(Debug, Default)]
pub(super) struct CacheState {
    version: Option<Arc<UpstreamPolicy>>,
    pub(super) by_path: HashMap<Box<str>, Arc<EffectivePolicy>>,
}

impl EffectiveCache {
    /// Methods remembered at most; the cache starts over past it.
    pub const CAPACITY: usize = 256;

    /// `policy.effective(path)`, remembered.
    pub fn get(&self, policy: &Arc<UpstreamPolicy>, path: &str) -> Arc<EffectivePolicy> {
        let mut state = self.inner.lock().expect("not poisoned");
        if !state
            .version
            .as_ref()
            .is_some_and(|v| Arc::ptr_eq(v, policy))
        {
            state.version = Some(policy.clone());
            state.by_path.clear();
        }
        if let Some(found) = state.by_path.get(path) {
            return found.clone();
        }
        if state.by_path.len() >= Self::CAPACITY {
            state.by_path.clear();
        }
        let effective = Arc::new(policy.effective(path));
        state.by_path.insert(path.into(), effective.clone());
        effective
    }
}
