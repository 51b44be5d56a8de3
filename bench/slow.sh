#!/usr/bin/env bash
# Slow consumers: two notify processes, 10,000 tabs, RATE deliveries/s onto the backplane for 20 s,
# first with every tab reading, then with 1 % of the tabs never reading. The readers' p99 should
# not move by more than 20 % and the servers' RSS must stay bounded. Usage: bench/slow.sh [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATE="${1:-10000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment slow
BASE=$((20000 + RANDOM % 20000))
start_contoso $((BASE + 1)) notify
start_contoso $((BASE + 2)) notify
machine_line
for fraction in 0 0.01; do
    ./target/release/contoso-loadgen targeted --jwt-secret "$SECRET" --users 5000 --tabs 2 --redis-url "$REDIS_URL" \
        --hub-urls "ws://127.0.0.1:$((BASE + 1))/hubs/order-status,ws://127.0.0.1:$((BASE + 2))/hubs/order-status" \
        --channel-prefix "$CHANNELS" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")" --driver backplane --rates "$RATE" \
        --duration 20 --slow-fraction "$fraction" --out "bench/results/slow-$fraction.json"
done
