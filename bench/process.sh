#!/usr/bin/env bash
# Throughput and latency through accept and process (--process-delay-ms 0): each order is timed
# from its scheduled POST to its order.processed on RabbitMQ. Usage: bench/process.sh [rates]
# (default 300,600,1000). Real PostgreSQL, Redis and RabbitMQ on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATES="${1:-300,600,1000}"
PORT=$((20000 + RANDOM % 20000)); DB="contoso_bench_process_$$"; SECRET="bench-secret-$$"; PREFIX="bench-$$."
cargo build --release --locked --bins >&2
psql "$DB_ADMIN" -qc "CREATE DATABASE $DB"
cleanup() {
    trap_flush_redis
    [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    psql "$DB_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX"); do rabbitmqctl -q delete_queue "$q" >/dev/null; done
}
trap cleanup EXIT
./target/release/contoso --role accept,process --listen "127.0.0.1:$PORT" --database-url "${DB_ADMIN%/*}/$DB" \
    --redis-url "$REDIS_URL" --amqp-url "$AMQP_URL" --jwt-secret "$SECRET" --bus-prefix "$PREFIX" \
    --process-delay-ms 0 --log-level warn --db-pool-size 32 --drain-file "/tmp/contoso-bench-drain-$$" >/tmp/contoso-bench-process.log 2>&1 &
PID=$!
wait_ready "$PORT"
machine_line
./target/release/contoso-loadgen pipeline --url "http://127.0.0.1:$PORT" --jwt-secret "$SECRET" --amqp-url "$AMQP_URL" \
    --bus-prefix "$PREFIX" --rates "$RATES" --duration "${DURATION:-20}" --out bench/results/process.json
