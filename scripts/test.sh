#!/usr/bin/env bash
# The project's test command (README; also run by .ci/run): formatting, lints, the dependency
# policy (cargo deny), every unit and integration test (against real Redis, etcd and a
# Kafka-protocol broker, started here; Kafka SASL against a broker built for it), the
# TypeScript client's tests (scripts/js-test.sh, headless Chromium included), the Autobahn
# WebSocket conformance suite, the fuzzing smoke and the fault harness in its short mode.
# Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "services (Redis, a Redis Cluster, etcd, Kafka/tansu) and build tools"
# Starts what is not running yet; stops them on exit unless they were all up before.
services_before=$(scripts/services.sh status)
if grep -q down <<<"$services_before"; then
  trap 'scripts/services.sh stop' EXIT
fi
scripts/services.sh start

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --all-targets --locked -- -D warnings

step "dependency policy: licenses, sources, duplicate versions, advisories (deny.toml)"
scripts/deny.sh

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

step "the cluster tests again, on a 3-master Redis Cluster"
export WSGW_TEST_REDIS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast -E 'test(/^cluster::|^admin::/)'
else
  cargo test --locked --no-fail-fast --test it -- cluster:: admin::
fi
unset WSGW_TEST_REDIS

step "Kafka SASL/SCRAM over TLS against a broker that requires it (scripts/kafka-sasl.sh)"
scripts/kafka-sasl.sh

step "TypeScript client (clients/js): node tests against real nodes, the demo page in Chromium"
scripts/js-test.sh

step "websocket conformance (Autobahn)"
# the same build as the tests and scripts/js-test.sh (wsgw alone would unify other features and
# build every dependency again)
cargo build --locked --bin wsgw --example backend
scripts/autobahn.sh target/debug/wsgw

step "fuzzing smoke: every fuzz target for 10 s from its committed seeds (scripts/fuzz.sh)"
scripts/fuzz.sh --smoke

step "fault harness, short mode (docs/reliability.md): no accepted push may be lost"
CHAOS_BIN=target/debug/wsgw scripts/chaos.sh --short

step "all passed"
