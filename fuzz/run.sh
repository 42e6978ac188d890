#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo-fuzz (libFuzzer) on the
# nightly toolchain, installing cargo-fuzz first if it is missing. Crashing inputs land in
# fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ and fix the bug: the
# normal test suite replays every file there (testkit/tests/fuzz_regressions.rs).
#
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 10 topic   # 10 s, one target
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
only=${2:-}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/run.sh needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in $(cargo +nightly fuzz list); do
  if [ -n "$only" ] && [ "$target" != "$only" ]; then continue; fi
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "regressions/$target" ] && seeds+=("regressions/$target")
  echo "== $target (${secs}s)"
  cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536
done
