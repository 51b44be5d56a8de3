-- Products, orders with their lines, idempotency keys and the transactional outbox.
-- Prices are integer cents; every order has one currency.

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL CHECK (length(currency) = 3),
    -- An unavailable product is accepted but fails at processing (the business failure path).
    available   BOOLEAN NOT NULL DEFAULT TRUE
);

INSERT INTO products (id, name, price_cents, currency, available) VALUES
    ('espresso',    'Espresso beans, 1 kg',      2490, 'EUR', TRUE),
    ('grinder',     'Burr grinder',              8900, 'EUR', TRUE),
    ('mug',         'Contoso mug',                990, 'EUR', TRUE),
    ('filter',      'Paper filters, 100 pcs',     450, 'EUR', TRUE),
    ('kettle',      'Gooseneck kettle',          5900, 'EUR', TRUE),
    ('discontinued','Limited edition tamper',    3500, 'EUR', FALSE);

-- Human order numbers (CS-000123): from a sequence, so a number is never reused.
CREATE SEQUENCE order_number_seq;

CREATE TABLE orders (
    correlation_id UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    order_number   BIGINT UNIQUE,
    failure_reason TEXT,
    total_cents    BIGINT NOT NULL CHECK (total_cents >= 0),
    currency       TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC);

CREATE TABLE order_lines (
    correlation_id   UUID NOT NULL REFERENCES orders (correlation_id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       TEXT NOT NULL REFERENCES products (id),
    quantity         INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (correlation_id, line_no)
);

-- One row per (user, Idempotency-Key): the request's fingerprint and the first answer.
CREATE TABLE idempotency_keys (
    user_id        TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    correlation_id UUID NOT NULL REFERENCES orders (correlation_id) ON DELETE CASCADE,
    response_body  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- Events written in the same transaction as the state they describe; the relay publishes
-- them with publisher confirms and deletes a row only after the broker's ack.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    UUID NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
