//! Abuse limits on the unauthenticated calls (LogIn, SignUp): a token
//! bucket (GCRA, `governor`) per peer address and one per email address,
//! in constant memory.
//!
//! Every key is checked before it reaches a table: an email longer than
//! [`MAX_EMAIL_BYTES`] is INVALID_ARGUMENT before any bucket exists, and
//! addresses are keyed as the listener counts connections (IPv4, or the
//! /64 of IPv6).
//!
//! The address is checked first: an address whose bucket is empty is
//! refused before its email gets a bucket, so one address spraying
//! emails cannot fill the email table. That first check only looks
//! ([`store::Probe::look`]); the address pays its token last, once the
//! email's bucket has let the call through. So hammering one account
//! empties only that account's bucket, and other people behind the same
//! address (a NAT, an office) keep logging in, while many emails from one
//! address empty the address's bucket. A refused call gets
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` saying when a token
//! is back.
//!
//! Each table holds at most `max_tracked` buckets: beyond, buckets that
//! are full again are dropped (at most once a second) and, if none is,
//! new callers are refused until some are. Buckets of keys not seen for a
//! while are also dropped by [`Limiter::forget_idle`] (run periodically),
//! so memory follows the number of recent callers.

mod store;

use crate::config::{Bucket, CallLimits};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};
use shop_runtime::listener::PeerKey;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use store::{LookingStore, Probe};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The longest email address accepted (RFC 5321's path limit less the
/// angle brackets).
pub(crate) const MAX_EMAIL_BYTES: usize = 254;

type Keyed<K, C> = RateLimiter<Probe<K>, LookingStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limits of one call (LogIn or SignUp).
pub(crate) struct Limiter<C: Clock = DefaultClock> {
    call: &'static str,
    per_email: Table<String, C>,
    per_peer: Table<PeerKey, C>,
    clock: C,
}

/// One keyed limiter, bounded to `max` keys.
struct Table<K: Hash + Eq + Clone, C: Clock> {
    buckets: Keyed<K, C>,
    max: usize,
    /// When idle buckets were last dropped because the table was full.
    last_sweep: Mutex<Option<Instant>>,
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Refused {
    /// The email is longer than [`MAX_EMAIL_BYTES`].
    EmailTooLong { bytes: usize },
    /// A bucket was empty: which, and when to come back.
    Limited {
        call: &'static str,
        by: &'static str,
        retry_after: Duration,
    },
    /// A table is full of callers still within their buckets.
    Crowded { call: &'static str },
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Self {
        let retry = |code: Code, message: String, after: Duration| {
            // Whole seconds, rounded up: "come back in 0s" would be a lie.
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(secs)));
            Status::with_error_details(code, format!("{message}; retry in {secs}s"), details)
        };
        match r {
            Refused::EmailTooLong { bytes } => Status::with_error_details(
                Code::InvalidArgument,
                format!("email: at most {MAX_EMAIL_BYTES} bytes (got {bytes})"),
                ErrorDetails::with_bad_request_violation(
                    "email",
                    format!("at most {MAX_EMAIL_BYTES} bytes"),
                ),
            ),
            Refused::Limited {
                call,
                by,
                retry_after,
            } => retry(
                Code::ResourceExhausted,
                format!("too many {call} attempts {by}"),
                retry_after,
            ),
            Refused::Crowded { call } => retry(
                Code::ResourceExhausted,
                format!("too many {call} callers at once"),
                Duration::from_secs(1),
            ),
        }
    }
}

fn quota(bucket: &Bucket) -> Quota {
    Quota::with_period(bucket.refill)
        .expect("validated: refill > 0")
        .allow_burst(NonZeroU32::new(bucket.burst).expect("validated: burst >= 1"))
}

impl Limiter<DefaultClock> {
    pub(crate) fn new(call: &'static str, limits: &CallLimits, max_tracked: usize) -> Self {
        Self::with_clock(call, limits, max_tracked, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub(crate) fn with_clock(
        call: &'static str,
        limits: &CallLimits,
        max_tracked: usize,
        clock: C,
    ) -> Self {
        Self {
            call,
            per_email: Table::new(quota(&limits.per_email), max_tracked, clock.clone()),
            per_peer: Table::new(quota(&limits.per_peer), max_tracked, clock.clone()),
            clock,
        }
    }

    /// Checks `email`'s length, then that `peer` has a token left, then
    /// takes a token for `email` (normalised here: trimmed, lower case)
    /// and one for `peer`, or says why not.
    pub(crate) fn check(&self, email: &str, peer: Option<IpAddr>) -> Result<(), Refused> {
        if email.len() > MAX_EMAIL_BYTES {
            return Err(Refused::EmailTooLong { bytes: email.len() });
        }
        const FROM_PEER: &str = "from this address";
        let peer = peer.map(PeerKey::from);
        if let Some(peer) = &peer {
            self.per_peer
                .check(Probe::look(*peer), &self.clock, self.call, FROM_PEER)?;
        }
        let email = email.trim().to_lowercase();
        self.per_email
            .take(email, &self.clock, self.call, "for this email")?;
        match peer {
            Some(peer) => self.per_peer.take(peer, &self.clock, self.call, FROM_PEER),
            None => Ok(()),
        }
    }

    /// Drops the buckets that are full again (indistinguishable from new).
    pub(crate) fn forget_idle(&self) {
        self.per_email.forget_idle();
        self.per_peer.forget_idle();
    }

    /// Buckets held (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.per_email.buckets.len() + self.per_peer.buckets.len()
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Table<K, C> {
    fn new(quota: Quota, max: usize, clock: C) -> Self {
        Self {
            buckets: RateLimiter::new(quota, LookingStore::default(), clock),
            max: max.max(1),
            last_sweep: Mutex::new(None),
        }
    }

    /// Takes a token for `key`, making a bucket for it if there is room.
    fn take(&self, key: K, clock: &C, call: &'static str, by: &'static str) -> Result<(), Refused> {
        if self.buckets.len() >= self.max && !self.make_room() {
            return Err(Refused::Crowded { call });
        }
        self.check(Probe::take(key), clock, call, by)
    }

    /// Runs `probe` against the buckets.
    fn check(
        &self,
        probe: Probe<K>,
        clock: &C,
        call: &'static str,
        by: &'static str,
    ) -> Result<(), Refused> {
        self.buckets
            .check_key(&probe)
            .map_err(|not_until| Refused::Limited {
                call,
                by,
                retry_after: not_until.wait_time_from(clock.now()),
            })
    }

    /// Drops idle buckets of a full table, at most once a second; whether
    /// there is room now.
    fn make_room(&self) -> bool {
        let mut last = self.last_sweep.lock().expect("not poisoned");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            self.forget_idle();
        }
        self.buckets.len() < self.max
    }

    fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
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
        let limiter = Limiter::with_clock("log-in", &limits(), 100, clock.clone());
        for _ in 0..3 {
            limiter.check("ada@example.com", PEER).unwrap();
        }
        let refused = limiter.check(" ADA@example.com", PEER).unwrap_err();
        assert_eq!(
            refused,
            Refused::Limited {
                call: "log-in",
                by: "for this email",
                retry_after: Duration::from_secs(10)
            }
        );
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
        let limiter = Limiter::with_clock("sign-up", &limits(), 100, clock.clone());
        for i in 0..5 {
            limiter.check(&format!("u{i}@example.com"), PEER).unwrap();
        }
        let refused = limiter.check("u5@example.com", PEER).unwrap_err();
        assert_eq!(
            refused,
            Refused::Limited {
                call: "sign-up",
                by: "from this address",
                retry_after: Duration::from_secs(1)
            }
        );
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        limiter.check("u6@example.com", other).unwrap();
    }

    #[test]
    fn an_address_out_of_tokens_makes_no_email_buckets() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("log-in", &limits(), 100, clock.clone());
        for i in 0..5 {
            limiter.check(&format!("u{i}@example.com"), PEER).unwrap();
        }
        assert_eq!(limiter.keys(), 6);
        // A sprayer's further emails are refused by the address alone.
        for i in 5..500 {
            let refused = limiter.check(&format!("u{i}@example.com"), PEER);
            assert!(
                matches!(
                    refused,
                    Err(Refused::Limited {
                        by: "from this address",
                        ..
                    })
                ),
                "{refused:?}"
            );
        }
        assert_eq!(limiter.keys(), 6);
    }

    #[test]
    fn an_overlong_email_is_invalid_before_any_bucket_exists() {
        let limiter = Limiter::new("log-in", &limits(), 100);
        let email = format!("{}@example.com", "a".repeat(1 << 20));
        let refused = limiter.check(&email, PEER).unwrap_err();
        assert_eq!(refused, Refused::EmailTooLong { bytes: email.len() });
        assert_eq!(limiter.keys(), 0);
        let status = Status::from(refused);
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(violations.field_violations[0].field, "email");
        assert!(status.message().len() < 100, "{}", status.message());
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64() {
        let limiter = Limiter::new("sign-up", &limits(), 100);
        let host = |last: &str| Some(format!("2001:db8:5:6::{last}").parse().unwrap());
        for i in 0..5 {
            limiter
                .check(&format!("u{i}@example.com"), host(&i.to_string()))
                .unwrap();
        }
        limiter.check("u5@example.com", host("ffff")).unwrap_err();
        let other_net = Some("2001:db8:5:7::1".parse().unwrap());
        limiter.check("u6@example.com", other_net).unwrap();
    }

    #[test]
    fn a_full_table_refuses_new_callers_until_buckets_are_idle() {
        let clock = FakeRelativeClock::default();
        let generous = CallLimits {
            per_email: limits().per_email,
            per_peer: Bucket {
                burst: 1000,
                refill: Duration::from_millis(1),
            },
        };
        let limiter = Limiter::with_clock("log-in", &generous, 10, clock.clone());
        for i in 0..10 {
            limiter.check(&format!("u{i}@example.com"), PEER).unwrap();
        }
        let refused = limiter.check("u10@example.com", PEER).unwrap_err();
        assert_eq!(refused, Refused::Crowded { call: "log-in" });
        assert!(limiter.keys() <= 11);
        let status = Status::from(refused);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.get_details_retry_info().is_some());
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock("log-in", &limits(), 100, clock.clone());
        limiter.check("ada@example.com", PEER).unwrap();
        assert_eq!(limiter.keys(), 2);
        clock.advance(Duration::from_secs(60));
        limiter.forget_idle();
        assert_eq!(limiter.keys(), 0);
    }
}
