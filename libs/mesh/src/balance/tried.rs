//! [`Tried`]: where a call's attempts went, so that its retries and hedges
//! go elsewhere (Envoy's `previous_hosts` retry predicate).

use std::sync::{Arc, Mutex};

/// The endpoints the attempts of one call were sent to.
///
/// The retry layer puts one `Tried` in the extensions of every attempt of a
/// call it may repeat; the balancer adds the endpoint it picks for each, and
/// picks one not in it while any such endpoint is ready. With every ready
/// endpoint tried, it picks among them as it would without: a retry is
/// never held back for want of a fresh endpoint.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<Arc<str>>>>);

impl Tried {
    /// The addresses tried so far, in the order they were picked.
    pub fn addresses(&self) -> Vec<Arc<str>> {
        self.0.lock().expect("not poisoned").clone()
    }

    /// Records that an attempt was sent to `address`.
    pub(super) fn add(&self, address: Arc<str>) {
        self.0.lock().expect("not poisoned").push(address);
    }

    /// The indices into `endpoints` of those already tried.
    pub(super) fn among<T>(&self, endpoints: &[(Arc<str>, T)]) -> Vec<usize> {
        let tried = self.0.lock().expect("not poisoned");
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, (address, _))| tried.contains(address))
            .map(|(i, _)| i)
            .collect()
    }
}
