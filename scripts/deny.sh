#!/usr/bin/env bash
# The dependency policy (deny.toml), checked with cargo-deny: licenses, sources, duplicate
# versions (listed as warnings), and the RustSec advisories.
#
# cargo-deny is installed from crates.io into target/tools on first use (a few minutes).
# The advisory database lives on GitHub. When it cannot be fetched (these CI machines reach
# only the package registries) the advisories are checked against a copy already on this
# machine (~/.cargo/advisory-dbs, e.g. one cloned from a mirror), and when there is none the
# script says so and the other checks still decide the result.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TOOLS_DIR:-$PWD/target/tools}
version=0.20.2
deny=$tools/bin/cargo-deny

log() { printf 'deny: %s\n' "$*" >&2; }

if ! { [ -x "$deny" ] && "$deny" --version | grep -q "$version"; }; then
  log "installing cargo-deny $version into $tools"
  cargo install --quiet --locked --version "$version" --root "$tools" cargo-deny
fi

"$deny" check --hide-inclusion-graph bans licenses sources

dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
timeout 60 "$deny" fetch db >/dev/null 2>&1 || log "the advisory database could not be fetched"
if db=$(compgen -G "$dbs/advisory-db-*/crates" | head -1) && [ -n "$db" ]; then
  db=$(dirname "$db")
  log "advisories: the RustSec database of $(git -C "$db" log -1 --format=%cs 2>/dev/null || echo '?') in $db"
  "$deny" --offline check advisories
else
  log "advisories NOT checked: the RustSec database cannot be fetched from this machine" \
    "and no copy is in $dbs (docs/security.md has the last run)"
fi
