# Fleetstream task runner. `make help` lists the targets.
.DEFAULT_GOAL := help
CARGO ?= cargo

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-13s %s\n", $$1, $$2}'

up: ## Run the whole system on the embedded defaults, with a local agent
	$(CARGO) run --release --bin fleetstream -- up --with-local-agent

test: ## Install/start Kafka, Postgres and Python deps, then run every test (what CI runs)
	bash scripts/test.sh

services: ## Start (or reuse) the test services on loopback
	bash scripts/services.sh up

down: ## Stop the test services this checkout started
	bash scripts/services.sh down

fuzz: ## Every fuzz target for FUZZ_SECONDS each (default 600; ~2 h in all), see docs/SECURITY.md
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),600)

lint: ## Formatting and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: ## Criterion benches, the whole-pipeline bench (needs `make services` for Kafka), WebSocket memory
	$(CARGO) bench -p fleet-schemas --bench codec
	$(CARGO) bench -p fleet-stream-processors --bench rules
	$(CARGO) bench -p fleet-e2e --bench pipeline -- all
	$(CARGO) bench -p fleet-ingest-gateway --bench ws_connections

bench-agent: ## Agent overhead vs prometheus-node-exporter (apt package) and command latency (~7 min)
	$(CARGO) build --release -p fleetstream
	$(CARGO) build --profile agent -p fleet-agent --bin fleetstream-agent
	FLEETSTREAM_AGENT_BIN=$(CURDIR)/target/agent/fleetstream-agent $(CARGO) bench -p fleet-e2e --bench agent_overhead
	FLEETSTREAM_BIN=$(CURDIR)/target/release/fleetstream $(CARGO) bench -p fleet-e2e --bench command_latency

bench-stores: ## Store benches: history query, fleet list, projection throughput (needs `make services`: Postgres, Cassandra)
	eval "$$(bash scripts/services.sh env)" && $(CARGO) bench -p fleet-timeseries --bench history_query
	eval "$$(bash scripts/services.sh env)" && $(CARGO) bench -p fleet-read-model --bench fleet_list -- all
	eval "$$(bash scripts/services.sh env)" && $(CARGO) bench -p fleet-e2e --bench projection_throughput -- all

bench-timeseries: ## Time-series chunks: bytes/sample against VictoriaMetrics (apt package), codec comparison, criterion throughput
	$(CARGO) bench -p fleet-timeseries --bench disk_vs_vm
	$(CARGO) bench -p fleet-timeseries --bench codecs --features codec-eval
	$(CARGO) bench -p fleet-timeseries --bench chunk

bench-storage: ## The storage half against VictoriaMetrics (apt package) in one run: stored throughput (back-fill, live), disk, freshness, history query (~10 min)
	$(CARGO) build --release -p fleetstream
	FLEETSTREAM_BIN=$(CURDIR)/target/release/fleetstream $(CARGO) bench -p fleet-e2e --bench storage_vs_vm

bench-protocols: ## Prometheus remote-write ingest and query_range against VictoriaMetrics (apt package) in one run (~2 min)
	$(CARGO) build --release -p fleetstream
	FLEETSTREAM_BIN=$(CURDIR)/target/release/fleetstream $(CARGO) bench -p fleet-e2e --bench protocols_vs_vm

bench-replay: ## Rebuild throughput of `fleetstream replay`: embedded, and Kafka into Postgres (needs `make services`)
	$(CARGO) build --release -p fleetstream
	eval "$$(bash scripts/services.sh env)" && FLEETSTREAM_BIN=$(CURDIR)/target/release/fleetstream $(CARGO) bench -p fleet-e2e --bench replay_throughput -- all

.PHONY: help up test services down lint bench bench-agent bench-stores bench-timeseries bench-storage bench-protocols bench-replay
