#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 60) with the
# nightly toolchain and libFuzzer, starting from the committed seed corpus
# (fuzz/corpus/<target>/, read only: new inputs go to fuzz/target/corpus/).
# Prints executions per second per target; fails if any target crashes,
# panics, leaks or hangs (a crashing input is left in fuzz/artifacts/).
#
#   ./scripts/fuzz.sh [SECONDS]        all targets
#   TARGETS="chain_walker" ./scripts/fuzz.sh 300
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (libFuzzer needs -Zsanitizer)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
TARGETS="${TARGETS:-$(cargo +nightly fuzz list)}"
echo "== building the fuzz targets"
cargo +nightly fuzz build

failed=()
summary=()
for t in $TARGETS; do
    echo "== fuzzing $t for ${SECONDS_PER_TARGET}s"
    scratch="target/corpus/$t"
    mkdir -p "$scratch" "corpus/$t"
    log="target/fuzz-$t.log"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a leak.
    if cargo +nightly fuzz run "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=3072 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    line=$(printf '%-18s %-6s %10s runs %8s exec/s' "$t" "$status" "${runs:-?}" "${rate:-?}")
    echo "$line"
    summary+=("$line")
done

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target; logs in fuzz/target/fuzz-*.log)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "sbnet: fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
