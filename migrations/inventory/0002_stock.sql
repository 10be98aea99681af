-- Stock per product, reservations of the order saga, idempotent adjustments.
--
-- Per product, the quantity ever stocked = available + reserved + sold; the
-- CHECKs below keep every part non-negative whatever the code does, and the
-- reservation moves (reserve, commit, release) keep the sum.

CREATE TABLE stock (
    product_id  uuid        PRIMARY KEY,
    available   bigint      NOT NULL CHECK (available >= 0),
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One reservation per order, whatever happened to it. A 'released' row
-- without lines is the tombstone of an order cancelled before its
-- OrderPlaced arrived: the late OrderPlaced then reserves nothing.
CREATE TABLE reservations (
    order_id          uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('reserved', 'rejected', 'committed', 'released')),
    rejection_reason  text
        CHECK (rejection_reason IN ('insufficient_stock', 'unknown_product')),
    rejection_detail  text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- A reason exactly when rejected.
    CHECK ((status = 'rejected') = (rejection_reason IS NOT NULL))
);

-- The lines of an order as requested, one per product (repeated products
-- are merged). No foreign key to stock: a rejected order may name products
-- inventory has never stocked.
CREATE TABLE reservation_lines (
    order_id    uuid   NOT NULL REFERENCES reservations (order_id),
    product_id  uuid   NOT NULL,
    quantity    bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

-- AdjustStock calls by idempotency key, with the stock as the first call
-- left it, so a repeat returns the first result without applying the delta
-- again.
CREATE TABLE stock_adjustments (
    idempotency_key      uuid        PRIMARY KEY,
    product_id           uuid        NOT NULL REFERENCES stock (product_id),
    delta                bigint      NOT NULL CHECK (delta <> 0),
    reason               text        NOT NULL,
    resulting_available  bigint      NOT NULL CHECK (resulting_available >= 0),
    resulting_reserved   bigint      NOT NULL,
    resulting_sold       bigint      NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
