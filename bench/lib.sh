# Shared by the bench/*.sh scripts: a fresh database, the release binaries, and /proc sampling.
# Sourced, not run.

DB_ADMIN="${TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
# Benchmarks write hundreds of thousands of keys: they get their own Redis database, flushed after.
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/15}"
trap_flush_redis() { redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true; }
AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

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
