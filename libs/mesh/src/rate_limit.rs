//! Per-identity rate limits, in the server policy: `server.mesh.rate_limit`,
//! in the shape of Linkerd's `HTTPLocalRateLimitPolicy`.
//!
//! ```toml
//! [server.mesh.rate_limit]
//! total = { requests_per_second = 2000 }     # every caller together
//! identity = { requests_per_second = 200 }   # each caller identity
//! [[server.mesh.rate_limit.overrides]]       # named identities
//! requests_per_second = 1000
//! identities = ["spiffe://shop.local/ns/shop/sa/gateway"]
//! ```
//!
//! A call takes a token from its caller's bucket (the SPIFFE ID verified at
//! the handshake; callers without one, on a plaintext port, share one
//! bucket), then from the total's. An empty bucket refuses the call at once
//! with RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms` saying when a token
//! will be there, before any work, so one token holder or one compromised
//! workload cannot take a service's whole capacity while others go on.
//! Buckets are GCRA (`governor`): `burst` calls at once (default: one
//! second's worth), then one every `1 / requests_per_second`. Health,
//! reflection and mesh admin are never limited. A bucket per identity:
//! identities are workloads of the trust bundle, a bounded set.

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;

/// `server.mesh.rate_limit`; nothing is limited by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Calls per second from every caller together.
    #[serde(default)]
    pub total: Option<Rate>,
    /// Calls per second from each caller identity not overridden.
    #[serde(default)]
    pub identity: Option<Rate>,
    /// Rates of named identities, instead of `identity`'s.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

/// A rate: `requests_per_second`, with `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained calls per second (positive).
    pub requests_per_second: u32,
    /// Calls at once after a quiet spell (default: `requests_per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The rate of some named identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Sustained calls per second (positive).
    pub requests_per_second: u32,
    /// Calls at once after a quiet spell (default: `requests_per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// SPIFFE IDs this rate applies to, each alone.
    pub identities: Vec<String>,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.requests_per_second)?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.requests_per_second))?;
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

impl RateLimitPolicy {
    /// The key of the first rate that is zero, if one is.
    pub fn invalid_key(&self) -> Option<String> {
        let zero = |r: &Rate| r.quota().is_none();
        if self.total.as_ref().is_some_and(zero) {
            return Some("total".into());
        }
        if self.identity.as_ref().is_some_and(zero) {
            return Some("identity".into());
        }
        self.overrides
            .iter()
            .position(|o| {
                zero(&Rate {
                    requests_per_second: o.requests_per_second,
                    burst: o.burst,
                })
            })
            .map(|i| format!("overrides[{i}]"))
    }
}

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The buckets of one [`RateLimitPolicy`], shared by every connection.
pub struct RateLimits {
    total: Option<DefaultDirectRateLimiter>,
    identity: Option<Keyed>,
    /// One limiter per override, keyed by the identities it names.
    overrides: Vec<(Vec<String>, Keyed)>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The buckets of `policy` (a validated one: zero rates limit nothing).
    pub fn new(policy: &RateLimitPolicy) -> Self {
        Self {
            total: policy.total.and_then(Rate::quota).map(RateLimiter::direct),
            identity: policy
                .identity
                .and_then(Rate::quota)
                .map(RateLimiter::keyed),
            overrides: policy
                .overrides
                .iter()
                .filter_map(|o| {
                    let quota = Rate {
                        requests_per_second: o.requests_per_second,
                        burst: o.burst,
                    }
                    .quota()?;
                    Some((o.identities.clone(), RateLimiter::keyed(quota)))
                })
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes a token for a call by `caller` (`None`: no verified identity),
    /// or says how long until one is there.
    pub fn check(&self, caller: Option<&str>) -> Result<(), Duration> {
        let key = caller.unwrap_or("");
        let own = self
            .overrides
            .iter()
            .find(|(ids, _)| ids.iter().any(|id| id == key))
            .map(|(_, limiter)| limiter)
            .or(self.identity.as_ref());
        if let Some(limiter) = own
            && let Err(not_until) = limiter.check_key(&key.to_string())
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        if let Some(total) = &self.total
            && let Err(not_until) = total.check()
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "spiffe://shop.test/ns/shop/sa/gateway";
    const ORDERS: &str = "spiffe://shop.test/ns/shop/sa/orders";
    const ANALYTICS: &str = "spiffe://shop.test/ns/shop/sa/analytics";

    fn policy(toml: &str) -> RateLimitPolicy {
        toml::from_str(toml).unwrap()
    }

    fn admitted(limits: &RateLimits, caller: &str, calls: usize) -> usize {
        (0..calls)
            .filter(|_| limits.check(Some(caller)).is_ok())
            .count()
    }

    #[test]
    fn a_caller_over_its_rate_is_refused_while_another_passes() {
        let limits = RateLimits::new(&policy(
            "identity = { requests_per_second = 5 }\n\
             [[overrides]]\nrequests_per_second = 20\nidentities = [\"spiffe://shop.test/ns/shop/sa/gateway\"]",
        ));
        assert_eq!(admitted(&limits, ORDERS, 50), 5, "the default per identity");
        let wait = limits.check(Some(ORDERS)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(admitted(&limits, ANALYTICS, 50), 5, "a bucket of its own");
        assert_eq!(admitted(&limits, GATEWAY, 50), 20, "its override");
    }

    #[test]
    fn the_total_bounds_every_caller_together() {
        let limits = RateLimits::new(&policy(
            "total = { requests_per_second = 8 }\nidentity = { requests_per_second = 5 }",
        ));
        assert_eq!(admitted(&limits, ORDERS, 50), 5);
        assert_eq!(
            admitted(&limits, ANALYTICS, 50),
            3,
            "what the total has left"
        );
    }

    #[test]
    fn callers_without_an_identity_share_one_bucket_and_nothing_is_limited_by_default() {
        let limits = RateLimits::new(&policy("identity = { requests_per_second = 2 }"));
        assert!(limits.check(None).is_ok());
        assert!(limits.check(None).is_ok());
        assert!(limits.check(None).is_err());
        let open = RateLimits::new(&RateLimitPolicy::default());
        assert!((0..10_000).all(|_| open.check(Some(ORDERS)).is_ok()));
    }

    #[test]
    fn a_zero_rate_is_named() {
        let p = policy("[[overrides]]\nrequests_per_second = 0\nidentities = []");
        assert_eq!(p.invalid_key().as_deref(), Some("overrides[0]"));
        let p = policy("total = { requests_per_second = 10, burst = 0 }");
        assert_eq!(p.invalid_key().as_deref(), Some("total"));
    }
}
