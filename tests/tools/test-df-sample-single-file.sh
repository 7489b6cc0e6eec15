#!/usr/bin/env bash
# test-df-sample-single-file.sh - df-sample --model FILE on the fixture
# pipeline written as one checkpoint in the original SD layout by
# build/tools/mk-single-file (F32, F16, BF16), with --config pointing at the
# fixture folder for its configs and tokenizer:
#   F32: final latents byte-identical and PNG pixels identical to the folder
#        run (DDIM and DPM-Solver++), with and without a LoRA (diffusers and
#        kohya formats, scale 0.5);
#   F16: close to the folder's --variant fp16 run (latents within 5e-2,
#        pixels within 2 levels); BF16 close to the F32 folder run;
#   the prediction type: by the UNet's sample_size unless --prediction;
#   errors, one "df-sample: ..." line each: pickle .ckpt refused (exit 1),
#   truncated file, missing tensor named by its checkpoint key, built-in
#   configs that do not fit, unknown keys reported (a warning, exit 0),
#   and usage errors (exit 2) for flags that do not fit the model kind.
set -u
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
: "${DF_BUILD:=$(cd "$(dirname "$0")/../.." && pwd)/build}"
: "${DF_FIXTURES:=$(cd "$(dirname "$0")/../../.." && pwd)/shared/fixtures}"
S="$DF_BIN/df-sample"
MK="$DF_BUILD/tools/mk-single-file"
FX=$DF_FIXTURES
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-sample-single-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
cd "$T"

for d in f32 f16 bf16; do
    "$MK" --dtype $d "$FX/pipeline" sd_$d.safetensors || fail "mk-single-file --dtype $d"
done

# compare A B LATENT_TOL PIXEL_TOL: runs A and B (dirs with one PNG and A.st, B.st latents)
cat > cmp.py <<'EOF'
import glob, json, struct, sys
import numpy as np
from PIL import Image
def lat(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    k = [k for k in h if k != "__metadata__"][0]; s, e = h[k]["data_offsets"]
    return np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32)
def png(d):
    return np.asarray(Image.open(glob.glob(d + "/*.png")[0]).convert("RGB"), dtype=int)
a, b, lt, pt = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
dl = float(np.abs(lat(a + ".st") - lat(b + ".st")).max())
dp = np.abs(png(a) - png(b))
print(f"{a} vs {b}: latents max|diff| {dl:.3g}, pixels max {dp.max()}, {(dp > 0).sum()} of {dp.size} differ")
sys.exit(0 if np.isfinite(dl) and dl <= lt and dp.max() <= pt else 1)
EOF
# run NAME ARGS...: one image, 4 steps, seed 1, into NAME/ and NAME.st
run() {
    local name=$1; shift
    "$S" "$@" -p "portrait of a woman with short hair" --seed 1 --steps 4 --quiet \
        --out "$name" --save-latents "$name.st" > "$name.jsonl" 2> "$name.err" ||
        fail "$name: exit $?: $(cat "$name.err")"
}
single=(--config "$FX/pipeline" --prediction v)

# 1. F32: identical to the folder, DDIM and DPM-Solver++, with and without LoRAs
run folder --model "$FX/pipeline"
run file --model sd_f32.safetensors "${single[@]}"
cmp -s folder.st file.st || fail "F32 single file: latents differ from the folder run"
$PY cmp.py file folder 0 0 || fail "F32 single file: pixels differ from the folder run"
grep -q '"scheduler":"ddim"' file.jsonl || fail "record does not name the scheduler: $(cat file.jsonl)"
run folder_dpm --model "$FX/pipeline" --scheduler dpmpp_2m
run file_dpm --model sd_f32.safetensors "${single[@]}" --scheduler dpmpp_2m
cmp -s folder_dpm.st file_dpm.st || fail "F32 single file, dpmpp_2m: latents differ"
for l in pytorch_lora_weights kohya_lora; do
    run folder_$l --model "$FX/pipeline" --lora "$FX/lora/$l.safetensors:0.5"
    run file_$l --model sd_f32.safetensors "${single[@]}" --lora "$FX/lora/$l.safetensors:0.5"
    cmp -s folder_$l.st file_$l.st || fail "F32 single file with $l: latents differ from the folder"
    cmp -s folder.st file_$l.st && fail "$l changed nothing"
done

# 2. F16 (every component) against the folder's fp16 variant (UNet only in
#    F16), BF16 against F32: half-precision rounding, nothing more
run folder16 --model "$FX/pipeline" --variant fp16
run file16 --model sd_f16.safetensors "${single[@]}"
$PY cmp.py file16 folder16 5e-2 2 || fail "F16 single file too far from the fp16 folder run"
run filebf16 --model sd_bf16.safetensors "${single[@]}"
$PY cmp.py filebf16 folder 0.5 32 || fail "BF16 single file too far from the F32 folder run"

# 3. prediction type: sample_size 8 is not 96, so epsilon unless asked
run eps --model sd_f32.safetensors --config "$FX/pipeline"
grep -q "prediction epsilon by the UNet's sample_size 8" eps.err ||
    fail "no note on the prediction type: $(cat eps.err)"
cmp -s eps.st file.st && fail "epsilon and v runs gave the same latents"
run eps2 --model sd_f32.safetensors --config "$FX/pipeline" --prediction epsilon
cmp -s eps.st eps2.st || fail "--prediction epsilon differs from the default for sample_size 8"
[ -s eps2.err ] && fail "--prediction given, still a note: $(cat eps2.err)"

# 4. errors: exit status, one df-sample: line naming the cause, no PNG
# expect_error CODE PATTERN ARGS...
expect_error() {
    local code=$1 pat=$2; shift 2
    rm -rf err_out
    "$S" "$@" -p "a face" --steps 1 --out err_out > err.jsonl 2> err.txt
    local rc=$?
    [ $rc -eq "$code" ] || fail "$*: exit $rc, expected $code ($(cat err.txt))"
    grep -q -- "$pat" err.txt || fail "$*: message lacks '$pat': $(cat err.txt)"
    [ "$code" -eq 2 ] || [ "$(grep -c '^df-sample: ' err.txt)" -eq 1 ] ||
        fail "$*: not one df-sample: line: $(cat err.txt)"
    [ "$code" -eq 2 ] || [ "$(wc -l < err.txt)" -eq 1 ] || fail "$*: more than one line: $(cat err.txt)"
    ! ls err_out/*.png > /dev/null 2>&1 || fail "$*: a PNG was written"
}
cp sd_f32.safetensors model.ckpt
expect_error 1 "df-sample: model.ckpt: pickle checkpoints" --model model.ckpt
cp sd_f32.safetensors model.pth
expect_error 1 "pickle" --model model.pth
head -c 300000 sd_f32.safetensors > cut.safetensors
expect_error 1 "df-sample: cut.safetensors: .*beyond" --model cut.safetensors "${single[@]}"
"$MK" --drop model.diffusion_model.output_blocks.2.1.conv.weight "$FX/pipeline" drop.safetensors
expect_error 1 'no tensor "model.diffusion_model.output_blocks.2.1.conv.weight" (for up_blocks.0.upsamplers.0.conv.weight)' \
    --model drop.safetensors "${single[@]}"
expect_error 1 "built-in SD 2.1 text_encoder/config.json" --model sd_f32.safetensors
"$MK" --drop first_stage_model.decoder.conv_out.bias "$FX/pipeline" novae.safetensors
expect_error 1 'first_stage_model.decoder.conv_out.bias' --model novae.safetensors "${single[@]}"
cp "$FX/pipeline/unet/diffusion_pytorch_model.safetensors" unet_only.safetensors
expect_error 1 "no UNet (model.diffusion_model.\*) tensors" --model unet_only.safetensors "${single[@]}"
expect_error 2 "--config and --prediction are for single-file" --model "$FX/pipeline" --config "$FX/pipeline"
expect_error 2 "--prediction: 'v' or 'epsilon'" --model sd_f32.safetensors --prediction x
expect_error 2 "--variant is for diffusers folders" --model sd_f32.safetensors --variant fp16

# 5. unknown keys: reported, the model still runs
"$MK" --extra model.diffusion_model.label_emb.0.0.weight "$FX/pipeline" extra.safetensors
run extra --model extra.safetensors "${single[@]}"
grep -q "1 of its .* tensors are not used (unknown names; the first: model.diffusion_model.label_emb.0.0.weight)" extra.err ||
    fail "unknown key not reported: $(cat extra.err)"
cmp -s extra.st file.st || fail "an unknown key changed the result"

[ $fails -eq 0 ] && echo "test-df-sample-single-file: ok" || echo "test-df-sample-single-file: $fails failed"
exit $((fails > 0))
