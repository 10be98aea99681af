-- The simulated card processor's own ledger (services/payments/src/processor.rs): what a real
-- provider keeps on its side. Only the processor module touches it, in transactions of its own,
-- never in the payments service's: a charge is an external call made with no transaction or lock
-- of ours held. One row per idempotency key (the order id), as card APIs keep one answer per
-- Idempotency-Key: a repeated charge returns the first answer, so nothing is charged twice.
CREATE TABLE processor_ledger (
    idempotency_key  uuid        PRIMARY KEY,
    -- captured: money taken; declined: refused for good; voided: cancelled before any
    -- charge, so a later charge under the key captures nothing.
    outcome          text        NOT NULL CHECK (outcome IN ('captured', 'declined', 'voided')),
    token            text        NOT NULL DEFAULT '',
    amount_minor     bigint      NOT NULL DEFAULT 0 CHECK (amount_minor >= 0),
    currency         text        NOT NULL DEFAULT '',
    decline_reason   text,
    detail           text        NOT NULL DEFAULT '',
    -- Charge requests answered under this key, the first included.
    requests         integer     NOT NULL DEFAULT 1,
    refunded_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT processor_ledger_captures_have_amounts
        CHECK (outcome <> 'captured' OR amount_minor > 0),
    CONSTRAINT processor_ledger_refunds_are_of_captures
        CHECK (refunded_at IS NULL OR outcome = 'captured')
);
