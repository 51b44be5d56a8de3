#!/usr/bin/env bash
# Stateful reconnect across a drain (issue #17): 1,000 tabs of the official @microsoft/signalr
# client through nginx to three notify processes, orders at 50/s, SIGTERM to the process holding
# the most tabs (--drain-spread 5); once with `.withStatefulReconnect()`, once without. Reports the
# notifications missed before any application-level replay (target 0 with stateful reconnect),
# duplicates, the time until every tab is back and the resume outcomes; JSON in
# bench/results/stateful-drain.json. Options: bench/stateful-drain.sh --help (--tabs, --rate, ...).
# The binary: CONTOSO_BIN, default target/release/contoso (`make bench-stateful-drain` builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${TEST_DATABASE_URL:-}" ] || eval "$(scripts/services.sh 2>/dev/null)"
export CONTOSO_BIN="${CONTOSO_BIN:-$PWD/target/release/contoso}"
[[ " $* " == *" --help "* ]] || [ -x "$CONTOSO_BIN" ] || { echo "no binary at $CONTOSO_BIN: make bench-stateful-drain builds it" >&2; exit 1; }
# A Redis database of its own: not the tests' (0), nor the other benchmarks' (15, which bench/lib.sh
# flushes when each of them exits, and a flush under this run would take its resume records and
# notification logs). Its keys expire 15 minutes after the run.
export TEST_REDIS_URL="${STATEFUL_DRAIN_REDIS_URL:-redis://127.0.0.1:6379/14}"
# The official client comes from the Node suite's dependencies (installed only when absent:
# `npm ci` would replace them under a suite that is running).
[ -d tests/node/node_modules/@microsoft/signalr ] || (cd tests/node && npm ci --no-audit --no-fund --silent)
ulimit -n 65536 2>/dev/null || true
exec node bench/stateful-drain.mjs "$@"
