#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one:
#   1. installs and starts the real services on loopback (Kafka 4 KRaft, Cassandra, a schema
#      registry (Apicurio), PostgreSQL 15, a Python venv with fastavro and confluent-kafka),
#      reusing what already runs;
#   2. checks formatting, builds every target once;
#   3. runs every test: unit, conformance suites on every engine, interop, end-to-end;
#   4. builds the fuzz targets and runs each on its corpus in git and for FUZZ_CI_SECONDS
#      (default 5) more (`scripts/fuzz.sh ci`; a crash fails the suite; `make fuzz` is the
#      long run).
#
# usage: scripts/test.sh [extra `cargo test` arguments, e.g. -p fleet-event-log]
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Services (scripts/services.sh up)"
bash scripts/services.sh up
eval "$(bash scripts/services.sh env)"
export FLEET_KAFKA_BROKERS FLEET_POSTGRES_URL FLEET_PYTHON FLEET_SCYLLA_URI FLEET_SCHEMA_REGISTRY_URL

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

step "Formatting (cargo fmt --check)"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt not installed; skipping the format check (rustup component add rustfmt)"
fi

step "Build (every target, once)"
cargo build --workspace --all-targets --locked

step "Tests"
RUST_BACKTRACE=${RUST_BACKTRACE:-1} cargo test --workspace --locked --no-fail-fast "$@"

step "Fuzzing (scripts/fuzz.sh ci: each target's corpus, then ${FUZZ_CI_SECONDS:-5} s of fuzzing)"
bash scripts/fuzz.sh ci
