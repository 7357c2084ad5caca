#!/usr/bin/env bash
# Runs every fuzz target of corecast-protocol for a bounded time.
#
#   protocol/fuzz/run.sh [seconds-per-target] [target...]
#   FUZZ_RUNS=N protocol/fuzz/run.sh ...   also stop each target after N executions
#
# Needs only a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the
# nightly-only sanitizer flags. Installs cargo-fuzz if missing. Prints the
# execution count of each run (libFuzzer's "Done N runs" line).
set -euo pipefail

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(packet_decoder frame_decoder handshake)
fi

cd "$(dirname "$0")/.."   # protocol/, where cargo-fuzz looks for fuzz/

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# Own target dir (shared machine, parallel builds); override with FUZZ_TARGET_DIR.
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-fuzz/target}-fuzz}"
# No sanitizer: the crate has no unsafe code, so ASan would only slow the runs;
# panics and the targets' own asserts are what we look for.
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t for ${secs}s" >&2
    log="fuzz/$t.log"
    cargo fuzz run --release --debug-assertions -s none --target-dir "$target_dir" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 2>&1 | tee "$log" | grep -E '^(Done|#[0-9]+ +DONE)|ERROR|panicked' || true
    if grep -q -E 'ERROR: libFuzzer|deadly signal|panicked' "$log"; then
        echo "$t: CRASH, see $log and fuzz/artifacts/$t" >&2
        exit 1
    fi
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1)
    echo "$t: ${done_line:-no Done line} (limit ${secs}s${FUZZ_RUNS:+ or $FUZZ_RUNS runs}), no crash"
done
