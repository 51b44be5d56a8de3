#!/usr/bin/env bash
# Two crowded notify processes: 38,000 connections on two processes (each near the ~20,000
# open-file limit of one process), most of them idle tabs, and per-user notifications at
# RATES deliveries/s to USERS users with a tab on each process. Per server kind: RSS of both
# processes empty, with the idle tabs, and while delivering; latency, loss and CPU per delivery
# from `contoso-loadgen targeted`. Then the same for the floor, two bare relays
# (`contoso-loadgen relay`), in the same run. Both ping every 15 s.
# Usage: bench/crowded.sh [USERS] [IDLE_PER_PROCESS] [RATES]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS="${1:-5000}"
IDLE="${2:-14000}"
RATES="${3:-10000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment crowded
trap 'stop_idle_connections; bench_cleanup' EXIT
machine_line
mkdir -p bench/results
TOTAL=$((2 * IDLE + 2 * USERS))

# crowd NAME BARE URL1,URL2 PID1,PID2 [LOADGEN ARGS...]: the idle tabs, then the measured users.
crowd() {
    local name=$1 bare=$2 urls=$3 pids=$4; shift 4
    local rss_empty rss_idle url
    rss_empty=$(( $(rss_kib "${pids%,*}") + $(rss_kib "${pids#*,}") ))
    for url in ${urls//,/ }; do
        open_connections "$IDLE" 6000 "$url" "$@" >/dev/null
    done
    sleep 3
    rss_idle=$(( $(rss_kib "${pids%,*}") + $(rss_kib "${pids#*,}") ))
    echo "$name: both processes ${rss_empty} KiB empty, ${rss_idle} KiB with $((2 * IDLE)) idle tabs"
    local bare_arg=(); [ "$bare" = yes ] && bare_arg=(--bare)
    ./target/release/contoso-loadgen targeted --hub-urls "$urls" "${bare_arg[@]}" --jwt-secret "$SECRET" --users "$USERS" \
        --tabs 2 --redis-url "$REDIS_URL" --channel-prefix "$CHANNELS" --pids "$pids" --driver backplane \
        --rates "$RATES" --source-ips "$SOURCES" --out "bench/results/crowded-${name// /-}.json"
    local rss_max
    rss_max=$(grep -o '"server_rss_mib_max": *[0-9.]*' "bench/results/crowded-${name// /-}.json" | tail -1 | grep -o '[0-9.]*$')
    echo "$name: $TOTAL connections on two processes, largest RSS of both while delivering ${rss_max} MiB," \
        "$(echo "($rss_max * 1048576 - $rss_empty * 1024) / $TOTAL" | bc) bytes per connection over the empty processes"
    stop_idle_connections
}

start_notify_pair
crowd contoso no "$URLS" "$(IFS=,; echo "${BENCH_PIDS[*]:0:2}")"
for pid in "${BENCH_PIDS[@]:0:2}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done

RELAYS=""; RELAY_PIDS=""
for i in 3 4; do
    port=$((BASE + i))
    ./target/release/contoso-loadgen relay --listen "127.0.0.1:$port" --redis-url "$REDIS_URL" --channel-prefix "$CHANNELS" \
        --keep-alive-ms 15000 >>"$BENCH_LOG" 2>&1 &
    BENCH_PIDS+=("$!"); RELAY_PIDS="${RELAY_PIDS:+$RELAY_PIDS,}$!"
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    RELAYS="${RELAYS:+$RELAYS,}ws://127.0.0.1:$port/"
done
crowd "bare relay" yes "$RELAYS" "$RELAY_PIDS" --bare
