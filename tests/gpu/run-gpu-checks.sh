#!/usr/bin/env bash
# run-gpu-checks.sh - the one script to run on a machine with an NVIDIA GPU:
# it builds the CUDA tree (make CUDA=1, into build-cuda/) and runs the GPU
# tests (tests/unit/test_cuda_*.c: every CUDA op against its CPU reference
# op in fp32, fp16 and bf16 on SD 2.1's shapes), then prints a summary.
#
# Assumes: Linux with an NVIDIA driver (nvidia-smi), the CUDA toolkit with
# cuBLAS and cuDNN 9 under $CUDA_HOME (default /usr/local/cuda), the Debian
# -dev packages of `make deps` already installed (it needs no network and
# does not install anything), and 16 cores (JOBS=n to change). It takes
# about 1-2 minutes to build and 1-3 to test on an H100 with 16 cores.
# Usage: bash tests/gpu/run-gpu-checks.sh   (from anywhere in the checkout)
# Logs go to $OUT (when set, e.g. by a remote runner) or build-cuda/gpu-checks.
# DF_CUDA_TEST=regex runs a subset of the cases (test_cuda_ops.c's want());
# SANITIZE=1 runs the tests under compute-sanitizer (memcheck; slow: pair it
# with a subset, e.g. SANITIZE=1 DF_CUDA_TEST='^attention fp32').
# Exit 0 when every GPU test passed, 1 when one failed or was skipped (no
# GPU seen), 2 when the build could not be made.
set -u
cd "$(dirname "$0")/../.." || exit 2
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
jobs=${JOBS:-16}
logs=${OUT:-build-cuda/gpu-checks}
mkdir -p "$logs"
t0=$SECONDS

echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
echo "== nvidia-smi"
nvidia-smi 2>&1 | tee "$logs/nvidia-smi.txt" || echo "nvidia-smi failed: no driver?"
echo "== toolkit"
"$CUDA_HOME/bin/nvcc" --version | tail -n 2
grep -hE '#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$CUDA_HOME/include/cudnn_version.h" \
    /usr/include/cudnn_version.h 2>/dev/null | awk '{printf "%s=%s ", $2, $3} END {print ""}'
missing=$(for p in libjansson-dev libjpeg62-turbo-dev libpng-dev libcurl4-openssl-dev libssl-dev \
    libopenblas-dev zlib1g-dev libutf8proc-dev libmicrohttpd-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || printf '%s ' "$p"; done)
[ -n "$missing" ] && echo "warning: packages not installed (the build may fail): $missing"

# Native code for this GPU only (faster to build than the release arch list);
# the arch list that CI compiles is the Makefile's CUDA_ARCH.
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
arch=()
[[ $cap =~ ^[0-9]+$ ]] && arch=("CUDA_ARCH=-gencode arch=compute_$cap,code=sm_$cap")
echo "== make -j$jobs CUDA=1 ${arch[*]}"
tb=$SECONDS
if ! make -j"$jobs" CUDA=1 "${arch[@]}" all >"$logs/build.log" 2>&1; then
    tail -n 40 "$logs/build.log"
    echo "== the CUDA build failed ($((SECONDS - tb))s); log: $logs/build.log"
    exit 2
fi
echo "built in $((SECONDS - tb))s"

pass=0 fail=0 skip=0 failed=()
for t in build-cuda/tests/test_cuda_* build-cuda/tests/test_ops_cuda_stub; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    ts=$SECONDS
    run=("$t")
    [ "${SANITIZE:-0}" = 1 ] && run=("$CUDA_HOME/bin/compute-sanitizer" --error-exitcode 1 "$t")
    timeout 600 "${run[@]}" >"$logs/$name.log" 2>&1
    rc=$?
    cat "$logs/$name.log"
    if [ $rc -eq 0 ]; then pass=$((pass + 1)); r=PASS
    elif [ $rc -eq 77 ]; then skip=$((skip + 1)); r=SKIP; failed+=("$name(skipped)")
    else fail=$((fail + 1)); r="FAIL (exit $rc)"; failed+=("$name")
    fi
    echo "$r $name ($((SECONDS - ts))s)"
done

echo "== summary"
# the worst error per op, from the tests' "err E (tol T)" lines
grep -h ' err ' "$logs"/test_cuda_*.log 2>/dev/null |
    awk '{ for (i = 1; i <= NF; i++) if ($i == "err") { e = $(i+1); t = $(i+3); sub(/\)/, "", t) }
           if (e + 0 > t + 0) over++ } END { printf "%d op results, %d over tolerance\n", NR, over }'
grep -h 'CHECK' "$logs"/test_cuda_*.log 2>/dev/null | head -n 20
echo "$pass passed, $fail failed, $skip skipped; $((SECONDS - t0))s in all; logs in $logs"
[ ${#failed[@]} -gt 0 ] && echo "not passed: ${failed[*]}"
[ $fail -eq 0 ] && [ $skip -eq 0 ]
