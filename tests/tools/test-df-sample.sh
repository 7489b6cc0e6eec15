#!/usr/bin/env bash
# test-df-sample.sh - df-sample on the fixture pipeline from the stored
# initial latents must reproduce diffusers' reference runs: final latents
# within 2e-3 and PNG pixels within 1 level on >= 99% of values and 3 levels
# everywhere, for DDIM and DPM-Solver++ and with each LoRA format at scale 1
# and 0.5. Also: records, PNG text chunks, JSONL input with bad lines,
# --strict, truncation warning, usage and load errors, the man page EXAMPLES.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$(cd "$(dirname "$0")/../.." && pwd)/bin}"
: "${DF_FIXTURES:=$(cd "$(dirname "$0")/../../.." && pwd)/shared/fixtures}"
S="$DF_BIN/df-sample"
FX=$DF_FIXTURES
PY=/usr/bin/python3
T=$(mktemp -d /tmp/df-test-sample-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
cd "$T"
fname() { $PY -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["file_name"])' "$1"; }

# Reference tensors out of a safetensors file (Debian python, stdlib + numpy).
cat > st.py <<'EOF2'
import json, struct, sys
import numpy as np
DT = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out
def save(path, name, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    hdr = json.dumps({name: {"dtype": "F32", "shape": list(arr.shape),
                             "data_offsets": [0, arr.nbytes]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hdr)) + hdr + arr.tobytes())
EOF2
# extract REF TENSOR OUT: one tensor into its own file (df-sample --latents)
extract() { $PY -c "import sys; sys.path.insert(0, '.'); import st; st.save(sys.argv[3], 'latents', st.load(sys.argv[1])[sys.argv[2]])" "$@"; }
# compare_run REF_STEM LATENTS_FILE PNG: latents within 2e-3, pixels rule
compare_run() {
    $PY - "$@" <<'EOF2'
import sys
sys.path.insert(0, ".")
import numpy as np, st
from PIL import Image
stem, lat, png = sys.argv[1:4]
ref = st.load(stem + ".safetensors")
got = st.load(lat)["latents"]
d = float(np.abs(got - ref["final_latents"]).max())
a = np.asarray(Image.open(png).convert("RGB"), dtype=int)
b = np.asarray(Image.open(stem + ".png").convert("RGB"), dtype=int)
if a.shape != b.shape:
    print("shape", a.shape, b.shape); sys.exit(1)
px = np.abs(a - b)
frac = float((px > 1).mean())
print(f"{stem.split('/')[-1]}: latents max|diff| {d:.3g}, pixels max {px.max()}, >1 level {frac:.4%}")
sys.exit(0 if d <= 2e-3 and px.max() <= 3 and frac <= 0.01 else 1)
EOF2
}
PROMPT=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["set_config"]["prompt"])' "$FX/refs/MANIFEST.json")
NEG=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["set_config"]["negative_prompt"])' "$FX/refs/MANIFEST.json")
STEPS=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["set_config"]["pipe_steps"])' "$FX/refs/MANIFEST.json")

# 1. Reference runs: scheduler and LoRA per reference file.
run_ref() {   # NAME EXTRA-ARGS...
    local name=$1; shift
    extract "$FX/refs/$name.safetensors" initial_latents "init-$name.st" || { fail "$name: extract"; return; }
    if ! "$S" --model "$FX/pipeline" --latents "init-$name.st" -p "$PROMPT" -n "$NEG" \
        --steps "$STEPS" --guidance 7.5 --out "out-$name" --save-latents "lat-$name.st" --quiet \
        "$@" > "rec-$name.jsonl" 2> "err-$name.txt"; then
        fail "$name: df-sample exited $?: $(cat "err-$name.txt")"; return
    fi
    local png
    png=$($PY -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["file_name"])' "rec-$name.jsonl")
    compare_run "$FX/refs/$name" "lat-$name.st" "$png" || fail "$name: differs from diffusers"
}
run_ref pipeline_ddim
run_ref pipeline_dpmpp_2m --scheduler dpmpp_2m
run_ref pipeline_ddim_lora_diffusers --lora "$FX/lora/pytorch_lora_weights.safetensors"
run_ref pipeline_ddim_lora_diffusers_scale0.5 --lora "$FX/lora/pytorch_lora_weights.safetensors:0.5"
run_ref pipeline_ddim_lora_kohya --lora "$FX/lora/kohya_lora.safetensors"
run_ref pipeline_ddim_lora_kohya_scale0.5 --lora "$FX/lora/kohya_lora.safetensors:0.5"
# The PEFT-format file (the published DiffyFace LoRA's format) gives the diffusers numbers.
cp "$FX/refs/pipeline_ddim_lora_diffusers.safetensors" peft_ref.safetensors
cp "$FX/refs/pipeline_ddim_lora_diffusers.png" peft_ref.png
run_peft() {
    extract "$FX/refs/pipeline_ddim_lora_diffusers.safetensors" initial_latents init-peft.st
    "$S" --model "$FX/pipeline" --latents init-peft.st -p "$PROMPT" -n "$NEG" --steps "$STEPS" \
        --out out-peft --save-latents lat-peft.st --quiet --lora "$FX/lora/peft_lora.safetensors" \
        > rec-peft.jsonl 2> err-peft.txt || { fail "peft: exit $?: $(cat err-peft.txt)"; return; }
    compare_run "$T/peft_ref" lat-peft.st "$(fname rec-peft.jsonl)" || fail "peft LoRA differs"
}
run_peft
grep -q "tensors applied" err-peft.txt && fail "--quiet did not silence the LoRA report: $(cat err-peft.txt)"
# A complete match is information, not a warning; a partial one stays a warning.
"$S" --model "$FX/pipeline" -p "a face" --steps 1 --out lo --lora "$FX/lora/peft_lora.safetensors" \
    > /dev/null 2> lo.err || fail "LoRA run: $(cat lo.err)"
grep -q "^df-sample: .*peft format, all 272 tensors applied" lo.err || fail "LoRA report missing: $(cat lo.err)"
grep -q "warning" lo.err && fail "a complete LoRA match reported as a warning: $(cat lo.err)"
$PY - "$FX/lora/peft_lora.safetensors" partial.safetensors <<'EOF2'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
h["unet.no.such.module.lora_A.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
data += bytes(4)
hdr = json.dumps(h).encode()
hdr += b" " * (-len(hdr) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hdr)) + hdr + data)
EOF2
"$S" --model "$FX/pipeline" -p "a face" --steps 1 --out lo --quiet --lora partial.safetensors \
    > /dev/null 2> lp.err || fail "partial LoRA run: $(cat lp.err)"
grep -q "^df-sample: warning: .*272 of 273 tensors applied" lp.err || fail "partial LoRA: no warning: $(cat lp.err)"
grep -q "matched nothing: unet.no.such.module.lora_A.weight" lp.err || fail "partial LoRA: tensor not named: $(cat lp.err)"

# 2. The record and the PNG's text chunks.
$PY - rec-pipeline_ddim.jsonl <<'EOF2' || fail "record or PNG text chunk"
import json, sys
from PIL import Image
r = json.loads(open(sys.argv[1]).readline())
for k in ("file_name", "prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler",
          "width", "height", "loras", "seconds"):
    assert k in r, k
assert r["width"] == 64 and r["height"] == 64 and r["steps"] > 0 and r["guidance"] == 7.5, r
info = Image.open(r["file_name"]).info
assert "Steps: " in info["parameters"] and json.loads(info["diffyface"])["prompt"] == r["prompt"]
EOF2

# 2b. Floats as the user gave them; LoRAs in the A1111 parameters; UTF-8 text in iTXt.
"$S" --model "$FX/pipeline" --out fl --quiet -p "a face" --seed 3 --steps 1 --guidance 7.3 \
    --lora "$FX/lora/peft_lora.safetensors:0.8" --lora "$FX/lora/kohya_lora.safetensors:0.1" \
    > fl.jsonl 2> fl.err || fail "float run: $(cat fl.err)"
grep -q '"guidance":7.3,' fl.jsonl || fail "guidance not as given: $(cat fl.jsonl)"
grep -q '"scale":0.8}' fl.jsonl && grep -q '"scale":0.1}' fl.jsonl || fail "LoRA scale not as given: $(cat fl.jsonl)"
H1=$(sha256sum "$FX/lora/peft_lora.safetensors" | cut -c1-12)
H2=$(sha256sum "$FX/lora/kohya_lora.safetensors" | cut -c1-12)
$PY - fl.jsonl "$H1" "$H2" <<'EOF2' || fail "PNG parameters with LoRAs"
import json, sys
from PIL import Image
r = json.loads(open(sys.argv[1]).readline())
info = Image.open(r["file_name"]).info
p = info["parameters"]
assert p.startswith("a face <lora:peft_lora:0.8> <lora:kohya_lora:0.1>\n"), p
assert 'Lora hashes: "peft_lora: %s, kohya_lora: %s"' % (sys.argv[2], sys.argv[3]) in p, p
assert "CFG scale: 7.3," in p, p
assert '"scale":0.8}' in info["diffyface"] and '"guidance":7.3,' in info["diffyface"], info["diffyface"]
EOF2
U='猫の顔 😀 café'
"$S" --model "$FX/pipeline" --out u8 --quiet -p "$U" --seed 3 --steps 1 > u8.jsonl 2> u8.err || fail "UTF-8 run: $(cat u8.err)"
$PY - u8.jsonl "$U" fl.jsonl <<'EOF2' || fail "UTF-8 prompt does not round-trip through the PNG (iTXt)"
import json, sys
from PIL import Image
r = json.loads(open(sys.argv[1], encoding="utf-8").readline())
im = Image.open(r["file_name"])
assert im.text["parameters"].split("\n")[0] == sys.argv[2], im.text["parameters"]
assert json.loads(im.text["diffyface"])["prompt"] == sys.argv[2]
raw = open(r["file_name"], "rb").read()
assert b"iTXtparameters\0" in raw and b"tEXtparameters\0" not in raw
# An ASCII prompt still gives tEXt.
raw = open(json.loads(open(sys.argv[3]).readline())["file_name"], "rb").read()
assert b"tEXtparameters\0" in raw and b"iTXt" not in raw
EOF2

# 3. JSONL prompts: a good one, a broken line, one with a bad field, seeds.
printf '%s\n' '{"prompt":"a face","seed":3,"steps":2,"id":"x1"}' 'not json' \
    '{"prompt":"b","steps":0}' '{"prompt":"a face","seed":3,"steps":2,"scheduler":"euler_ancestral"}' \
    '{"negative_prompt":"no prompt"}' > prompts.jsonl
"$S" --model "$FX/pipeline" --out jl --quiet < prompts.jsonl > jl.jsonl 2> jl.err
rc=$?
[ $rc = 0 ] || fail "jsonl run exit $rc"
[ "$(wc -l < jl.jsonl)" = 5 ] || fail "jsonl: want 5 records, got $(wc -l < jl.jsonl)"
[ "$(grep -c '"error"' jl.jsonl)" = 3 ] || fail "jsonl: want 3 error records"
grep -q '"id":"x1"' jl.jsonl || fail "extra fields not passed through"
grep -q "3 prompts failed" jl.err || fail "failures not counted on stderr: $(cat jl.err)"
"$S" --model "$FX/pipeline" --out jl2 --quiet --strict < prompts.jsonl > /dev/null 2>&1
[ $? = 1 ] || fail "--strict with failed records must exit 1"
# Same seed and settings -> same image.
"$S" --model "$FX/pipeline" --out same --quiet -p "a face" --seed 3 --steps 2 > s1.jsonl 2>/dev/null
"$S" --model "$FX/pipeline" --out same --quiet -p "a face" --seed 3 --steps 2 > s2.jsonl 2>/dev/null
$PY -c 'import sys; from PIL import Image; sys.exit(Image.open(sys.argv[1]).tobytes() != Image.open(sys.argv[2]).tobytes())' \
    "$(fname s1.jsonl)" "$(fname s2.jsonl)" || fail "same seed gave different pixels"
[ "$(fname s1.jsonl)" != "$(fname s2.jsonl)" ] || fail "second run overwrote the first PNG"

# --variant fp16: the UNet's fp16 file; components without one fall back, with a warning.
"$S" --model "$FX/pipeline" --variant fp16 --out v16 -p "a face" --seed 3 --steps 2 > v16.jsonl 2> v16.err ||
    fail "--variant fp16 run: $(cat v16.err)"
grep -q "text_encoder: no fp16 weight file" v16.err || fail "no fallback warning for the text encoder"
grep -q "unet: no fp16" v16.err && fail "the UNet has an fp16 file but it was not used"
grep -q '"scheduler":"ddim"' s1.jsonl || fail "record does not name the model's scheduler as ddim: $(cat s1.jsonl)"
# One naming: the default, a class name and an alias all give the short name.
grep -q '"scheduler":"euler_ancestral"' jl.jsonl || fail "record: scheduler not euler_ancestral: $(cat jl.jsonl)"
"$S" --model "$FX/pipeline" --out cls --quiet -p "a face" --seed 3 --steps 1 --scheduler EulerAncestralDiscreteScheduler > cls.jsonl 2>/dev/null
"$S" --model "$FX/pipeline" --out cls --quiet -p "a face" --seed 3 --steps 1 --scheduler euler_a > ali.jsonl 2>/dev/null
for f in cls.jsonl ali.jsonl s1.jsonl; do
    $PY - "$f" <<'EOF2' || fail "$f: scheduler names differ between record and PNG: $(cat "$f")"
import json, sys
from PIL import Image
r = json.loads(open(sys.argv[1]).readline())
info = Image.open(r["file_name"]).info
assert r["scheduler"] in ("ddim", "euler_ancestral"), r
assert "Sampler: %s," % r["scheduler"] in info["parameters"], info["parameters"]
assert json.loads(info["diffyface"])["scheduler"] == r["scheduler"]
EOF2
done

# 4. Long prompt: truncated with a warning.
long=$(printf 'face %.0s' $(seq 1 100))
"$S" --model "$FX/pipeline" --out long --steps 1 -p "$long" > /dev/null 2> long.err || fail "long prompt run"
grep -q "truncated to 77" long.err || fail "no truncation warning"

# 5. Errors: usage 2, load failures 1 with a one-line message naming the cause.
"$S" > /dev/null 2>&1; [ $? = 2 ] || fail "no --model: want exit 2"
"$S" --model "$FX/pipeline" --steps x -p a > /dev/null 2>&1; [ $? = 2 ] || fail "bad --steps: want 2"
"$S" --model "$FX/pipeline" --scheduler nosuch -p a > /dev/null 2> e.txt; [ $? = 2 ] || fail "unknown scheduler: want 2"
"$S" --model "$T/nowhere" -p a > /dev/null 2> e.txt; [ $? = 1 ] || fail "missing model: want 1"
grep -q "^df-sample: .*nowhere" e.txt || fail "missing model message: $(cat e.txt)"
$PY -c "import sys; sys.path.insert(0,'.'); import st, numpy as np; st.save('badlora.safetensors', 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight', np.zeros((4, 7)))"
"$S" --model "$FX/pipeline" --lora badlora.safetensors -p a > /dev/null 2> e.txt; [ $? = 1 ] || fail "bad LoRA: want 1"
grep -q "none of its" e.txt || grep -q "does not fit" e.txt || fail "bad LoRA message: $(cat e.txt)"
mkdir -p trunc && cp -r "$FX/pipeline/." trunc/ && chmod -R u+w trunc
head -c 1000 "$FX/pipeline/unet/diffusion_pytorch_model.safetensors" > trunc/unet/diffusion_pytorch_model.safetensors
"$S" --model trunc --steps 1 -p a --out tr > tr.jsonl 2> e.txt; [ $? = 1 ] || fail "truncated UNet file: want exit 1"
grep -q "^df-sample: .*unet/diffusion_pytorch_model.safetensors" e.txt || fail "truncated UNet file: message: $(cat e.txt)"

# 6. The man page's EXAMPLES, with the fixture pipeline as the model.
MAN=$ROOT/man/df-sample.1
sed -n '/^\.SH EXAMPLES/,/^\.SH /p' "$MAN" | sed -n '/^\.EX/,/^\.EE/p' | grep -v '^\.E[XE]' |
    sed 's/\\-/-/g; s/\\e/\\/g' > examples.sh
[ -s examples.sh ] || fail "no EXAMPLES in the man page"
mkdir -p ex && (cd ex && MODEL="$FX/pipeline" LORA="$FX/lora/peft_lora.safetensors" PATH="$DF_BIN:$PATH" bash -e ../examples.sh > ex.out 2> ex.err) ||
    fail "man page examples failed: $(tail -3 ex/ex.err)"

echo "test-df-sample: $fails failures"
[ $fails = 0 ]
