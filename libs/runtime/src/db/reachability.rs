//! Whether the service's database answered its last probe, known to every
//! call the service serves.
//!
//! A pool that times out means one of two things: every connection is busy
//! (the service is overloaded; a retry after a pause will be served) or
//! the database does not answer (it is unavailable). Only the probe, on
//! its own connection, can tell them apart. The server runs each call
//! inside [`ReachabilityLayer`]'s scope, so the error mapping
//! ([`crate::error`]) reads the answer without the pool being passed down
//! every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

tokio::task_local! {
    static CURRENT: Reachability;
}

/// The last probe's answer, shared by the probe and every call.
#[derive(Clone, Debug)]
pub struct Reachability(Arc<AtomicBool>);

impl Default for Reachability {
    /// Reachable until a probe says otherwise: start-up has just connected.
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Reachability {
    /// Records a probe's answer.
    pub fn set(&self, reachable: bool) {
        self.0.store(reachable, Ordering::Relaxed);
    }

    /// What the last probe found.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether the database of the service serving the current call answered
/// its last probe; `None` outside a served call (a consumer, a test).
pub fn current() -> Option<bool> {
    CURRENT.try_with(Reachability::get).ok()
}

/// Runs every call inside the scope of one [`Reachability`].
#[derive(Clone, Debug)]
pub struct ReachabilityLayer(pub Reachability);

impl<S> tower::Layer<S> for ReachabilityLayer {
    type Service = Scoped<S>;
    fn layer(&self, inner: S) -> Scoped<S> {
        Scoped {
            inner,
            reachability: self.0.clone(),
        }
    }
}

/// A service whose calls run inside a [`Reachability`] scope.
#[derive(Clone, Debug)]
pub struct Scoped<S> {
    inner: S,
    reachability: Reachability,
}

impl<S, R> tower::Service<R> for Scoped<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<Reachability, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = CURRENT.sync_scope(self.reachability.clone(), || self.inner.call(request));
        CURRENT.scope(self.reachability.clone(), call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    #[tokio::test]
    async fn a_call_reads_the_last_probe_of_its_own_service() {
        let reachability = Reachability::default();
        let service = ReachabilityLayer(reachability.clone())
            .layer(tower::service_fn(|()| async { Ok::<_, ()>(current()) }));
        assert_eq!(service.clone().oneshot(()).await, Ok(Some(true)));
        reachability.set(false);
        assert_eq!(service.oneshot(()).await, Ok(Some(false)));
        assert_eq!(current(), None, "outside a call");
    }
}
