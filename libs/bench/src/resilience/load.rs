//! Open-loop load: calls started at a fixed rate whatever happens to the
//! ones before them (a closed loop would slow down with the servers and
//! hide the failure), half reads and half writes, each with its deadline.

use super::paths::{Callers, Outcome};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// One call: when it started (since the run's start), how long it took,
/// how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Start, since the run's start.
    pub at: Duration,
    /// Time to its answer (or to its deadline).
    pub latency: Duration,
    /// OK, or the code the caller saw.
    pub outcome: Outcome,
}

/// Calls in flight beyond which new ones are counted as refused by the
/// generator itself (RESOURCE_EXHAUSTED) instead of started: memory stays
/// bounded when a path stops answering.
const MAX_IN_FLIGHT: usize = 20_000;

/// Sends `rate` calls a second through `callers` for `duration`, each with
/// `deadline`, and returns every call's record once the last has ended.
pub async fn open_loop(
    callers: &Callers,
    rate: f64,
    duration: Duration,
    deadline: Duration,
) -> Vec<Record> {
    let records = Arc::new(Mutex::new(Vec::with_capacity(
        (rate * duration.as_secs_f64()) as usize + 16,
    )));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        n += 1;
        let at = start.elapsed();
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_IN_FLIGHT {
            records.lock().expect("not poisoned").push(Record {
                at,
                latency: Duration::ZERO,
                outcome: Err(tonic::Code::ResourceExhausted),
            });
            continue;
        }
        let (callers, records, in_flight) = (callers.clone(), records.clone(), in_flight.clone());
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let write = n.is_multiple_of(2);
        let key = (n % 100) as u32;
        tasks.spawn(async move {
            let began = Instant::now();
            let outcome = callers.call(write, key, deadline).await;
            records.lock().expect("not poisoned").push(Record {
                at,
                latency: began.elapsed(),
                outcome,
            });
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        // Reap finished tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut records = std::mem::take(&mut *records.lock().expect("not poisoned"));
    records.sort_by_key(|r| r.at);
    records
}

/// A closed loop of `concurrency` callers for `duration`: the calls per
/// second a path carries when every caller waits for its answer (the
/// capacity the overload scenario doubles).
pub async fn capacity(callers: &Callers, concurrency: usize, duration: Duration) -> f64 {
    let until = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let callers = callers.clone();
        tasks.spawn(async move {
            let mut ok = 0u64;
            let mut n = c as u64;
            while Instant::now() < until {
                n += 1;
                if callers
                    .call(
                        n.is_multiple_of(2),
                        (n % 100) as u32,
                        Duration::from_secs(1),
                    )
                    .await
                    .is_ok()
                {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = tasks.join_next().await {
        ok += n.unwrap_or(0);
    }
    ok as f64 / duration.as_secs_f64()
}
