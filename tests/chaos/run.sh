#!/usr/bin/env bash
# The chaos soak (tests/chaos/soak.mjs) with its last-resort cleanup: whatever happens to the
# soak (a failure, Ctrl-C, its own watchdog, this script's timeout), the trap kills the children
# it started (by pid, checked against its run id), starts PostgreSQL and RabbitMQ again if a
# fault left them stopped, and drops the soak's database, queues and exchanges.
# Settings: CHAOS_MINUTES (10) and the others listed at the top of soak.mjs. Output:
# artifacts/chaos/ (report.json, summary.txt, timeline.svg, faults.jsonl, soak.log, logs/).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

export CHAOS_MINUTES="${CHAOS_MINUTES:-10}"
export CHAOS_OUT="${CHAOS_OUT:-$ROOT/artifacts/chaos}"
export CHAOS_ID="${CHAOS_ID:-chaos$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}"
export CONTOSO_BIN="${CONTOSO_BIN:-$ROOT/target/debug/contoso}"

log() { echo "chaos: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ! -x "$CONTOSO_BIN" ]]; then
    log "no binary at $CONTOSO_BIN (make chaos builds it; or set CONTOSO_BIN)"
    exit 2
fi
if [[ -z "${TEST_DATABASE_URL:-}" ]]; then
    eval "$(scripts/services.sh)" || { log "the services did not come up"; exit 2; }
fi
# The client module's build and the Node dependencies the soak imports (tests/node's).
if [[ ! -f clients/order-status-client/dist/index.js ]]; then
    clients/order-status-client/test.sh --build-only || exit 2
fi
if [[ ! -d tests/node/node_modules/@microsoft/signalr ]]; then
    (cd tests/node && npm ci --no-audit --no-fund --silent) || exit 2
fi

rm -rf "$CHAOS_OUT"
mkdir -p "$CHAOS_OUT"
PIDS="$CHAOS_OUT/pids.txt"
: > "$PIDS"
PG_VERSION="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
soak_pid=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # The soak first: it stops its own children when it can (bounded inside), then by force.
    if [[ -n "$soak_pid" ]] && kill -0 "$soak_pid" 2>/dev/null; then
        kill -TERM "$soak_pid" 2>/dev/null
        for _ in $(seq 1 600); do kill -0 "$soak_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$soak_pid" 2>/dev/null
    fi
    # Children still alive: the pids the soak recorded, each with its start time, so a pid
    # that was reused since is left alone.
    # SIGTERM first (nginx's master then ends its workers), SIGKILL for what is left.
    ours() { # ours <pid> <starttime>
        local stat fields
        [[ -n "$1" && -n "$2" ]] || return 1
        stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
        read -ra fields <<< "${stat##*) }"
        [[ "${fields[19]}" == "$2" ]]
    }
    local leftovers=()
    while read -r pid start; do
        ours "$pid" "$start" && leftovers+=("$pid $start")
    done < "$PIDS"
    if (( ${#leftovers[@]} )); then
        log "stopping ${#leftovers[@]} leftover children"
        for entry in "${leftovers[@]}"; do kill -TERM "${entry%% *}" 2>/dev/null; done
        for _ in $(seq 1 50); do
            local alive=0
            for entry in "${leftovers[@]}"; do ours ${entry} && alive=1; done
            (( alive )) || break
            sleep 0.1
        done
        for entry in "${leftovers[@]}"; do ours ${entry} && kill -KILL "${entry%% *}" 2>/dev/null; done
    fi
    # The shared services a fault may have stopped.
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && [[ -n "$PG_VERSION" ]]; then
        log "starting postgresql again"
        timeout 120 pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start >&2
    fi
    if ! port_open 5672; then
        log "starting rabbitmq again"
        timeout 120 rabbitmqctl -q start_app >&2 || { rabbitmq-server -detached >&2; timeout 120 rabbitmqctl -q await_startup >&2; }
    fi
    # The deployment: database, queues and exchanges of this run's prefix.
    local db_url="${TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
    timeout 60 psql "$db_url" -qc "DROP DATABASE IF EXISTS \"contoso_t_${CHAOS_ID}\" WITH (FORCE)" >/dev/null 2>&1 ||
        log "could not drop database contoso_t_${CHAOS_ID}"
    for q in $(timeout 60 rabbitmqctl -q list_queues name 2>/dev/null | grep "^t-${CHAOS_ID}\."); do
        timeout 60 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1
    done
    for ex in $(timeout 60 rabbitmqctl -q list_exchanges name 2>/dev/null | grep "^t-${CHAOS_ID}\."); do
        timeout 60 rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$ex\">>), false, <<\"chaos\">>)." >/dev/null 2>&1
    done
    rm -rf /tmp/contoso-"${CHAOS_ID}"-* "$PIDS"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A hard limit above the soak's own watchdog: setup, the fault phase and settling are bounded.
limit=$(( 1800 + CHAOS_MINUTES * 120 ))
timeout --signal=TERM --kill-after=60 "$limit" node tests/chaos/soak.mjs &
soak_pid=$!
wait "$soak_pid"
rc=$?
soak_pid=""
exit "$rc"
