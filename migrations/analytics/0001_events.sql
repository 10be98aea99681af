-- Transactional outbox, idempotent inbox and dead letters (libs/events).

-- Events written in the same transaction as the state change they describe;
-- the relay publishes them in seq order and stamps published_at once
-- JetStream acked them.
CREATE TABLE outbox (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    subject        text        NOT NULL,
    event_type     text        NOT NULL,
    envelope       bytea       NOT NULL,
    trace_context  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

-- One row per (consumer, event) applied: written in the transaction of the
-- event's effect, so a redelivered or replayed event changes nothing.
CREATE TABLE inbox (
    consumer      text        NOT NULL,
    event_id      uuid        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events a consumer gave up on after max_deliver attempts.
CREATE TABLE dead_letters (
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
