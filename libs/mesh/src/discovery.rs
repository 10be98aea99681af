//! Where an upstream's endpoints are: a stream of
//! [`Change`]s, keyed by address (`http://ip:port`), that the balancer
//! ([`crate::balance`]) consumes as a
//! [`Discover`](tower::discover::Discover).
//!
//! Two sources:
//!
//! - [`static_list`]: the `endpoints` of the policy, inserted once.
//! - [`dns`]: a `host:port` name resolved now and then every `dns_refresh`;
//!   a headless Kubernetes Service answers with one address per ready pod.
//!   Each answer is diffed against the previous one: new addresses are
//!   inserted, vanished ones removed. The resolving runs in a task of its
//!   own, whether calls flow or not, so a client that was idle while its
//!   upstream's pods were replaced finds the new addresses waiting at its
//!   next call instead of trying the old ones first; the task ends when
//!   the discovery is dropped.
//!
//! Endpoint services are made by a caller-supplied factory from the address
//! (in production a [`Connection`](crate::connection::Connection), which
//! connects on first use and again after the peer went away).
//!
//! Removing an endpoint only drops the balancer's handle on it: a call in
//! flight owns its own response future (a stream on an HTTP/2 connection
//! whose task lives on), so it finishes normally.
//!
//! Neither source ever ends or fails: the balancer treats the end of its
//! discovery or an error from it as fatal, while a DNS failure is usually a
//! blip. A failed or empty resolution is logged and the previous endpoints
//! are kept (a dead endpoint among them is the outlier detector's business).

use futures::future::BoxFuture;
use futures::stream::Stream;
use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::discover::Change;

/// Makes the service of one endpoint from its address.
pub type Factory<S> = Arc<dyn Fn(&str) -> S + Send + Sync>;

/// Resolves a `host:port` name to socket addresses.
pub type Resolver =
    Box<dyn FnMut(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send>;

/// A boxed stream of endpoint changes.
type Changes<S> = Pin<Box<dyn Stream<Item = Result<Change<String, S>, Infallible>> + Send>>;

/// An upstream's endpoints as they come and go: a never-ending, infallible
/// stream of changes keyed by address, usable as a
/// [`Discover`](tower::discover::Discover).
pub struct Discovery<S> {
    inner: Changes<S>,
}

/// A static list of endpoints: see [`static_list`].
struct StaticList<S> {
    pending: VecDeque<Change<String, S>>,
}

/// Periodically resolved DNS name: see [`dns`].
struct Dns<S> {
    name: String,
    /// `http` or `https`, for the endpoints made of its addresses.
    scheme: &'static str,
    refresh: Duration,
    factory: Factory<S>,
    resolve: Resolver,
    state: DnsState,
    /// The addresses last inserted (and not removed since).
    current: BTreeSet<String>,
    /// Changes computed from the last answer, not yet yielded.
    queued: VecDeque<Change<String, S>>,
}

/// ```text
/// Resolving --answer--> Waiting --refresh elapsed--> Resolving
/// ```
/// (an answer first queues its changes, which are yielded before anything
/// else is polled).
enum DnsState {
    Resolving(BoxFuture<'static, io::Result<Vec<SocketAddr>>>),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

/// Endpoints of a fixed list of addresses, each made with `factory`;
/// duplicates are inserted once.
pub fn static_list<S, F>(addresses: impl IntoIterator<Item = String>, factory: F) -> Discovery<S>
where
    S: Send + 'static,
    F: Fn(&str) -> S,
{
    let mut seen = BTreeSet::new();
    let pending = addresses
        .into_iter()
        .filter(|a| seen.insert(a.clone()))
        .map(|a| {
            let svc = factory(&a);
            Change::Insert(a, svc)
        })
        .collect();
    Discovery::new(StaticList { pending })
}

/// Endpoints of DNS name `name` (`host:port`), resolved with
/// [`tokio::net::lookup_host`] now and then every `refresh`; each address
/// becomes an endpoint `<scheme>://ip:port`.
pub fn dns<S>(
    name: &str,
    scheme: &'static str,
    refresh: Duration,
    factory: Factory<S>,
) -> Discovery<S>
where
    S: Send + 'static,
{
    dns_with_resolver(
        name,
        scheme,
        refresh,
        factory,
        Box::new(|name: String| {
            Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
        }),
    )
}

/// As [`dns`], with the resolution done by `resolve` (so tests can script
/// the answers).
pub fn dns_with_resolver<S>(
    name: &str,
    scheme: &'static str,
    refresh: Duration,
    factory: Factory<S>,
    mut resolve: Resolver,
) -> Discovery<S>
where
    S: Send + 'static,
{
    let first = resolve(name.to_string());
    Discovery::driven(Dns {
        name: name.to_string(),
        scheme,
        refresh,
        factory,
        resolve,
        state: DnsState::Resolving(first),
        current: BTreeSet::new(),
        queued: VecDeque::new(),
    })
}

/// The endpoints a policy names: its `dns` name if it has one (its
/// addresses made `<scheme>://` endpoints), otherwise its static
/// `endpoints`.
pub fn from_policy<S>(
    policy: &crate::policy::UpstreamPolicy,
    scheme: &'static str,
    factory: Factory<S>,
) -> Discovery<S>
where
    S: Send + 'static,
{
    match &policy.dns {
        Some(name) => dns(name, scheme, policy.dns_refresh, factory),
        None => static_list(policy.endpoints.iter().cloned(), |a: &str| factory(a)),
    }
}

/// The endpoint address of a resolved socket address: `<scheme>://ip:port`,
/// IPv6 in brackets (without a zone, which a URI cannot carry).
pub fn address_of(scheme: &str, addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{scheme}://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("{scheme}://[{}]:{}", a.ip(), a.port()),
    }
}

// === impl Discovery ===

impl<S> Discovery<S> {
    fn new(
        stream: impl Stream<Item = Result<Change<String, S>, Infallible>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl<S: Send + 'static> Discovery<S> {
    /// `stream`, polled by a task of its own (when there is a tokio
    /// runtime) and its changes queued for whoever polls the discovery.
    fn driven(
        stream: impl Stream<Item = Result<Change<String, S>, Infallible>> + Send + 'static,
    ) -> Self {
        if tokio::runtime::Handle::try_current().is_err() {
            return Self::new(stream);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    change = futures::StreamExt::next(&mut stream) => {
                        let Some(change) = change else { return };
                        if tx.send(change).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

impl<S> Stream for Discovery<S> {
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<S> fmt::Debug for Discovery<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

// === impl StaticList ===

impl<S> Stream for StaticList<S> {
    type Item = Result<Change<String, S>, Infallible>;

    /// The inserts, then nothing ever again (pending, not ended: the end of
    /// discovery would be the end of the balancer).
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.pending.pop_front() {
            Some(change) => Poll::Ready(Some(Ok(change))),
            None => Poll::Pending,
        }
    }
}

// Neither holds anything pinned: the services in their queues are only
// moved around, never polled.
impl<S> Unpin for StaticList<S> {}
impl<S> Unpin for Dns<S> {}

// === impl Dns ===

impl<S> Dns<S> {
    /// Queues the changes from the previous answer to `addrs`.
    fn apply(&mut self, addrs: Vec<SocketAddr>) {
        let next: BTreeSet<String> = addrs
            .into_iter()
            .map(|a| address_of(self.scheme, a))
            .collect();
        if next.is_empty() {
            tracing::warn!(name = %self.name, "DNS answer without addresses; keeping the endpoints we have");
            return;
        }
        for gone in self.current.difference(&next) {
            tracing::info!(name = %self.name, endpoint = %gone, "endpoint removed");
            self.queued.push_back(Change::Remove(gone.clone()));
        }
        for new in next.difference(&self.current) {
            tracing::info!(name = %self.name, endpoint = %new, "endpoint added");
            self.queued
                .push_back(Change::Insert(new.clone(), (self.factory)(new)));
        }
        self.current = next;
    }
}

impl<S> Stream for Dns<S> {
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.queued.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match &mut self.state {
                DnsState::Resolving(answer) => {
                    let answer = std::task::ready!(answer.as_mut().poll(cx));
                    match answer {
                        Ok(addrs) => self.apply(addrs),
                        Err(error) => {
                            tracing::warn!(name = %self.name, %error, "DNS resolution failed; keeping the endpoints we have")
                        }
                    }
                    self.state = DnsState::Waiting(Box::pin(tokio::time::sleep(self.refresh)));
                }
                DnsState::Waiting(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    let name = self.name.clone();
                    let next = (self.resolve)(name);
                    self.state = DnsState::Resolving(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    fn names() -> Factory<String> {
        Arc::new(|a: &str| format!("svc {a}"))
    }

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
    }

    /// A resolver answering from a script, one answer per resolution; the
    /// last answer repeats.
    fn scripted(answers: Vec<io::Result<Vec<SocketAddr>>>) -> (Resolver, Arc<Mutex<usize>>) {
        let calls = Arc::new(Mutex::new(0));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let seen = calls.clone();
        let resolver: Resolver = Box::new(move |_name| {
            *seen.lock().unwrap() += 1;
            let mut answers = answers.lock().unwrap();
            let answer = if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                match answers.front().unwrap() {
                    Ok(a) => Ok(a.clone()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                }
            };
            Box::pin(async move { answer })
        });
        (resolver, calls)
    }

    fn describe(change: Change<String, String>) -> String {
        match change {
            Change::Insert(k, v) => {
                assert_eq!(
                    v,
                    format!("svc {k}"),
                    "the service is made from its address"
                );
                format!("+{k}")
            }
            Change::Remove(k) => format!("-{k}"),
        }
    }

    async fn next(d: &mut Discovery<String>) -> String {
        describe(d.next().await.unwrap().unwrap())
    }

    /// Moves time on by `d` and lets the resolving task run.
    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Whether the stream has nothing to say right now.
    fn quiet(d: &mut Discovery<String>) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        d.poll_next_unpin(&mut cx).is_pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_static_list_inserts_each_endpoint_once_and_never_ends() {
        let mut d = static_list(
            ["http://a:1", "http://b:2", "http://a:1"].map(String::from),
            |a: &str| format!("svc {a}"),
        );
        assert_eq!(next(&mut d).await, "+http://a:1");
        assert_eq!(next(&mut d).await, "+http://b:2");
        assert!(quiet(&mut d));
    }

    #[tokio::test(start_paused = true)]
    async fn dns_answers_are_diffed_into_inserts_and_removes() {
        let (resolver, calls) = scripted(vec![
            Ok(vec![v4(1, 7000), v4(2, 7000)]),
            Ok(vec![v4(2, 7000), v4(3, 7000)]),
        ]);
        let refresh = Duration::from_secs(5);
        let mut d = dns_with_resolver("catalog:7000", "http", refresh, names(), resolver);

        assert_eq!(next(&mut d).await, "+http://10.0.0.1:7000");
        assert_eq!(next(&mut d).await, "+http://10.0.0.2:7000");
        assert!(quiet(&mut d), "nothing until the refresh");
        assert_eq!(*calls.lock().unwrap(), 1);

        advance(refresh).await;
        assert_eq!(next(&mut d).await, "-http://10.0.0.1:7000");
        assert_eq!(next(&mut d).await, "+http://10.0.0.3:7000");
        assert_eq!(*calls.lock().unwrap(), 2);

        advance(refresh).await;
        assert!(quiet(&mut d), "the same answer changes nothing");
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_or_empty_resolutions_keep_the_endpoints() {
        let (resolver, calls) = scripted(vec![
            Ok(vec![v4(1, 7000)]),
            Err(io::Error::other("SERVFAIL")),
            Ok(vec![]),
            Ok(vec![v4(4, 7000)]),
        ]);
        let refresh = Duration::from_secs(1);
        let mut d = dns_with_resolver("catalog:7000", "http", refresh, names(), resolver);
        assert_eq!(next(&mut d).await, "+http://10.0.0.1:7000");
        for _ in 0..2 {
            advance(refresh).await;
            assert!(quiet(&mut d));
        }
        assert_eq!(*calls.lock().unwrap(), 3);
        advance(refresh).await;
        assert_eq!(next(&mut d).await, "-http://10.0.0.1:7000");
        assert_eq!(next(&mut d).await, "+http://10.0.0.4:7000");
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_while_nobody_asks() {
        let (resolver, calls) = scripted(vec![Ok(vec![v4(1, 7000)]), Ok(vec![v4(2, 7000)])]);
        let refresh = Duration::from_secs(5);
        let mut d = dns_with_resolver("catalog:7000", "http", refresh, names(), resolver);
        assert_eq!(next(&mut d).await, "+http://10.0.0.1:7000");
        // Idle: nothing polls the discovery for three refreshes.
        for _ in 0..3 {
            advance(refresh).await;
        }
        assert_eq!(*calls.lock().unwrap(), 4);
        // The next poll finds the changes already made.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut ready = Vec::new();
        while let Poll::Ready(Some(Ok(change))) = d.poll_next_unpin(&mut cx) {
            ready.push(describe(change));
        }
        assert_eq!(ready, ["-http://10.0.0.1:7000", "+http://10.0.0.2:7000"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_resolving_task_ends_with_the_discovery() {
        let (resolver, calls) = scripted(vec![Ok(vec![v4(1, 7000)])]);
        let refresh = Duration::from_secs(1);
        let mut d = dns_with_resolver("catalog:7000", "http", refresh, names(), resolver);
        assert_eq!(next(&mut d).await, "+http://10.0.0.1:7000");
        drop(d);
        for _ in 0..3 {
            advance(refresh).await;
        }
        assert!(*calls.lock().unwrap() <= 2, "stopped resolving");
    }

    #[test]
    fn addresses_bracket_ipv6() {
        assert_eq!(address_of("http", v4(9, 80)), "http://10.0.0.9:80");
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7000);
        assert_eq!(address_of("http", v6), "http://[::1]:7000");
        assert!(address_of("http", v6).parse::<http::Uri>().is_ok());
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let mut d = dns("localhost:7777", "http", Duration::from_secs(60), names());
        let first = next(&mut d).await;
        assert!(
            first == "+http://127.0.0.1:7777" || first == "+http://[::1]:7777",
            "{first}"
        );
    }
}
