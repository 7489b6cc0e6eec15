#!/usr/bin/env bash
# test-demo.sh - `make demo` as a user runs it after cloning (no fixtures:
# the model comes from build/tools/mkmodel, the dataset from
# build/tools/mkdataset), shortened (8 images, 6 steps) and into a temporary
# DEMO_DIR so that a user's build/demo is left alone: the model template and
# its tokenizer, the model, the dataset, the cache, a metrics record with
# step and loss per step, the LoRA, samples with and without it and the grid,
# the summary lines; a second `make demo` runs no tool.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BUILD:=$REPO/build}"
PY=/usr/bin/python3
# Under "make test" the parent's flags (-j, jobserver, variables) would leak
# into this make; the test runs it as a user would.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
T=$(mktemp -d /tmp/df-test-demo-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; "$@" && return 0; fail "$what"; return 1; }
not() { ! "$@"; }
# The sanitized build tests its own binaries.
san=
[ "$(basename "$DF_BUILD")" = build-san ] && san=SAN=1
D=$T/demo
before=$(ls -ld --time-style=+%s "$REPO/build/demo" 2>/dev/null)
t0=$SECONDS
cd "$T"

make -C "$REPO" --no-print-directory $san demo DEMO_DIR="$D" DEMO_IMAGES=8 DEMO_STEPS=6 >demo.out 2>demo.err
check "make demo: exit 0 ($(tail -3 demo.err | tr '\n' ' '))" [ $? -eq 0 ] || { cat demo.out demo.err >&2; }
echo "make demo: $((SECONDS - t0)) s"
for f in template/tokenizer/vocab.json template/tokenizer/merges.txt template/unet/config.json \
         model/model_index.json model/unet/diffusion_pytorch_model.safetensors \
         model/vae/diffusion_pytorch_model.safetensors model/text_encoder/model.safetensors \
         model/tokenizer/vocab.json model/scheduler/scheduler_config.json \
         dataset/metadata.jsonl latents/index.jsonl latents.jsonl metrics.jsonl \
         lora/pytorch_lora_weights.safetensors samples/index.html; do
    check "demo made $f" [ -s "$D/$f" ]
done
check "dataset: 8 captioned images" [ "$(grep -c '"text":"a portrait of a ' "$D/dataset/metadata.jsonl")" -eq 8 ]
check "dataset: the PNGs" [ "$(ls "$D"/dataset/*.png | wc -l)" -eq 8 ]
check "cache: 8 encoded, none failed" grep -q '8 records, 8 encoded, 0 cached, 0 failed' "$T/demo.err"
$PY - "$D" <<'EOF' || fail "demo outputs"
import json, sys
from PIL import Image
d = sys.argv[1]
m = [json.loads(l) for l in open(d + "/metrics.jsonl")]
assert [r["step"] for r in m] == list(range(1, 7)), m
assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in m), m
v = json.load(open(d + "/template/tokenizer/vocab.json"))
assert v["portrait</w>"] and v["<|endoftext|>"] == len(v) - 1 and v["!"] == 0, "vocab"
for kind in ("base", "lora"):
    recs = [json.loads(l) for l in open(f"{d}/samples/{kind}.jsonl")]
    assert len(recs) == 6, (kind, len(recs))   # 3 prompts x seeds 1, 2
    for r in recs:
        assert "error" not in r, r
        im = Image.open(r["file_name"])
        assert im.size == (64, 64), (r, im.size)
        assert bool(r["loras"]) == (kind == "lora"), r
print("metrics:", [round(r["loss"], 3) for r in m])
EOF
check "loss summary printed" grep -q '^train.mk: 6 steps; mean loss of the first 6: ' demo.out
# (train.mk samples with --quiet, which silences df-sample's LoRA report)
"$DF_BIN/df-sample" --model "$D/model" -p face --steps 1 --out "$D/lora-check" \
    --lora "$D/lora/pytorch_lora_weights.safetensors" >/dev/null 2>lora.err
check "LoRA report: every tensor applied" grep -q 'pytorch_lora_weights.safetensors: peft format, all 272 tensors applied' lora.err
rm -rf "$D/lora-check"
check "summary: where the LoRA is" grep -q "^demo: LoRA     $D/lora/pytorch_lora_weights.safetensors" demo.out
check "summary: where the samples are" grep -q "^demo: open $D/samples/index.html" demo.out

# Everything is done: a second make demo runs no tool.
make -C "$REPO" --no-print-directory $san demo DEMO_DIR="$D" DEMO_IMAGES=8 DEMO_STEPS=6 >demo2.out 2>demo2.err
check "second make demo: exit 0" [ $? -eq 0 ]
check "second make demo: no tool run" not grep -Eq '^([^ ]*/)?(mkmodel|mkdataset|df-[a-z-]+) ' demo2.out
check "second make demo: train.mk had nothing to do" grep -q "Nothing to be done for 'all'" demo2.out
check "the user's build/demo untouched" [ "$(ls -ld --time-style=+%s "$REPO/build/demo" 2>/dev/null)" = "$before" ]

echo "test-demo: $fails failures"
[ "$fails" -eq 0 ]
