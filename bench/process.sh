#!/usr/bin/env bash
# Throughput and latency through accept and process (--process-delay-ms 0): each order is timed
# from its scheduled POST to its order.processed on RabbitMQ. Usage: bench/process.sh [rates]
# (default 300,600,1000); POOL sets the accept pool size (default 32). Real PostgreSQL, Redis and
# RabbitMQ on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATES="${1:-300,600,1000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment process
PORT=$((20000 + RANDOM % 20000))
start_contoso "$PORT" accept,process --db-pool-size ${POOL:-32}
machine_line
./target/release/contoso-loadgen pipeline --url "http://127.0.0.1:$PORT" --jwt-secret "$SECRET" --amqp-url "$AMQP_URL" \
    --bus-prefix "$PREFIX" --rates "$RATES" --duration "${DURATION:-20}" --out bench/results/process.json
