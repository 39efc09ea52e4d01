#!/usr/bin/env bash
# Side-by-side benchmark: wsgw against the kernel floor (one write() per connection), nginx +
# nchan, Node.js ws and pushpin, under the same load on the same machine.
#
#   scripts/bench/run.sh                  # RUNS=3 SIZES="10000 18000" SERVERS="floor wsgw nchan ws pushpin"
#   SERVERS="floor base wsgw" BASE_BIN=/path/to/older/wsgw scripts/bench/run.sh   # before/after
#
# Each server is pinned to CPU 0, the load (benches/fanout.rs) to CPU 1. For each server, size
# and run it measures: connection setup rate and the server CPU per connection set up, server
# RSS per idle connection, the time to fan one 64-byte message out to every connection (median
# of 5) and sustained deliveries/s over a burst of 20 back-to-back messages. Results: $OUT/raw.jsonl, results.json and results.md
# (median and min–max over the runs), plus the versions. A benchmark: it never fails on a number.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
runs=${RUNS:-3}
sizes=${SIZES:-"10000 18000"}
servers=${SERVERS:-"floor wsgw nchan ws pushpin"}
out=${OUT:-$root/target/bench}
scratch=$(mktemp -d)
peers=$root/../shared/peers
mkdir -p "$out"
: >"$out/raw.jsonl"
ulimit -n 20000

need_apt() { dpkg -s "$1" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q "$@" >/dev/null; }; }
case " $servers " in *" nchan "*) need_apt nginx libnginx-mod-nchan ;; esac
case " $servers " in *" pushpin "*) need_apt pushpin ;; esac
case " $servers " in *" ws "*|*" pushpin "*)
  (cd "$scratch" && npm install --silent --no-audit --no-fund ws@8 >/dev/null) ;;
esac
cargo build --release --locked --bin wsgw
cargo bench --locked --bench fanout --no-run 2>&1 | tail -1
fanout=$(ls -t target/release/deps/fanout-* | grep -v '\.d$' | head -1)

pids=()
start() {
  local name=$1
  case $name in
    floor)
      taskset -c 0 "$fanout" floor --port 8083 & pids=($!)
      url=ws://127.0.0.1:8083/ publish=http:http://127.0.0.1:8084/pub port=8083 extra=() ;;
    wsgw|base)
      bin=target/release/wsgw
      [ "$name" = base ] && bin=${BASE_BIN:?BASE_BIN names the wsgw binary to compare with}
      WSGW_SERVER__WEBSOCKET__LISTEN=127.0.0.1:9702 WSGW_SERVER__GOVERNOR__LISTEN=127.0.0.1:9703 \
      WSGW_SERVER__GRPC__LISTEN=127.0.0.1:9704 WSGW_AUTH__JWT__SECRET=bench-secret-0123456789abcdef0123456789 WSGW_LOG__LEVEL=warn \
        taskset -c 0 "$bin" serve & pids=($!)
      url=ws://127.0.0.1:9702/ publish=wsgw:127.0.0.1:9704 port=9702 extra=(--token-secret bench-secret-0123456789abcdef0123456789) ;;
    nchan)
      mkdir -p "$scratch/nchan/logs" "$scratch/nchan/tmp"
      sed "s#@DIR@#$scratch#g" "$peers/nchan-nginx.conf" >"$scratch/nchan/nginx.conf"
      taskset -c 0 nginx -p "$scratch/nchan" -c nginx.conf
      sleep 0.5
      master=$(cat "$scratch/nchan/nginx.pid")
      pids=($master $(pgrep -P "$master" | tr '\n' ' '))
      url=ws://127.0.0.1:8082/sub publish=http:http://127.0.0.1:8082/pub port=8082 extra=() ;;
    ws)
      PORT=8081 NODE_PATH=$scratch/node_modules taskset -c 0 node "$peers/ws-broadcast.js" >/dev/null & pids=($!)
      url=ws://127.0.0.1:8081/sub publish=http:http://127.0.0.1:8081/pub port=8081 extra=() ;;
    pushpin)
      mkdir -p "$scratch/pushpin/run" "$scratch/pushpin/log"
      sed "s#@DIR@#$scratch#g" "$peers/pushpin.conf.tmpl" >"$scratch/pushpin/pushpin.conf"
      cp "$peers/routes" "$scratch/pushpin/routes"
      PORT=8090 node "$peers/pushpin-backend.js" >/dev/null & backend=$!
      taskset -c 0 pushpin --config "$scratch/pushpin/pushpin.conf" --port 127.0.0.1:7999 >/dev/null 2>&1 & runner=$!
      sleep 3
      pids=($runner $(pgrep -P "$runner" | tr '\n' ' '))
      url=ws://127.0.0.1:7999/ publish=pushpin:http://127.0.0.1:5561/publish/ port=7999 extra=() ;;
  esac
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
  echo "bench: $name did not come up" >&2
}

stop() {
  case $1 in
    nchan) kill "$(cat "$scratch/nchan/nginx.pid")" 2>/dev/null || true ;;
    pushpin) kill "${backend:-}" 2>/dev/null || true; kill "${pids[@]}" 2>/dev/null || true ;;
    *) kill "${pids[@]}" 2>/dev/null || true ;;
  esac
  wait 2>/dev/null || true
  sleep 1
}
trap 'for s in $servers; do stop $s; done 2>/dev/null; rm -rf "$scratch"' EXIT

for size in $sizes; do
  for server in $servers; do
    for run in $(seq "$runs"); do
      start "$server"
      pidlist=$(IFS=,; echo "${pids[*]}")
      line=$(taskset -c 1 "$fanout" client --url "$url" --conns "$size" --publish "$publish" \
        --server-pid "$pidlist" "${extra[@]}" 2>/dev/null | tail -1 || true)
      echo "{\"server\":\"$server\",\"size\":$size,\"run\":$run,\"result\":${line:-null}}" | tee -a "$out/raw.jsonl"
      stop "$server"
    done
  done
done

{
  echo "wsgw: $(target/release/wsgw --version) ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  [ -n "${BASE_BIN:-}" ] && echo "base: $BASE_BIN"
  echo "rustc: $(rustc -V)"
  case " $servers " in *" nchan "*)
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*\///'), nchan $(dpkg -s libnginx-mod-nchan | awk '/^Version/{print $2}')" ;; esac
  case " $servers " in *" ws "*)
    echo "node: $(node -v), ws $(node -p "require('$scratch/node_modules/ws/package.json').version")" ;; esac
  case " $servers " in *" pushpin "*) echo "pushpin: $(dpkg -s pushpin | awk '/^Version/{print $2}')" ;; esac
  echo "kernel: $(uname -r), cpus: $(nproc) ($(sed -n "s/^model name\t*: //p" /proc/cpuinfo | head -1))"
} >"$out/versions.txt"
python3 "$root/scripts/bench/summarize.py" "$out/raw.jsonl" "$out/versions.txt" "$out/results.json" >"$out/results.md"
cat "$out/results.md"
