# Shared by the bench/*.sh scripts: a fresh database, the release binaries, and /proc sampling.
# Sourced, not run.

scripts/build-deps.sh   # the release build includes the load generator, which needs fontconfig

DB_ADMIN="${TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
# Benchmarks write hundreds of thousands of keys: they get their own Redis database, flushed after.
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/15}"
trap_flush_redis() { redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true; }
AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# The local Redis Cluster scripts/services.sh starts (3 masters, 3 replicas).
CLUSTER_URLS="${TEST_REDIS_CLUSTER_URLS:-redis://127.0.0.1:7301,redis://127.0.0.1:7302,redis://127.0.0.1:7303}"
# The Redis settings start_contoso gives a process; a script sets it to
# (--redis-url "$CLUSTER_URLS" --redis-mode cluster) for processes on the cluster.
CONTOSO_REDIS=(--redis-url "$REDIS_URL")

machine_line() {
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
}

# rss_kib PID: resident set size in KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# cpu_ticks PID: user + system clock ticks consumed so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_ready() { # wait_ready PORT
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$1/health/ready" >/dev/null && return 0; sleep 0.1; done
    echo "server on $1 never became ready" >&2; return 1
}

# A deployment of several processes: bench_deployment NAME creates its database and sets DB,
# SECRET, PREFIX and CHANNELS; start_contoso PORT ROLE [ARGS...] starts one process of it (pid in
# STARTED) and waits until it is ready; everything is stopped and cleaned up on exit.
bench_deployment() {
    DB="contoso_bench_$1_$$"; SECRET="bench-secret-$$"; PREFIX="bench-$$."; CHANNELS="bench-$$-"
    BENCH_LOG="/tmp/contoso-bench-$1.log"
    BENCH_PIDS=()
    psql "$DB_ADMIN" -qc "CREATE DATABASE $DB"
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    trap_flush_redis
    psql "$DB_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX"); do rabbitmqctl -q delete_queue "$q" >/dev/null; done
}
start_contoso() {
    local port=$1 role=$2; shift 2
    ./target/release/contoso --role "$role" --listen "127.0.0.1:$port" --database-url "${DB_ADMIN%/*}/$DB" \
        "${CONTOSO_REDIS[@]}" --amqp-url "$AMQP_URL" --jwt-secret "$SECRET" --bus-prefix "$PREFIX" \
        --channel-prefix "$CHANNELS" --process-delay-ms 0 --log-level warn --drain-file "/tmp/contoso-bench-drain-$$-$port" \
        "$@" >>"$BENCH_LOG" 2>&1 &
    STARTED=$!
    BENCH_PIDS+=("$STARTED")
    wait_ready "$port"
}

# start_notify_pair [ARGS...]: two notify processes of the deployment (ARGS added to each) on
# random ports BASE+1 and BASE+2; their hub URLs in URLS (comma list). BASE stays set for more
# servers beside them.
start_notify_pair() {
    BASE=$((20000 + RANDOM % 20000))
    URLS=""
    for i in 1 2; do
        start_contoso "$((BASE + i))" notify "$@"
        URLS="${URLS:+$URLS,}ws://127.0.0.1:$((BASE + i))/hubs/order-status"
    done
}

# One source address reaches ~28,000 ports; several keep TIME_WAIT of earlier runs out of the way.
SOURCES=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

# open_connections N RATE URL [ARGS...]: opens N more idle connections (`contoso-loadgen idle`,
# sharded over worker processes under the open-file limit, held for an hour or until
# stop_idle_connections) and prints the achieved connects per second once they are all open.
open_connections() {
    local n=$1 rate=$2 url=$3; shift 3
    local out; out=$(mktemp)
    CONTOSO_JWT_SECRET="$SECRET" ./target/release/contoso-loadgen idle --url "$url" --connections "$n" \
        --workers $(( (n + 9499) / 9500 )) --rate "$rate" --hold 3600 --source-ips "$SOURCES" "$@" >"$out" 2>>"$BENCH_LOG" &
    BENCH_PIDS+=("$!")
    for _ in $(seq 1 1800); do grep -q ramped "$out" && break; sleep 0.1; done
    local failed; failed=$(grep ramped "$out" | sed 's/.*"failed":\([0-9]*\).*/\1/')
    [ "${failed:-1}" = 0 ] || echo "warning: $failed connections failed ($url)" >&2
    grep ramped "$out" | sed 's/.*"connects_per_s":\([0-9.]*\).*/\1/'
    rm -f "$out"
}

stop_idle_connections() { pkill -f "contoso-loadgen idle --url ws://127.0.0.1:" || true; }

# thread_cpu SECONDS PID...: what each kind of thread of the processes did over SECONDS, per
# process and thread name (tokio-rt-worker, actix-server wo, lapin-io-loop...): CPU in % of one
# core, and how often it was switched out waiting (voluntary context switches per second).
thread_cpu() {
    local seconds=$1; shift
    local hz; hz=$(getconf CLK_TCK)
    snapshot() {
        for pid in "$@"; do
            for task in /proc/"$pid"/task/*; do
                printf '%s:%s %s %s\n' "$pid" "$(tr ' ' _ <"$task/comm")" "$(awk '{print $14 + $15}' "$task/stat")" \
                    "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$task/status")"
            done 2>/dev/null
        done | awk '{ticks[$1] += $2; switches[$1] += $3} END {for (k in ticks) print k, ticks[k], switches[k]}' | sort
    }
    local before; before=$(snapshot "$@")
    sleep "$seconds"
    join <(echo "$before") <(snapshot "$@") |
        awk -v s="$seconds" -v hz="$hz" '$4 > $2 {printf "%s %.1f%% %.0f switches/s\n", $1, 100 * ($4 - $2) / hz / s, ($5 - $3) / s}' |
        sort -t' ' -k2 -nr
}
