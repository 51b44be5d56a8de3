#!/usr/bin/env bash
# Scale-in under traffic: CONNECTIONS tabs (default 5,000, two per user) on one notify process,
# orders flowing through accept+process at RATE/s, then SIGTERM to that process (--drain-spread 5).
# The tabs reconnect to two other notify processes and resume from their last notification id.
# Reports the time until every tab is back, the peak reconnect rate, and the notifications
# missed before and after the replay. Usage: bench/drain.sh [CONNECTIONS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
CONNECTIONS="${1:-5000}"; RATE="${2:-200}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment drain
BASE=$((20000 + RANDOM % 20000))
start_contoso "$BASE" accept,process --db-pool-size 16
start_contoso $((BASE + 1)) notify --drain-spread 5 --shutdown-timeout 20; DRAINED=$STARTED
start_contoso $((BASE + 2)) notify
start_contoso $((BASE + 3)) notify
machine_line
hub() { echo "ws://127.0.0.1:$1/hubs/order-status"; }
./target/release/contoso-loadgen drain --drain-url "$(hub $((BASE + 1)))" --drain-pid "$DRAINED" \
    --to-urls "$(hub $((BASE + 2))),$(hub $((BASE + 3)))" --accept-url "http://127.0.0.1:$BASE" --jwt-secret "$SECRET" \
    --connections "$CONNECTIONS" --rate "$RATE" --out bench/results/drain.json
wait "$DRAINED" && echo "drained process exited 0"
