#!/usr/bin/env bash
# Upstream benchmark (benches/upstream.rs): client → gateway → tonic backend → UPSTREAM_ACK, the
# gateway's CPU per acknowledged message against the floor server measured in the same run.
# Builds the release binary and the bench, pins the servers to CPU 0 and the load generator and
# backend to CPU 1, and keeps the output in target/bench/upstream[-batch].txt.
#
#   scripts/bench/upstream.sh [--batch] [--rates 12000,16000] [--conns 1000]   # RUNS (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/bench
cargo build --locked --release --bin wsgw 2>&1 | tail -1
cargo bench --locked --bench upstream --no-run 2>&1 | tail -1
bin=$(ls -t target/release/deps/upstream-* | grep -v '\.d$' | head -1)
name=upstream
case " $* " in *" --batch "*) name=upstream-batch ;; esac
# A later --rates wins over this default.
taskset -c 1 "$bin" --runs "${RUNS:-3}" --rates 12000 "$@" | tee "target/bench/$name.txt"
