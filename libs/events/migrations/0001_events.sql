-- The tables of libs/events, in every database of a service that uses it,
-- applied by the library itself (shop_events::MIGRATOR, recorded in
-- _events_migrations). Written to apply both to a new database and to one
-- whose service migrations created them before the library owned them
-- (`IF NOT EXISTS` throughout).

-- Events written in the same transaction as the state change they describe;
-- the relay publishes them in seq order and stamps published_at once
-- JetStream acked them.
CREATE TABLE IF NOT EXISTS outbox (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    subject        text        NOT NULL,
    event_type     text        NOT NULL,
    envelope       bytea       NOT NULL,
    trace_context  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

-- One row per (consumer, event) applied: written in the transaction of the
-- event's effect, so a redelivered or replayed event changes nothing.
CREATE TABLE IF NOT EXISTS inbox (
    consumer      text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
-- The retention sweep (libs/events/src/retention.rs) deletes inbox rows by age.
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (processed_at);

-- Events a consumer gave up on after max_deliver attempts, resolved by an
-- operator (EventsAdminService): replayed through the consumer's handler or
-- discarded with a reason. Compensations (a stock release, a refund) are
-- flagged: until replayed they leave stock or money held.
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id  uuid        PRIMARY KEY,
    consumer        text        NOT NULL,
    stream          text        NOT NULL,
    subject         text        NOT NULL,
    event_id        text,
    event_type      text        NOT NULL,
    delivery_count  bigint      NOT NULL,
    last_error      text        NOT NULL,
    payload         bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'replayed', 'discarded')),
    ADD COLUMN IF NOT EXISTS compensation    boolean     NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS replay_attempts integer     NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS resolved_at     timestamptz,
    ADD COLUMN IF NOT EXISTS discard_reason  text        NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolved_by     text        NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS dead_letters_pending_idx ON dead_letters (consumer) WHERE status = 'pending';
