#!/usr/bin/env bash
# Kafka → client push benchmark: throughput and produce → client latency through two wsgw nodes
# (half of the pushes cross nodes), against a bare Kafka consumer on the same broker in the same
# run (the floor). Starts Redis and the broker if needed (scripts/services.sh).
#
#   scripts/bench/kafka.sh [--users 1000] [--pushes 20000] [--rate 2000] [--seconds 5]
#
# Prints one JSON line per run (RUNS, default 3) and keeps them in target/bench/kafka.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-3}
mkdir -p target/bench
scripts/services.sh start
cargo bench --locked --bench kafka_push --no-run 2>&1 | tail -1
bin=$(ls -t target/release/deps/kafka_push-* | grep -v '\.d$' | head -1)
: >target/bench/kafka.jsonl
for _ in $(seq "$runs"); do
  "$bin" run "$@" | tee -a target/bench/kafka.jsonl
done
