#!/usr/bin/env bash
# `make run`: the whole shop in one process (role all) on http://localhost:8080 with demo
# sign-in. Until the embedded mode lands (in-process bus and backplane, SQLite), it uses this
# machine's PostgreSQL, Redis and RabbitMQ, starting (and if needed installing) them first.
set -euo pipefail
cd "$(dirname "$0")/.."
frontend/test.sh --build-only
eval "$(scripts/services.sh)"
DB_URL="${TEST_DATABASE_URL%/*}/contoso_dev"
psql "$TEST_DATABASE_URL" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'contoso_dev'" | grep -q 1 \
    || psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE contoso_dev"
cargo build --release --locked --bin contoso
echo "contoso: the shop is at http://localhost:${PORT:-8080} (Ctrl-C to stop)"
exec ./target/release/contoso --role all --dev-auth --log-format pretty --listen "0.0.0.0:${PORT:-8080}" \
    --database-url "$DB_URL" --redis-url "$TEST_REDIS_URL" --amqp-url "$TEST_AMQP_URL" \
    --drain-file "/tmp/contoso-run-draining"
