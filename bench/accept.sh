#!/usr/bin/env bash
# Benchmark of role accept against the real PostgreSQL, Redis and RabbitMQ of this machine:
# fixed rates, then saturation. Usage: bench/accept.sh [rates] (default 500,1000,1500,0).
# Prints a table and writes bench/results/accept.json. Run through `make bench-accept`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATES="${1:-500,1000,1500,0}"
DURATION="${DURATION:-20}"
DB_ADMIN="${TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
DB_NAME="contoso_bench_$$"
DB_URL="${DB_ADMIN%/*}/$DB_NAME"
PORT="${PORT:-18181}"
SECRET="bench-secret-$$"
PREFIX="bench-$$."

cargo build --release --locked --bins
psql "$DB_ADMIN" -qc "CREATE DATABASE $DB_NAME"
cleanup() {
    trap_flush_redis
    [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    psql "$DB_ADMIN" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" || true
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX"); do rabbitmqctl -q delete_queue "$q" >/dev/null; done
}
trap cleanup EXIT

./target/release/contoso --role accept --listen "127.0.0.1:$PORT" \
    --database-url "$DB_URL" --redis-url "$REDIS_URL" \
    --amqp-url "${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" \
    --jwt-secret "$SECRET" --bus-prefix "$PREFIX" --log-level warn --db-pool-size 32 \
    --drain-file "/tmp/contoso-bench-drain-$$" > /tmp/contoso-bench-accept.log 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
./target/release/contoso-loadgen orders --url "http://127.0.0.1:$PORT" --jwt-secret "$SECRET" \
    --rates "$RATES" --duration "$DURATION" --out bench/results/accept.json
echo "outbox backlog at the end: $(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^contoso_outbox_backlog/ {print $2}')"
