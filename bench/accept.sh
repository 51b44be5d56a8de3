#!/usr/bin/env bash
# Benchmark of role accept against the real PostgreSQL, Redis and RabbitMQ of this machine:
# fixed rates, then saturation. Usage: bench/accept.sh [rates] (default 500,1000,1500,0).
# Prints a table and writes bench/results/accept.json. Run through `make bench-accept`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATES="${1:-500,1000,1500,0}"
DURATION="${DURATION:-20}"
PORT="${PORT:-18181}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment accept
start_contoso "$PORT" accept --db-pool-size 32
machine_line
./target/release/contoso-loadgen orders --url "http://127.0.0.1:$PORT" --jwt-secret "$SECRET" \
    --rates "$RATES" --duration "$DURATION" --out bench/results/accept.json
echo "outbox backlog at the end: $(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^contoso_outbox_backlog/ {print $2}')"
