#!/usr/bin/env bash
# The cost of stateful reconnect per delivery: two notify processes, USERS users with two tabs
# each (one on each process), per-user notifications straight onto the Redis backplane at
# rising rates, once with tabs that use stateful reconnect (negotiate asks for it, handshake
# version 2, an Ack every second: every message is journaled in Redis before it is written)
# and once without, in the same run. Server CPU, latency, and Redis CPU, commands and bytes per
# notification. Usage: bench/stateful.sh [USERS] [RATES]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-2000}"
RATES="${2:-2000,5000,10000,20000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment stateful
start_notify_pair
machine_line
common=(--hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 --redis-url "$REDIS_URL"
        --channel-prefix "$CHANNELS" --amqp-url "$AMQP_URL" --bus-prefix "$PREFIX" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")"
        --driver backplane --rates "$RATES")
echo "== without stateful reconnect (negotiated, handshake version 1)"
./target/release/contoso-loadgen targeted "${common[@]}" --negotiate --out bench/results/stateful-off.json
echo "== with stateful reconnect"
./target/release/contoso-loadgen targeted "${common[@]}" --stateful --out bench/results/stateful-on.json
