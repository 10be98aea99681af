//! `[events]`: how a service talks to JetStream.

use serde::Deserialize;
use std::time::Duration;

/// `[events]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// `nats://host:port`; `NATS_URL` sets it too.
    pub nats_url: String,
    /// The service's NATS user (one per service, with its own subject
    /// permissions); none for a server without authorization.
    #[serde(default)]
    pub nats_user: Option<String>,
    /// That user's password; never logged.
    #[serde(default)]
    pub nats_password: Option<secrecy::SecretString>,
    /// An identity directory (`tls.crt`, `tls.key`, `ca.crt`, as for
    /// `server.tls`): NATS over TLS, the server verified against `ca.crt`
    /// and the service presenting its certificate. Without it, plaintext
    /// (a development server).
    #[serde(default)]
    pub tls_dir: Option<std::path::PathBuf>,
    /// How long start-up keeps trying to reach NATS.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// JetStream de-duplication window of the streams (`Nats-Msg-Id`).
    #[serde(with = "humantime_serde", default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// `[events.relay]`
    #[serde(default)]
    pub relay: RelaySettings,
    /// `[events.consumer]`
    #[serde(default)]
    pub consumer: ConsumerSettings,
    /// `[events.streams]`
    #[serde(default)]
    pub streams: StreamSettings,
    /// `[events.retention]`
    #[serde(default)]
    pub retention: RetentionSettings,
}

/// `[events.streams]`: what a stream is created with. A stream that exists
/// is checked (its subjects) and otherwise left as it is: an operator's
/// later changes to its limits stand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Messages older than this are dropped: 7 days unless set. It must
    /// outlast any consumer's redelivery horizon many times over (checked
    /// at start, see [`ConsumerSettings::redelivery_horizon`]): an event
    /// dropped before it is applied is lost. `"0s"`: kept until
    /// `max_bytes`.
    #[serde(with = "humantime_serde", default = "default_max_age")]
    pub max_age: Option<Duration>,
    /// The stream's size limit in bytes, oldest messages dropped first
    /// (none: no limit).
    #[serde(default)]
    pub max_bytes: Option<i64>,
    /// Copies of each message across the JetStream cluster (3 in a
    /// three-node cluster; 1 for a single server).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

fn default_max_age() -> Option<Duration> {
    Some(DEFAULT_MAX_AGE)
}

/// How long a stream keeps a message unless `max_age` says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many redelivery horizons a stream's `max_age` must cover at least:
/// room for a consumer down or stuck for a while on top of its retries.
pub const MAX_AGE_HORIZONS: u32 = 100;

impl StreamSettings {
    /// `max_age` when it limits anything (`0s` does not).
    pub fn effective_max_age(&self) -> Option<Duration> {
        self.max_age.filter(|age| !age.is_zero())
    }

    /// Refuses a `max_age` that could drop an event before `consumer`
    /// settings would have given up on it, with room to spare.
    pub fn check_max_age(&self, consumer: &ConsumerSettings) -> anyhow::Result<()> {
        let Some(age) = self.effective_max_age() else {
            return Ok(());
        };
        let needed = consumer.redelivery_horizon() * MAX_AGE_HORIZONS;
        anyhow::ensure!(
            age >= needed,
            "events.streams.max_age ({age:?}) is shorter than {MAX_AGE_HORIZONS} times the consumers' redelivery horizon \
             (events.consumer.max_deliver x (ack_wait + the longest backoff) = {:?}): events could expire before they are applied",
            consumer.redelivery_horizon()
        );
        Ok(())
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age: default_max_age(),
            max_bytes: None,
            replicas: default_replicas(),
        }
    }
}

/// `[events.retention]`: the bounded sweep of published outbox rows and old
/// inbox rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How often the sweep runs.
    #[serde(with = "humantime_serde", default = "default_sweep_interval")]
    pub interval: Duration,
    /// Published outbox rows are deleted this long after publication.
    #[serde(with = "humantime_serde", default = "default_keep")]
    pub outbox_after: Duration,
    /// Inbox rows are deleted this long after the event was applied; at
    /// least the streams' `duplicate_window` (a republished copy inside it
    /// is dropped by JetStream; the inbox covers the rest), checked at start.
    #[serde(with = "humantime_serde", default = "default_keep")]
    pub inbox_after: Duration,
    /// Rows deleted per statement, and at most ten statements per table per
    /// sweep, so a sweep never holds the database for long.
    #[serde(default = "default_sweep_batch")]
    pub batch: i64,
}

fn default_sweep_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_keep() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_sweep_batch() -> i64 {
    1000
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval: default_sweep_interval(),
            outbox_after: default_keep(),
            inbox_after: default_keep(),
            batch: default_sweep_batch(),
        }
    }
}

impl EventsSettings {
    /// Every default, for the plaintext server at `nats_url` with no users
    /// (a development server; tests and tools).
    pub fn plaintext(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_user: None,
            nats_password: None,
            tls_dir: None,
            connect_timeout: default_connect_timeout(),
            duplicate_window: default_duplicate_window(),
            relay: RelaySettings::default(),
            consumer: ConsumerSettings::default(),
            streams: StreamSettings::default(),
            retention: RetentionSettings::default(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(600)
}

/// `[events.relay]`: the outbox relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// How often the outbox is polled when nobody wakes the relay.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll_interval: Duration,
    /// Rows published per transaction.
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    /// How long to wait for a JetStream ack before retrying.
    #[serde(with = "humantime_serde", default = "default_ack_timeout")]
    pub ack_timeout: Duration,
}

fn default_poll() -> Duration {
    Duration::from_millis(200)
}
fn default_batch() -> i64 {
    100
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            poll_interval: default_poll(),
            batch_size: default_batch(),
            ack_timeout: default_ack_timeout(),
        }
    }
}

/// `[events.consumer]`: every consumer of the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// How long JetStream waits for an ack before redelivering.
    #[serde(with = "humantime_serde", default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Attempts before an event is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Redelivery delays after the 1st, 2nd, ... failed attempt (the last
    /// one repeats).
    #[serde(default = "default_backoff")]
    pub backoff: Vec<humantime_serde::Serde<Duration>>,
    /// Prefix of durable consumer names (a new prefix replays the streams
    /// from the start, e.g. to rebuild a projection).
    #[serde(default)]
    pub durable_prefix: Option<String>,
    /// Messages each consumer holds at once (being applied or queued behind
    /// an earlier event of the same aggregate). Events of one aggregate are
    /// applied one at a time, in stream order; different aggregates in
    /// parallel.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Events a batched consumer ([`crate::ConsumerSpec::batched`]) applies
    /// in one transaction: the ready heads of up to this many aggregates'
    /// lanes. 1 applies every event in a transaction of its own.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_deliver() -> i64 {
    5
}
fn default_max_in_flight() -> usize {
    64
}
fn default_batch_max() -> usize {
    32
}
fn default_backoff() -> Vec<humantime_serde::Serde<Duration>> {
    [100, 500, 2000]
        .into_iter()
        .map(|ms| Duration::from_millis(ms).into())
        .collect()
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: default_ack_wait(),
            max_deliver: default_max_deliver(),
            backoff: default_backoff(),
            durable_prefix: None,
            max_in_flight: default_max_in_flight(),
            batch_max: default_batch_max(),
        }
    }
}

impl ConsumerSettings {
    /// The longest a message can take from its first delivery to its last
    /// attempt: `max_deliver` times the ack wait and the longest backoff.
    pub fn redelivery_horizon(&self) -> Duration {
        let longest_backoff = self.backoff.iter().map(|d| **d).max().unwrap_or_default();
        let per_attempt = self.ack_wait + longest_backoff;
        per_attempt * u32::try_from(self.max_deliver.max(1)).unwrap_or(u32::MAX)
    }

    /// The delay before redelivery after failed attempt number `attempt`
    /// (1-based).
    pub fn backoff_for(&self, attempt: i64) -> Duration {
        let i = usize::try_from(attempt.max(1) - 1).unwrap_or(0);
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .map_or(Duration::from_millis(500), |d| **d)
    }
}

#[cfg(test)]
mod age_tests {
    use super::*;

    #[test]
    fn a_max_age_shorter_than_the_consumers_can_take_is_refused() {
        let consumer = ConsumerSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1).into(),
                Duration::from_secs(30).into(),
            ],
            ..ConsumerSettings::default()
        };
        assert_eq!(consumer.redelivery_horizon(), Duration::from_secs(300));
        let streams = StreamSettings::default();
        assert_eq!(streams.effective_max_age(), Some(DEFAULT_MAX_AGE));
        streams.check_max_age(&consumer).unwrap();
        let short = StreamSettings {
            max_age: Some(Duration::from_secs(3600)),
            ..StreamSettings::default()
        };
        let error = short.check_max_age(&consumer).unwrap_err().to_string();
        assert!(error.contains("events.streams.max_age"), "{error}");
        let unlimited = StreamSettings {
            max_age: Some(Duration::ZERO),
            ..StreamSettings::default()
        };
        assert_eq!(unlimited.effective_max_age(), None);
        unlimited.check_max_age(&consumer).unwrap();
    }
}
