#!/usr/bin/env bash
# LoRA training steps on the full-size random SD 2.1 (768-v) that mkmodel
# writes (the model bench-sd.sh uses): batch 1 at 64x64 and 96x96 latents
# (512 and 768 px), UNet + text-encoder LoRA rank 8, with and without
# gradient checkpointing (768 px without it needs more memory than this
# machine has, so it runs only when DF_BENCH_TRAIN_768_FULL=1); seconds per
# step, images/s, peak RSS. Prints, asserts nothing.
# DF_BENCH_REPS (default 2) steps per configuration; DF_BENCH_THREADS
# (default: all cores).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BUILD:=$root/build}" "${DF_FIXTURES:=$(cd "$root/.." && pwd)/shared/fixtures}"
model=${DF_BENCH_MODEL:-$DF_BUILD/bench-sd21}
reps=${DF_BENCH_REPS:-2}
threads=${DF_BENCH_THREADS:-$(nproc)}
if [ ! -s "$model/unet/diffusion_pytorch_model.safetensors" ]; then
    mkdir -p "$model" && "$DF_BUILD/tools/mkmodel" "$DF_FIXTURES/pipeline" "$model" || exit 1
fi
echo "model $model; $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
configs="64 0
64 1
96 1"
[ "${DF_BENCH_TRAIN_768_FULL:-0}" = 1 ] && configs="$configs
96 0"
while read -r side ckpt; do
    "$DF_BUILD/tools/bench-train" "$model" "$side" 1 "$threads" "$ckpt" "$reps" 8
done <<< "$configs"
