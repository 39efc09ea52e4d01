#!/usr/bin/env bash
# The cost of the durable record (docs/reliability.md) and of crossing nodes (docs/benchmarks.md):
# the same push load, clients on node A, in three modes
#   local    one node without Redis (in-memory directory: pushes are not recorded),
#   durable  one node with Redis (cluster mode: every push is recorded in its user's inbox by the
#            routing script before delivery, and removed when the client's DOWNSTREAM_ACK is
#            written), pushes sent to A,
#   cross    as durable, with a second node B on the same Redis; the pushes are sent to B, which
#            finds the users on A in the directory and hands them over (NodeService.Deliver),
# alternating, RUNS times each (default 3). Per run: pushes delivered per second, push → client
# latency (p50/p99), CPU of wsgw (both nodes in cross) and of redis-server per delivered push
# (from /proc). Ratios are durable / local and cross / durable within the same run.
#
#   scripts/bench/durable.sh [--users 1000] [--rate 3000] [--seconds 10]
#
# Release build of wsgw; a private Redis on 127.0.0.1:19301; nodes on 127.0.0.1:1931x/1932x.
# Results: target/bench/durable.jsonl and a table on stdout.
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

start_node() { # name port-prefix redis-url prefix
  WSGW_NODE__ID=bench-$1 WSGW_AUTH__JWT__SECRET=$secret WSGW_LOG__LEVEL=warn \
    WSGW_SERVER__WEBSOCKET__LISTEN=127.0.0.1:${2}2 WSGW_SERVER__GOVERNOR__LISTEN=127.0.0.1:${2}3 \
    WSGW_SERVER__GRPC__LISTEN=127.0.0.1:${2}4 WSGW_CLUSTER__REDIS__URL=$3 \
    WSGW_CLUSTER__REDIS__PREFIX="$4" "$bin" serve >/dev/null 2>&1 &
  nodes+=($!) && pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${2}3/ready" >/dev/null && break; sleep 0.1; done
}

one() { # mode run
  local mode=$1 i=$2 url="" push=1931 nodes=()
  [ "$mode" = local ] || url=redis://127.0.0.1:19301
  start_node "$mode-a" 1931 "$url" "bench$i$mode:"
  [ "$mode" = cross ] && start_node "$mode-b" 1932 "$url" "bench$i$mode:" && push=1932
  local w0=0 w1=0 r0 r1 n
  for n in "${nodes[@]}"; do w0=$((w0 + $(cpu_ticks "$n"))); done
  r0=$(cpu_ticks $redis_pid)
  "$bin" loadtest --scenario push --url ws://127.0.0.1:19312/ -n "$users" --secret $secret \
    --push-addr "127.0.0.1:${push}4" --push-rate "$rate" --duration "${seconds}s" \
    --json $out/durable-run.json >/dev/null 2>&1 || true
  for n in "${nodes[@]}"; do w1=$((w1 + $(cpu_ticks "$n"))); done
  r1=$(cpu_ticks $redis_pid)
  for n in "${nodes[@]}"; do kill "$n" && wait "$n" 2>/dev/null || true; done
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

for i in $(seq "$runs"); do one local "$i"; one durable "$i"; one cross "$i"; done
python3 - $out/durable.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def col(mode, k):
    return [r[k] for r in rows if r["mode"] == mode]
def cell(v):
    return f"{statistics.median(v)} ({min(v)}–{max(v)})"
def ratio(a, b):
    return f"{statistics.median(b) / statistics.median(a):.2f}x" if statistics.median(a) else "—"
print("\n| | local (no Redis) | durable (Redis record) | cross (pushed to B, clients on A) | durable / local | cross / durable |")
print("|---|---|---|---|---|---|")
for k, label in [("per_second", "pushes delivered/s"), ("p50_ms", "latency p50 (ms)"),
                 ("p99_ms", "latency p99 (ms)"), ("wsgw_cpu_us_per_push", "wsgw CPU µs/push (all nodes)"),
                 ("redis_cpu_us_per_push", "redis-server CPU µs/push")]:
    a, b, c = col("local", k), col("durable", k), col("cross", k)
    print(f"| {label} | {cell(a)} | {cell(b)} | {cell(c)} | {ratio(a, b)} | {ratio(b, c)} |")
PY
