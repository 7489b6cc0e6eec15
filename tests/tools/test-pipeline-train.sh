#!/usr/bin/env bash
# test-pipeline-train.sh - pipelines/train.mk end to end on the fixture model
# and a dataset of 6 cartoon faces from build/tools/mkdataset: every stage's
# outputs (cache, checkpoints, metrics, samples with and without the LoRA,
# the HTML grid); a second make does nothing (make -q, nothing run); a
# larger STEPS resumes the training only, to the weights of a run that went
# there at once; a touched metadata.jsonl redoes cache, training (nothing
# left to train) and samples; a changed caption encodes one image and trains
# afresh; a removed image encodes afresh; a make killed during training is
# resumed by the next make (each step's metrics once, the same weights); a
# cache the pipeline did not make is never deleted; make clean.
set -u
REPO=$(cd "$(dirname "$0")/../.." && pwd)
: "${DF_BIN:=$REPO/bin}"
: "${DF_BUILD:=$REPO/build}"
: "${DF_FIXTURES:=$(cd "$REPO/.." && pwd)/shared/fixtures}"
MODEL=$DF_FIXTURES/pipeline
if [ ! -d "$MODEL" ]; then
    echo "SKIP: no fixture model at $MODEL (set DF_FIXTURES)"
    exit 0
fi
# Under "make test" the parent's flags (-j, jobserver, variables) would leak
# into the pipeline's make; this test runs it as a user would.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
T=$(mktemp -d /tmp/df-test-pipeline-train-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
# check WHAT COMMAND...: a failure is counted; the status is the command's, so
# that `check A x && check A y` checks y only when x holds.
check() { local what=$1; shift; "$@" && return 0; fail "$what"; return 1; }
not() { ! "$@"; }
t0=$SECONDS
lap() { echo "-- $1 at $((SECONDS - t0)) s"; }
cd "$T"

"$DF_BUILD/tools/mkdataset" --count 6 --seed 1 ds 2>mkdataset.err
check "mkdataset: exit 0" [ $? -eq 0 ]
check "mkdataset: 6 records" [ "$(wc -l <ds/metadata.jsonl)" -eq 6 ]
check "mkdataset: 6 images" [ -s ds/0005.png ]
printf '%s\n' 'a portrait of a smiling person with "long" red hair' \
    'a portrait of a serious person with short black hair' >prompts.txt
touch -d '1 hour ago' ds/metadata.jsonl prompts.txt

# make WORK [VAR=value...]: the pipeline with the test's settings.
run_make() {
    local work=$1; shift
    make -f "$REPO/pipelines/train.mk" BIN="$DF_BIN/" MODEL="$MODEL" DATASET=ds WORK="$work" \
        STEPS=4 SAVE_EVERY=2 RANK=4 LR=1e-3 BATCH=2 SEEDS="1 2" SAMPLE_STEPS=3 \
        PROMPTS=prompts.txt "$@"
}
ran() { grep -q "^$DF_BIN/$2 \|^$2 " "$1"; }   # make output $1 shows a $2 command
steps() { grep -o '"step":[0-9]*' "$1" | cut -d: -f2 | tr '\n' ' '; }

# --- the first run: every stage ---
run_make work >m1.out 2>m1.err
check "first make: exit 0 ($(tail -1 m1.err))" [ $? -eq 0 ]
check "cache: 6 records" [ "$(wc -l <work/latents.jsonl)" -eq 6 ]
check "cache: 12 index lines (flips)" [ "$(wc -l <work/latents/index.jsonl)" -eq 12 ]
check "cache: made by the pipeline" [ -f work/latents/.train-mk ]
check "lora: final file" [ -s work/lora/pytorch_lora_weights.safetensors ]
check "lora: checkpoints 2 and 4" [ -d work/lora/checkpoint-2 ] && check "lora: latest 4" [ "$(cat work/lora/latest)" = checkpoint-4 ]
check "metrics: steps 1..4" [ "$(steps work/metrics.jsonl)" = "1 2 3 4 " ]
check "loss summary" grep -q '^train.mk: 4 steps; mean loss of the first 4: [0-9.]*, of the last 4: ' m1.out
check "samples: 4 with the LoRA" [ "$(ls work/samples/lora/*.png | wc -l)" -eq 4 ]
check "samples: 4 without" [ "$(ls work/samples/base/*.png | wc -l)" -eq 4 ]
check "samples: records name the LoRA" grep -q '"loras":\[{"file":"work/lora/pytorch_lora_weights.safetensors"' work/samples/lora.jsonl
check "samples: a prompt with quotes" grep -q 'with \\"long\\" red hair' work/samples/lora.jsonl
check "samples: seeds 1 and 2" [ "$(grep -o '"seed":[0-9]*' work/samples/lora.jsonl | tr '\n' ' ')" = '"seed":1 "seed":2 "seed":1 "seed":2 ' ]
check "grid: 8 images" [ "$(grep -o '<img src="[^"]*"' work/samples/index.html | wc -l)" -eq 8 ]
check "grid: every image there" [ -z "$(grep -o '<img src="[^"]*"' work/samples/index.html | cut -d'"' -f2 | while read -r f; do [ -f "work/samples/$f" ] || echo "$f"; done)" ]
check "grid: two rows" [ "$(grep -c '<tr><td>' work/samples/index.html)" -eq 2 ]
check "grid: the prompt escaped" grep -q 'with &quot;long&quot; red hair' work/samples/index.html
lap "first make"

# --- nothing changed: nothing done ---
run_make work -q
check "make -q: up to date" [ $? -eq 0 ]
run_make work >m2.out 2>m2.err
check "second make: exit 0" [ $? -eq 0 ]
check "second make: nothing to be done" grep -q "Nothing to be done" m2.out
check "second make: no tool run" [ -z "$(grep 'df-' m2.out m2.err)" ]

# --- a larger STEPS: only the training resumes, then the samples with the LoRA ---
run_make work STEPS=6 -q
check "STEPS=6: make -q says not up to date" [ $? -eq 1 ]
run_make work STEPS=6 >m3.out 2>m3.err
check "STEPS=6: exit 0" [ $? -eq 0 ]
check "STEPS=6: no encoding" not ran m3.out df-encode-latents
check "STEPS=6: resumed at 4" grep -q 'resuming at step 4 of 6' m3.err
check "STEPS=6: metrics 1..6" [ "$(steps work/metrics.jsonl)" = "1 2 3 4 5 6 " ]
check "STEPS=6: the LoRA's samples only" [ "$(grep -c 'df-sample ' m3.out)" -eq 1 ] && check "STEPS=6: the LoRA's samples only" grep -q -- '--lora' m3.out
run_make work2 STEPS=6 >w2.out 2>w2.err
check "6 steps at once: exit 0" [ $? -eq 0 ]
check "4 + resumed 2 = 6 steps at once" cmp -s work/lora/checkpoint-6/lora.safetensors work2/lora/checkpoint-6/lora.safetensors
run_make work STEPS=6 -q
check "STEPS=6 again: up to date" [ $? -eq 0 ]
lap "STEPS=6"

# --- metadata.jsonl touched: every stage runs again, nothing to encode or train ---
touch ds/metadata.jsonl
run_make work STEPS=6 >m4.out 2>m4.err
check "touched: exit 0" [ $? -eq 0 ]
check "touched: encode ran, all cached" ran m4.out df-encode-latents && check "touched: encode ran, all cached" grep -q '6 records, 0 encoded, 6 cached' m4.err
check "touched: training ran, resumed at its end" ran m4.out df-train && check "touched: training ran, resumed at its end" grep -q 'resuming at step 6 of 6' m4.err
check "touched: samples with the LoRA again" grep -q -- 'df-sample .*--lora' m4.out
check "touched: metrics still 1..6" [ "$(steps work/metrics.jsonl)" = "1 2 3 4 5 6 " ]
run_make work STEPS=6 -q
check "touched: then up to date" [ $? -eq 0 ]

# --- a changed caption: one image encoded, training afresh ---
sed -i '2s/"text":"a portrait/"text":"a new portrait/' ds/metadata.jsonl
run_make work STEPS=6 >m5.out 2>m5.err
check "recaptioned: exit 0 ($(tail -1 m5.err))" [ $? -eq 0 ]
check "recaptioned: 1 encoded" grep -q '6 records, 1 encoded, 5 cached' m5.err
check "recaptioned: training afresh" grep -q 'training afresh' m5.out && check "recaptioned: training afresh" not grep -q 'resuming' m5.err
check "recaptioned: metrics 1..6" [ "$(steps work/metrics.jsonl)" = "1 2 3 4 5 6 " ]
check "recaptioned: new weights" not cmp -s work/lora/checkpoint-6/lora.safetensors work2/lora/checkpoint-6/lora.safetensors

# --- an image removed: the cache encoded afresh without it ---
sed -i '/"0003.png"/d' ds/metadata.jsonl
run_make work STEPS=6 >m6.out 2>m6.err
check "removed: exit 0" [ $? -eq 0 ]
check "removed: cache encoded afresh" grep -q '1 cached images are no longer in the dataset' m6.out
check "removed: 10 index lines" [ "$(wc -l <work/latents/index.jsonl)" -eq 10 ]
check "removed: none of 0003.png" not grep -q 0003.png work/latents/index.jsonl
check "removed: trained on 5" grep -q '^df-train: 5 cache entries' m6.err
lap "dataset changes"

# --- make killed during training, then make again ---
setsid make -f "$REPO/pipelines/train.mk" BIN="$DF_BIN/" MODEL="$MODEL" DATASET=ds WORK=work3 \
    STEPS=6 SAVE_EVERY=2 RANK=4 LR=1e-3 BATCH=2 SEEDS="1 2" SAMPLE_STEPS=3 PROMPTS=prompts.txt \
    >k1.out 2>k1.err &
kpid=$!
# killed when step 3 is done but its checkpoint (4) is not: the resume redoes
# step 3, whose first record must then go
for _ in $(seq 1 600); do grep -qs '"step":3' work3/metrics.jsonl && break; kill -0 $kpid 2>/dev/null || break; sleep 0.05; done
kill -9 -- -$kpid 2>/dev/null
wait $kpid 2>/dev/null
echo "killed after $(cat work3/lora/latest 2>/dev/null), metrics of steps $(steps work3/metrics.jsonl)"
check "killed: before the end" [ ! -e work3/lora/pytorch_lora_weights.safetensors ]
run_make work3 STEPS=6 >k2.out 2>k2.err
check "after the kill: exit 0 ($(tail -1 k2.err))" [ $? -eq 0 ]
check "after the kill: resumed" grep -q 'resuming at step' k2.err
check "after the kill: metrics 1..6, each once" [ "$(steps work3/metrics.jsonl)" = "1 2 3 4 5 6 " ]
check "after the kill: the weights of the unkilled run" cmp -s work/lora/checkpoint-6/lora.safetensors work3/lora/checkpoint-6/lora.safetensors
lap "kill"

# --- a cache the pipeline did not make: reported, never deleted ---
"$DF_BIN/df-encode-latents" --model "$MODEL" --root ds --out ext --flip -q <<<'{"file_name":"0003.png","text":"an extra face"}' >/dev/null 2>&1
run_make work4 CACHE=ext cache >m7.out 2>m7.err
check "foreign cache: exit 0" [ $? -eq 0 ]
check "foreign cache: warned" grep -q 'warning: 1 images in ext are not in ds' m7.out
check "foreign cache: kept" grep -q '"file_name":"0003.png"' ext/index.jsonl && check "foreign cache: kept" [ ! -e ext/.train-mk ]
make -s -f "$REPO/pipelines/train.mk" WORK=work4 CACHE=ext clean
check "clean keeps a foreign cache" [ -f ext/index.jsonl ]
make -s -f "$REPO/pipelines/train.mk" WORK=work clean
for f in latents lora samples metrics.jsonl; do check "clean: work/$f" [ ! -e work/$f ]; done
run_make work STEPS=6 -q
check "after clean: not up to date" [ $? -ne 0 ]
make -f "$REPO/pipelines/train.mk" >nomodel.out 2>&1
check "no MODEL: error" [ $? -ne 0 ] && check "no MODEL: error" grep -q 'set MODEL' nomodel.out
lap "end"

echo "test-pipeline-train: $fails failures"
[ "$fails" -eq 0 ]
