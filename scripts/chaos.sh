#!/usr/bin/env bash
# The fault harness (docs/reliability.md): three wsgw nodes, Redis, etcd and a Kafka-protocol
# broker on loopback, a steady stream of keyed pushes (half through PushService, half through
# Kafka) to users spread over the nodes who acknowledge them, reconnect with back-off and follow
# REDIRECT (`wsgw loadtest --scenario verify`), and one fault at a time:
#
#   none      a baseline run
#   kill9     SIGKILL of a node holding users (and the Kafka partitions it consumed), restarted
#   rolling   a rolling SIGTERM restart of every node
#   redis     Redis killed (SIGKILL) and restarted (append-only file, fsync always)
#   etcd      etcd killed and restarted
#   kafka     the broker cut off (every connection dropped, new ones refused) for 6 s
#   slow      node n2's path to Redis: 150 ms per chunk and 5% stalls of 1 s, for 8 s
#   backend   the business backend (examples/backend.rs) killed (SIGKILL) and restarted
#
# Users also send upstream messages (resent with the same key after an error or a reconnect
# until acknowledged); the backend logs every call, so each fault also reports upstream messages
# acknowledged vs backend calls: an acknowledged message the backend never saw is lost too.
#
# For each it prints pushes accepted, delivered, duplicates and lost (must be 0), refused and
# uncertain calls, reconnects and redirects, the longest gap without an accepted push and how
# long until every node was ready again. A lost push makes it exit 1.
#
#   scripts/chaos.sh [--short] [fault ...]     default: every fault, 40 s each; --short: 15 s
#                                               (rolling: at least 45 s)
#   scripts/chaos.sh --soak [minutes]           no fault: 10,000 users with churn, upstream and
#                                               pushes for 30 minutes; samples every node's RSS,
#                                               open files, tasks and the Redis keys (soak.md)
#
# Everything runs on 127.0.0.1, ports 19000-19199, state in target/chaos/; processes it starts
# are stopped by PID on exit. Results: target/chaos/results.md (and .jsonl). CHAOS_BIN picks the
# wsgw binary; CHAOS_KAFKA_DEBUG=cgrp,fetch turns on librdkafka's debug log in the nodes' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=40 users=300 rate=200 up_rate=0.2 reconnect=0 soak=0
faults=()
while [ $# -gt 0 ]; do
  a=$1; shift
  case $a in
    --short) seconds=15 users=100 rate=100 ;;
    --soak)
      soak=1 users=10000 rate=150 up_rate=0.01 reconnect=20 faults=(soak)
      seconds=$(( ${1:-30} * 60 )); [[ ${1:-} =~ ^[0-9]+$ ]] && shift
      ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) faults+=("$a") ;;
  esac
done
[ ${#faults[@]} -gt 0 ] || faults=(none kill9 rolling redis etcd kafka slow backend)
# The soak's driver holds 10,000 connections: raise the open-files limit as far as allowed.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
state=$root/target/chaos
rm -rf "$state" && mkdir -p "$state"
scripts/services.sh tools
bin=${CHAOS_BIN:-$root/target/debug/wsgw}
[ -x "$bin" ] || cargo build --locked --bin wsgw
backend_bin=${CHAOS_BACKEND:-$root/target/debug/examples/backend}
[ -x "$backend_bin" ] || cargo build --locked --example backend
tansu=$root/target/tools/bin/tansu
secret=chaos-harness-secret-0123456789abcdef
# A token per role (required in cluster mode); the driver reads the backend one from here.
export WSGW_SERVER__GRPC__TOKENS__BACKEND=chaos-backend-token
peer_token=chaos-peer-token operator_token=chaos-operator-token
log() { printf 'chaos: %s\n' "$*" >&2; }

# Ports: services, proxies, nodes (n1..n3: ws 19i2, governor 19i3, grpc 19i4).
redis=19001 redis_slow=19011 etcd=19002 etcd_peer=19003 kafka=19004 kafka_proxy=19014
backend=19005 partitions=3
pids=()
declare -A pid_of
cleanup() {
  for p in "${pids[@]}" "${pid_of[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.05; done
  log "port $1 did not open"; return 1
}

start_redis() {
  redis-server --bind 127.0.0.1 --port $redis --dir "$state" --save '' \
    --appendonly yes --appendfsync always >>"$state/redis.log" 2>&1 &
  pid_of[redis]=$!
  wait_port $redis
}
start_etcd() {
  etcd --name chaos --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:$etcd --advertise-client-urls http://127.0.0.1:$etcd \
    --listen-peer-urls http://127.0.0.1:$etcd_peer \
    --initial-advertise-peer-urls http://127.0.0.1:$etcd_peer \
    --initial-cluster chaos=http://127.0.0.1:$etcd_peer >>"$state/etcd.log" 2>&1 &
  pid_of[etcd]=$!
  wait_port $etcd
}
proxy() { # listen target state-file
  python3 scripts/chaos/proxy.py "$1" "$2" "$3" >>"$state/proxy-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}

node_config() { # n i
  local n=$1 i=$2 redis_port=$redis props="" level=info
  [ "$n" = n2 ] && redis_port=$redis_slow
  # Quoted: the debug contexts are comma-separated, and this is a YAML flow mapping.
  if [ -n "${CHAOS_KAFKA_DEBUG:-}" ]; then
    props="debug: \"$CHAOS_KAFKA_DEBUG\", log_level: \"7\"" level=info,librdkafka=debug
  fi
  cat <<EOF
node: { id: $n }
server:
  websocket: { listen: "127.0.0.1:191${i}2" }
  governor: { listen: "127.0.0.1:191${i}3" }
  grpc:
    listen: "127.0.0.1:191${i}4"
    tokens: { backend: "$WSGW_SERVER__GRPC__TOKENS__BACKEND", peer: "$peer_token", operator: "$operator_token" }
auth: { jwt: { secret: "$secret" } }
backends: [{ biz_id: 9, endpoints: ["127.0.0.1:$backend"] }]
downstream: { retry_interval: 2s, max_retries: 5 }
shutdown: { drain_timeout: 10s, ack_wait: 2s }
log: { format: json, level: "$level" }
cluster:
  redis: { url: "redis://127.0.0.1:$redis_port", prefix: "chaos:", session_ttl: 6s, inbox_max: 1000 }
  etcd: { endpoints: ["127.0.0.1:$etcd"], prefix: "/chaos", lease_ttl: 5s }
  kafka:
    brokers: "127.0.0.1:$kafka_proxy"
    group_id: chaos
    push_topic: chaos-push
    presence_topic: ""
    start_from: earliest
    route_timeout: 10s
    properties: { $props }
EOF
}
start_backend() {
  "$backend_bin" --listen 127.0.0.1:$backend --biz 9 --log-keys >>"$state/backend-keys.log" 2>>"$state/backend.log" &
  pid_of[backend]=$!
  wait_port $backend
}
start_node() { # n
  local i=${1#n}
  node_config "$1" "$i" >"$state/$1.yaml"
  "$bin" serve --config "$state/$1.yaml" >>"$state/$1.log" 2>&1 &
  pid_of[$1]=$!
}
ready() { curl -sf "http://127.0.0.1:191${1#n}3/ready" >/dev/null 2>&1; }
wait_ready() { # seconds nodes...
  local limit=$1; shift
  for _ in $(seq $((limit * 10))); do
    local all=1
    for n in "$@"; do ready "$n" || all=0; done
    [ $all = 1 ] && return 0
    sleep 0.1
  done
  return 1
}
# Partitions of the push topic held across the nodes (websocket_gateway_kafka_partitions_assigned).
partitions_held() {
  local sum=0 n held
  for n in n1 n2 n3; do
    held=$(curl -sf "http://127.0.0.1:191${n#n}3/metrics" | awk '/^websocket_gateway_kafka_partitions_assigned / {print $2}')
    sum=$((sum + ${held:-0}))
  done
  echo $sum
}
# Waits until every partition is held again. tansu 0.6 never completes a rebalance whose
# leader left while the group was still forming (its Forming::leave keeps the departed leader,
# docs/reliability.md, finding 2), so the harness, like a careful deploy, lets each rebalance
# finish before stopping the next member.
wait_group() { # seconds
  for _ in $(seq $(($1 * 5))); do [ "$(partitions_held)" -ge $partitions ] && return 0; sleep 0.2; done
  log "the push topic's consumer group did not settle within $1 s"; return 1
}
stop_node() { # n signal
  local p=${pid_of[$1]}
  kill "-$2" "$p" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

log "starting Redis, etcd, the broker (behind a proxy) and three nodes"
start_redis
start_etcd
proxy $redis_slow $redis "$state/redis-path"
"$tansu" broker --listener-url tcp://127.0.0.1:$kafka \
  --advertised-listener-url tcp://127.0.0.1:$kafka_proxy --storage-engine memory://tansu/ \
  >>"$state/kafka.log" 2>&1 &
pids+=($!)
wait_port $kafka
proxy $kafka_proxy $kafka "$state/kafka-path"
"$tansu" topic create chaos-push --broker tcp://127.0.0.1:$kafka --partitions $partitions >/dev/null
start_backend
for n in n1 n2 n3; do start_node $n; done
wait_ready 60 n1 n2 n3 || { log "nodes did not become ready"; tail -n 5 "$state"/n*.log; exit 1; }
wait_group 60 || exit 1

inject() { # fault; prints nothing; sets fault_end
  case $1 in
    none) ;;
    kill9) stop_node n1 KILL; sleep 2; start_node n1 ;;
    # A deploy tool's rolling restart: the next node only after this one is ready and the
    # push topic's consumer group has settled again (every partition held by some node; see
    # wait_group), plus 3 s (minReadySeconds in Kubernetes terms).
    rolling)
      for n in n1 n2 n3; do
        stop_node $n TERM; start_node $n; wait_ready 30 $n || true; wait_group 60 || true; sleep 3
      done ;;
    redis) stop_node redis KILL; sleep 3; start_redis ;;
    etcd) stop_node etcd KILL; sleep 3; start_etcd ;;
    kafka) echo cut >"$state/kafka-path"; sleep 6; echo open >"$state/kafka-path" ;;
    slow) echo "slow 150 0.05" >"$state/redis-path"; sleep 8; echo open >"$state/redis-path" ;;
    backend) stop_node backend KILL; sleep 3; start_backend ;;
    soak) ;;
    *) log "unknown fault $1"; exit 2 ;;
  esac
}

urls=() push_addrs=()
for i in 1 2 3; do urls+=(--url "ws://127.0.0.1:191${i}2/"); push_addrs+=("127.0.0.1:191${i}4"); done
addrs=$(IFS=,; echo "${push_addrs[*]}")
: >"$state/results.jsonl"
failed=0
# Soak mode: every 30 s, per node: RSS, open files, live tasks, error counters; and Redis keys.
sample() {
  local t0=$1
  echo "secs,node,rss_kb,fds,tasks,errors,conns,redis_keys" >"$state/soak.csv"
  while :; do
    local keys now
    keys=$(redis-cli -p $redis dbsize 2>/dev/null || echo -1)
    now=$(( $(date +%s) - t0 ))
    for n in n1 n2 n3; do
      local p=${pid_of[$n]} rss fds tasks
      rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo -1)
      fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
      tasks=$(curl -sf "http://127.0.0.1:191${n#n}3/metrics" | awk '
        /^websocket_gateway_runtime_tasks / {t = $2}
        /^websocket_gateway_(backend_errors_total|decode_errors_total|outbound_dropped_total)/ {e += $2}
        /^websocket_gateway_cluster_events_total.*(error|dropped)/ {e += $2}
        /^websocket_gateway_connections_open / {c = $2}
        END {printf "%d,%d,%d", t, e, c}')
      echo "$now,$n,$rss,$fds,$tasks,$keys" >>"$state/soak.csv"
    done
    sleep 30
  done
}

for fault in "${faults[@]}"; do
  # A rolling restart waits for the group to settle after each node (about 10 s with tansu):
  # pushes keep flowing until the last node is back.
  secs=$seconds
  [ "$fault" = rolling ] && [ "$secs" -lt 45 ] && secs=45
  log "fault: $fault (${secs}s of pushes at ${rate}/s to $users users)"
  backend_from=$(wc -l <"$state/backend-keys.log")
  timeout $((secs + 300)) "$bin" loadtest --scenario verify "${urls[@]}" -n $users --ramp 500 --secret "$secret" \
    --biz 9 --first-user $((RANDOM * 1000)) --push-addr "$addrs" --push-rate $rate \
    --kafka-brokers 127.0.0.1:$kafka_proxy --kafka-topic chaos-push \
    --upstream-rate $up_rate --upstream-keys "$state/$fault.upstream" --reconnect-rate $reconnect \
    --duration "${secs}s" --settle 60s --json "$state/$fault.json" \
    >"$state/$fault.out" 2>"$state/$fault.err" &
  driver=$!
  sampler=
  if [ $soak = 1 ]; then sample "$(date +%s)" & sampler=$!; fi
  sleep $((secs / 3))
  began=$(date +%s.%N)
  inject "$fault"
  injected=$(date +%s.%N)
  ready_after=-1
  if wait_ready 60 n1 n2 n3; then ready_after=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$injected"); fi
  status=0
  wait $driver || status=$?
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  [ -s "$state/$fault.json" ] || { log "the driver failed:"; tail -n 5 "$state/$fault.err"; exit 1; }
  tail -n +$((backend_from + 1)) "$state/backend-keys.log" >"$state/$fault.backend"
  python3 - "$fault" "$state/$fault" "$began" "$injected" "$ready_after" "$status" \
    >>"$state/results.jsonl" <<'EOF'
import json, sys
fault, base, began, injected, ready, status = sys.argv[1:]
r = json.load(open(base + ".json"))
calls = [l.split()[1] for l in open(base + ".backend") if len(l.split()) == 3]
acked = {l.strip() for l in open(base + ".upstream") if l.strip()}
lost_up = sorted(acked - set(calls))
r.update(fault=fault, fault_secs=round(float(injected) - float(began), 1),
         ready_after_secs=round(float(ready), 1), exit=int(status),
         backend_calls=len(calls), backend_duplicates=len(calls) - len(set(calls)),
         upstream_lost=len(lost_up), upstream_lost_keys=lost_up[:10])
if lost_up and r["exit"] == 0:
    r["exit"] = 1
print(json.dumps(r))
EOF
  exit_of=$(tail -n 1 "$state/results.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exit"])')
  [ "$exit_of" = 0 ] || { failed=1; log "fault $fault: pushes or upstream messages lost (see $state/$fault.json)"; }
done

python3 - "$state/results.jsonl" >"$state/results.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| fault | accepted (gRPC + Kafka) | delivered | lost | duplicates | refused | uncertain "
      "| upstream acked / backend calls (duplicates) / errors answered | upstream lost "
      "| connects | redirects | longest gap without an accepted push (gRPC / Kafka) | fault lasted "
      "| all nodes ready again after |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    acc = r["accepted_grpc"] + r["accepted_kafka"]
    ready = f'{r["ready_after_secs"]} s' if r["ready_after_secs"] >= 0 else "no"
    print(f'| {r["fault"]} | {acc} ({r["accepted_grpc"]} + {r["accepted_kafka"]}) '
          f'| {r["delivered"]} | **{r["lost"]}** | {r["duplicates"]} | {r["refused"]} '
          f'| {r["uncertain"]} | {r["upstream_acked"]} / {r["backend_calls"]} '
          f'({r["backend_duplicates"]}) / {r["upstream_errors"]} '
          f'| **{r["upstream_lost"]}** | {r["connects"]} | {r["redirects"]} '
          f'| {r["max_gap_grpc_ms"]} / {r["max_gap_kafka_ms"]} ms '
          f'| {r["fault_secs"]} s | {ready} |')
EOF
cat "$state/results.md"
if [ $soak = 1 ]; then
  # Warm-up: past the upstream dedup window (10 min), whose keys fill Redis until then.
  python3 scripts/chaos/soak.py "$state/soak.csv" $((seconds > 1200 ? 720 : seconds / 4)) |
    tee "$state/soak.md"
fi
exit $failed
