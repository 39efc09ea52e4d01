#!/usr/bin/env bash
# The cost of the durable record (docs/reliability.md): the same push load through one node
#   local    without Redis (in-memory directory: pushes are not recorded), and
#   durable  with Redis (cluster mode: every push is recorded in its user's inbox by the routing
#            script before delivery, and removed when the client's DOWNSTREAM_ACK is written),
# alternating, RUNS times each (default 3). Per run: pushes delivered per second, push → client
# latency (p50/p99), CPU of wsgw and of redis-server per delivered push (from /proc). Ratios are
# durable / local within the same run.
#
#   scripts/bench/durable.sh [--users 1000] [--rate 3000] [--seconds 10]
#
# Release build of wsgw; a private Redis on 127.0.0.1:19301; nodes on 127.0.0.1:1931x. Results:
# target/bench/durable.jsonl and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
users=1000 rate=3000 seconds=10 runs=${RUNS:-3}
while [ $# -gt 0 ]; do
  case $1 in
    --users) users=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "usage: $0 [--users N] [--rate N] [--seconds N]" >&2; exit 2 ;;
  esac
done
scripts/services.sh tools
bin=${BENCH_BIN:-target/release/wsgw}
[ -x "$bin" ] || cargo build --release --locked --bin wsgw
out=target/bench && mkdir -p $out && : >$out/durable.jsonl
secret=bench-durable-secret-0123456789abcdef
# Cluster mode (durable) needs a token per role; loadtest reads the backend one from here too.
export WSGW_SERVER__GRPC__TOKENS__BACKEND=bench-backend WSGW_SERVER__GRPC__TOKENS__PEER=bench-peer
export WSGW_SERVER__GRPC__TOKENS__OPERATOR=bench-operator
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

redis-server --bind 127.0.0.1 --port 19301 --save '' --appendonly no >/dev/null 2>&1 &
redis_pid=$! && pids+=($redis_pid)
for _ in $(seq 100); do redis-cli -p 19301 ping >/dev/null 2>&1 && break; sleep 0.05; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

one() { # mode run
  local mode=$1 i=$2 url=""
  [ "$mode" = durable ] && url=redis://127.0.0.1:19301
  WSGW_NODE__ID=bench-$mode WSGW_AUTH__JWT__SECRET=$secret WSGW_LOG__LEVEL=warn \
    WSGW_SERVER__WEBSOCKET__LISTEN=127.0.0.1:19312 WSGW_SERVER__GOVERNOR__LISTEN=127.0.0.1:19313 \
    WSGW_SERVER__GRPC__LISTEN=127.0.0.1:19314 WSGW_CLUSTER__REDIS__URL=$url \
    WSGW_CLUSTER__REDIS__PREFIX="bench$i:" "$bin" serve >/dev/null 2>&1 &
  local node=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19313/ready >/dev/null && break; sleep 0.1; done
  local w0 r0
  w0=$(cpu_ticks $node) r0=$(cpu_ticks $redis_pid)
  "$bin" loadtest --scenario push --url ws://127.0.0.1:19312/ -n "$users" --secret $secret \
    --push-addr 127.0.0.1:19314 --push-rate "$rate" --duration "${seconds}s" \
    --json $out/durable-run.json >/dev/null 2>&1 || true
  local w1 r1
  w1=$(cpu_ticks $node) r1=$(cpu_ticks $redis_pid)
  kill $node && wait $node 2>/dev/null || true
  python3 - "$mode" "$i" $out/durable-run.json $((w1 - w0)) $((r1 - r0)) <<'PY' | tee -a $out/durable.jsonl
import json, sys
mode, run, path, wsgw_ticks, redis_ticks = sys.argv[1:]
p = json.load(open(path))["push"]
n = max(p["answered"], 1)
print(json.dumps({"mode": mode, "run": int(run), "delivered": p["answered"],
    "per_second": round(p["per_second"]), "p50_ms": p["latency_ms"]["p50"],
    "p99_ms": p["latency_ms"]["p99"], "errors": sum(p["errors"].values()),
    "wsgw_cpu_us_per_push": round(int(wsgw_ticks) * 10_000 / n, 1),
    "redis_cpu_us_per_push": round(int(redis_ticks) * 10_000 / n, 1)}))
PY
}

for i in $(seq "$runs"); do one local "$i"; one durable "$i"; done
python3 - $out/durable.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def col(mode, k):
    return [r[k] for r in rows if r["mode"] == mode]
print("\n| | local (no Redis) | durable (Redis record) | durable / local |")
print("|---|---|---|---|")
for k, label in [("per_second", "pushes delivered/s"), ("p50_ms", "latency p50 (ms)"),
                 ("p99_ms", "latency p99 (ms)"), ("wsgw_cpu_us_per_push", "wsgw CPU µs/push"),
                 ("redis_cpu_us_per_push", "redis-server CPU µs/push")]:
    a, b = col("local", k), col("durable", k)
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{mb / ma:.2f}x" if ma else "—"
    print(f"| {label} | {ma} ({min(a)}–{max(a)}) | {mb} ({min(b)}–{max(b)}) | {ratio} |")
PY
