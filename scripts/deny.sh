#!/usr/bin/env bash
# The dependency policy (deny.toml), checked with cargo-deny: licenses, sources, duplicate
# versions (listed as warnings), and the RustSec advisories.
#
#   scripts/deny.sh                      run every check (the test command calls this)
#   scripts/deny.sh snapshot <checkout>  replace the committed advisory snapshot with <checkout>'s
#
# cargo-deny is installed from crates.io into target/tools on first use (a few minutes).
# The advisory database lives on GitHub. The script fetches it when it can; these CI machines
# reach only the package registries, so otherwise it uses the newer of a copy already on this
# machine (~/.cargo/advisory-dbs) and the dated snapshot committed in
# third_party/rustsec-advisory-db. It names the database it used and warns when it is older
# than 90 days.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${TOOLS_DIR:-$PWD/target/tools}
version=0.20.2
deny=$tools/bin/cargo-deny
vendored=$PWD/third_party/rustsec-advisory-db
# cargo-deny's directory name for the default database URL (github.com/RustSec/advisory-db).
dbdir=advisory-db-3157b0e258782691

log() { printf 'deny: %s\n' "$*" >&2; }

# snapshot <checkout>: the committed snapshot becomes <checkout>'s advisories.
snapshot() {
  local src=$1
  git -C "$src" archive --format=tar HEAD crates LICENSE.txt | gzip -9n >"$vendored/snapshot.tar.gz"
  git -C "$src" show -s --format='commit=%H%ndate=%cI' HEAD >"$vendored/SNAPSHOT"
  log "snapshot of $(tr "\n" " " <"$vendored/SNAPSHOT")written to $vendored"
}

# The committed snapshot as a git repository (cargo-deny reads the commit's date), under $1.
unpack_snapshot() {
  local root=$1 commit date dir
  commit=$(sed -n 's/^commit=//p' "$vendored/SNAPSHOT")
  date=$(sed -n 's/^date=//p' "$vendored/SNAPSHOT")
  dir=$root/$dbdir
  if [ "$(cat "$dir/.snapshot" 2>/dev/null)" != "$commit" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    tar -xzf "$vendored/snapshot.tar.gz" -C "$dir"
    git -C "$dir" init -q
    git -C "$dir" add -A
    GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -C "$dir" \
      -c user.name=wsgw -c user.email=wsgw@localhost commit -qm "advisory-db $commit"
    echo "$commit" >"$dir/.snapshot"
  fi
}

# The commit time of the database in $1 (0 when there is none).
db_date() { git -C "$1" log -1 --format=%ct 2>/dev/null || echo 0; }

if [ "${1:-}" = snapshot ]; then
  snapshot "${2:?usage: scripts/deny.sh snapshot <advisory-db checkout>}"
  exit 0
fi

if ! { [ -x "$deny" ] && "$deny" --version | grep -q "$version"; }; then
  log "installing cargo-deny $version into $tools"
  cargo install --quiet --locked --version "$version" --root "$tools" cargo-deny
fi

"$deny" check --hide-inclusion-graph bans licenses sources

# The newest of: the database fetched now, a copy already on this machine, the snapshot.
fetched=$tools/advisory-dbs
WSGW_ADVISORY_DBS=$fetched timeout 60 "$deny" fetch db >/dev/null 2>&1 ||
  log "the advisory database could not be fetched"
unpack_snapshot "$tools/advisory-snapshot"
dbs=$tools/advisory-snapshot
for candidate in "$fetched" "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"; do
  if [ "$(db_date "$candidate/$dbdir")" -gt "$(db_date "$dbs/$dbdir")" ]; then dbs=$candidate; fi
done
db=$dbs/$dbdir
age=$((($(date +%s) - $(db_date "$db")) / 86400))
log "advisories: the RustSec database of $(git -C "$db" log -1 --format=%cs) ($age days old) in $db"
[ "$age" -le 90 ] || log "WARNING: the advisory database is $age days old;" \
  "refresh third_party/rustsec-advisory-db (its README says how)"
WSGW_ADVISORY_DBS=$dbs "$deny" --offline check advisories
