-- Dead letters are resolved by an operator (libs/events, EventsAdminService): replayed through
-- the consumer's handler or discarded with a reason. Compensations (a stock release, a refund)
-- are flagged: until replayed they leave stock or money held.
ALTER TABLE dead_letters
    ADD COLUMN status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'replayed', 'discarded')),
    ADD COLUMN compensation    boolean     NOT NULL DEFAULT false,
    ADD COLUMN replay_attempts integer     NOT NULL DEFAULT 0,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN discard_reason  text        NOT NULL DEFAULT '',
    ADD COLUMN resolved_by     text        NOT NULL DEFAULT '';
CREATE INDEX dead_letters_pending_idx ON dead_letters (consumer) WHERE status = 'pending';

-- The retention sweep (libs/events/src/retention.rs) deletes inbox rows by age.
CREATE INDEX inbox_processed_at_idx ON inbox (processed_at);
