//! Counters of one consumer since start, for `EventsAdminService`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What one consumer did since the process started.
#[derive(Debug, Default)]
pub(crate) struct ConsumerStats {
    in_flight: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    failed_attempts: AtomicU64,
    redeliveries: AtomicU64,
    dead_lettered: AtomicU64,
    compensations_dead_lettered: AtomicU64,
    dead_letter_write_failures: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) in_flight: u64,
    pub(crate) applied: u64,
    pub(crate) duplicates: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) redeliveries: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) compensations_dead_lettered: u64,
    pub(crate) dead_letter_write_failures: u64,
}

impl ConsumerStats {
    pub(crate) fn entered(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }
    pub(crate) fn left(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
    pub(crate) fn applied(&self) {
        self.applied.fetch_add(1, Relaxed);
    }
    pub(crate) fn duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
    }
    pub(crate) fn failed_attempt(&self) {
        self.failed_attempts.fetch_add(1, Relaxed);
    }
    pub(crate) fn redelivery(&self) {
        self.redeliveries.fetch_add(1, Relaxed);
    }
    pub(crate) fn dead_lettered(&self, compensation: bool) {
        self.dead_lettered.fetch_add(1, Relaxed);
        if compensation {
            self.compensations_dead_lettered.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn dead_letter_write_failed(&self) {
        self.dead_letter_write_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            in_flight: self.in_flight.load(Relaxed),
            applied: self.applied.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            failed_attempts: self.failed_attempts.load(Relaxed),
            redeliveries: self.redeliveries.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            compensations_dead_lettered: self.compensations_dead_lettered.load(Relaxed),
            dead_letter_write_failures: self.dead_letter_write_failures.load(Relaxed),
        }
    }
}
