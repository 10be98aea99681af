//! Client-side adaptive throttling, as the Google SRE book's "Handling
//! Overload" describes it: each client remembers, over a sliding window,
//! how many attempts it made (`requests`) and how many the upstream
//! accepted (`accepts`), and rejects an attempt itself, without sending
//! it, with probability
//!
//! ```text
//! max(0, (requests - k × accepts) / (requests + 1))
//! ```
//!
//! While the upstream accepts what it is sent, the probability is 0. Once
//! it refuses more than `1 - 1/k` of it (RESOURCE_EXHAUSTED: shed, rate
//! limited, out of connections), the client starts refusing the excess
//! locally, so an overloaded upstream spends nothing on requests it would
//! refuse anyway, and the refusals cost the client no round trip. A local
//! refusal counts as a request, so the probability keeps up with demand;
//! as the upstream recovers, its accepts bring the probability back to 0.
//!
//! An attempt counts as a request once it is answered (or refused
//! locally), not while it is in flight: a burst of attempts sent at once
//! is not taken for refusals.
//!
//! A locally refused attempt is answered with RESOURCE_EXHAUSTED and a
//! negative `grpc-retry-pushback-ms` (gRPC's "do not retry"), so the retry
//! layer above does not turn it into more attempts.
//!
//! ```toml
//! [upstreams.catalog.throttle]
//! k = 2.0          # accepts the upstream may fall short of requests by
//! window = "30s"   # how much history counts (in 1 s buckets)
//! ```

use crate::stats::UpstreamStats;
use crate::status;
use crate::{BoxError, Request, Response};
use futures::future::BoxFuture;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

/// `upstreams.<name>.throttle`; on by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottlePolicy {
    /// Whether the client throttles itself at all.
    #[serde(default = "d_enabled")]
    pub enabled: bool,
    /// How far accepts may fall short of requests before anything is
    /// refused locally: 2 lets the upstream refuse half, and the client
    /// sends twice what it accepts.
    #[serde(default = "d_k")]
    pub k: f64,
    /// How long requests and accepts are remembered.
    #[serde(with = "humantime_serde", default = "d_window")]
    pub window: Duration,
}

fn d_enabled() -> bool {
    true
}
fn d_k() -> f64 {
    2.0
}
fn d_window() -> Duration {
    Duration::from_secs(30)
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            enabled: d_enabled(),
            k: d_k(),
            window: d_window(),
        }
    }
}

impl ThrottlePolicy {
    /// What is wrong with the policy, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        if !(self.k >= 1.0 && self.k.is_finite()) {
            return Some("k must be at least 1");
        }
        if self.window < BUCKET {
            return Some("window must be at least 1s");
        }
        None
    }
}

/// The granularity of the window.
const BUCKET: Duration = Duration::from_secs(1);

/// Requests and accepts over the last `window`, in one-second buckets.
#[derive(Debug, Default)]
struct History {
    /// (bucket start, requests, accepts), oldest first.
    buckets: VecDeque<(Instant, u64, u64)>,
}

impl History {
    /// Drops what is older than `window` and returns the totals.
    fn totals(&mut self, now: Instant, window: Duration) -> (u64, u64) {
        while let Some((start, ..)) = self.buckets.front() {
            if now.duration_since(*start) >= window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
        self.buckets
            .iter()
            .fold((0, 0), |(r, a), (_, br, ba)| (r + br, a + ba))
    }

    fn record(&mut self, now: Instant, requests: u64, accepts: u64) {
        match self.buckets.back_mut() {
            Some((start, r, a)) if now.duration_since(*start) < BUCKET => {
                *r += requests;
                *a += accepts;
            }
            _ => self.buckets.push_back((now, requests, accepts)),
        }
    }
}

/// The rejection probability of `requests` and `accepts` under `k`.
pub fn probability(requests: u64, accepts: u64, k: f64) -> f64 {
    let requests = requests as f64;
    ((requests - k * accepts as f64) / (requests + 1.0)).max(0.0)
}

/// The throttle of one upstream, shared by every clone of its client.
pub struct Throttle {
    history: Mutex<History>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

impl Throttle {
    fn new(rng: rand::rngs::StdRng) -> Self {
        Self {
            history: Mutex::new(History::default()),
            rng: Mutex::new(rng),
        }
    }

    /// Whether to send an attempt now, and the probability it was refused
    /// with. A refusal is recorded as a request at once; a sent attempt
    /// only when it is answered ([`Self::answered`]), so that attempts in
    /// flight (a burst at start) do not pass for refusals.
    fn admit(&self, policy: &ThrottlePolicy, now: Instant) -> (bool, f64) {
        let mut history = self.history.lock().expect("not poisoned");
        let (requests, accepts) = history.totals(now, policy.window);
        let p = probability(requests, accepts, policy.k);
        let refused = p > 0.0 && self.rng.lock().expect("not poisoned").random::<f64>() < p;
        if refused {
            history.record(now, 1, 0);
        }
        (!refused, p)
    }

    /// A sent attempt was answered, accepted or refused by the upstream.
    fn answered(&self, now: Instant, accepted: bool) {
        self.history
            .lock()
            .expect("not poisoned")
            .record(now, 1, u64::from(accepted));
    }
}

/// Adds a [`Throttle`] in front of each attempt.
#[derive(Clone)]
pub struct ThrottleLayer {
    policy: watch::Receiver<Arc<crate::policy::UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    throttle: Arc<Throttle>,
}

impl ThrottleLayer {
    /// The throttle of one upstream, reporting into `stats`.
    pub fn new(
        policy: watch::Receiver<Arc<crate::policy::UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        Self::with_rng(policy, stats, rand::rngs::StdRng::from_os_rng())
    }

    /// [`ThrottleLayer::new`] drawing from `rng` (a seeded one in tests).
    pub fn with_rng(
        policy: watch::Receiver<Arc<crate::policy::UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
        rng: rand::rngs::StdRng,
    ) -> Self {
        Self {
            policy,
            stats,
            throttle: Arc::new(Throttle::new(rng)),
        }
    }
}

impl<S> tower::Layer<S> for ThrottleLayer {
    type Service = Throttled<S>;
    fn layer(&self, inner: S) -> Throttled<S> {
        Throttled {
            inner,
            policy: self.policy.clone(),
            stats: self.stats.clone(),
            throttle: self.throttle.clone(),
        }
    }
}

/// A service whose attempts go through a [`Throttle`].
#[derive(Clone)]
pub struct Throttled<S> {
    inner: S,
    policy: watch::Receiver<Arc<crate::policy::UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    throttle: Arc<Throttle>,
}

/// The answer to an attempt refused locally.
fn refused_locally() -> Response {
    status::refused_locally(
        "the upstream is refusing calls; this one was throttled by the client".into(),
    )
}

impl<S> tower::Service<Request> for Throttled<S>
where
    S: tower::Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let policy = self.policy.borrow().throttle.clone();
        if !policy.enabled {
            return Box::pin(self.inner.call(request));
        }
        let (admitted, p) = self.throttle.admit(&policy, Instant::now());
        self.stats
            .throttle_probability
            .store(p.to_bits(), Ordering::Relaxed);
        if !admitted {
            crate::stats::incr(&self.stats.counters.throttled);
            return Box::pin(async { Ok(refused_locally()) });
        }
        let throttle = self.throttle.clone();
        let attempt = self.inner.call(request);
        Box::pin(async move {
            let answer = attempt.await;
            // Anything but a refusal for want of capacity is the upstream
            // accepting the attempt (an error is its answer, not a
            // refusal).
            let refused = answer
                .as_ref()
                .is_ok_and(|r| status::header_code(r) == Some(Code::ResourceExhausted));
            throttle.answered(Instant::now(), !refused);
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::UpstreamPolicy;
    use crate::stats::MeshStats;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use tower::{Layer as _, ServiceExt as _};

    #[test]
    fn the_probability_is_zero_while_the_upstream_accepts_its_share() {
        assert_eq!(probability(0, 0, 2.0), 0.0);
        assert_eq!(probability(100, 100, 2.0), 0.0);
        assert_eq!(probability(100, 50, 2.0), 0.0);
        // Accepting a quarter: half of what is asked is refused locally.
        let p = probability(100, 25, 2.0);
        assert!((p - 50.0 / 101.0).abs() < 1e-9, "{p}");
        // Accepting nothing: nearly everything.
        assert!(probability(1000, 0, 2.0) > 0.99);
    }

    fn policy() -> UpstreamPolicy {
        crate::client::bench_policy("http://127.0.0.1:9")
    }

    /// An upstream that refuses (RESOURCE_EXHAUSTED) while `refusing` is
    /// set, and counts the attempts it receives.
    fn upstream(
        refusing: Arc<AtomicBool>,
        received: Arc<AtomicU64>,
    ) -> impl tower::Service<Request, Response = Response, Error = BoxError, Future: Send + 'static>
    + Clone {
        tower::service_fn(move |_request: Request| {
            received.fetch_add(1, Ordering::Relaxed);
            let refuse = refusing.load(Ordering::Relaxed);
            async move {
                Ok(if refuse {
                    status::response(tonic::Status::resource_exhausted("shed"))
                } else {
                    http::Response::new(crate::Body::empty())
                })
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_refusing_everything_is_spared_most_attempts_and_recovers() {
        let stats = MeshStats::default().upstream("catalog");
        let layer = ThrottleLayer::with_rng(
            watch::channel(Arc::new(policy())).1,
            stats.clone(),
            rand::rngs::StdRng::seed_from_u64(7),
        );
        let refusing = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let service = layer.layer(upstream(refusing.clone(), received.clone()));
        let call = || async {
            let response = service
                .clone()
                .oneshot(http::Request::new(crate::Body::empty()))
                .await
                .unwrap();
            status::header_code(&response)
        };

        // Healthy: everything is sent.
        for _ in 0..200 {
            assert_eq!(call().await, None);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(received.load(Ordering::Relaxed), 200);

        // Overloaded for 20 s: once the refusals outweigh the accepts
        // remembered from before, the client stops sending most attempts.
        refusing.store(true, Ordering::Relaxed);
        received.store(0, Ordering::Relaxed);
        for _ in 0..2000 {
            assert_eq!(call().await, Some(Code::ResourceExhausted));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let sent = received.load(Ordering::Relaxed);
        let throttled = crate::stats::read(&stats.counters.throttled);
        assert_eq!(sent + throttled, 2000);
        assert!(
            sent < 1200,
            "{sent} of 2000 attempts sent to a refusing upstream"
        );
        let p = f64::from_bits(stats.throttle_probability.load(Ordering::Relaxed));
        assert!(p > 0.7, "{p}");

        // Healthy again: within one window the client sends everything.
        refusing.store(false, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(31)).await;
        received.store(0, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(call().await, None);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(received.load(Ordering::Relaxed), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_attempts_in_flight_is_not_taken_for_refusals() {
        let stats = MeshStats::default().upstream("catalog");
        let layer = ThrottleLayer::with_rng(
            watch::channel(Arc::new(policy())).1,
            stats.clone(),
            rand::rngs::StdRng::seed_from_u64(7),
        );
        let slow = tower::service_fn(|_request: Request| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, BoxError>(http::Response::new(crate::Body::empty()))
        });
        let service = layer.layer(slow);
        let answers = futures::future::join_all((0..200).map(|_| {
            service
                .clone()
                .oneshot(http::Request::new(crate::Body::empty()))
        }))
        .await;
        assert!(
            answers
                .iter()
                .all(|a| status::header_code(a.as_ref().unwrap()).is_none())
        );
        assert_eq!(crate::stats::read(&stats.counters.throttled), 0);
    }

    #[tokio::test]
    async fn a_local_refusal_says_not_to_retry() {
        let response = refused_locally();
        assert_eq!(
            status::header_code(&response),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(status::pushback(&response), Some(status::Pushback::Never));
    }

    #[test]
    fn nonsense_is_named() {
        let mut p = ThrottlePolicy {
            k: 0.5,
            ..ThrottlePolicy::default()
        };
        assert!(p.problem().is_some());
        p.k = 2.0;
        p.window = Duration::from_millis(10);
        assert!(p.problem().is_some());
    }
}
