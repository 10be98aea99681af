//! Traffic split: weighted subsets of an upstream's endpoints (v1/v2, a
//! canary), as Istio's VirtualService route weights.
//!
//! [`Split`] holds one service per subset (in the client stack, a
//! [`Balancer`] over the subset's endpoints) and sends each request (each
//! attempt: the retry layer sits above) to subset `i` with probability
//! `weight_i / sum of weights`. The choice is made in `poll_ready` and
//! kept until the `call` it readies, so the subset polled ready is the one
//! called.
//!
//! The random source is shared by all clones of a [`Split`] (behind a
//! mutex): a per-clone generator cloned from one seed would make every
//! fresh clone (tonic clients are cloned per call) draw the same number and
//! send everything to the same subset.
//!
//! Weights of zero are allowed (that subset gets nothing); if every weight
//! is zero the subsets share the traffic equally. Subsets name static
//! endpoints; an upstream found through DNS has no subsets.
//!
//! # Policy changes
//!
//! Weights follow the policy as it changes (shifting a canary from 1% to
//! 50% to 100% is a config edit): the next draw after a change uses the
//! new weights, by subset name. The subsets themselves (their names and
//! endpoints) are those of the policy at construction: a subset the new
//! policy no longer names gets weight 0, and a subset it adds is logged and
//! ignored until the client is built again.

use crate::balance::Balancer;
use crate::discovery::{self, Factory};
use crate::policy::UpstreamPolicy;
use crate::stats::UpstreamStats;
use crate::{BoxError, Request, Response};
use rand::{Rng, RngCore, SeedableRng};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::watch;
use tower::Service;

/// Sends each request to one of several subsets, chosen by weight.
pub struct Split<S> {
    /// The first subset, and the others: a split is cloned for every
    /// retried call, and the usual single subset then costs no allocation.
    first: S,
    others: Vec<S>,
    names: Arc<[String]>,
    /// Draws subsets; shared by every clone.
    picker: Arc<Mutex<Picker>>,
    /// The subset chosen by `poll_ready`, for the next `call`.
    chosen: Option<usize>,
}

/// The weights and the random source of a [`Split`].
struct Picker {
    /// Running sums of the weights; the last is the total.
    cumulative: Vec<u64>,
    rng: Box<dyn RngCore + Send>,
    /// Where new weights come from, if anywhere.
    policy: Option<watch::Receiver<Arc<UpstreamPolicy>>>,
}

// === impl Split ===

impl<E> Split<Balancer<E>>
where
    E: Service<Request, Response = Response> + Send + 'static,
    E::Error: Into<BoxError> + fmt::Display,
    E::Future: Send + 'static,
{
    /// The split a policy describes: one [`Balancer`] per subset of
    /// `policy.subsets` over its endpoints, or, without subsets, one
    /// balancer over all the upstream's endpoints (static, or DNS made
    /// `<scheme>://` endpoints). Endpoint
    /// services are made by `factory`; `watch` and `stats` are handed to
    /// the balancers. Draws from an OS-seeded generator.
    ///
    pub fn new(
        policy: &UpstreamPolicy,
        scheme: &'static str,
        factory: Factory<E>,
        watch: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        Self::with_rng(
            policy,
            scheme,
            factory,
            watch,
            stats,
            rand::rngs::StdRng::from_os_rng(),
        )
    }

    /// [`Split::new`], drawing from `rng`.
    pub fn with_rng(
        policy: &UpstreamPolicy,
        scheme: &'static str,
        factory: Factory<E>,
        watch: watch::Receiver<Arc<UpstreamPolicy>>,
        stats: Arc<UpstreamStats>,
        rng: impl RngCore + Send + 'static,
    ) -> Self {
        let mut weights = watch.clone();
        weights.mark_unchanged();
        let subsets = if policy.subsets.is_empty() {
            let all = discovery::from_policy(policy, scheme, factory);
            vec![("all".to_string(), 1, Balancer::new(all, watch, stats))]
        } else {
            policy
                .subsets
                .iter()
                .map(|subset| {
                    let f = factory.clone();
                    let endpoints =
                        discovery::static_list(subset.endpoints.iter().cloned(), move |a: &str| {
                            f(a)
                        });
                    let balancer = Balancer::new(endpoints, watch.clone(), stats.clone());
                    (subset.name.clone(), subset.weight, balancer)
                })
                .collect()
        };
        let split = Self::from_subsets(subsets, rng);
        if !policy.subsets.is_empty() {
            split.picker.lock().expect("not poisoned").policy = Some(weights);
        }
        split
    }
}

impl<S> Split<S> {
    /// A split between `(name, weight, service)` subsets, drawing from
    /// `rng`.
    ///
    /// # Panics
    ///
    /// If `subsets` is empty.
    pub fn from_subsets(
        subsets: Vec<(String, u32, S)>,
        rng: impl RngCore + Send + 'static,
    ) -> Self {
        assert!(!subsets.is_empty(), "a split needs at least one subset");
        let mut total = 0u64;
        let mut names = Vec::with_capacity(subsets.len());
        let mut cumulative = Vec::with_capacity(subsets.len());
        let mut services = Vec::with_capacity(subsets.len() - 1);
        let mut first = None;
        for (name, weight, svc) in subsets {
            total += u64::from(weight);
            names.push(name);
            cumulative.push(total);
            if first.is_none() {
                first = Some(svc);
            } else {
                services.push(svc);
            }
        }
        Self {
            first: first.expect("at least one subset"),
            others: services,
            names: names.into(),
            picker: Arc::new(Mutex::new(Picker {
                cumulative,
                rng: Box::new(rng),
                policy: None,
            })),
            chosen: None,
        }
    }

    /// Subset `i`.
    fn subset(&mut self, i: usize) -> &mut S {
        match i {
            0 => &mut self.first,
            _ => &mut self.others[i - 1],
        }
    }

    /// The subsets' names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Draws a subset: by weight, or uniformly if every weight is zero.
    fn pick(&self) -> usize {
        let n = 1 + self.others.len();
        if n == 1 {
            return 0;
        }
        let mut picker = self.picker.lock().expect("not poisoned");
        picker.follow_policy(&self.names);
        let total = *picker.cumulative.last().expect("not empty");
        if total == 0 {
            return picker.rng.random_range(0..n);
        }
        let r = picker.rng.random_range(0..total);
        picker.cumulative.partition_point(|&c| c <= r)
    }

    /// The current weights, by subset, in order.
    pub fn weights(&self) -> Vec<u64> {
        let mut picker = self.picker.lock().expect("not poisoned");
        picker.follow_policy(&self.names);
        let mut previous = 0;
        picker
            .cumulative
            .iter()
            .map(|&c| {
                let w = c - previous;
                previous = c;
                w
            })
            .collect()
    }
}

// === impl Picker ===

impl Picker {
    /// Takes the weights of a changed policy, by subset name.
    fn follow_policy(&mut self, names: &[String]) {
        let Some(watch) = self.policy.as_mut() else {
            return;
        };
        if !watch.has_changed().unwrap_or(false) {
            return;
        }
        let policy = watch.borrow_and_update().clone();
        for added in policy.subsets.iter().filter(|s| !names.contains(&s.name)) {
            tracing::warn!(
                subset = %added.name,
                "a subset added to a running client is ignored until it is built again"
            );
        }
        let mut total = 0u64;
        for (sum, name) in self.cumulative.iter_mut().zip(names) {
            let weight = policy
                .subsets
                .iter()
                .find(|s| s.name == *name)
                .map_or(0, |s| s.weight);
            total += u64::from(weight);
            *sum = total;
        }
    }
}

impl<S: Clone> Clone for Split<S> {
    /// Shares the weights and the random source; not ready (the clone has
    /// chosen nothing yet).
    fn clone(&self) -> Self {
        Self {
            first: self.first.clone(),
            others: self.others.clone(),
            names: self.names.clone(),
            picker: self.picker.clone(),
            chosen: None,
        }
    }
}

impl<S, Req> Service<Req> for Split<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let i = match self.chosen {
            Some(i) => i,
            None => *self.chosen.insert(self.pick()),
        };
        self.subset(i).poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let i = self.chosen.take().expect("poll_ready must be called first");
        self.subset(i).call(request)
    }
}

impl<S> fmt::Debug for Split<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("subsets", &self.names)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlier::tests::policy;
    use crate::policy::Subset;
    use rand::rngs::StdRng;
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A subset that answers its own index.
    fn subset(i: usize) -> impl Service<(), Response = usize, Error = Infallible> + Clone {
        tower::service_fn(move |()| async move { Ok::<_, Infallible>(i) })
    }

    /// Shares of `calls` calls per subset, in percent, each call through a
    /// fresh clone (as tonic clients are used).
    async fn shares(weights: &[u32], calls: usize, seed: u64) -> Vec<f64> {
        let subsets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("s{i}"), *w, subset(i)))
            .collect();
        let split = Split::from_subsets(subsets, StdRng::seed_from_u64(seed));
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..calls {
            counts[split.clone().oneshot(()).await.unwrap()] += 1;
        }
        counts
            .iter()
            .map(|&c| 100.0 * c as f64 / calls as f64)
            .collect()
    }

    fn assert_within_two_points(shares: &[f64], weights: &[u32]) {
        let total: u32 = weights.iter().sum();
        for (share, w) in shares.iter().zip(weights) {
            let expected = 100.0 * f64::from(*w) / f64::from(total);
            assert!(
                (share - expected).abs() <= 2.0,
                "{shares:?} for weights {weights:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_90_10_split_holds_its_weights_within_two_points() {
        for seed in [1, 2, 3] {
            let s = shares(&[90, 10], 10_000, seed).await;
            assert_within_two_points(&s, &[90, 10]);
        }
    }

    #[tokio::test]
    async fn a_50_30_20_split_holds_its_weights_within_two_points() {
        for seed in [1, 2, 3] {
            let s = shares(&[50, 30, 20], 10_000, seed).await;
            assert_within_two_points(&s, &[50, 30, 20]);
        }
    }

    #[tokio::test]
    async fn a_zero_weight_subset_gets_nothing_and_all_zero_is_even() {
        let s = shares(&[0, 1], 1_000, 7).await;
        assert_eq!(s, [0.0, 100.0]);
        let s = shares(&[0, 0], 10_000, 7).await;
        assert_within_two_points(&s, &[1, 1]);
    }

    /// A policy over three endpoints, and a factory of endpoints that name
    /// themselves in an `endpoint` header.
    fn three_endpoints(
        subsets: Vec<Subset>,
    ) -> (
        UpstreamPolicy,
        Factory<
            impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Send + use<>,
        >,
    ) {
        let mut p = policy();
        p.endpoints = ["http://a:1", "http://b:1", "http://c:1"]
            .map(String::from)
            .to_vec();
        p.subsets = subsets;
        let factory: Factory<_> = Arc::new(|address: &str| {
            let address = address.to_string();
            tower::service_fn(move |_: Request| {
                let mut rsp = Response::new(crate::Body::empty());
                rsp.headers_mut()
                    .insert("endpoint", address.parse().unwrap());
                async move { Ok::<_, Infallible>(rsp) }
            })
        });
        (p, factory)
    }

    async fn tally<S>(split: &Split<S>, calls: usize) -> BTreeMap<String, usize>
    where
        S: Service<Request, Response = Response, Error = BoxError> + Clone,
    {
        let mut seen = BTreeMap::new();
        for _ in 0..calls {
            let rsp = split
                .clone()
                .oneshot(http::Request::new(crate::Body::empty()))
                .await
                .unwrap();
            let who = rsp.headers()["endpoint"].to_str().unwrap().to_string();
            *seen.entry(who).or_default() += 1;
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn subsets_of_a_policy_route_to_their_own_endpoints_by_weight() {
        let (p, factory) = three_endpoints(vec![
            Subset {
                name: "v1".into(),
                weight: 75,
                endpoints: vec!["http://a:1".into(), "http://b:1".into()],
            },
            Subset {
                name: "v2".into(),
                weight: 25,
                endpoints: vec!["http://c:1".into()],
            },
        ]);
        let stats = crate::stats::MeshStats::default().upstream("catalog");
        let watch = watch::channel(Arc::new(p.clone())).1;
        let split = Split::with_rng(&p, "http", factory, watch, stats, StdRng::seed_from_u64(5));
        assert_eq!(split.names(), ["v1", "v2"]);

        let seen = tally(&split, 4_000).await;
        let v2 = 100.0 * seen["http://c:1"] as f64 / 4_000.0;
        assert!((v2 - 25.0).abs() <= 2.0, "{seen:?}");
        assert!(seen["http://a:1"] > 0 && seen["http://b:1"] > 0, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn weights_follow_the_policy_as_it_changes() {
        let v1 = |weight| Subset {
            name: "v1".into(),
            weight,
            endpoints: vec!["http://a:1".into(), "http://b:1".into()],
        };
        let v2 = |weight| Subset {
            name: "v2".into(),
            weight,
            endpoints: vec!["http://c:1".into()],
        };
        let (p, factory) = three_endpoints(vec![v1(99), v2(1)]);
        let stats = crate::stats::MeshStats::default().upstream("catalog");
        let (tx, watch) = watch::channel(Arc::new(p.clone()));
        let split = Split::with_rng(&p, "http", factory, watch, stats, StdRng::seed_from_u64(9));
        assert_eq!(split.weights(), [99, 1]);

        // The canary goes to half the traffic, then takes all of it.
        let mut changed = p.clone();
        changed.subsets = vec![v1(50), v2(50)];
        tx.send(Arc::new(changed.clone())).unwrap();
        let seen = tally(&split, 4_000).await;
        let v2_share = 100.0 * seen["http://c:1"] as f64 / 4_000.0;
        assert!((v2_share - 50.0).abs() <= 2.0, "{seen:?}");

        changed.subsets = vec![v1(0), v2(100)];
        tx.send(Arc::new(changed.clone())).unwrap();
        let seen = tally(&split, 500).await;
        assert_eq!(seen.get("http://c:1"), Some(&500), "{seen:?}");

        // A subset the policy no longer names gets nothing; one it adds is
        // ignored by this client.
        changed.subsets = vec![
            v2(10),
            Subset {
                name: "v3".into(),
                weight: 90,
                endpoints: vec!["http://a:1".into()],
            },
        ];
        tx.send(Arc::new(changed)).unwrap();
        assert_eq!(split.weights(), [0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_subsets_one_balancer_covers_every_endpoint() {
        let (p, factory) = three_endpoints(vec![]);
        let stats = crate::stats::MeshStats::default().upstream("catalog");
        let watch = watch::channel(Arc::new(p.clone())).1;
        let split = Split::new(&p, "http", factory, watch, stats.clone());
        assert_eq!(split.names(), ["all"]);
        let seen = tally(&split, 300).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(stats.endpoints().len(), 3);
    }

    #[test]
    fn a_split_of_balancers_can_be_shared_between_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Split<Balancer<tonic::transport::Channel>>>();
    }
}
