-- Payments, their refunds, and the orders known to be cancelled.
--
-- The invariants live here, not only in code: at most one payment per order
-- (whatever is redelivered), positive amounts, a decline reason exactly on
-- declined payments, at most one refund per payment and always for the
-- payment's full amount, in its currency.

CREATE TABLE payments (
    payment_id      uuid        PRIMARY KEY,
    -- At most one payment per order, however often StockReserved arrives.
    order_id        uuid        NOT NULL UNIQUE,
    user_id         uuid        NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    token           text        NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('captured', 'declined', 'refunded')),
    decline_reason  text
                    CHECK (decline_reason IN
                           ('card_declined', 'invalid_token', 'processor_unavailable')),
    detail          text        NOT NULL DEFAULT '',
    -- Processor calls it took, transient failures included.
    attempt_count   integer     NOT NULL DEFAULT 1 CHECK (attempt_count >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_decline_reason_iff_declined
        CHECK ((status = 'declined') = (decline_reason IS NOT NULL)),
    -- Target of the refunds' foreign key: a refund repeats the payment's
    -- order, amount and currency, so it is always a full refund.
    CONSTRAINT payments_refundable_key UNIQUE (payment_id, order_id, amount_minor, currency)
);

CREATE TABLE refunds (
    refund_id     uuid        PRIMARY KEY,
    -- At most one refund per payment: a second OrderCancelled refunds nothing.
    payment_id    uuid        NOT NULL UNIQUE REFERENCES payments (payment_id),
    order_id      uuid        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor > 0),
    currency      text        NOT NULL,
    reason        text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_full_amount_of_payment
        FOREIGN KEY (payment_id, order_id, amount_minor, currency)
        REFERENCES payments (payment_id, order_id, amount_minor, currency)
);

-- Orders known to be cancelled (OrderCancelled seen): a StockReserved that
-- arrives later is never charged.
CREATE TABLE cancelled_orders (
    order_id    uuid        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
