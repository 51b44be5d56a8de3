#!/usr/bin/env bash
# Cross-process fan-out: two notify processes, USERS users with two tabs each (one on each
# process), per-user notifications at rising fixed delivery rates. First straight onto the Redis
# backplane (fan-out alone), then as order.processed events through the notify consumer (user
# lookup, notification log, fan-out). Last, the same backplane rates through two bare relays
# (contoso-loadgen relay: no auth, no hub protocol), the floor. Then the backplane rates again
# through two notify processes on the local 3-master Redis Cluster (sharded pub/sub), with each
# master's SPUBLISH count and CPU per notification. Draws bench/plots/fanout-latency.png.
# Usage: bench/fanout.sh [USERS] [BACKPLANE_RATES] [CONSUMER_RATES]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-5000}"
BACKPLANE_RATES="${2:-10000,20000,30000,40000,50000,60000,80000,100000}"
CONSUMER_RATES="${3:-2000,4000,8000,12000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment fanout
start_notify_pair
machine_line
common=(--hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 --redis-url "$REDIS_URL"
        --channel-prefix "$CHANNELS" --amqp-url "$AMQP_URL" --bus-prefix "$PREFIX" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")")
./target/release/contoso-loadgen targeted "${common[@]}" --driver backplane --rates "$BACKPLANE_RATES" \
    --out bench/results/fanout-backplane.json
./target/release/contoso-loadgen targeted "${common[@]}" --driver consumer --rates "$CONSUMER_RATES" \
    --out bench/results/fanout-consumer.json
RELAYS=""
for i in 3 4; do
    port=$((BASE + i))
    ./target/release/contoso-loadgen relay --listen "127.0.0.1:$port" --redis-url "$REDIS_URL" --channel-prefix "$CHANNELS" \
        >>"$BENCH_LOG" 2>&1 &
    BENCH_PIDS+=("$!")
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    RELAYS="${RELAYS:+$RELAYS,}ws://127.0.0.1:$port/"
done
./target/release/contoso-loadgen targeted --hub-urls "$RELAYS" --bare --jwt-secret "$SECRET" --users "$USERS" --tabs 2 \
    --redis-url "$REDIS_URL" --channel-prefix "$CHANNELS" --pids "$(IFS=,; echo "${BENCH_PIDS[*]:2:2}")" \
    --rates "$BACKPLANE_RATES" --out bench/results/fanout-relay.json
for pid in "${BENCH_PIDS[@]:0:2}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done
CONTOSO_REDIS=(--redis-url "$CLUSTER_URLS" --redis-mode cluster)
NOTIFY_FIRST=${#BENCH_PIDS[@]}
start_notify_pair
./target/release/contoso-loadgen targeted --hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 \
    --redis-url "$CLUSTER_URLS" --redis-mode cluster --channel-prefix "$CHANNELS" \
    --pids "$(IFS=,; echo "${BENCH_PIDS[*]:$NOTIFY_FIRST:2}")" --driver backplane --rates "$BACKPLANE_RATES" \
    --out bench/results/fanout-cluster.json
./target/release/contoso-loadgen plot --latency bench/results/fanout-backplane.json,bench/results/fanout-consumer.json,bench/results/fanout-relay.json,bench/results/fanout-cluster.json \
    --latency-out bench/plots/fanout-latency.png
