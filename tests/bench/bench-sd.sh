#!/usr/bin/env bash
# Full-size Stable Diffusion 2.1 (768-v) on the CPU, random weights: text
# encoder, one CFG step (UNet at batch 2) at 512 and 768 px, VAE decode at
# 512 and 768 px, at 1 and 2 threads, with GFLOP/s and peak RSS per part;
# then a 20-step 512 px image estimated from the parts. Prints, asserts nothing.
# The model (5.2 GB) is written once by build/tools/mkmodel to
# $DF_BENCH_MODEL (default $DF_BUILD/bench-sd21); mkmodel's derivation of
# tensor names and shapes is first checked against the fixture pipeline.
# DF_BENCH_REPS (default 2) runs per part; DF_BENCH_THREADS (default "1 2").
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BUILD:=$root/build}" "${DF_FIXTURES:=$(cd "$root/.." && pwd)/shared/fixtures}"
model=${DF_BENCH_MODEL:-$DF_BUILD/bench-sd21}
reps=${DF_BENCH_REPS:-2}
"$DF_BUILD/tools/mkmodel" --keep-sizes --check "$DF_FIXTURES/pipeline" /nonexistent || exit 1
if [ ! -s "$model/unet/diffusion_pytorch_model.safetensors" ]; then
    mkdir -p "$model" && "$DF_BUILD/tools/mkmodel" "$DF_FIXTURES/pipeline" "$model" || exit 1
fi
echo "model $model; $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in ${DF_BENCH_THREADS:-1 2}; do
    out=$(mktemp)
    for part in "te 512" "unet 512" "unet 768" "vae 512" "vae 768"; do
        # shellcheck disable=SC2086
        "$DF_BUILD/tools/bench-sd" "$model" $part "$t" "$reps" | tee -a "$out"
    done
    awk -v t="$t" '/^te /{te=$6} /^unet +512/{u=$6} /^vae +512/{v=$6}
        END { if (te && u && v) printf "20-step 512 px image, %d threads (estimated from the parts: te + 20 CFG steps + decode): %.1f s\n", t, te + 20*u + v }' "$out"
    rm -f "$out"
done
