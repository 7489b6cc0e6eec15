#!/usr/bin/env bash
# Times the optimized ops at Stable Diffusion 2.1 sizes (GFLOP/s), at 1 and 2
# threads, beside OpenBLAS sgemm on the same shapes. Prints, asserts nothing.
set -u
: "${DF_BUILD:=$(cd "$(dirname "$0")/../.." && pwd)/build}"
for t in 1 2; do
    "$DF_BUILD/tools/bench-ops" "$t" 3
done
