-- Orders and their sagas. The status only moves PENDING -> CONFIRMED,
-- PENDING -> CANCELLED or CONFIRMED -> CANCELLED, under a row lock.
CREATE TABLE orders (
    order_id             uuid        PRIMARY KEY,
    user_id              uuid        NOT NULL,
    status               text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    total_minor          bigint      NOT NULL CHECK (total_minor > 0),
    currency             text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    idempotency_key      uuid        NOT NULL,
    request_fingerprint  text        NOT NULL,
    payment_id           uuid,
    cancel_reason        smallint,
    cancel_detail        text        NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- When a PENDING saga that has made no progress is cancelled.
    deadline_at          timestamptz NOT NULL,
    CONSTRAINT orders_idempotency_key UNIQUE (idempotency_key),
    CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
    CHECK (status <> 'confirmed' OR payment_id IS NOT NULL)
);
CREATE INDEX orders_user_idx ON orders (user_id, order_id DESC);
CREATE INDEX orders_pending_deadline_idx ON orders (deadline_at) WHERE status = 'pending';

CREATE TABLE order_lines (
    order_id          uuid   NOT NULL REFERENCES orders (order_id),
    line_no           int    NOT NULL,
    product_id        uuid   NOT NULL,
    sku               text   NOT NULL,
    product_name      text   NOT NULL,
    quantity          bigint NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor > 0),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

-- The saga timeline: what happened to an order, when, and why.
CREATE TABLE saga_steps (
    seq          bigserial   PRIMARY KEY,
    order_id     uuid        NOT NULL REFERENCES orders (order_id),
    step         smallint    NOT NULL,
    status       smallint    NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    event_id     uuid,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX saga_steps_order_idx ON saga_steps (order_id, seq);
