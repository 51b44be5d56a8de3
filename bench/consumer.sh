#!/usr/bin/env bash
# The notify consumer alone: two notify processes, USERS users with two tabs each (one on each
# process), and order.processed events published to RabbitMQ at rising fixed delivery rates
# (notifications/s times two tabs). Each notification is a user lookup, a log append, a PUBLISH
# and an ack before the tabs see it. Then the same rates straight onto the backplane, the peer
# that shows what the consumer adds, and the same events through RabbitMQ alone (a queue of the
# same type that the load generator consumes and acks), the broker's floor. Every rate prints
# what each process of the host (notify, RabbitMQ, Redis, the load generator) spent per
# notification. QUEUE_TYPE=classic runs the notify queue (and the floor's) as a classic queue
# instead of a quorum queue. During the first rate of each it prints the CPU of each
# notify thread (tokio workers, actix workers, lapin's I/O loop) over THREAD_SECONDS; with PERF=1,
# `perf record` also samples both notify processes during the consumer's first rate and writes
# bench/results/consumer.perf (see `perf report -i`); PERF_CALLGRAPH=dwarf gives whole stacks of
# the release build (it has no frame pointers).
# Usage: bench/consumer.sh [USERS] [RATES] [SECONDS_PER_RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-5000}"
RATES="${2:-4000,8000,12000,16000,20000,24000}"
SECONDS_PER_RATE="${3:-10}"
# Sampled from 2 s into the first rate, so neither the tabs opening nor the next rate is in it.
THREAD_SECONDS="${THREAD_SECONDS:-$(( SECONDS_PER_RATE > 4 ? SECONDS_PER_RATE - 3 : 1 ))}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment consumer
QUEUE_TYPE="${QUEUE_TYPE:-quorum}"
start_notify_pair --queue-type "$QUEUE_TYPE"
machine_line
BROKER_PIDS=$(pgrep -d, -x beam.smp || true)
[[ -n "$BROKER_PIDS" ]] || echo "no beam.smp process found: the broker's CPU is not measured" >&2
# sample_first_rate LOG LABEL [PERF_OUT]: once the load generator writing LOG says the tabs are
# open (the first rate starts right after), prints the CPU of each notify thread over
# THREAD_SECONDS and, with PERF=1 and PERF_OUT, records a profile meanwhile. Runs in the
# background (pid in SAMPLER_PID); gives up if the tabs never open.
sample_first_rate() {
    local log=$1 label=$2 perf_out=${3:-}
    (
        for _ in $(seq 1 1500); do grep -q "tabs of" "$log" 2>/dev/null && break; sleep 0.2; done
        grep -q "tabs of" "$log" 2>/dev/null || exit 0
        sleep 2
        if [[ "${PERF:-0}" == 1 && -n "$perf_out" ]]; then
            perf record -F "${PERF_FREQ:-499}" --call-graph "${PERF_CALLGRAPH:-fp}" -p "$(IFS=,; echo "${BENCH_PIDS[*]}")" \
                -o "$perf_out" -- sleep "$THREAD_SECONDS" >/dev/null 2>&1 &
        fi
        thread_cpu "$THREAD_SECONDS" "${BENCH_PIDS[@]}" | sed "s/^/threads ($label, first rate): /"
        wait
    ) &
    SAMPLER_PID=$!
}
LOGS=$(mktemp -d)
common=(--hub-urls "$URLS" --jwt-secret "$SECRET" --users "$USERS" --tabs 2 --redis-url "$REDIS_URL"
        --channel-prefix "$CHANNELS" --amqp-url "$AMQP_URL" --bus-prefix "$PREFIX" --pids "$(IFS=,; echo "${BENCH_PIDS[*]}")"
        --rates "$RATES" --duration "$SECONDS_PER_RATE" --queue-type "$QUEUE_TYPE" ${BROKER_PIDS:+--broker-pids "$BROKER_PIDS"})
sample_first_rate "$LOGS/consumer" consumer bench/results/consumer.perf
./target/release/contoso-loadgen targeted "${common[@]}" --driver consumer --out bench/results/consumer.json 2> >(tee "$LOGS/consumer" >&2)
wait "$SAMPLER_PID"
# The peer in the same run: the same deliveries published straight to the backplane (the fan-out
# alone); the difference is what the consumer costs.
sample_first_rate "$LOGS/backplane" backplane
./target/release/contoso-loadgen targeted "${common[@]}" --driver backplane --out bench/results/consumer-backplane.json 2> >(tee "$LOGS/backplane" >&2)
wait "$SAMPLER_PID"
# The broker's floor: the same events through a queue of the same type, read by the load
# generator itself; no tabs, no notify process in the path.
./target/release/contoso-loadgen targeted "${common[@]}" --driver broker --out bench/results/consumer-broker.json
rm -rf "$LOGS"
# The notify processes run until the cleanup stops them.
