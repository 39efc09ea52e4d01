#!/usr/bin/env bash
# The TypeScript client's tests (clients/js): unit tests, tests against real `wsgw serve` nodes
# (a two-node cluster on the Redis and etcd of scripts/services.sh), and the demo page driven in
# headless Chromium. Installs Node.js, the npm packages and Debian's chromium when missing.
# Run by scripts/test.sh after the services are up.
set -euo pipefail
cd "$(dirname "$0")/.."

apt() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}
command -v node >/dev/null || { echo "installing nodejs npm"; apt nodejs npm; }
command -v "${CHROMIUM:-/usr/bin/chromium}" >/dev/null || { echo "installing chromium"; apt chromium; }

cargo build --locked --bin wsgw --example backend
cd clients/js
npm ci --no-audit --no-fund --loglevel=error
npm test
npm run test:browser
