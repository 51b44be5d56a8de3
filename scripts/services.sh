#!/usr/bin/env bash
# Makes sure the real services the tests talk to are up: PostgreSQL, Redis and RabbitMQ
# (installed with apt-get where missing, started where stopped), and that nginx and Chromium are
# installed. Prints the TEST_* exports.
# Fails loudly when a service cannot be brought up: tests never skip a missing service.
set -euo pipefail

log() { echo "services: $*" >&2; }
apt_updated=0
need() { # need <command> <debian package>
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then apt-get update -qq >&2; apt_updated=1; fi
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port <port> <name> <seconds>
    for _ in $(seq 1 $(( $3 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done
    log "$2 did not open port $1 within $3 s"; return 1
}

# PostgreSQL
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    need pg_ctlcluster postgresql
    log "starting postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start >&2 || true
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
    pg_isready -h 127.0.0.1 -p 5432 >&2
fi
DB_URL="postgres://root@127.0.0.1:5432/postgres"
if ! psql "$DB_URL" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh install has no role for root and no trust auth: make a password role.
    log "creating the root role in postgresql"
    su postgres -c "psql -qc \"DO \\\$\\\$BEGIN CREATE ROLE root SUPERUSER LOGIN PASSWORD 'root'; EXCEPTION WHEN duplicate_object THEN NULL; END\\\$\\\$\"" >&2
    DB_URL="postgres://root:root@127.0.0.1:5432/postgres"
    psql "$DB_URL" -qtAc 'SELECT 1' >/dev/null
fi

# Redis
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    need redis-server redis-server
    log "starting redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
    wait_port 6379 redis 10
fi

# Redis Cluster: 3 masters + 3 replicas on loopback ports 7301-7306, beside the single Redis.
# Idempotent: running nodes are kept; a cluster whose state is not ok is made again.
CLUSTER_PORTS="7301 7302 7303 7304 7305 7306"
cluster_ok() { redis-cli -p 7301 cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if ! cluster_ok; then
    log "starting a redis cluster on ports ${CLUSTER_PORTS// /,}"
    need redis-cli redis-tools
    mkdir -p /var/lib/redis /var/log/redis
    for port in $CLUSTER_PORTS; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
        dir="/var/lib/redis/cluster-$port"; rm -rf "$dir"; mkdir -p "$dir"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
            --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 --save "" --appendonly no \
            --dir "$dir" --logfile "/var/log/redis/cluster-$port.log" >&2
    done
    for port in $CLUSTER_PORTS; do wait_port "$port" "redis cluster node" 10; done
    # shellcheck disable=SC2046
    redis-cli --cluster create $(for p in $CLUSTER_PORTS; do printf '127.0.0.1:%s ' "$p"; done) \
        --cluster-replicas 1 --cluster-yes >/dev/null 2>&1
    for _ in $(seq 1 100); do cluster_ok && break; sleep 0.1; done
    cluster_ok || { log "the redis cluster did not reach cluster_state:ok"; exit 1; }
fi

# RabbitMQ
if ! port_open 5672; then
    need rabbitmq-server rabbitmq-server
    log "starting rabbitmq"
    rabbitmq-server -detached >&2 || true
    wait_port 5672 rabbitmq 90
    rabbitmqctl -q await_startup >&2 || true
fi

# nginx: the load balancer of the multi-process tests (started by the tests themselves).
need nginx nginx-light
# Chromium: the browser of the end-to-end tests (Debian's, driven by playwright-core; no download).
need chromium chromium

echo "export TEST_DATABASE_URL=$DB_URL"
echo "export TEST_REDIS_URL=redis://127.0.0.1:6379/0"
echo "export TEST_REDIS_CLUSTER_URLS=redis://127.0.0.1:7301,redis://127.0.0.1:7302,redis://127.0.0.1:7303"
echo "export TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
