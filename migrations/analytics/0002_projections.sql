-- Projections of every event stream.
--
-- They are a pure function of the set of events applied: nothing here reads
-- the clock (times are the events' occur_time) and nothing depends on the
-- order in which events of different streams, or redeliveries, arrive:
--
-- * every fact table is keyed by the business id the fact is about, and
--   when two events claim the same fact the earliest (occurred_at,
--   event_id) wins, whatever order they were applied in;
-- * an order's milestones are minima (placed_at, confirmed_at) and its
--   cancellation is the earliest OrderCancelled; a cancelled order counts as
--   cancelled whether or not it was confirmed first (the orders service
--   never confirms a cancelled order);
-- * the report's figures (revenue, units sold...) are derived from these
--   tables when asked, so an order cancelled after its confirmation drops
--   out of revenue and units sold with no bookkeeping to get wrong.
--
-- Rebuilding from the start of the streams therefore gives identical
-- numbers.

-- Every event applied, once. The report's applied_event_count and
-- last_event_time; also the projector's own guard against applying an event
-- twice (beside the consumer inbox).
CREATE TABLE applied_events (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL
);

-- One row per order seen in any order event. The header (user, total,
-- lines) comes from the earliest of the order's events; every order event
-- carries the same one.
CREATE TABLE orders (
    order_id             uuid        PRIMARY KEY,
    user_id              uuid        NOT NULL,
    total_minor          bigint      NOT NULL CHECK (total_minor >= 0),
    currency             text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    header_occurred_at   timestamptz NOT NULL,
    header_event_id      uuid        NOT NULL,
    -- OrderPlaced's occur_time; NULL until it is applied.
    placed_at            timestamptz,
    -- The earliest OrderConfirmed's occur_time.
    confirmed_at         timestamptz,
    -- The earliest OrderCancelled: when, which event, why.
    cancelled_at         timestamptz,
    cancel_event_id      uuid,
    cancellation_reason  integer,
    cancellation_detail  text,
    CHECK ((cancelled_at IS NULL) = (cancel_event_id IS NULL)),
    CHECK ((cancelled_at IS NULL) = (cancellation_reason IS NULL)),
    CHECK ((cancelled_at IS NULL) = (cancellation_detail IS NULL))
);

-- The lines of the order's header event, in event order.
CREATE TABLE order_lines (
    order_id          uuid    NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no           integer NOT NULL CHECK (line_no >= 0),
    product_id        uuid    NOT NULL,
    quantity          bigint  NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint  NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_lines_product_idx ON order_lines (product_id);

-- Stock reservation outcomes, one row per order and kind of outcome.
CREATE TABLE stock_reserved (
    order_id     uuid        PRIMARY KEY,
    units        bigint      NOT NULL CHECK (units >= 0),
    occurred_at  timestamptz NOT NULL,
    event_id     uuid        NOT NULL
);
CREATE TABLE stock_rejected (
    order_id     uuid        PRIMARY KEY,
    reason       integer     NOT NULL,
    occurred_at  timestamptz NOT NULL,
    event_id     uuid        NOT NULL
);
CREATE TABLE stock_released (
    order_id       uuid        PRIMARY KEY,
    units          bigint      NOT NULL CHECK (units >= 0),
    was_committed  boolean     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    event_id       uuid        NOT NULL
);

-- Money flows.
CREATE TABLE payment_captures (
    payment_id    uuid        PRIMARY KEY,
    order_id      uuid        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor >= 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    occurred_at   timestamptz NOT NULL,
    event_id      uuid        NOT NULL
);
CREATE TABLE payment_declines (
    payment_id    uuid        PRIMARY KEY,
    order_id      uuid        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor >= 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reason        integer     NOT NULL,
    occurred_at   timestamptz NOT NULL,
    event_id      uuid        NOT NULL
);
CREATE TABLE payment_refunds (
    refund_id     uuid        PRIMARY KEY,
    payment_id    uuid        NOT NULL,
    order_id      uuid        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor >= 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    occurred_at   timestamptz NOT NULL,
    event_id      uuid        NOT NULL
);

-- User registrations.
CREATE TABLE user_registrations (
    user_id        uuid        PRIMARY KEY,
    registered_at  timestamptz NOT NULL,
    event_id       uuid        NOT NULL
);
