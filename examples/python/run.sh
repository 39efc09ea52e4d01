#!/usr/bin/env bash
# Runs the Python example backend (examples/python/backend.py): installs grpcio and grpcio-tools
# from PyPI into target/tools/pyvenv once, generates the Python stubs from proto/ into
# target/tools/pystubs, then starts the backend with the given arguments.
#
#   examples/python/run.sh --listen 127.0.0.1:9100 --biz 9999 [--push-back 127.0.0.1:9004]
#   examples/python/run.sh --setup-only      # install and generate, then exit
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tools=${TOOLS_DIR:-$root/target/tools}
venv=$tools/pyvenv
stubs=$tools/pystubs
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
fi
proto=$root/proto/gatewayapi/v1/gateway.proto
if [ ! -f "$stubs/gatewayapi/v1/gateway_pb2_grpc.py" ] || [ "$proto" -nt "$stubs/gatewayapi/v1/gateway_pb2.py" ]; then
  mkdir -p "$stubs"
  "$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" --python_out="$stubs" \
    --grpc_python_out="$stubs" "$proto"
fi
[ "${1:-}" = "--setup-only" ] && exit 0
PYTHONPATH=$stubs exec "$venv/bin/python" "$root/examples/python/backend.py" "$@"
