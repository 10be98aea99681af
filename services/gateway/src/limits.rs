//! Abuse limits on the unauthenticated calls (LogIn, SignUp): a token
//! bucket (GCRA, `governor`) per email address and one per peer address.
//!
//! The email's bucket is checked first, so hammering one account empties
//! only that account's bucket: other people behind the same address (a
//! NAT, an office) keep logging in. Many emails from one address empty the
//! address's bucket. A refused call gets `RESOURCE_EXHAUSTED` with a
//! `google.rpc.RetryInfo` saying when a token is back.
//!
//! Buckets of keys not seen for a while are dropped by [`Limiter::forget_idle`]
//! (run periodically), so memory follows the number of recent callers.

use crate::config::{Bucket, CallLimits};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limits of one call (LogIn or SignUp).
pub(crate) struct Limiter<C: Clock = DefaultClock> {
    call: &'static str,
    per_email: Keyed<String, C>,
    per_peer: Keyed<IpAddr, C>,
    clock: C,
}

/// A refused call: which bucket was empty, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refused {
    call: &'static str,
    by: &'static str,
    retry_after: Duration,
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Self {
        // Whole seconds, rounded up: "come back in 0s" would be a lie.
        let secs = r.retry_after.as_secs() + u64::from(r.retry_after.subsec_nanos() > 0);
        let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(secs.max(1))));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "too many {} attempts {}; retry in {}s",
                r.call,
                r.by,
                secs.max(1)
            ),
            details,
        )
    }
}

fn quota(bucket: &Bucket) -> Quota {
    Quota::with_period(bucket.refill)
        .expect("validated: refill > 0")
        .allow_burst(NonZeroU32::new(bucket.burst).expect("validated: burst >= 1"))
}

impl Limiter<DefaultClock> {
    pub(crate) fn new(call: &'static str, limits: &CallLimits) -> Self {
        Self::with_clock(call, limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub(crate) fn with_clock(call: &'static str, limits: &CallLimits, clock: C) -> Self {
        Self {
            call,
            per_email: RateLimiter::dashmap_with_clock(quota(&limits.per_email), clock.clone()),
            per_peer: RateLimiter::dashmap_with_clock(quota(&limits.per_peer), clock.clone()),
            clock,
        }
    }

    /// Takes a token for `email` (normalised here: trimmed, lower case)
    /// and for `peer`, or says when to come back.
    pub(crate) fn check(&self, email: &str, peer: Option<IpAddr>) -> Result<(), Refused> {
        let email = email.trim().to_lowercase();
        self.per_email
            .check_key(&email)
            .map_err(|not_until| Refused {
                call: self.call,
                by: "for this email",
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        if let Some(peer) = peer {
            self.per_peer
                .check_key(&peer)
                .map_err(|not_until| Refused {
                    call: self.call,
                    by: "from this address",
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        Ok(())
    }

    /// Drops the buckets that are full again (indistinguishable from new).
    pub(crate) fn forget_idle(&self) {
        self.per_email.retain_recent();
        self.per_email.shrink_to_fit();
        self.per_peer.retain_recent();
        self.per_peer.shrink_to_fit();
    }

    /// Buckets held (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.per_email.len() + self.per_peer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits() -> CallLimits {
        CallLimits {
            per_email: Bucket {
                burst: 3,
                refill: Duration::from_secs(10),
            },
            per_peer: Bucket {
                burst: 5,
                refill: Duration::from_secs(1),
            },
        }
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn one_email_empties_its_own_bucket_only_and_gets_a_retry_time() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("log-in", &limits(), clock.clone());
        for _ in 0..3 {
            limiter.check("ada@example.com", PEER).unwrap();
        }
        let refused = limiter.check(" ADA@example.com", PEER).unwrap_err();
        assert_eq!(refused.by, "for this email");
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        // The address's bucket was not drained by the refused attempts.
        limiter.check("grace@example.com", PEER).unwrap();
        limiter.check("alan@example.com", PEER).unwrap();

        let status = Status::from(refused);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(10)));

        clock.advance(Duration::from_secs(10));
        limiter.check("ada@example.com", PEER).unwrap();
    }

    #[test]
    fn many_emails_from_one_address_empty_the_address_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("sign-up", &limits(), clock.clone());
        for i in 0..5 {
            limiter.check(&format!("u{i}@example.com"), PEER).unwrap();
        }
        let refused = limiter.check("u5@example.com", PEER).unwrap_err();
        assert_eq!(refused.by, "from this address");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        limiter.check("u6@example.com", other).unwrap();
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("log-in", &limits(), clock.clone());
        limiter.check("ada@example.com", PEER).unwrap();
        assert_eq!(limiter.keys(), 2);
        clock.advance(Duration::from_secs(60));
        limiter.forget_idle();
        assert_eq!(limiter.keys(), 0);
    }
}
