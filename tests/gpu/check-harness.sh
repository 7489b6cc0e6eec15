#!/usr/bin/env bash
# check-harness.sh - run the GPU tests (tests/unit/test_cuda_ops.c) on the
# CPU stand-in of tests/gpu/emulate_cuda.c, where there is no GPU: a check
# of the harness (arguments, sizes, references, tolerances), not of the
# kernels. Uses the CPU build's libdf (make). Prints the test's output;
# exits with its status. About a minute on 2 cores.
set -eu
cd "$(dirname "$0")/../.."
make -s -j2 build/libdf.a
mkdir -p build/tests
flags="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Wno-unused-parameter -pthread -ffp-contract=off"
inc=$(for d in lib/*/; do printf -- '-I%s ' "$d"; done)
# shellcheck disable=SC2086
cc $flags $inc -Itests/unit -o build/tests/emulated_test_cuda_ops tests/unit/test_cuda_ops.c \
    tests/gpu/emulate_cuda.c build/libdf.a \
    -ljansson -ljpeg -lpng -lcurl -lcrypto -lopenblas -lutf8proc -lz -lm -lpthread
exec build/tests/emulated_test_cuda_ops
