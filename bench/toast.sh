#!/usr/bin/env bash
# The whole pipeline as a shopper sees it: accept+process in one process, two notify processes,
# one tab per user; orders POSTed at fixed rates, each timed from its scheduled POST to its
# OrderCompleted on the user's tab. Usage: bench/toast.sh [RATES] (default 100,300)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATES="${1:-100,300}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment toast
BASE=$((20000 + RANDOM % 20000))
start_contoso "$BASE" accept,process --db-pool-size 16
start_contoso $((BASE + 1)) notify
start_contoso $((BASE + 2)) notify
machine_line
./target/release/contoso-loadgen toast --accept-url "http://127.0.0.1:$BASE" --jwt-secret "$SECRET" \
    --hub-urls "ws://127.0.0.1:$((BASE + 1))/hubs/order-status,ws://127.0.0.1:$((BASE + 2))/hubs/order-status" \
    --rates "$RATES" --out bench/results/toast.json
