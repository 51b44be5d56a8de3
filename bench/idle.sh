#!/usr/bin/env bash
# Memory and keep-alive cost of idle hub connections on one notify process: RSS at 2,000 and
# 19,000 authenticated connections (each on a fresh server), the slope per connection, handshake
# failures, and the server's CPU over a 60 s hold. Usage: bench/idle.sh [HOLD_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
HOLD="${1:-60}"
SECRET="bench-secret-$$"
cargo build --release --locked --bins --features loadgen >&2
machine_line

measure() { # measure CONNECTIONS -> prints "rss_kib failed cpu_percent"
    local total=$1 port db pid
    port=$((20000 + RANDOM % 20000)); db="contoso_bench_idle_$$_$total"
    psql "$DB_ADMIN" -qc "CREATE DATABASE $db"
    ./target/release/contoso --role notify --listen "127.0.0.1:$port" --database-url "${DB_ADMIN%/*}/$db" \
        --redis-url "$REDIS_URL" --amqp-url "$AMQP_URL" --jwt-secret "$SECRET" --bus-prefix "bench-$$." \
        --channel-prefix "bench-$$-" --log-level warn --drain-file "/tmp/contoso-bench-drain-$$" >/tmp/contoso-bench-idle.log 2>&1 &
    pid=$!
    wait_ready "$port"
    local out; out=$(mktemp)
    # The load generator shards itself: one worker per 9,500 connections (the open-file limit).
    CONTOSO_JWT_SECRET="$SECRET" ./target/release/contoso-loadgen idle --url "ws://127.0.0.1:$port/hubs/order-status" \
        --connections "$total" --workers $(( (total + 9499) / 9500 )) --rate 4000 --hold $((HOLD + 30)) >"$out" 2>/dev/null &
    for _ in $(seq 1 1200); do grep -q ramped "$out" && break; sleep 0.1; done
    sleep 5
    local rss failed t0 t1
    rss=$(rss_kib "$pid")
    failed=$(sed -n 's/.*"failed":\([0-9]*\).*"event":"ramped".*/\1/p; s/.*"event":"ramped".*"failed":\([0-9]*\).*/\1/p' "$out" | head -1)
    t0=$(cpu_ticks "$pid"); sleep "$HOLD"; t1=$(cpu_ticks "$pid")
    local cpu
    cpu=$(echo "scale=3; ($t1 - $t0) * 100 / $(getconf CLK_TCK) / $HOLD" | bc)
    pkill -f "contoso-loadgen idle --url ws://127.0.0.1:$port" || true
    kill -TERM "$pid"; wait "$pid" || true
    psql "$DB_ADMIN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    rm -f "$out"
    echo "$rss $failed $cpu"
}

read -r rss_small failed_small cpu_small < <(measure 2000)
read -r rss_big failed_big cpu_big < <(measure 19000)
slope=$(echo "scale=2; ($rss_big - $rss_small) * 1024 / 17000" | bc)
echo "connections   rss_kib   handshake_failures   cpu_percent_of_one_core"
echo "2000          $rss_small   $failed_small   $cpu_small"
echo "19000         $rss_big   $failed_big   $cpu_big"
echo "rss slope: $slope bytes per idle connection"
mkdir -p bench/results
echo "[{\"connections\":2000,\"rss_kib\":$rss_small},{\"connections\":19000,\"rss_kib\":$rss_big}]" > bench/results/idle.json
./target/release/contoso-loadgen plot --rss bench/results/idle.json --rss-out bench/plots/idle-rss.png
trap_flush_redis
for q in contoso.order-process contoso.order-notification; do
    for n in "bench-$$.$q" "bench-$$.$q.dead-letter"; do rabbitmqctl -q delete_queue "$n" >/dev/null 2>&1 || true; done
done
