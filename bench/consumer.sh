#!/usr/bin/env bash
# The notify consumer alone: two notify processes, USERS users with two tabs each (one on each
# process), and order.processed events published to RabbitMQ at rising fixed delivery rates
# (notifications/s times two tabs). Each notification is a user lookup, a log append, a PUBLISH
# and an ack before the tabs see it. Then the same rates straight onto the backplane, the peer
# that shows what the consumer adds. With PERF=1, `perf record` samples both notify processes
# during the first rate and writes bench/results/consumer.perf (see `perf report -i`);
# PERF_CALLGRAPH=dwarf gives whole stacks of the release build (it has no frame pointers).
# Usage: bench/consumer.sh [USERS] [RATES] [SECONDS_PER_RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-5000}"
RATES="${2:-4000,8000,12000,16000,20000,24000}"
SECONDS_PER_RATE="${3:-10}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment consumer
start_notify_pair
machine_line
if [[ "${PERF:-0}" == 1 ]]; then
    # Starts sampling once the tabs are open (the load generator needs a while to open them).
    (sleep "${PERF_DELAY:-20}"; perf record -F "${PERF_FREQ:-499}" --call-graph "${PERF_CALLGRAPH:-fp}" -p "$(IFS=,; echo "${BENCH_PIDS[*]}")" -o bench/results/consumer.perf \
        -- sleep "$SECONDS_PER_RATE" >/dev/null 2>&1) &
    PERF_PID=$!
fi
common=(--hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 --redis-url "$REDIS_URL"
        --channel-prefix "$CHANNELS" --amqp-url "$AMQP_URL" --bus-prefix "$PREFIX" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")"
        --rates "$RATES" --duration "$SECONDS_PER_RATE")
./target/release/contoso-loadgen targeted "${common[@]}" --driver consumer --out bench/results/consumer.json
# The peer in the same run: the same deliveries published straight to the backplane (the fan-out
# alone); the difference is what the consumer costs.
./target/release/contoso-loadgen targeted "${common[@]}" --driver backplane --out bench/results/consumer-backplane.json
# Only the profile is waited for: the notify processes run until the cleanup stops them.
if [[ -n "${PERF_PID:-}" ]]; then wait "$PERF_PID"; fi
