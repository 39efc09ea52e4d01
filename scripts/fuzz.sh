#!/usr/bin/env bash
# Fuzzing (fuzz/, cargo-fuzz on the nightly toolchain; docs/security.md has the targets and the
# results). Installs cargo-fuzz when missing.
#   scripts/fuzz.sh --smoke          every target for 10 s from its committed seeds (scripts/test.sh)
#   scripts/fuzz.sh [SECS] [TARGET…]  every (or the named) target for SECS seconds (default 600)
# A crash fails the run; its input is in fuzz/artifacts/<target>/ (add it to the target's
# corpus with the fix, as a regression input).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=600
profile=(-O)
# the smoke builds without optimizations (half the build time; debug assertions on)
if [ "${1:-}" = "--smoke" ]; then secs=10; profile=(--dev); shift; elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

cargo +nightly fuzz build -s none "${profile[@]}"
for t in "${targets[@]}"; do
  # fuzz/seeds/<target> (committed: minimized corpora, regression inputs) is read; what a run
  # finds goes to fuzz/corpus/<target> (not committed)
  mkdir -p "fuzz/corpus/$t"
  out=$(cargo +nightly fuzz run -s none "${profile[@]}" "$t" "$PWD/fuzz/corpus/$t" "$PWD/fuzz/seeds/$t" -- \
    -max_total_time="$secs" 2>&1) ||
    { printf '%s\n' "$out" | tail -40; echo "fuzz: $t FAILED"; exit 1; }
  printf 'fuzz: %-15s %s\n' "$t" "$(grep -E '^Done [0-9]+ runs' <<<"$out")"
done
