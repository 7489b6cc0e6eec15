#!/usr/bin/env bash
# test-df-train.sh - df-train on the fixture model and a dataset of 24 small
# images this test makes with Pillow (64-96 px, PNG and JPEG, distinct
# colour patterns and captions), encoded by df-encode-latents into two caches:
#   a) overfitting 4 images: a metrics record with step and loss for every
#      step, the loss falls (last 10 steps against the first 10, and against
#      a run with learning rate 0 that makes the same random draws), the
#      final LoRA with its ss_* metadata in peft and kohya keys;
#   b) the LoRAs change df-sample's pixels (same seed) and df-sample reports
#      every tensor of each file applied; a peft and a kohya file of the same
#      training give the same image; a checkpoint's lora.safetensors loads;
#   c) resume: 8 steps in one run, 4 then --resume to 8, and a run killed
#      with SIGKILL after its first checkpoint then resumed all end with
#      byte-identical checkpoint-8 files and final LoRA tensors, and the
#      resumed steps print the uninterrupted run's losses;
#   d) every check before work: a cache of another VAE, a cache entry
#      without caption, a rank that does not fit, unwritable --out, --resume
#      with another configuration: exit 1, one "df-train: " line, nothing
#      trained; bad usage exits 2;
#   e) --gradient-checkpointing gives bit-identical metrics and weights;
# plus the man page: every --help flag documented, its EXAMPLES run (with
# --max-steps N000 run as N steps).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$ROOT/bin}"
: "${DF_FIXTURES:=$(cd "$ROOT/.." && pwd)/shared/fixtures}"
TR="$DF_BIN/df-train"
E="$DF_BIN/df-encode-latents"
S="$DF_BIN/df-sample"
MAN=$ROOT/man/df-train.1
MODEL=$DF_FIXTURES/pipeline
PY=/usr/bin/python3
if [ ! -d "$MODEL" ]; then
    echo "SKIP: no fixture model at $MODEL (set DF_FIXTURES)"
    exit 0
fi
T=$(mktemp -d /tmp/df-test-train-XXXXXX)
trap '[ -n "${KEEP_TEST_DIR:-}" ] || rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
# check WHAT COMMAND...: a failure is counted; the status is the command's, so
# that `check A x && check A y` checks y only when x holds.
check() { local what=$1; shift; "$@" && return 0; fail "$what"; return 1; }
not() { ! "$@"; }
t0=$SECONDS
lap() { echo "-- $1 at $((SECONDS - t0)) s"; }
cd "$T"

$PY - <<'EOF'
import json, os
import numpy as np
from PIL import Image
os.makedirs("ds")
r = np.random.default_rng(5)
colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
patterns = ["striped", "checked", "dotted"]
recs = []
for i in range(24):
    w, h = int(r.integers(64, 97)), int(r.integers(64, 97))
    base = np.array([[200, 40, 40], [40, 170, 60], [50, 70, 210], [220, 210, 50],
                     [140, 60, 170], [240, 140, 30], [235, 235, 235], [20, 20, 20]][i % 8])
    y, x = np.mgrid[0:h, 0:w]
    p = patterns[(i // 8) % 3]
    mask = {"striped": (y // 6) % 2 == 0, "checked": ((x // 8) + (y // 8)) % 2 == 0,
            "dotted": ((x % 12 - 6) ** 2 + (y % 12 - 6) ** 2) < 10}[p]
    a = np.where(mask[..., None], base, 255 - base).astype(np.float32)
    a += r.normal(0, 6, a.shape)
    name = f"{i:02d}." + ("png" if i % 2 == 0 else "jpg")
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save("ds/" + name, quality=92)
    recs.append({"file_name": name, "text": f"a {colours[i % 8]} {p} face, number {i}"})
with open("ds/four.jsonl", "w") as f:
    f.writelines(json.dumps(q) + "\n" for q in recs[:4])
with open("ds/rest.jsonl", "w") as f:
    f.writelines(json.dumps(q) + "\n" for q in recs[4:])
EOF

# Field $2 of every record of JSONL $1, one per line.
fields() { $PY -c '
import json, sys
for l in open(sys.argv[1]):
    print(json.loads(l).get(sys.argv[2], "<absent>"))' "$1" "$2"; }
# Tensor names, or "meta KEY" for one metadata value, of a safetensors file.
st_keys() { $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
if len(sys.argv) > 2:
    print(h.get("__metadata__", {}).get(sys.argv[2], "<absent>"))
else:
    print("\n".join(sorted(k for k in h if k != "__metadata__")))' "$@"; }
# sha256 of a safetensors file's tensors (names, shapes, dtypes and bytes), not its metadata.
st_tensor_hash() { $PY -c '
import hashlib, json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
d = hashlib.sha256()
for k in sorted(k for k in h if k != "__metadata__"):
    v = h[k]
    d.update(json.dumps([k, v["dtype"], v["shape"]]).encode())
    d.update(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
print(d.hexdigest())' "$1"; }
# "no checkpoint" when dir $1 holds no checkpoint-* and no latest.
no_checkpoint() { [ -z "$(ls -d "$1"/checkpoint-* "$1"/latest 2>/dev/null)" ]; }

"$E" --model "$MODEL" --root ds --out four --flip -q <ds/four.jsonl >four.jsonl 2>enc.err
check "encode four: exit 0" [ $? -eq 0 ]
"$E" --model "$MODEL" --root ds --out rest -q <ds/rest.jsonl >rest.jsonl 2>>enc.err
check "encode rest: exit 0" [ $? -eq 0 ]
check "encode: no failed record" [ -z "$(grep '"error"' four.jsonl rest.jsonl)" ]
lap "encoded"

# --- a) overfit 4 images; the same draws at learning rate 0 as the baseline ---
FIT="--model $MODEL --cache four --rank 4 --train-text-encoder --random-flip --batch-size 4 --seed 0 --quiet"
"$TR" $FIT --out fit --max-steps 40 --unet-lr 1e-2 >fit.jsonl 2>fit.err
check "overfit: exit 0 ($(tail -1 fit.err))" [ $? -eq 0 ]
"$TR" $FIT --out fit0 --max-steps 40 --unet-lr 0 >fit0.jsonl 2>fit0.err
check "baseline (lr 0): exit 0" [ $? -eq 0 ]
lap "overfit"
check "overfit: 40 records with steps 1..40" [ "$(fields fit.jsonl step | tr '\n' ' ')" = "$(seq -s ' ' 1 40) " ]
$PY - <<'EOF' || fail "overfit: the loss falls"
import json, math
recs = [json.loads(l) for l in open("fit.jsonl")]
base = [json.loads(l)["loss"] for l in open("fit0.jsonl")]
need = {"step", "epoch", "loss", "lr_unet", "lr_text_encoder", "grad_norm", "images",
        "images_per_s", "seconds"}
for r in recs:
    assert need <= set(r), f"record lacks {need - set(r)}: {r}"
    assert math.isfinite(r["loss"]) and r["loss"] > 0, r
    assert r["images"] == 4 and r["lr_unet"] == 1e-2 and r["lr_text_encoder"] == 1e-2, r
loss = [r["loss"] for r in recs]
m = lambda a: sum(a) / len(a)
first, last, b_last = m(loss[:10]), m(loss[-10:]), m(base[-10:])
print(f"loss: first 10 steps {first:.4f}, last 10 {last:.4f}; lr 0 last 10 {b_last:.4f}; "
      f"first step equal to the baseline's: {loss[0] == base[0]}")
assert loss[0] == base[0], "the first step's loss does not depend on the learning rate"
assert last < 0.9 * first, "the last 10 steps' loss is not below 0.9 x the first 10's"
assert last < 0.9 * b_last, "the loss is not below 0.9 x that of the same draws untrained"
EOF
check "overfit: final LoRA" [ -s fit/pytorch_lora_weights.safetensors ]
check "overfit: saved line" grep -q '^df-train: saved fit/pytorch_lora_weights.safetensors (step 40)' fit.err
check "overfit: latest is checkpoint-40" [ "$(cat fit/latest)" = checkpoint-40 ]
check "overfit: checkpoint-40's LoRA" [ -s fit/checkpoint-40/lora.safetensors ]
check "overfit: no write-test file left" [ ! -e fit/.df-train-write-test ]
for k in ss_network_dim:4 ss_network_alpha:4 ss_steps:40 ss_unet_lr:0.01 ss_text_encoder_lr:0.01 \
         ss_batch_size_per_device:4 ss_num_train_images:4 ss_resolution:64 ss_seed:0 \
         ss_lr_scheduler:constant ss_v2:True ss_gradient_checkpointing:False diffyface_format:peft; do
    check "metadata ${k%%:*} = ${k#*:}" [ "$(st_keys fit/pytorch_lora_weights.safetensors "${k%%:*}")" = "${k#*:}" ]
done
vh=$(cat "$MODEL/vae/config.json" "$MODEL/vae/diffusion_pytorch_model.safetensors" | sha256sum | cut -c1-64)
check "metadata ss_vae_hash" [ "$(st_keys fit/pytorch_lora_weights.safetensors ss_vae_hash)" = "$vh" ]
for k in ss_sd_model_hash ss_dataset_hash ss_training_started_at ss_training_finished_at; do
    check "metadata $k present" [ "$(st_keys fit/pytorch_lora_weights.safetensors $k)" != "<absent>" ]
done
st_keys fit/pytorch_lora_weights.safetensors >fit.keys
check "peft keys: 136 A matrices" [ "$(grep -c 'lora_A.weight$' fit.keys)" -eq 136 ]
check "peft keys: 128 UNet B matrices" [ "$(grep -c '^unet\..*lora_B.weight$' fit.keys)" -eq 128 ]
check "peft keys: 8 text-encoder B matrices" [ "$(grep -c '^text_encoder\..*lora_B.weight$' fit.keys)" -eq 8 ]

# the same 3 steps saved with peft and with kohya keys
SHORT="--model $MODEL --cache four --rank 4 --train-text-encoder --unet-lr 1e-2 --max-steps 3 --seed 3 --quiet"
"$TR" $SHORT --out p3 >p3.jsonl 2>p3.err
check "peft 3 steps: exit 0" [ $? -eq 0 ]
"$TR" $SHORT --out k3 --format kohya >k3.jsonl 2>k3.err
check "kohya 3 steps: exit 0" [ $? -eq 0 ]
check "kohya: the same metrics" cmp -s <(cut -d, -f1-6 p3.jsonl) <(cut -d, -f1-6 k3.jsonl)
st_keys k3/pytorch_lora_weights.safetensors >k3.keys
check "kohya keys: 408 (down, up, alpha)" [ "$(wc -l <k3.keys)" -eq 408 ]
check "kohya keys: 128 UNet down" [ "$(grep -c '^lora_unet_.*\.lora_down\.weight$' k3.keys)" -eq 128 ]
check "kohya keys: 8 text-encoder alphas" [ "$(grep -c '^lora_te_.*\.alpha$' k3.keys)" -eq 8 ]
check "kohya metadata: format" [ "$(st_keys k3/pytorch_lora_weights.safetensors diffyface_format)" = kohya ]
check "kohya metadata: module" [ "$(st_keys k3/pytorch_lora_weights.safetensors ss_network_module)" = networks.lora ]
lap "lora files"

# --- b) the LoRAs change df-sample's pixels; every tensor applied ---
sample() {   # name, extra args...
    local n=$1; shift
    "$S" --model "$MODEL" -p "a red striped face" --steps 4 --seed 11 --out "s-$n" "$@" >"s-$n.jsonl" 2>"s-$n.err"
    check "df-sample $n: exit 0 ($(tail -1 s-$n.err))" [ $? -eq 0 ]
}
applied_all() {   # stderr file, LoRA file: "all N tensors applied", N = tensors in the file
    local n
    n=$(st_keys "$2" | wc -l)
    grep -q "$2: [a-z]* format, all $n tensors applied" "$1" && ! grep -q 'matched nothing' "$1"
}
sample base
sample fit --lora fit/pytorch_lora_weights.safetensors
sample p3 --lora p3/pytorch_lora_weights.safetensors
sample k3 --lora k3/pytorch_lora_weights.safetensors
sample ck --lora fit/checkpoint-40/lora.safetensors
check "peft LoRA: every tensor applied" applied_all s-fit.err fit/pytorch_lora_weights.safetensors
check "peft LoRA: format peft" grep -q 'peft format' s-fit.err
check "kohya LoRA: every tensor applied" applied_all s-k3.err k3/pytorch_lora_weights.safetensors
check "kohya LoRA: format kohya" grep -q 'kohya format' s-k3.err
check "checkpoint LoRA: every tensor applied" applied_all s-ck.err fit/checkpoint-40/lora.safetensors
check "record names the LoRA" grep -q '"loras":\[{"file":"fit/pytorch_lora_weights.safetensors","scale":1' s-fit.jsonl
$PY - <<'EOF' || fail "LoRA pixels"
import glob
import numpy as np
from PIL import Image
def px(n):
    f = glob.glob(f"s-{n}/*.png")
    assert len(f) == 1, (n, f)
    return np.asarray(Image.open(f[0]).convert("RGB")).astype(int)
b = px("base")
for n in ("fit", "p3", "k3", "ck"):
    d = np.abs(px(n) - b)
    print(f"{n}: pixels differing from the base model's {np.mean(d > 0):.3f}, max |diff| {d.max()}")
    assert d.max() >= 8 and np.mean(d > 0) > 0.1, f"{n}: the LoRA hardly changes the image"
assert (px("ck") == px("fit")).all(), "the last checkpoint's LoRA is the final LoRA"
d = np.abs(px("p3") - px("k3")).max()
print(f"peft against kohya keys of the same weights: max |diff| {d}")
assert d <= 1, "peft and kohya files of one training give different images"
EOF
lap "samples"

# --- c) resume: uninterrupted, stopped at 4, killed ---
RES="--model $MODEL --cache four --rank 4 --alpha 2 --unet-lr 1e-3 --train-text-encoder --random-flip
     --batch-size 3 --gradient-accumulation 2 --caption-dropout 0.25 --noise-offset 0.1 --seed 7 --quiet"
"$TR" $RES --out A --max-steps 8 --save-every 2 >A.jsonl 2>A.err
check "A: exit 0" [ $? -eq 0 ]
check "A: checkpoints 2 4 6 8" [ "$(cd A && ls -d checkpoint-* | sort -t- -k2 -n | tr '\n' ' ')" = "checkpoint-2 checkpoint-4 checkpoint-6 checkpoint-8 " ]
check "A: 8 records" [ "$(wc -l <A.jsonl)" -eq 8 ]
check "A: 4 images a step (3 + 1)" [ "$(fields A.jsonl images | sort -u)" = 4 ]
check "A: an epoch ends in each step" [ "$(fields A.jsonl epoch | tr '\n' ' ')" = "0 1 2 3 4 5 6 7 " ]
"$TR" $RES --out B --max-steps 4 --save-every 2 >B1.jsonl 2>B1.err
check "B to 4: exit 0" [ $? -eq 0 ]
"$TR" $RES --out B --max-steps 8 --save-every 2 --resume >B2.jsonl 2>B2.err
check "B resumed to 8: exit 0" [ $? -eq 0 ]
check "B: says it resumes at 4" grep -q 'resuming at step 4 of 8' B2.err
check "B: steps 5..8 after the resume" [ "$(fields B2.jsonl step | tr '\n' ' ')" = "5 6 7 8 " ]
"$TR" $RES --out C --max-steps 8 --save-every 1 >C1.jsonl 2>C1.err &
cpid=$!
for _ in $(seq 1 600); do [ -e C/latest ] && break; kill -0 $cpid 2>/dev/null || break; sleep 0.05; done
sleep 0.2
kill -9 $cpid 2>/dev/null
wait $cpid 2>/dev/null
killed_at=$(cat C/latest 2>/dev/null)
echo "C killed after $killed_at; left: $(ls C | tr '\n' ' ')"
check "C was killed before the end" [ ! -e C/pytorch_lora_weights.safetensors ]
"$TR" $RES --out C --max-steps 8 --save-every 1 --resume >C2.jsonl 2>C2.err
check "C resumed: exit 0 ($(tail -1 C2.err))" [ $? -eq 0 ]
check "C: no .tmp left" [ -z "$(ls -d C/*.tmp 2>/dev/null)" ]
lap "resume"
for f in lora.safetensors optimizer.safetensors state.json; do
    check "B: checkpoint-8/$f identical to A's" cmp -s A/checkpoint-8/$f B/checkpoint-8/$f
    check "C: checkpoint-8/$f identical to A's" cmp -s A/checkpoint-8/$f C/checkpoint-8/$f
done
check "B: checkpoint-4 identical to A's" cmp -s A/checkpoint-4/lora.safetensors B/checkpoint-4/lora.safetensors
ha=$(st_tensor_hash A/pytorch_lora_weights.safetensors)
check "B: final LoRA tensors identical to A's" [ "$ha" = "$(st_tensor_hash B/pytorch_lora_weights.safetensors)" ]
check "C: final LoRA tensors identical to A's" [ "$ha" = "$(st_tensor_hash C/pytorch_lora_weights.safetensors)" ]
# the resumed steps' records are the uninterrupted run's (timings aside)
same_steps() { diff <(cut -d, -f1-6 "$1") <(grep -F -f <(cut -d, -f1 "$1" | sed 's/$/,/') A.jsonl | cut -d, -f1-6) >/dev/null; }
check "B: resumed losses = A's" same_steps B2.jsonl
check "C: resumed losses = A's" same_steps C2.jsonl
check "B: first part's losses = A's" same_steps B1.jsonl

# --- d) checks before any work: exit 1, one message, nothing trained ---
refused() {   # what, out dir, message regex, df-train args...
    local what=$1 out=$2 re=$3; shift 3
    "$TR" "$@" --out "$out" --max-steps 2 --quiet >d.out 2>d.err
    local rc=$?
    check "$what: exit 1 (got $rc)" [ $rc -eq 1 ]
    check "$what: message ($(head -1 d.err))" grep -Eq "^df-train: .*$re" d.err
    check "$what: one line on stderr" [ "$(wc -l <d.err)" -eq 1 ]
    check "$what: no metrics" [ ! -s d.out ]
    check "$what: no checkpoint" no_checkpoint "$out"
}
mkdir other
for d in "$MODEL"/*; do [ "$(basename "$d")" = vae ] || ln -s "$d" other/; done
mkdir other/vae
ln -s "$MODEL/vae/diffusion_pytorch_model.safetensors" other/vae/
$PY -c 'import json,sys; c=json.load(open(sys.argv[1])); c["_note"]="another"; json.dump(c, open("other/vae/config.json","w"))' "$MODEL/vae/config.json"
refused "another VAE" d1 'another VAE' --model other --cache four
cp -r four notext
sed -i '3s/"text":"[^"]*",//' notext/index.jsonl
refused "entry without caption" d2 'no caption' --model "$MODEL" --cache notext
refused "rank 1000" d3 'rank 1000 does not fit' --model "$MODEL" --cache four --rank 1000
refused "--out under /proc" /proc/df-train-test 'output directory' --model "$MODEL" --cache four
refused "--out a file" ds/00.png 'output directory' --model "$MODEL" --cache four
refused "missing cache" d4 'nonexistent' --model "$MODEL" --cache nonexistent
refused "missing model" d5 'nomodel' --model nomodel --cache four
sed -n 1p ds/four.jsonl | "$E" --model other --root ds --out othercache -q >/dev/null 2>&1
refused "two caches of different VAEs" d6 'another VAE' --model "$MODEL" --cache four --cache othercache
# --resume with another configuration leaves the run as it was
"$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 2 --quiet >/dev/null 2>R.err
check "R: exit 0" [ $? -eq 0 ]
cp -r R R.before
for bad in "--rank 8:rank" "--unet-lr 2e-3:unet_lr" "--seed 5:seed" "--train-text-encoder:train_text_encoder"; do
    "$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 4 --quiet --resume ${bad%%:*} >d.out 2>d.err
    check "resume with ${bad%%:*}: exit 1" [ $? -eq 1 ]
    check "resume with ${bad%%:*}: message ($(head -1 d.err))" grep -Eq "^df-train: .*(configuration|${bad#*:}|rank)" d.err
    check "resume with ${bad%%:*}: no metrics" [ ! -s d.out ]
done
check "another cache's dataset refused on resume" bash -c "'$TR' --model '$MODEL' --cache four --cache rest --rank 4 --unet-lr 1e-3 --out R --max-steps 4 --quiet --resume 2>&1 >/dev/null | grep -q '^df-train: .*dataset'"
check "refused resumes changed nothing" diff -r R R.before
# a fresh run into a directory with another run's checkpoints, a resume to
# before the checkpoint, two runs at once: refused, the run untouched
"$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 4 --quiet >d.out 2>d.err
check "fresh run over checkpoints: exit 1" [ $? -eq 1 ]
check "fresh run over checkpoints: message ($(head -1 d.err))" grep -q '^df-train: .*earlier run.*--resume' d.err
"$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 1 --quiet --resume >d.out 2>d.err
check "resume past --max-steps: exit 1" [ $? -eq 1 ]
check "resume past --max-steps: message ($(head -1 d.err))" grep -q '^df-train: .*step 2, past --max-steps 1' d.err
"$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 2 --quiet --resume >d.out 2>d.err
check "resume with nothing left: exit 0" [ $? -eq 0 ]
check "resume with nothing left: says so" grep -q 'nothing left to do' d.err
(flock 9; sleep 3) 9>R/.lock &
sleep 0.5
"$TR" --model "$MODEL" --cache four --rank 4 --unet-lr 1e-3 --out R --max-steps 4 --quiet --resume >d.out 2>d.err
check "a second run on the same --out: exit 1" [ $? -eq 1 ]
check "a second run on the same --out: message ($(head -1 d.err))" grep -q 'in use by another df-train' d.err
wait
check "refused runs changed no checkpoint" diff -r R/checkpoint-2 R.before/checkpoint-2
# text states from the cache (--text-embeddings) train to the same weights
# as the text encoder run on each batch, caption dropout included
"$E" --model "$MODEL" --root ds --out fourtext --flip --text-embeddings -q <ds/four.jsonl >/dev/null 2>&1
for c in four fourtext; do
    "$TR" --model "$MODEL" --cache "$c" --rank 4 --unet-lr 1e-3 --caption-dropout 0.5 --out "T$c" --max-steps 3 --quiet >"T$c.jsonl" 2>"T$c.err"
    check "cache $c: exit 0" [ $? -eq 0 ]
done
check "cached text states: used" grep -q 'text states from the cache' Tfourtext.err
check "cached text states: not used without them" sh -c '! grep -q "from the cache" Tfour.err'
check "cached text states: the same weights" cmp Tfour/checkpoint-3/lora.safetensors Tfourtext/checkpoint-3/lora.safetensors
lap "errors"
# usage: exit 2
"$TR" -h >help.out 2>&1
check "-h: exit 0" [ $? -eq 0 ] && check "-h: usage line" grep -q '^usage: df-train --model DIR --cache DIR --out DIR --max-steps N' help.out
for bad in "=--cache four --out U --max-steps 2" "=--model $MODEL --out U --max-steps 2" \
           "=--model $MODEL --cache four --max-steps 2" "=--model $MODEL --cache four --out U" \
           "--format xyz" "--max-steps 0" "--max-steps 1x" "--rank 0" "--lr-scheduler nope" \
           "--init zeros" "--unet-lr -1" "--caption-dropout 2" "--bogus" "extra"; do
    case $bad in =*) args=${bad#=} ;; *) args="--model $MODEL --cache four --out U --max-steps 2 $bad" ;; esac
    "$TR" $args >/dev/null 2>u.err
    check "usage '$bad': exit 2" [ $? -eq 2 ]
    check "usage '$bad': df-train: message" grep -q '^df-train: ' u.err
done
check "usage errors: nothing made" [ ! -e U ]

# --- e) gradient checkpointing: the same numbers ---
GC="--model $MODEL --cache four --cache rest --rank 4 --unet-lr 1e-3 --train-text-encoder --random-flip
    --batch-size 2 --max-steps 3 --seed 2 --quiet"
"$TR" $GC --out G0 >G0.jsonl 2>G0.err
check "without checkpointing: exit 0" [ $? -eq 0 ]
"$TR" $GC --out G1 --gradient-checkpointing >G1.jsonl 2>G1.err
check "with checkpointing: exit 0" [ $? -eq 0 ]
check "checkpointing: two caches, 24 entries" grep -q '24 cache entries' G1.err
check "checkpointing: identical metrics" cmp -s <(cut -d, -f1-6 G0.jsonl) <(cut -d, -f1-6 G1.jsonl)
check "checkpointing: identical weights" cmp -s G0/checkpoint-3/lora.safetensors G1/checkpoint-3/lora.safetensors
check "checkpointing: identical optimizer state" cmp -s G0/checkpoint-3/optimizer.safetensors G1/checkpoint-3/optimizer.safetensors
check "checkpointing: in the metadata" [ "$(st_keys G1/pytorch_lora_weights.safetensors ss_gradient_checkpointing)" = True ]
lap "checkpointing"

# --- the man page: every flag of --help, and its EXAMPLES ---
for f in $(grep -o -- '--[a-z][a-z-]*' help.out | sort -u); do
    grep -qF -- "${f//-/\\-}" "$MAN" || fail "man page lacks $f"
done
sed -n '/^\.SH EXAMPLES/,/^\.SH /p' "$MAN" | sed -n '/^\.EX/,/^\.EE/p' | grep -v '^\.E[XE]' |
    sed 's/\\-/-/g; s/\\e/\\/g; s/--max-steps \([0-9]*\)000/--max-steps \1/' >examples.sh
check "man page: examples" [ "$(grep -c '^df-train ' examples.sh)" -ge 3 ]
mkdir -p ex/data
cp ds/00.png ds/01.jpg ds/02.png ex/data/
head -3 ds/four.jsonl >ex/data/metadata.jsonl
(cd ex && MODEL="$MODEL" PATH="$DF_BIN:$PATH" bash -e ../examples.sh >ex.out 2>ex.err)
check "man page examples: exit 0 ($(tail -2 ex/ex.err | tr '\n' ' '))" [ $? -eq 0 ]
check "examples: the LoRA" [ -s ex/lora/pytorch_lora_weights.safetensors ]
check "examples: metrics of steps 1..3 (2, then resumed to 3)" [ "$(fields ex/metrics.jsonl step | tr '\n' ' ')" = "1 2 3 " ]
check "examples: kohya LoRA" [ -s ex/lora-kohya/pytorch_lora_weights.safetensors ]
check "examples: validation image" [ -n "$(ls ex/lora-kohya/validation-2-*.png 2>/dev/null)" ]
check "examples: a face sampled with the LoRA" [ -n "$(ls ex/faces/*.png 2>/dev/null)" ]
lap "man page"

echo "$fails failures"
[ "$fails" -eq 0 ]
