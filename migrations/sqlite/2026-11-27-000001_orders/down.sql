DROP TABLE outbox;
DROP TABLE idempotency_keys;
DROP TABLE order_lines;
DROP TABLE orders;
DROP TABLE order_number_seq;
DROP TABLE products;
