#!/usr/bin/env bash
# Idle connections on one process: contoso (JSON and MessagePack) side by side with the floor,
# the bare relay (`contoso-loadgen relay`: tokio-tungstenite with a 512-byte read buffer, no
# auth, no protocol; a WebSocket Ping every 15 s), each on a fresh server in the same run. Per server: RSS at 2,000 and at
# 19,000 authenticated connections and the slope per connection; the connection rate from 2,000
# to 15,000 and from 15,000 to 19,000 (offered at CONNECT_RATE; established sockets sampled every
# 0.25 s for the plot); CPU over a HOLD-second hold at 19,000 (default 15 s keep-alive).
# Usage: bench/idle.sh [HOLD_SECONDS] [CONNECT_RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
HOLD="${1:-60}"
RATE="${2:-12000}"
cargo build --release --locked --bins --features loadgen >&2
bench_deployment idle
trap 'stop_idle_connections; bench_cleanup' EXIT
machine_line
mkdir -p bench/results
ROWS=(); RAMP=()

# measure NAME PID PORT URL [LOADGEN ARGS...]: the steps above against one running server.
measure() {
    local name=$1 pid=$2 port=$3 url=$4; shift 4
    local t0 sampler
    t0=$(date +%s.%N)
    ( while kill -0 "$pid" 2>/dev/null; do
        echo "$(date +%s.%N) $(ss -Htn state established "( sport = :$port )" | wc -l)"; sleep 0.25
      done ) > "/tmp/contoso-bench-ramp-$$" &
    sampler=$!
    open_connections 2000 4000 "$url" "$@" >/dev/null
    sleep 3
    local rss_small; rss_small=$(rss_kib "$pid")
    local rate_fill rate_full
    rate_fill=$(open_connections 13000 "$RATE" "$url" "$@")
    rate_full=$(open_connections 4000 "$RATE" "$url" "$@")
    kill "$sampler" 2>/dev/null || true
    sleep 5
    local rss_big c0 c1 cpu slope
    rss_big=$(rss_kib "$pid")
    c0=$(cpu_ticks "$pid"); sleep "$HOLD"; c1=$(cpu_ticks "$pid")
    cpu=$(echo "scale=2; ($c1 - $c0) * 100 / $(getconf CLK_TCK) / $HOLD" | bc)
    slope=$(echo "($rss_big - $rss_small) * 1024 / 17000" | bc)
    printf '%-26s rss@2000 %7s KiB  rss@19000 %7s KiB  %6s B/conn  %6s conn/s 2k->15k  %6s conn/s 15k->19k  cpu %5s %%\n' \
        "$name" "$rss_small" "$rss_big" "$slope" "$rate_fill" "$rate_full" "$cpu"
    ROWS+=("{\"server\":\"$name\",\"connections\":2000,\"rss_kib\":$rss_small},{\"server\":\"$name\",\"connections\":19000,\"rss_kib\":$rss_big,\"bytes_per_connection\":$slope,\"connects_per_s_to_15000\":$rate_fill,\"connects_per_s_past_15000\":$rate_full,\"cpu_percent\":$cpu}")
    RAMP+=("$(awk -v s="$name" -v t0="$t0" '{printf "%s{\"server\":\"%s\",\"t\":%.2f,\"connections\":%d}", (NR>1?",":""), s, $1 - t0, $2}' "/tmp/contoso-bench-ramp-$$")")
    rm -f "/tmp/contoso-bench-ramp-$$"
    pkill -f "contoso-loadgen idle --url $url" || true
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

BASE=$((20000 + RANDOM % 20000))
for protocol in json messagepack; do
    port=$((BASE + ${#ROWS[@]}))
    start_contoso "$port" notify
    measure "contoso $protocol" "$STARTED" "$port" "ws://127.0.0.1:$port/hubs/order-status" --protocol "$protocol"
done
port=$((BASE + 10))
# The floor pings every 15 s too, so its CPU includes the same keep-alive writes.
./target/release/contoso-loadgen relay --listen "127.0.0.1:$port" --redis-url "$REDIS_URL" --channel-prefix "$CHANNELS" \
    --keep-alive-ms 15000 >>"$BENCH_LOG" 2>&1 &
relay=$!; BENCH_PIDS+=("$relay")
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
measure "bare relay (floor)" "$relay" "$port" "ws://127.0.0.1:$port/" --bare

(IFS=,; echo "[${ROWS[*]}]") > bench/results/idle.json
(IFS=,; echo "[${RAMP[*]}]") > bench/results/idle-ramp.json
./target/release/contoso-loadgen plot --rss bench/results/idle.json --rss-out bench/plots/idle-rss.png \
    --ramp bench/results/idle-ramp.json --ramp-out bench/plots/idle-ramp.png
