-- The same tables as migrations/postgres, in SQLite's types, for `--role all` on a laptop:
-- UUIDs and timestamps are TEXT (RFC 3339 UTC with milliseconds, which sorts as time),
-- booleans are 0/1, and the order-number sequence is a one-row counter.

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL CHECK (length(currency) = 3),
    -- An unavailable product is accepted but fails at processing (the business failure path).
    available   INTEGER NOT NULL DEFAULT 1
);

INSERT INTO products (id, name, price_cents, currency, available) VALUES
    ('espresso',    'Espresso beans, 1 kg',      2490, 'EUR', 1),
    ('grinder',     'Burr grinder',              8900, 'EUR', 1),
    ('mug',         'Contoso mug',                990, 'EUR', 1),
    ('filter',      'Paper filters, 100 pcs',     450, 'EUR', 1),
    ('kettle',      'Gooseneck kettle',          5900, 'EUR', 1),
    ('discontinued','Limited edition tamper',    3500, 'EUR', 0);

-- Human order numbers (CS-000123): only ever incremented, so a number is never reused.
CREATE TABLE order_number_seq (last_value INTEGER NOT NULL);
INSERT INTO order_number_seq (last_value) VALUES (0);

CREATE TABLE orders (
    correlation_id TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    order_number   INTEGER UNIQUE,
    failure_reason TEXT,
    total_cents    INTEGER NOT NULL CHECK (total_cents >= 0),
    currency       TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC);

CREATE TABLE order_lines (
    correlation_id   TEXT NOT NULL REFERENCES orders (correlation_id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       TEXT NOT NULL REFERENCES products (id),
    quantity         INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (correlation_id, line_no)
);

CREATE TABLE idempotency_keys (
    user_id        TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    correlation_id TEXT NOT NULL REFERENCES orders (correlation_id) ON DELETE CASCADE,
    response_body  TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- AUTOINCREMENT: an id is never reused, so the relay's "delete what was confirmed" cannot
-- hit a newer row.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
