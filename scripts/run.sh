#!/usr/bin/env bash
# `make run`: the whole shop in one process (role all) on http://localhost:8080 with demo
# sign-in, on nothing but this machine: orders in ./contoso.db (SQLite), and the event bus,
# status cache, notification log and backplane in the process. Needs Rust and Node only.
# Any real service can be switched in: CONTOSO_DATABASE_URL, CONTOSO_REDIS_URL, CONTOSO_AMQP_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
frontend/test.sh --build-only
cargo build --release --locked --bin contoso
port="${PORT:-8080}"
echo "contoso: the shop is at http://localhost:${port} (Ctrl-C to stop; orders are kept in ./contoso.db)"
exec ./target/release/contoso --role all --dev-auth --log-format pretty --listen "0.0.0.0:${port}" \
    --drain-file "${TMPDIR:-/tmp}/contoso-run-draining"
