-- Accounts. Emails are stored normalised (trimmed, lower-cased), so the
-- unique index is the one place that decides "already registered".
CREATE TABLE users (
    user_id        uuid        PRIMARY KEY,
    email          text        NOT NULL,
    display_name   text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    password_hash  text        NOT NULL,
    status         text        NOT NULL DEFAULT 'active'
                               CHECK (status IN ('active', 'deactivated')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_normalised CHECK (email = lower(btrim(email)))
);
