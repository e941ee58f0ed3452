#!/usr/bin/env bash
# Runs hookrelay's whole test suite on this machine.
#
# The tests talk to a real PostgreSQL and a real RabbitMQ on their standard ports.
# This script makes sure both are running first: it starts them when they are
# installed but stopped, and installs them from the OS packages (apt) when they are
# missing; likewise Node.js and npm, for the Forge manifest check (tests/forge-schema),
# and Chromium with ChromeDriver, for the inspector's browser test.
# Then it runs every test, on PostgreSQL and on SQLite (the fault suite
# included), checks the dependencies against the vendored advisory database
# (scripts/supply-chain.sh), fuzzes each target briefly (scripts/fuzz.sh) and runs
# schemathesis against the live admin API on both stores (scripts/schemathesis.sh).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh lifecycle       # extra arguments go to the test runner (a filter)
#
# Environment:
#   HOOKRELAY_TEST_POSTGRES_URL  admin URL the tests create their databases with
#                                (default postgres://postgres:postgres@127.0.0.1:5432/postgres)
#   HOOKRELAY_TEST_AMQP_URL      RabbitMQ the tests use (default amqp://guest:guest@127.0.0.1:5672/%2f)
set -euo pipefail
cd "$(dirname "$0")/.."

export HOOKRELAY_TEST_POSTGRES_URL="${HOOKRELAY_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export HOOKRELAY_TEST_AMQP_URL="${HOOKRELAY_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    port_open "$1" && return 0
    sleep 0.2
  done
  die "$3 did not start listening on 127.0.0.1:$1 within $2 s"
}

apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  local installed_here=""
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "PostgreSQL is not installed: installing it from the OS packages"
    apt_install postgresql
    installed_here=1
  fi
  say "starting PostgreSQL"
  local version
  for version in $(ls /etc/postgresql); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  wait_port 5432 60 PostgreSQL
  if [ -n "$installed_here" ]; then
    # A fresh Debian cluster wants a password over TCP: give the tests one.
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    say "RabbitMQ is not installed: installing it from the OS packages"
    apt_install rabbitmq-server
  fi
  if ! port_open 5672; then
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    wait_port 5672 120 RabbitMQ
  fi
}

# The Forge app test checks hookrelay's manifests with Atlassian's
# @forge/manifest package (tests/forge-schema): it needs Node.js and npm, and
# the packages pinned by tests/forge-schema/package-lock.json.
ensure_node() {
  if ! command -v node >/dev/null; then
    say "Node.js is not installed: installing it from the OS packages"
    apt_install nodejs npm
  elif ! command -v npm >/dev/null; then
    say "npm is not installed: installing it from the OS packages"
    apt_install npm
  fi
  say "installing the Forge manifest checker's packages (npm ci)"
  (cd tests/forge-schema && npm ci --no-audit --no-fund --loglevel=error) ||
    die "npm ci in tests/forge-schema failed"
}

# The inspector's browser test (tests/api/browser.rs) drives Debian's Chromium
# through ChromeDriver (WebDriver).
ensure_chromium() {
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    say "Chromium or ChromeDriver is not installed: installing them from the OS packages"
    apt_install chromium chromium-driver
  fi
}

# Test databases are named hookrelay_t_<unix time>_<id>; drop those over an hour
# old, left by earlier runs. Recent ones may belong to a run still going.
prune_test_databases() {
  command -v psql >/dev/null || return 0
  local cutoff name ts
  cutoff=$(($(date +%s) - 3600))
  psql "$HOOKRELAY_TEST_POSTGRES_URL" -Atqc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'hookrelay\_t\_%'" 2>/dev/null |
    while read -r name; do
      ts=${name#hookrelay_t_}
      ts=${ts%%_*}
      if [[ "$ts" =~ ^[0-9]+$ ]] && [ "$ts" -lt "$cutoff" ]; then
        psql "$HOOKRELAY_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
      fi
    done
}

# Databases this run left on the shared server: each test drops its own.
leftover_databases() {
  psql "$HOOKRELAY_TEST_POSTGRES_URL" -Atqc \
    "SELECT count(*) FROM pg_database WHERE datname LIKE 'hookrelay\_t\_%\_${HOOKRELAY_TEST_RUN}\_%'"
}

ensure_postgres
ensure_rabbitmq
ensure_node
ensure_chromium
prune_test_databases

# Short (test database names must fit PostgreSQL's 63 bytes) and unique
# among runs going on at once: this shell's pid and the second.
export HOOKRELAY_TEST_RUN="r$$$(date +%S)"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  say "running the test suite (cargo nextest)"
  cargo nextest run --locked --no-fail-fast "$@" || status=$?
else
  say "running the test suite (cargo test)"
  cargo test --locked --no-fail-fast -- "$@" || status=$?
fi

if command -v psql >/dev/null; then
  left=$(leftover_databases 2>/dev/null || echo 0)
  if [ "${left:-0}" -gt 0 ]; then
    say "the tests left $left databases behind on the shared server"
    status=1
  fi
fi

# A filtered run (arguments given) is for one test; the checks below are for
# the whole suite.
if [ $# -eq 0 ]; then
  say "checking dependencies against the advisory database (cargo deny, offline)"
  bash scripts/supply-chain.sh || status=1
  say "fuzzing each target for ${FUZZ_SECONDS:-15} s"
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}" || status=1
  say "schemathesis against the live admin API, on both stores"
  bash scripts/schemathesis.sh || status=1
fi
exit "$status"
