#!/usr/bin/env bash
# Kafka SASL against a real broker: SCRAM-SHA-512 over TLS (`security.protocol: sasl_ssl`).
#
#   scripts/kafka-sasl.sh        (scripts/test.sh runs it)
#
# The broker the other tests use (tansu 0.6 from PyPI) keeps no SCRAM users: its memory and S3
# storage accept a new user and store nothing. tansu's SQLite storage keeps them, so this script
# builds tansu 0.6.0 with it from crates.io into target/tools once (a debug build: ~6 minutes on
# two cores; the release profile's LTO took twice that), starts the services the test's node
# needs, and runs the one test that needs that broker, ignored by a plain `cargo test`:
# cluster::kafka::pushes_and_presence_flow_over_sasl_scram_and_tls.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TOOLS_DIR:-$PWD/target/tools}

log() { printf 'kafka-sasl: %s\n' "$*" >&2; }

if [ ! -x "$tools/bin/tansu-sql" ]; then
  log "building tansu 0.6.0 with its SQLite storage into $tools/tansu-sql (once, ~6 min)"
  cargo install --quiet --locked --debug tansu --version 0.6.0 --no-default-features \
    --features libsql --root "$tools/tansu-sql"
  mkdir -p "$tools/bin"
  ln -sf "$tools/tansu-sql/bin/tansu" "$tools/bin/tansu-sql"
fi

if grep -q down <<<"$(scripts/services.sh status)"; then
  trap 'scripts/services.sh stop' EXIT
fi
scripts/services.sh start

cargo test --locked --test it -- --ignored --exact \
  cluster::kafka::pushes_and_presence_flow_over_sasl_scram_and_tls
