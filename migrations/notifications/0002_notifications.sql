-- Notifications sent to users (delivery is simulated: stored and logged).
--
-- One notification per registered user, per confirmed order and per
-- cancelled order: UNIQUE (kind, subject_id), where subject_id is the order
-- for order notifications and the user for a welcome message. The same
-- business fact published twice under two event ids still notifies once.
CREATE TABLE notifications (
    notification_id  uuid        PRIMARY KEY,  -- UUIDv7: sorts by creation
    user_id          uuid        NOT NULL,
    kind             text        NOT NULL
        CHECK (kind IN ('welcome', 'order_confirmed', 'order_cancelled')),
    order_id         uuid,
    subject_id       uuid        NOT NULL GENERATED ALWAYS AS (COALESCE(order_id, user_id)) STORED,
    subject          text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 500),
    body             text        NOT NULL CHECK (length(body) BETWEEN 1 AND 5000),
    source_event_id  uuid        NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- A welcome message is about a user, every other kind about an order.
    CHECK ((kind = 'welcome') = (order_id IS NULL)),
    UNIQUE (kind, subject_id)
);

-- ListNotifications: one user's notifications, newest first, keyset paged.
CREATE INDEX notifications_user_idx ON notifications (user_id, notification_id DESC);
