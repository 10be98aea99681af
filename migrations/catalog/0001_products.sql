-- Categories are slugs, created the first time a product names them.
CREATE TABLE categories (
    slug        text        PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Products. Prices are integer minor units of an ISO 4217 currency.
-- product_id is a UUIDv7, so ordering by it is ordering by creation, and it
-- never changes: the listing's keyset cursor.
CREATE TABLE products (
    product_id   uuid        PRIMARY KEY,
    sku          text        NOT NULL,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text        NOT NULL DEFAULT '',
    category     text        NOT NULL REFERENCES categories (slug),
    price_minor  bigint      NOT NULL CHECK (price_minor > 0),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_sku_key UNIQUE (sku)
);

CREATE INDEX products_category_id_idx ON products (category, product_id);
