//! [`Track`]: an endpoint's load, its peak-EWMA latency times its calls in flight.

use crate::stats::EndpointStats;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;
use tower::Service;

/// The latency assumed of an endpoint before it has answered.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

#[derive(Debug)]
pub struct Track<S> {
    inner: S,
    stats: Arc<EndpointStats>,
    ewma: Arc<Mutex<Ewma>>,
}

pin_project! {
    /// The response future of [`Track`].
    #[derive(Debug)]
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        sent_at: Instant,
        ewma: Arc<Mutex<Ewma>>,
        in_flight: Option<InFlight>,
    }
}

/// One call in an endpoint's `in_flight` gauge, until dropped.
#[derive(Debug)]
struct InFlight(Arc<EndpointStats>);

/// A peak-EWMA of latency: a sample above the estimate replaces it, one
/// below is blended in with a weight that grows with the time since the
/// last update (`1 - e^(-elapsed/decay)`).
///
/// Two estimates follow the same samples: the one p2c compares starts from
/// the assumed [`DEFAULT_RTT`], so a new endpoint neither draws every call
/// before it has answered nor is shunned for not having answered yet (as
/// tower's `PeakEwma`); the one reported in the stats starts from zero, so
/// it shows what was measured.
#[derive(Debug)]
struct Ewma {
    load_nanos: f64,
    nanos: f64,
    updated_at: Instant,
    decay_nanos: f64,
}

// === impl Track ===

impl<S> Track<S> {
    /// Wraps one endpoint's service, reporting into `stats`, with the
    /// latency estimate decaying over `decay`.
    pub fn new(inner: S, stats: Arc<EndpointStats>, decay: Duration) -> Self {
        Self {
            inner,
            stats,
            ewma: Arc::new(Mutex::new(Ewma {
                load_nanos: DEFAULT_RTT.as_nanos() as f64,
                nanos: 0.0,
                updated_at: Instant::now(),
                decay_nanos: decay.as_nanos().max(1) as f64,
            })),
        }
    }

    /// Makes the latency estimate decay over `decay` from now on.
    pub fn set_decay(&self, decay: Duration) {
        self.ewma.lock().expect("not poisoned").decay_nanos = decay.as_nanos().max(1) as f64;
    }

    /// The load p2c compares, at `now`: the latency estimate (decayed
    /// since its last sample) times the calls in flight plus one.
    pub fn load(&self, now: Instant) -> f64 {
        let estimate = self.ewma.lock().expect("not poisoned").at(now);
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed);
        estimate * (in_flight as f64 + 1.0)
    }
}

impl<S: Clone> Clone for Track<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            stats: self.stats.clone(),
            ewma: self.ewma.clone(),
        }
    }
}

impl<S, Req> Service<Req> for Track<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        TrackFuture {
            inner: self.inner.call(request),
            sent_at: Instant::now(),
            ewma: self.ewma.clone(),
            in_flight: Some(InFlight(self.stats.clone())),
        }
    }
}

impl<F: Future> Future for TrackFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let Some(InFlight(stats)) = this.in_flight.as_ref() {
            let now = Instant::now();
            let mut ewma = this.ewma.lock().expect("not poisoned");
            let estimate = ewma.update(now.saturating_duration_since(*this.sent_at), now);
            stats
                .ewma_micros
                .store((estimate / 1_000.0) as u64, Ordering::Relaxed);
        }
        this.in_flight.take();
        Poll::Ready(output)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Ewma ===

impl Ewma {
    /// Adds a sample of `rtt` taken at `now`; the new reported estimate,
    /// in nanoseconds.
    fn update(&mut self, rtt: Duration, now: Instant) -> f64 {
        let rtt = rtt.as_nanos() as f64;
        let keep = self.keep(now);
        let peak_ewma = |estimate: f64| {
            if estimate < rtt {
                rtt
            } else {
                estimate * keep + rtt * (1.0 - keep)
            }
        };
        self.load_nanos = peak_ewma(self.load_nanos);
        self.nanos = peak_ewma(self.nanos);
        self.updated_at = now;
        self.nanos
    }

    /// The estimate p2c compares at `now`, decayed towards zero since the
    /// last sample (so an endpoint left alone after a slow spell is tried
    /// again).
    fn at(&self, now: Instant) -> f64 {
        self.load_nanos * self.keep(now)
    }

    /// The weight the estimate keeps after the time since the last sample.
    fn keep(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated_at).as_nanos() as f64;
        (-elapsed / self.decay_nanos).exp()
    }
}
