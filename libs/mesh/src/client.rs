//! A mesh client for one upstream: an ordinary `http` service that a
//! generated tonic client takes as its channel.
//!
//! The stack, outer to inner, and why each layer sits where it does:
//!
//! 1. **telemetry** — a span per call (and the caller's trace context sent
//!    on as `traceparent`), so everything below is inside it;
//! 2. **[`deadline`](crate::deadline)** — the call's overall deadline
//!    (policy timeout, the incoming call's remaining time, the caller's own
//!    `grpc-timeout`), covering every attempt and backoff;
//! 3. **[`concurrency`](crate::concurrency)** — when enabled, the calls in
//!    flight to the upstream are capped by a limit that follows the
//!    latency the caller sees (retries included); the excess is refused at
//!    once, unsent;
//! 4. **[`retry`](crate::retry)** — only methods the contract marks safe,
//!    within the budget, never past the deadline, each attempt bounded by
//!    the per-try timeout, each retry to an endpoint not tried yet; bodies
//!    buffered for replay;
//! 5. **[`throttle`](crate::throttle)** — per attempt: while the upstream
//!    refuses calls for want of capacity, the client refuses a share of
//!    attempts itself, unsent (Google SRE's adaptive throttling);
//! 6. **[`split`](crate::split)** — weighted subsets, chosen per attempt;
//! 7. **[`balance`](crate::balance)** — p2c over peak-EWMA across the
//!    subset's endpoints, failing fast when none is ready;
//! 8. **[`outlier`](crate::outlier)** — per endpoint, inside the balancer,
//!    so an ejected endpoint is simply not ready;
//! 9. **[`fault`](crate::fault)** — per endpoint, innermost, so injected
//!    failures look like an endpoint's own (and are ejected like them);
//! 10. the [`connection`](crate::connection): one HTTP/2 connection per
//!     endpoint (the `h2` crate's client, driven from the caller's task: no
//!     channel and no task per call), opened on first use and again after
//!     it is lost.

use crate::connection::Connection;
use crate::discovery::Factory;
use crate::fault::FaultLayer;
use crate::policy::UpstreamPolicy;
use crate::stats::MeshStats;
use crate::{Body, BoxError, Request, Response};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{Layer as _, Service, ServiceBuilder, ServiceExt as _};
use tracing::Instrument as _;

/// How a [`MeshChannel`] is built beyond its policy.
#[derive(Clone, Default)]
pub struct Options {
    /// Where the trace context of outgoing calls comes from.
    pub trace: Option<TraceContext>,
    /// The identity to present and the one to accept: every connection is
    /// mutual TLS to `https://` endpoints. `None`: plaintext h2c to
    /// `http://` endpoints.
    pub tls: Option<crate::connection::ClientTls>,
}

/// Supplies the current trace context (`traceparent`) for outgoing calls;
/// the runtime's telemetry provides it (this crate knows no OpenTelemetry).
pub type TraceContext = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The client side of the mesh for one upstream. `Clone`: every clone
/// shares the same balancer, budget and endpoints.
#[derive(Clone)]
pub struct MeshChannel {
    inner: BoxCloneSyncService<Request, Response, BoxError>,
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshChannel").finish_non_exhaustive()
    }
}

impl MeshChannel {
    /// A client for `upstream` following `policy` (which may change while
    /// it runs), reporting into `stats`, over plaintext h2c. Spawns the
    /// balancer and discovery tasks: call from within a tokio runtime.
    pub fn new(
        upstream: &str,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<MeshStats>,
    ) -> Result<Self, BoxError> {
        Self::with_options(upstream, policy, stats, Options::default())
    }

    /// [`MeshChannel::new`], with the trace context and the TLS identity
    /// `options` give.
    pub fn with_options(
        upstream: &str,
        policy: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<MeshStats>,
        options: Options,
    ) -> Result<Self, BoxError> {
        let Options { trace, tls } = options;
        let upstream_stats = stats.upstream(upstream);
        let current = policy.borrow().clone();
        current
            .validate(upstream)
            .map_err(|e| -> BoxError { e.to_string().into() })?;
        let connect = {
            let tls = tls.clone();
            move |address: &str, connect_timeout| match &tls {
                Some(tls) => Connection::secure(address, connect_timeout, tls.clone()),
                None => Connection::new(address, connect_timeout),
            }
        };
        for address in &current.endpoints {
            connect(address, current.connect_timeout)
                .map_err(|e| format!("upstreams.{upstream}.endpoints: {e}"))?;
        }

        let connect_timeout = current.connect_timeout;
        let keepalive = crate::connection::Keepalive {
            interval: current.keepalive.interval,
            timeout: current.keepalive.timeout,
        };
        let fault_policy = policy.clone();
        let fault_stats = upstream_stats.clone();
        let factory: Factory<_> = Arc::new(move |address: &str| {
            let connection = connect(address, connect_timeout)
                .unwrap_or_else(|_| unreachable_connection(connect_timeout))
                .with_keepalive(keepalive);
            FaultLayer::client(fault_policy.clone(), fault_stats.clone()).layer(connection)
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let pool = crate::split::Split::new(
            &current,
            scheme,
            factory,
            policy.clone(),
            upstream_stats.clone(),
        );

        let stack = ServiceBuilder::new()
            .layer_fn(|inner| Trace {
                inner,
                upstream: upstream.to_string(),
                trace: trace.clone(),
            })
            .layer(crate::deadline::DeadlineLayer::new(
                policy.clone(),
                upstream_stats.clone(),
            ))
            .layer(crate::concurrency::ConcurrencyLayer::new(
                policy.clone(),
                upstream_stats.clone(),
            ))
            .layer(crate::retry::RetryLayer::new(
                policy.clone(),
                upstream_stats.clone(),
            ))
            .layer(crate::throttle::ThrottleLayer::new(policy, upstream_stats))
            .service(pool);
        Ok(Self {
            inner: BoxCloneSyncService::new(stack),
        })
    }
}

/// A connection to an address that was already refused by validation;
/// never reached (static addresses are validated before any connection is
/// made, and discovered ones are made from socket addresses), but a factory
/// must return something rather than panic.
fn unreachable_connection(connect_timeout: std::time::Duration) -> Connection {
    Connection::new("http://127.0.0.1:9", connect_timeout).expect("a valid address")
}

impl Service<http::Request<Body>> for MeshChannel {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.inner.call(request)
    }
}

/// The telemetry layer: a span per call, the trace context sent on.
#[derive(Clone)]
struct Trace<S> {
    inner: S,
    upstream: String,
    trace: Option<TraceContext>,
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let span = crate::span::client(request.uri().path(), &self.upstream);
        let _entered = span.enter();
        if let Some(tp) = self.trace.as_ref().and_then(|f| f())
            && let Ok(value) = http::HeaderValue::from_str(&tp)
        {
            request.headers_mut().insert("traceparent", value);
        }
        drop(_entered);
        self.inner.call(request).instrument(span)
    }
}

/// A one-endpoint policy with every layer on (retries, outlier ejection,
/// fault injection configured but at 0%), for benchmarks.
pub fn bench_policy(endpoint: &str) -> UpstreamPolicy {
    let mut policy: UpstreamPolicy = serde_json_free::parse(endpoint);
    policy.retry.per_try_timeout = Some(std::time::Duration::from_millis(500));
    policy
}

mod serde_json_free {
    use crate::policy::UpstreamPolicy;
    use serde::Deserialize as _;
    use serde::de::value::{Error, MapDeserializer};

    /// The default policy for one static endpoint, built through serde so
    /// every default is the one configuration gets.
    pub(super) fn parse(endpoint: &str) -> UpstreamPolicy {
        let map = MapDeserializer::<_, Error>::new(
            [("endpoints", vec![endpoint.to_string()])].into_iter(),
        );
        UpstreamPolicy::deserialize(map).expect("a list of endpoints is a valid policy")
    }
}

#[allow(dead_code)]
fn _assert_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<MeshChannel>();
    let _ = |s: MeshChannel| s.oneshot(http::Request::new(Body::empty()));
}
