#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn fuzzing-client suite (via the PyPI package kosoku)
# against wsgw's conformance echo endpoint — the same WebSocket stack and limits machinery as
# the gateway, with auth and the message protocol switched off — and fails on any FAILED case.
#
#   scripts/autobahn.sh [path/to/wsgw]     (default: target/debug/wsgw)
#
# Excludes only 9.* (performance). Compression cases (12.*, 13.*) report UNIMPLEMENTED: wsgw
# leaves permessage-deflate off (the README's Protocol section has the evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/wsgw}
tools=${TOOLS_DIR:-$PWD/target/tools}
port=${AUTOBAHN_PORT:-9301}
out=$(mktemp -d)

if [ ! -x "$tools/venv/bin/kosoku" ]; then
  echo "autobahn: installing kosoku into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check kosoku
fi

WSGW_SERVER__WEBSOCKET__LISTEN=127.0.0.1:$port \
WSGW_SERVER__GOVERNOR__LISTEN=127.0.0.1:$((port + 1)) \
WSGW_SERVER__WEBSOCKET__CONFORMANCE_ECHO=true \
WSGW_AUTH__JWT__SECRET=unused-by-the-echo-endpoint-0123456789 \
WSGW_LIMITS__MAX_MESSAGE_SIZE=16MiB \
WSGW_LIMITS__OUTBOUND_QUEUE_BYTES=64MiB \
WSGW_LOG__LEVEL=warn \
  "$bin" serve >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$((port + 1))/ready" >/dev/null && break
  sleep 0.1
done

# kosoku's exit status is non-zero whenever a case is not OK (UNIMPLEMENTED included): the
# verdict below is taken from its report instead.
(cd "$out" && timeout 900 "$tools/venv/bin/kosoku" -m fuzzingclient "127.0.0.1:$port" -x '9.*' \
  -p 4 -o "$out/reports" >"$out/kosoku.log" 2>&1) || true
[ -f "$out/reports/index.json" ] || { tail -20 "$out/kosoku.log"; echo "autobahn: no report"; exit 1; }

python3 - "$out/reports/index.json" <<'PY'
import collections, json, sys
index = json.load(open(sys.argv[1]))
by = collections.defaultdict(list)
for cases in index.values():
    for case, result in cases.items():
        by[result["behavior"]].append(case)
print("autobahn:", ", ".join(f"{k} {len(v)}" for k, v in sorted(by.items())))
for kind in ("NON-STRICT", "INFORMATIONAL"):
    if by.get(kind):
        print(f"  {kind}: {' '.join(sorted(by[kind]))}")
if by.get("FAILED") or by.get("WRONG CODE"):
    print("  FAILED:", " ".join(sorted(by.get("FAILED", []) + by.get("WRONG CODE", []))))
    sys.exit(1)
PY
