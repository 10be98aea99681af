//! Call and attempt metrics as OpenTelemetry instruments, named and
//! attributed as gRPC's OpenTelemetry metrics are (gRFC A66), so the
//! dashboards and alerts written for gRPC's own libraries read them as
//! they are.
//!
//! Client, per upstream ([`ClientMetrics`], recorded by the
//! [`crate::retry`] layer, which sees every attempt, and by
//! [`crate::deadline`] for a call whose deadline had passed before it was
//! made):
//!
//! - `grpc.client.attempt.started` (counter; `grpc.method`, `grpc.target`)
//! - `grpc.client.attempt.duration` (histogram, s; `grpc.method`,
//!   `grpc.target`, `grpc.status`)
//! - `grpc.client.call.duration` (histogram, s; `grpc.method`,
//!   `grpc.target`, `grpc.status`)
//!
//! Server ([`ServerMetrics`], recorded by [`crate::server`]):
//!
//! - `grpc.server.call.started` (counter; `grpc.method`)
//! - `grpc.server.call.duration` (histogram, s; `grpc.method`,
//!   `grpc.status`)
//!
//! `grpc.method` is the full method name without its leading slash
//! (`shop.catalog.v1.CatalogService/GetProduct`); on the server a method
//! none of the process's contracts defines is recorded as `other`, so a
//! caller cannot grow the attribute sets without bound. `grpc.target` is
//! the upstream's name in the policy (`catalog`). `grpc.status` is the code
//! name (`OK`, `UNAVAILABLE`, ...).
//!
//! A call or attempt ends when its status is known: at once for an error
//! or a trailers-only answer, else when the response body's trailers are
//! read (the response body is wrapped for that). An answer whose body is
//! dropped unread ends `CANCELLED`, as does a call the caller abandons; an
//! attempt or call cut by its deadline ends `DEADLINE_EXCEEDED`.
//!
//! The instruments come from the global meter provider as it is when the
//! client or server is built: the runtime installs an SDK provider
//! exporting over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; without
//! one they are no-ops. The message-size histograms of gRFC A66 are not
//! recorded (counting them means reading every frame of every body twice).
//! The mesh's own counters ([`crate::stats`], served by the admin API) are
//! kept either way.

use crate::{Body, BoxError, Response, status};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use tokio::time::Instant;
use tonic::Code;

/// The instrumentation scope of every instrument here.
pub const SCOPE: &str = "shop-mesh";

/// Bucket boundaries (seconds) of the latency histograms: gRFC A66's.
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// Method names kept before new ones are recorded as `other`.
const MAX_METHODS: usize = 1024;

/// The instruments of one upstream's calls; see the module docs.
#[derive(Debug)]
pub struct ClientMetrics {
    target: KeyValue,
    methods: MethodNames,
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    call_duration: Histogram<f64>,
}

/// The instruments of the calls a server answers; see the module docs.
#[derive(Debug)]
pub struct ServerMetrics {
    methods: MethodNames,
    call_started: Counter<u64>,
    call_duration: Histogram<f64>,
}

/// `grpc.method` attributes by request path, made once per method.
#[derive(Debug)]
struct MethodNames {
    /// Whether a path names a method worth its own attribute.
    known: fn(&str) -> bool,
    names: RwLock<HashMap<Box<str>, KeyValue>>,
}

fn meter() -> Meter {
    opentelemetry::global::meter(SCOPE)
}

fn latency(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

/// The `grpc.status` attribute of `code`.
fn status_attribute(code: Code) -> KeyValue {
    let name = match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    };
    KeyValue::new("grpc.status", name)
}

/// The status of a call or attempt dropped unanswered: its time was up,
/// or whoever waited for it gave up.
pub(crate) fn abandoned(deadline: Option<Instant>) -> Code {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Code::DeadlineExceeded,
        _ => Code::Cancelled,
    }
}

/// Seconds since `start`.
fn seconds(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

// === impl MethodNames ===

impl MethodNames {
    fn new(known: fn(&str) -> bool) -> Self {
        Self {
            known,
            names: RwLock::default(),
        }
    }

    fn get(&self, path: &str) -> KeyValue {
        if let Some(name) = self.names.read().expect("not poisoned").get(path) {
            return name.clone();
        }
        let mut names = self.names.write().expect("not poisoned");
        if !(self.known)(path) || names.len() >= MAX_METHODS {
            return KeyValue::new("grpc.method", "other");
        }
        let full: Arc<str> = path.trim_start_matches('/').into();
        names
            .entry(path.into())
            .or_insert_with(|| KeyValue::new("grpc.method", opentelemetry::StringValue::from(full)))
            .clone()
    }
}

// === impl ClientMetrics ===

impl ClientMetrics {
    /// The instruments for calls to upstream `target`, from the global
    /// meter provider.
    pub fn new(target: &str) -> Self {
        let meter = meter();
        Self {
            target: KeyValue::new(
                "grpc.target",
                opentelemetry::StringValue::from(Arc::<str>::from(target)),
            ),
            methods: MethodNames::new(|_| true),
            attempt_started: meter
                .u64_counter("grpc.client.attempt.started")
                .with_unit("{attempt}")
                .with_description("Attempts started, retries and hedges included.")
                .build(),
            attempt_duration: latency(
                &meter,
                "grpc.client.attempt.duration",
                "Time from an attempt's start to its status.",
            ),
            call_duration: latency(
                &meter,
                "grpc.client.call.duration",
                "Time from a call's start to its status, every attempt and backoff included.",
            ),
        }
    }

    /// The `grpc.method` attribute for a request path.
    pub(crate) fn method(&self, path: &str) -> KeyValue {
        self.methods.get(path)
    }

    pub(crate) fn attempt_started(&self, method: &KeyValue) {
        self.attempt_started
            .add(1, &[method.clone(), self.target.clone()]);
    }

    /// An attempt that ended with `code`, not the call's answer.
    pub(crate) fn attempt_ended(&self, method: &KeyValue, code: Code, started: Instant) {
        self.attempt_duration.record(
            seconds(started),
            &[method.clone(), self.target.clone(), status_attribute(code)],
        );
    }

    /// A call that ended with `code` (no attempt of its own in flight).
    pub(crate) fn call_ended(&self, method: &KeyValue, code: Code, started: Instant) {
        self.call_duration.record(
            seconds(started),
            &[method.clone(), self.target.clone(), status_attribute(code)],
        );
    }

    /// The call's answer, from the attempt started at `attempt`: both end
    /// now if the status is known, else when the body's trailers are read.
    pub(crate) fn answer(
        self: &Arc<Self>,
        method: KeyValue,
        call: Instant,
        attempt: Instant,
        answer: Result<Response, BoxError>,
    ) -> Result<Response, BoxError> {
        let ending = Ending::Client {
            metrics: self.clone(),
            method,
            call,
            attempt,
            span: tracing::Span::current(),
        };
        ending.on(answer)
    }
}

// === impl ServerMetrics ===

impl ServerMetrics {
    /// The instruments for the calls this process answers, from the global
    /// meter provider. Methods none of the contracts define are `other`.
    pub fn new() -> Self {
        let meter = meter();
        Self {
            methods: MethodNames::new(|path| {
                crate::infrastructure::is_infrastructure(path)
                    || shop_proto::idempotency_level(path).is_some()
            }),
            call_started: meter
                .u64_counter("grpc.server.call.started")
                .with_unit("{call}")
                .with_description("Calls received, shed ones included.")
                .build(),
            call_duration: latency(
                &meter,
                "grpc.server.call.duration",
                "Time from a call's arrival to its status.",
            ),
        }
    }

    /// Counts a call to `path`, arrived now, due by `deadline` if the
    /// caller gave one.
    pub(crate) fn started(self: &Arc<Self>, path: &str, deadline: Option<Instant>) -> ServerCall {
        let method = self.methods.get(path);
        self.call_started.add(1, std::slice::from_ref(&method));
        ServerCall {
            metrics: self.clone(),
            method: Some(method),
            start: Instant::now(),
            deadline,
        }
    }

    fn ended(&self, method: &KeyValue, code: Code, start: Instant) {
        self.call_duration
            .record(seconds(start), &[method.clone(), status_attribute(code)]);
    }
}

/// A call a server is answering; if dropped unanswered (the caller reset
/// the stream), it ends `CANCELLED`, or `DEADLINE_EXCEEDED` if its
/// deadline had passed.
pub(crate) struct ServerCall {
    metrics: Arc<ServerMetrics>,
    /// `None` once the end is recorded or handed on to the answer.
    method: Option<KeyValue>,
    start: Instant,
    deadline: Option<Instant>,
}

impl ServerCall {
    /// The call's answer: it ends now if its status is known, else when
    /// its body's trailers have been sent.
    pub(crate) fn answer<E>(mut self, answer: Result<Response, E>) -> Result<Response, E> {
        let method = self.method.take().expect("answered once");
        let ending = Ending::Server {
            metrics: self.metrics.clone(),
            method,
            start: self.start,
            span: tracing::Span::current(),
        };
        match answer {
            Ok(response) => Ok(ending.on_response(response)),
            Err(error) => {
                ending.record(Code::Internal);
                Err(error)
            }
        }
    }
}

impl Drop for ServerCall {
    fn drop(&mut self) {
        if let Some(method) = self.method.take() {
            self.metrics
                .ended(&method, abandoned(self.deadline), self.start);
        }
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

// === the end of a call ===

/// What to record when a call's status is known: the metrics, and the
/// status code on the call's span (`rpc.grpc.status_code`, OpenTelemetry's
/// RPC conventions), the span current when the answer came.
enum Ending {
    Client {
        metrics: Arc<ClientMetrics>,
        method: KeyValue,
        call: Instant,
        attempt: Instant,
        span: tracing::Span,
    },
    Server {
        metrics: Arc<ServerMetrics>,
        method: KeyValue,
        start: Instant,
        span: tracing::Span,
    },
}

impl Ending {
    fn record(self, code: Code) {
        match self {
            Ending::Client {
                metrics,
                method,
                call,
                attempt,
                span,
            } => {
                metrics.attempt_ended(&method, code, attempt);
                metrics.call_ended(&method, code, call);
                crate::span::record_end(&span, code, false);
            }
            Ending::Server {
                metrics,
                method,
                start,
                span,
            } => {
                metrics.ended(&method, code, start);
                crate::span::record_end(&span, code, true);
            }
        }
    }

    fn on(self, answer: Result<Response, BoxError>) -> Result<Response, BoxError> {
        match answer {
            Ok(response) => Ok(self.on_response(response)),
            Err(error) => {
                // The retry layer's view of a failed connection.
                self.record(Code::Unavailable);
                Err(error)
            }
        }
    }

    fn on_response(self, response: Response) -> Response {
        if let Some(code) = status::header_code(&response) {
            self.record(code);
            return response;
        }
        if !response.status().is_success() {
            // Not a gRPC answer at all (a proxy's error page, say); tonic
            // reads the HTTP status as the code.
            self.record(Code::Unknown);
            return response;
        }
        response.map(|body| {
            Body::new(ObservedBody {
                inner: body,
                ending: Some(self),
            })
        })
    }
}

pin_project! {
    /// A response body that records its call's end when its trailers are
    /// read (or it fails, or is dropped unread).
    struct ObservedBody {
        #[pin]
        inner: Body,
        ending: Option<Ending>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(ending) = this.project().ending.take() {
                ending.record(Code::Cancelled);
            }
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
                trailers
                    .get(status::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Unknown, Code::from)
            }),
            Some(Err(error)) => Some(error.code()),
            // Ended without trailers: no status was sent.
            None => Some(Code::Unknown),
        };
        if let Some(code) = code
            && let Some(ending) = this.ending.take()
        {
            ending.record(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Not over until the end has been recorded.
        self.ending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
