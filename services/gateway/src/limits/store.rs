//! A keyed GCRA state store for `governor` that can also be asked, without
//! taking anything, whether a key's bucket would let a call through.
//!
//! `governor` decides; this store only keeps each key's theoretical
//! arrival time. A [`Probe`] that looks ([`Probe::look`]) runs the
//! decision on the current state and writes nothing back, and never
//! creates an entry; one that takes ([`Probe::take`]) updates the state
//! as `governor`'s own `DashMapStateStore` does (compare and swap, retried
//! on a race). The gateway uses a look to check a caller's address before
//! anything else while still charging the address only for calls its
//! other buckets let through.

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use std::hash::Hash;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

/// A key and whether the call takes a token or only looks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Probe<K> {
    key: K,
    take: bool,
}

impl<K> Probe<K> {
    /// Takes a token if there is one.
    pub(crate) fn take(key: K) -> Self {
        Self { key, take: true }
    }

    /// Only says whether a token is there.
    pub(crate) fn look(key: K) -> Self {
        Self { key, take: false }
    }
}

/// Theoretical arrival times by key (nanoseconds since the limiter's
/// start; 0 for never).
#[derive(Debug)]
pub(crate) struct LookingStore<K: Hash + Eq>(DashMap<K, AtomicU64>);

impl<K: Hash + Eq> Default for LookingStore<K> {
    fn default() -> Self {
        Self(DashMap::default())
    }
}

fn read(state: &AtomicU64) -> Option<Nanos> {
    NonZeroU64::new(state.load(Ordering::Acquire)).map(|n| Nanos::from(n.get()))
}

impl<K: Hash + Eq + Clone> StateStore for LookingStore<K> {
    type Key = Probe<K>;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe<K>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if !probe.take {
            let now = self.0.get(&probe.key).and_then(|state| read(&state));
            return f(now).map(|(decision, _)| decision);
        }
        let state = match self.0.get(&probe.key) {
            Some(state) => state,
            None => self.0.entry(probe.key.clone()).or_default().downgrade(),
        };
        let mut prev = state.load(Ordering::Acquire);
        loop {
            let (decision, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            match state.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(decision),
                Err(current) => prev = current,
            }
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<Probe<K>> for LookingStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0
            .retain(|_, state| state.load(Ordering::Relaxed) > drop_below.as_u64());
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::middleware::NoOpMiddleware;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    use std::time::Duration;

    type Limiter = RateLimiter<
        Probe<&'static str>,
        LookingStore<&'static str>,
        FakeRelativeClock,
        NoOpMiddleware<Nanos>,
    >;

    fn limiter() -> (Limiter, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let quota = Quota::with_period(Duration::from_secs(1))
            .unwrap()
            .allow_burst(NonZeroU32::new(2).unwrap());
        (
            RateLimiter::new(quota, LookingStore::default(), clock.clone()),
            clock,
        )
    }

    #[test]
    fn looking_takes_nothing_and_creates_nothing() {
        let (limiter, _) = limiter();
        for _ in 0..10 {
            limiter.check_key(&Probe::look("a")).unwrap();
        }
        assert_eq!(limiter.len(), 0);
        limiter.check_key(&Probe::take("a")).unwrap();
        limiter.check_key(&Probe::take("a")).unwrap();
        assert_eq!(limiter.len(), 1);
        // Empty now: a look says so, and so does a take.
        limiter.check_key(&Probe::look("a")).unwrap_err();
        limiter.check_key(&Probe::take("a")).unwrap_err();
        limiter.check_key(&Probe::look("b")).unwrap();
    }

    #[test]
    fn buckets_refill_and_full_ones_are_forgotten() {
        let (limiter, clock) = limiter();
        limiter.check_key(&Probe::take("a")).unwrap();
        limiter.check_key(&Probe::take("a")).unwrap();
        clock.advance(Duration::from_secs(1));
        limiter.check_key(&Probe::look("a")).unwrap();
        limiter.check_key(&Probe::take("a")).unwrap();
        limiter.retain_recent();
        assert_eq!(limiter.len(), 1, "not full again yet");
        clock.advance(Duration::from_secs(5));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 0);
    }
}
