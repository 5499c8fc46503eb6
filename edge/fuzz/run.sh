#!/usr/bin/env bash
# Fuzzes the client frame decoder for SECONDS (default 600) at low priority.
#
#   edge/fuzz/run.sh [SECONDS]
#
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
# New inputs go to edge/fuzz/work/decode (ignored by git); the seed corpus in
# edge/fuzz/corpus/decode is only read. Crashes land in edge/fuzz/artifacts/decode.
# The log is edge/fuzz/fuzz-decode.log; the last lines give the figures for docs/SECURITY.md.
set -euo pipefail

seconds="${1:-600}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

target_dir="${CARGO_TARGET_DIR:-$here/target}/fuzz"
work="$here/work/decode"
mkdir -p "$work"
log="$here/fuzz-decode.log"

export RUSTC_BOOTSTRAP=1
nice -n 19 cargo fuzz build -s none --debug-assertions --target-dir "$target_dir" decode
nice -n 19 cargo fuzz run -s none --debug-assertions --target-dir "$target_dir" decode \
    "$work" corpus/decode -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | tee "$log"
status="${PIPESTATUS[0]}"

echo "---"
grep -E '^Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added' "$log" || true
echo "corpus files: $(find "$work" -type f | wc -l) (work) + $(find corpus/decode -type f | wc -l) (seeds)"
echo "exit status: $status"
exit "$status"
