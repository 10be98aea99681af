//! The caller's adaptive concurrency limit: how many calls a client keeps
//! in flight to one upstream follows the latency the client sees.
//!
//! The server's limit ([`crate::adaptive`], in the mesh server) measures
//! the time a call spends in its handler. When the whole path saturates
//! (the CPU every process shares, the sockets between them) calls queue
//! before any handler sees them: in kernel buffers, in the server's
//! runtime, in the client's own. The handler's latency stays flat, the
//! server sheds nothing, and callers wait until their deadlines. The
//! caller sees all of it. This layer runs the same gradient
//! ([`AdaptiveLimiter`]) over each call's latency as the caller sees it,
//! and a call beyond the limit is refused at once, unsent, with
//! RESOURCE_EXHAUSTED and a negative pushback (gRPC's "do not retry"),
//! instead of joining the queue.
//!
//! It sits inside the deadline and outside the retries: a call holds one
//! slot whatever its attempts, and its latency includes its retries and
//! their backoff. Every call that ends is a sample, answered or cut by
//! its deadline (the deadline layer drops it: the queue the limit is
//! there to see); a call its caller abandoned early counts the time it
//! ran, an underestimate that only ever lets the limit grow.
//!
//! Off unless enabled; a changed policy starts a new limiter:
//!
//! ```toml
//! [upstreams.catalog.adaptive_concurrency]
//! enabled = true
//! latency_floor = "50ms" # latency under this is never queueing
//! ```

use crate::adaptive::{AdaptiveLimiter, AdaptivePolicy};
use crate::policy::UpstreamPolicy;
use crate::stats::UpstreamStats;
use crate::status;
use crate::{BoxError, Request, Response};
use futures::future::{BoxFuture, Either};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::watch;

/// The most calls in flight the limit may ever allow.
pub const CEILING: usize = 1 << 16;

/// Adds a [`Limited`] in front of each call; its clones share one limit.
#[derive(Clone)]
pub struct ConcurrencyLayer {
    policy: watch::Receiver<Arc<UpstreamPolicy>>,
    stats: Arc<UpstreamStats>,
    limiter: Arc<Mutex<Current>>,
}

/// The limiter of the policy in force (`None` while disabled).
struct Current {
    policy: AdaptivePolicy,
    limiter: Option<Arc<AdaptiveLimiter>>,
}

impl Current {
    fn new(policy: &AdaptivePolicy) -> Self {
        Self {
            policy: policy.clone(),
            limiter: policy
                .enabled
                .then(|| Arc::new(AdaptiveLimiter::new(policy, CEILING))),
        }
    }
}

impl ConcurrencyLayer {
    /// The limit of one upstream, reporting into `stats`.
    pub fn new(policy: watch::Receiver<Arc<UpstreamPolicy>>, stats: Arc<UpstreamStats>) -> Self {
        let current = Current::new(&policy.borrow().adaptive_concurrency);
        Self {
            policy,
            stats,
            limiter: Arc::new(Mutex::new(current)),
        }
    }
}

impl<S> tower::Layer<S> for ConcurrencyLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose calls are admitted by the upstream's adaptive limit.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    layer: ConcurrencyLayer,
}

impl<S> Limited<S> {
    /// The limiter for the policy now in force.
    fn limiter(&self) -> Option<Arc<AdaptiveLimiter>> {
        let policy = self.layer.policy.borrow();
        let wanted = &policy.adaptive_concurrency;
        if !wanted.enabled {
            // Off: no lock taken (the limiter of the last enabled policy is
            // kept until a different one is enabled).
            return None;
        }
        let mut current = self.layer.limiter.lock().expect("not poisoned");
        if current.policy != *wanted {
            *current = Current::new(wanted);
        }
        current.limiter.clone()
    }
}

/// The answer to a call beyond the limit.
fn refused_locally(limit: usize) -> Response {
    status::refused_locally(format!(
        "the upstream is answering slower than usual; this call would have been number {} in flight, over the client's limit of {limit}",
        limit + 1
    ))
}

impl<S> tower::Service<Request> for Limited<S>
where
    S: tower::Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    /// Off, the inner call as it is (no allocation); on, boxed.
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(limiter) = self.limiter() else {
            self.layer
                .stats
                .concurrency_limit
                .store(0, Ordering::Relaxed);
            return Either::Left(self.inner.call(request));
        };
        let stats = &self.layer.stats;
        let limit = limiter.limit();
        stats
            .concurrency_limit
            .store(limit as u64, Ordering::Relaxed);
        let Some(mut permit) = limiter.try_acquire() else {
            crate::stats::incr(&stats.counters.limited);
            return Either::Right(Box::pin(async move { Ok(refused_locally(limit)) }));
        };
        // Every end is a sample, a deadline's included (see the module docs).
        permit.answered();
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let answer = call.await;
            drop(permit);
            answer
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::MeshStats;
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Layer as _, ServiceExt as _};

    fn policy(enabled: bool) -> UpstreamPolicy {
        let mut p = crate::client::bench_policy("http://127.0.0.1:1");
        p.adaptive_concurrency = AdaptivePolicy {
            enabled,
            min_limit: 4,
            initial_limit: 16,
            sample_interval: Duration::from_millis(100),
            ..AdaptivePolicy::default()
        };
        p
    }

    /// An upstream whose calls take `latency()` at the time they start.
    fn upstream(
        latency: impl Fn() -> Duration + Clone + Send + 'static,
    ) -> impl tower::Service<
        Request,
        Response = Response,
        Error = BoxError,
        Future = BoxFuture<'static, Result<Response, BoxError>>,
    > + Clone {
        tower::service_fn(move |_: Request| {
            let latency = latency();
            let answer: BoxFuture<'static, Result<Response, BoxError>> = Box::pin(async move {
                tokio::time::sleep(latency).await;
                Ok(Response::new(crate::Body::empty()))
            });
            answer
        })
    }

    fn request() -> Request {
        http::Request::new(crate::Body::empty())
    }

    /// Sends `n` calls at once; how many were refused locally.
    async fn burst<S>(service: &S, n: usize) -> usize
    where
        S: tower::Service<Request, Response = Response, Error = BoxError> + Clone,
    {
        let calls = (0..n).map(|_| service.clone().oneshot(request()));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|r| {
                r.as_ref()
                    .is_ok_and(|r| status::header_code(r) == Some(tonic::Code::ResourceExhausted))
            })
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_it_lets_every_call_through() {
        let stats = MeshStats::default().upstream("catalog");
        let layer = ConcurrencyLayer::new(watch::channel(Arc::new(policy(false))).1, stats.clone());
        let service = layer.layer(upstream(|| Duration::from_secs(1)));
        assert_eq!(burst(&service, 1000).await, 0);
        assert_eq!(crate::stats::read(&stats.counters.limited), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn when_latency_grows_the_excess_is_refused_at_once_and_not_retried() {
        let stats = MeshStats::default().upstream("catalog");
        let layer = ConcurrencyLayer::new(watch::channel(Arc::new(policy(true))).1, stats.clone());
        // The upstream answers in 10 ms while few calls are in flight, and
        // ever slower as more queue (as a saturated path does).
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let load = in_flight.clone();
        let inner =
            upstream(move || Duration::from_millis(10 * (1 + load.load(Ordering::Relaxed) as u64)));
        let counted = tower::service_fn(move |r: Request| {
            in_flight.fetch_add(1, Ordering::Relaxed);
            let in_flight = in_flight.clone();
            let call = inner.clone().oneshot(r);
            async move {
                let answer = call.await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                answer
            }
        });
        let service = layer.layer(counted);

        // One call at a time for a second: 20 ms is the usual latency, and
        // nothing is refused.
        for _ in 0..50 {
            assert_eq!(burst(&service, 1).await, 0);
        }
        // Bursts far over it: the excess is refused, and the limit falls as
        // the latency climbs.
        let mut refused = 0;
        for _ in 0..20 {
            refused += burst(&service, 64).await;
        }
        assert!(refused > 0);
        assert_eq!(crate::stats::read(&stats.counters.limited), refused as u64);
        let limit = stats.concurrency_limit.load(Ordering::Relaxed);
        assert!((4..16).contains(&(limit as usize)), "limit {limit}");

        // A refusal is immediate and says not to retry.
        let started = Instant::now();
        let calls: Vec<_> = (0..200)
            .map(|_| service.clone().oneshot(request()))
            .collect();
        let answers = futures::future::join_all(calls).await;
        let refusal = answers
            .iter()
            .flatten()
            .find(|r| status::header_code(r) == Some(tonic::Code::ResourceExhausted))
            .expect("some refused");
        assert_eq!(refusal.headers()[status::PUSHBACK], "-1");
        assert!(Instant::now() > started, "the admitted ones took time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_policy_starts_a_new_limiter() {
        let stats = MeshStats::default().upstream("catalog");
        let (tx, rx) = watch::channel(Arc::new(policy(true)));
        let layer = ConcurrencyLayer::new(rx, stats.clone());
        let service = layer.layer(upstream(|| Duration::from_millis(1)));
        assert_eq!(burst(&service, 16).await, 0);
        assert_eq!(stats.concurrency_limit.load(Ordering::Relaxed), 16);
        tx.send(Arc::new(policy(false))).unwrap();
        assert_eq!(burst(&service, 500).await, 0);
        assert_eq!(stats.concurrency_limit.load(Ordering::Relaxed), 0);
    }
}
