//! Hedging: attempts in parallel, `hedge.delay` apart.

use super::attempts::{Answered, Attempts, Verdict, pushback};
use crate::policy::HedgePolicy;
use crate::stats::incr;
use crate::status::Pushback;
use crate::{BoxError, Request, Response};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tower::Service;

impl<S> Attempts<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    /// Hedging: attempts in parallel, `hedge.delay` apart, first good
    /// answer wins.
    ///
    /// States: `in_flight` attempts are running; the next one goes out at
    /// `next` unless `closed` (all sent, pushback said never, budget spent
    /// or deadline reached). The call ends with the first final answer, or
    /// with the last retryable failure once nothing is in flight and
    /// nothing more will be sent.
    pub(super) async fn hedged(&mut self, hedge: HedgePolicy) -> Answered {
        let most = 1 + hedge.max_hedges;
        let mut in_flight = FuturesUnordered::new();
        in_flight.push(self.send());
        let mut sent = 1;
        let mut next = Instant::now() + hedge.delay;
        let mut closed = sent >= most;
        let mut last = None;
        loop {
            tokio::select! {
                Some((outcome, started)) = in_flight.next() => {
                    match self.judge(outcome) {
                        Verdict::Final(answer) => return (answer, started),
                        Verdict::Retryable(answer) => {
                            match pushback(&answer) {
                                Some(Pushback::Never) => closed = true,
                                Some(Pushback::After(delay)) => next = Instant::now() + delay,
                                // Shortcut the hedge delay: this one failed.
                                None => next = Instant::now(),
                            }
                            if self.deadline.is_some_and(|d| next >= d) {
                                closed = true;
                            }
                            if let Some(earlier) = last.replace((answer, started)) {
                                self.superseded(earlier);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next), if !closed => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        closed = true;
                    } else if !self.tokens.withdraw() {
                        incr(&self.shared.stats.counters.budget_exhausted);
                        closed = true;
                    } else {
                        incr(&self.shared.stats.counters.hedges);
                        in_flight.push(self.send());
                        sent += 1;
                        next = Instant::now() + hedge.delay;
                        closed = sent >= most;
                    }
                }
                else => {
                    return last.expect("an attempt ended before the call gave up");
                }
            }
            if in_flight.is_empty() && closed {
                return last.expect("an attempt ended before the call gave up");
            }
        }
    }
}
