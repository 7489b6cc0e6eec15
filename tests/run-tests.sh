#!/usr/bin/env bash
# Runs every test: unit binaries ($DF_BUILD/tests/test_*), tool tests
# (tests/tools/test-*.sh) and the fixture checker. Each is one test; the
# last line is "N passed, N failed, N skipped" and the exit status is
# non-zero if any failed. A test that exits 77 (the GPU tests on a machine
# without one: "skipped: no GPU") is skipped, neither passed nor failed.
# The CUDA tests (test_cuda_*) of the CUDA build ($DF_CUDA_BUILD, default
# ${DF_BUILD}-cuda, from `make CUDA=1`) run too when it exists.
# Set DF_TEST_FILTER=regex to run a subset.
set -u
cd "$(dirname "$0")/.."
: "${DF_BIN:=$PWD/bin}" "${DF_BUILD:=$PWD/build}" "${DF_CHECKFX:=$PWD/tests/check-fixtures}"
: "${DF_FIXTURES:=$(cd .. && pwd)/shared/fixtures}"
export DF_BIN DF_BUILD DF_CHECKFX DF_FIXTURES
export PATH="$DF_BIN:$PATH"
filter=${DF_TEST_FILTER:-.}
logdir=$(mktemp -d)
passed=0 failed=0 skipped=0 failures=()

run_one() {   # name, command...
    local name=$1; shift
    [[ $name =~ $filter ]] || return 0
    local t0=$SECONDS
    local rc=0
    "$@" >"$logdir/${name//\//_}.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1)); echo "PASS $name ($((SECONDS - t0))s)"
    elif [ "$rc" -eq 77 ]; then
        skipped=$((skipped + 1))
        echo "SKIP $name: $(grep -m1 '^skipped' "$logdir/${name//\//_}.log" || echo "exit 77")"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name ($((SECONDS - t0))s)"
        tail -n 40 "$logdir/${name//\//_}.log" | sed 's/^/    /'
    fi
}

for t in "$DF_BUILD"/tests/test_*; do
    [ -x "$t" ] && run_one "unit/$(basename "$t")" "$t"
done
: "${DF_CUDA_BUILD:=${DF_BUILD}-cuda}"
for t in "$DF_CUDA_BUILD"/tests/test_cuda_*; do
    [ -x "$t" ] && run_one "unit-cuda/$(basename "$t")" "$t"
done
for t in tests/tools/test-*.sh; do
    [ -f "$t" ] && run_one "tools/$(basename "$t" .sh)" bash "$t"
done
if [ -x "$DF_CHECKFX" ] && [ -d "$DF_FIXTURES" ]; then
    run_one "check-fixtures" "$DF_CHECKFX" "$DF_FIXTURES"
    [[ "check-fixtures" =~ $filter ]] && grep -E '^(PASS|FAIL|SKIP) ' "$logdir/check-fixtures.log" | awk '{print $1}' | sort | uniq -c | sed 's/^/    fixture references: /'
    # the same references with every 3x3 convolution on each Winograd path,
    # which the automatic choice takes only for large images
    run_one "check-fixtures-winograd" "$DF_CHECKFX" --winograd on "$DF_FIXTURES"
    run_one "check-fixtures-winograd4" "$DF_CHECKFX" --winograd 4x4 "$DF_FIXTURES"
fi
# libFuzzer harnesses (tests/fuzz, built by tests/fuzz/fuzz.mk): a short run
# of each from its seed corpus, one test per harness; `make fuzz` runs them
# longer. Skipped, and not counted, when clang cannot link -fsanitize=fuzzer.
if printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' |
    "${FUZZ_CC:-clang}" -x c - -fsanitize=fuzzer,address,undefined -o "$logdir/fuzz-probe" >/dev/null 2>&1; then
    for src in tests/fuzz/fuzz_*.c; do
        n=$(basename "$src" .c); n=${n#fuzz_}
        case $n in nn_config|lora|single_file) runs=3000 ;; tokenizer|image) runs=10000 ;; *) runs=20000 ;; esac
        mkdir -p "$logdir/corpus-$n"
        run_one "fuzz/$n" bash -c 'make -s --no-print-directory "build-fuzz/fuzz_$1" &&
            "build-fuzz/fuzz_$1" -runs="$2" -seed=1 -timeout=20 -artifact_prefix=build-fuzz/ \
                "$3" "tests/fuzz/corpus/$1"' _ "$n" "$runs" "$logdir/corpus-$n"
    done
else
    echo "SKIP fuzz/*: clang with libFuzzer (-fsanitize=fuzzer) is not available (make deps installs it)"
fi
rm -rf "$logdir"
[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
