#!/usr/bin/env bash
# Scale-in under traffic: CONNECTIONS tabs (default 5,000, two per user) on one notify process,
# orders flowing through accept+process at RATE/s, then SIGTERM to that process (--drain-spread 5).
# The tabs reconnect to two other notify processes and resume from their last notification id.
# Reports the time until every tab is back, the peak reconnect rate, and the notifications
# missed before and after the replay. Usage: bench/drain.sh [CONNECTIONS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
CONNECTIONS="${1:-5000}"; RATE="${2:-50}"
DB="contoso_bench_drain_$$"; SECRET="bench-secret-$$"; PREFIX="bench-$$."; CHANNELS="bench-$$-"
cargo build --release --locked --bins >&2
psql "$DB_ADMIN" -qc "CREATE DATABASE $DB"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    trap_flush_redis
    psql "$DB_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX"); do rabbitmqctl -q delete_queue "$q" >/dev/null; done
}
trap cleanup EXIT
start() { # start PORT ROLE [ARGS...] -> pid in STARTED
    local port=$1 role=$2; shift 2
    ./target/release/contoso --role "$role" --listen "127.0.0.1:$port" --database-url "${DB_ADMIN%/*}/$DB" \
        --redis-url "$REDIS_URL" --amqp-url "$AMQP_URL" --jwt-secret "$SECRET" --bus-prefix "$PREFIX" \
        --channel-prefix "$CHANNELS" --process-delay-ms 0 --log-level warn --drain-file "/tmp/contoso-bench-drain-$$-$port" \
        "$@" >>/tmp/contoso-bench-drain.log 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$port"
}
BASE=$((20000 + RANDOM % 20000))
start "$BASE" accept,process --db-pool-size 16
start $((BASE + 1)) notify --drain-spread 5 --shutdown-timeout 20; DRAINED=$STARTED
start $((BASE + 2)) notify
start $((BASE + 3)) notify
machine_line
hub() { echo "ws://127.0.0.1:$1/hubs/order-status"; }
./target/release/contoso-loadgen drain --drain-url "$(hub $((BASE + 1)))" --drain-pid "$DRAINED" \
    --to-urls "$(hub $((BASE + 2))),$(hub $((BASE + 3)))" --accept-url "http://127.0.0.1:$BASE" --jwt-secret "$SECRET" \
    --connections "$CONNECTIONS" --rate "$RATE" --out bench/results/drain.json
wait "$DRAINED" && echo "drained process exited 0"
