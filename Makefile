# The two commands of the quick start: `make run` (the whole shop on this machine) and
# `make test` (every test suite against the real services). The rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help run test test-rust test-node test-frontend test-chart test-chaos chaos lint services bench-accept bench-idle bench-process bench-drain bench-stateful bench-fanout bench-consumer bench-crowded bench-toast bench-slow bench-protocol bench-stateful-drain sweep

help:
	@echo "make run    - the whole shop (role all) at http://localhost:8080"
	@echo "make test   - every test suite against real PostgreSQL, Redis and RabbitMQ"
	@echo "make chaos  - the chaos soak (CHAOS_MINUTES=10): faults under traffic, report in artifacts/chaos/"

run:
	scripts/run.sh

## Every test: formatting, lints, unit and integration tests against the real services.
test: lint test-rust test-frontend test-node test-chart test-chaos
	@echo "make test: all suites passed"

lint:
	scripts/build-deps.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --features failpoints,loadgen -- -D warnings

test-rust:
	@eval "$$(scripts/services.sh)" && scripts/sweep.sh && \
	  $(CARGO) test --locked --lib --bins --tests --features failpoints,loadgen -- --test-threads=4 && \
	  $(CARGO) test --locked --benches --features failpoints,loadgen && scripts/sweep.sh

## The official @microsoft/signalr client and the project's client module against the real
## binary (built by test-rust), and the SPA in headless Chromium (tests/node/browser.test.mjs;
## screenshots in artifacts/browser/).
test-node:
	clients/order-status-client/test.sh --build-only
	frontend/test.sh --build-only
	@eval "$$(scripts/services.sh)" && cd tests/node && npm ci --no-audit --no-fund --silent && \
	  CONTOSO_BIN=$(CURDIR)/target/debug/contoso npm test && cd ../.. && scripts/sweep.sh

## The chaos soak for one minute (tests/chaos/): 1 accept, 2 process and 4 notify processes
## behind nginx, 200 tabs, orders, and every kind of fault; after test-node, with its binary.
## It restarts the machine's PostgreSQL and RabbitMQ: never run it beside other suites.
test-chaos:
	clients/order-status-client/test.sh --build-only
	@eval "$$(scripts/services.sh)" && CHAOS_MINUTES=1 CONTOSO_BIN=$(CURDIR)/target/debug/contoso tests/chaos/run.sh

## The chaos soak, CHAOS_MINUTES (default 10) of faults; report and timeline in artifacts/chaos/.
CHAOS_MINUTES ?= 10
chaos:
	$(CARGO) build --locked --bins --features failpoints,loadgen
	clients/order-status-client/test.sh --build-only
	@eval "$$(scripts/services.sh)" && CHAOS_MINUTES=$(CHAOS_MINUTES) CONTOSO_BIN=$(CURDIR)/target/debug/contoso tests/chaos/run.sh

## The TypeScript client module and the Angular SPA: unit tests and a production build.
test-frontend:
	frontend/test.sh

## The Helm chart, Dockerfile and compose file, validated without a cluster.
test-chart:
	tests/chart/run.sh

services:
	@scripts/services.sh

sweep:
	@scripts/sweep.sh

bench-accept:
	@eval "$$(scripts/services.sh)" && bench/accept.sh

bench-idle:
	@eval "$$(scripts/services.sh)" && bench/idle.sh

bench-process:
	@eval "$$(scripts/services.sh)" && bench/process.sh

## The drain with the load generator's tabs (ResumeNotifications after a reconnect), then with
## the official client's stateful reconnect (bench-stateful-drain).
bench-drain:
	@eval "$$(scripts/services.sh)" && bench/drain.sh && CONTOSO_BIN=$(CURDIR)/target/release/contoso bench/stateful-drain.sh

## Stateful reconnect on and off: server CPU, latency, Redis CPU, commands and bytes per delivery.
bench-stateful:
	@eval "$$(scripts/services.sh)" && bench/stateful.sh

bench-fanout:
	@eval "$$(scripts/services.sh)" && bench/fanout.sh

## The notify consumer alone (order.processed to two notify processes); PERF=1 also profiles it.
bench-consumer:
	@eval "$$(scripts/services.sh)" && bench/consumer.sh

## Two notify processes holding 38,000 connections, delivering 10,000/s (beside the floor).
bench-crowded:
	@eval "$$(scripts/services.sh)" && bench/crowded.sh

bench-protocol:
	$(CARGO) bench --locked --bench protocol

bench-toast:
	@eval "$$(scripts/services.sh)" && bench/toast.sh

bench-slow:
	@eval "$$(scripts/services.sh)" && bench/slow.sh

## Stateful reconnect across a drain: 1,000 official clients through nginx to three notify
## processes, one drained under 50 orders/s, with and without withStatefulReconnect()
## (bench/stateful-drain.sh --help for the knobs; results in bench/results/stateful-drain.json).
bench-stateful-drain:
	scripts/build-deps.sh
	$(CARGO) build --release --locked --bins --features loadgen
	@eval "$$(scripts/services.sh)" && CONTOSO_BIN=$(CURDIR)/target/release/contoso bench/stateful-drain.sh
