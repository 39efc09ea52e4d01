#!/usr/bin/env bash
# Regenerates completions/ and man/ from the clap definitions (a test fails when they are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked --bin wsgw -- generate-docs .
