#!/usr/bin/env bash
# Runs every benchmark (tests/bench/bench-*.sh). Benchmarks print figures and
# assert nothing; a benchmark that cannot run says why and the rest go on.
set -u
cd "$(dirname "$0")/.."
: "${DF_BIN:=$PWD/bin}" "${DF_BUILD:=$PWD/build}"
export DF_BIN DF_BUILD PATH="$DF_BIN:$PATH"
filter=${DF_BENCH_FILTER:-.}
for b in tests/bench/bench-*.sh; do
    [ -f "$b" ] || continue
    [[ $b =~ $filter ]] || continue
    echo "=== $(basename "$b" .sh)"
    bash "$b" || echo "($(basename "$b") exited $?)"
done
