#!/usr/bin/env bash
# Removes what interrupted test runs may have left on the shared services: test databases
# (contoso_t_*) and test exchanges and queues (prefix t-). Safe to run any time no test runs.
set -uo pipefail
DB_URL="${TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
for db in $(psql "$DB_URL" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'contoso\_t\_%'" 2>/dev/null); do
    psql "$DB_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1
done
for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep '^t-' ); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1
done
for ex in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep '^t-'); do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$ex\">>), false, <<\"sweep\">>)." >/dev/null 2>&1
done
exit 0
