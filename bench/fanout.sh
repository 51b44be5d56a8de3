#!/usr/bin/env bash
# Cross-process fan-out: two notify processes, USERS users with two tabs each (one on each
# process), per-user notifications at rising fixed delivery rates. First straight onto the Redis
# backplane (fan-out alone), then as order.processed events through the notify consumer (user
# lookup, notification log, fan-out). Usage: bench/fanout.sh [USERS] [BACKPLANE_RATES] [CONSUMER_RATES]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-5000}"
BACKPLANE_RATES="${2:-10000,20000,30000,40000,50000}"
CONSUMER_RATES="${3:-2000,4000,8000,12000}"
cargo build --release --locked --bins >&2
bench_deployment fanout
BASE=$((20000 + RANDOM % 20000))
URLS=""
for i in 1 2; do
    port=$((BASE + i))
    start_contoso "$port" notify
    URLS="${URLS:+$URLS,}ws://127.0.0.1:$port/hubs/order-status"
done
machine_line
common=(--hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 --redis-url "$REDIS_URL"
        --channel-prefix "$CHANNELS" --amqp-url "$AMQP_URL" --bus-prefix "$PREFIX" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")")
./target/release/contoso-loadgen targeted "${common[@]}" --driver backplane --rates "$BACKPLANE_RATES" \
    --out bench/results/fanout-backplane.json
./target/release/contoso-loadgen targeted "${common[@]}" --driver consumer --rates "$CONSUMER_RATES" \
    --out bench/results/fanout-consumer.json
