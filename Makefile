# Fleetstream task runner. `make help` lists the targets.
.DEFAULT_GOAL := help
CARGO ?= cargo

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

up: ## Run the whole system on the embedded defaults, with a local agent
	$(CARGO) run --release --bin fleetstream -- up --with-local-agent

test: ## Install/start Kafka, Postgres and Python deps, then run every test (what CI runs)
	bash scripts/test.sh

services: ## Start (or reuse) the test services on loopback
	bash scripts/services.sh up

down: ## Stop the test services this checkout started
	bash scripts/services.sh down

lint: ## Formatting and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: ## Criterion benches and the whole-pipeline bench (needs `make services` for Kafka)
	$(CARGO) bench -p fleet-schemas --bench codec
	$(CARGO) bench -p fleet-stream-processors --bench rules
	$(CARGO) bench -p fleet-e2e --bench pipeline -- all

.PHONY: help up test services down lint bench
