# pipelines/train.mk - a captioned dataset to a LoRA and a grid of samples.
#
#   make -f pipelines/train.mk MODEL=models/sd21 DATASET=dataset WORK=work \
#        STEPS=2000 RANK=8 LR=1e-4
#
# Three stages, each a file target, each run again only when its inputs or
# its settings changed:
#   1. $(CACHE): df-encode-latents of $(DATASET)/metadata.jsonl (its output
#      records in $(WORK)/latents.jsonl). df-encode-latents encodes only what
#      the cache lacks, so a new or recaptioned image is encoded alone. When
#      an image has left the dataset (or fails now), or the model, RESOLUTION
#      or FLIP changed, a cache made by this file is encoded afresh; a cache
#      it did not make is never deleted (a stale entry is then reported).
#   2. $(OUT): df-train --resume; the LoRA in
#      $(OUT)/pytorch_lora_weights.safetensors, one metrics record per step
#      in $(WORK)/metrics.jsonl and the loss of the first and last steps on
#      stderr. An interrupted training continues from its last checkpoint, a
#      larger STEPS continues the finished one; another cache content or
#      training setting (or a smaller STEPS) trains afresh: the checkpoints,
#      which df-train would refuse to resume, are removed.
#   3. $(SAMPLES): every prompt of PROMPTS (a text file, one prompt per line;
#      default: three faces) at every seed of SEEDS, with the LoRA (lora/)
#      and, with BASELINE=1, without it (base/, not redone when only the
#      LoRA changed), and index.html, a table of both side by side.
# Each stage's settings are kept in $(WORK)/*.settings, rewritten (so newer
# than the stage's output) only when they change, so `make -q` tells whether
# anything is left to do. The images are not prerequisites: a dataset's
# metadata.jsonl is rewritten when they change (pipelines/dataset.mk does).
# Tested end to end by tests/tools/test-pipeline-train.sh; `make demo` runs
# it on a tiny model (pipelines/demo.mk).

# Inputs and outputs.
MODEL        ?=
DATASET      ?= dataset
WORK         ?= work
CACHE        ?= $(WORK)/latents
OUT          ?= $(WORK)/lora
SAMPLES      ?= $(WORK)/samples
PROMPTS      ?= $(WORK)/prompts.txt

# Encoding: RESOLUTION empty is the VAE's sample_size; FLIP=1 also encodes
# the mirror images and trains with --random-flip.
RESOLUTION   ?=
FLIP         ?= 1
# Training (TEXT_LR empty: LR; ALPHA empty: RANK).
STEPS        ?= 1000
RANK         ?= 8
ALPHA        ?=
LR           ?= 1e-4
TEXT_LR      ?=
TEXT_ENCODER ?= 1
BATCH        ?= 4
SEED         ?= 0
SAVE_EVERY   ?= 250
# Sampling.
SEEDS        ?= 1 2 3
SAMPLE_STEPS ?= 30
GUIDANCE     ?= 7.5
LORA_SCALE   ?= 1
BASELINE     ?= 1
# Threads (empty: all cores) and extra flags for each tool.
THREADS      ?=
ENCODE_FLAGS ?= --quiet
TRAIN_FLAGS  ?= --quiet
SAMPLE_FLAGS ?= --quiet
# The programs: the build's bin/ next to this file when present, else PATH.
HERE         := $(dir $(lastword $(MAKEFILE_LIST)))
BIN          ?= $(if $(wildcard $(HERE)../bin/df-train),$(HERE)../bin/,)
DF_ENCODE    ?= $(BIN)df-encode-latents
DF_TRAIN     ?= $(BIN)df-train
DF_SAMPLE    ?= $(BIN)df-sample

LORA         := $(OUT)/pytorch_lora_weights.safetensors
THREADS_FLAG := $(if $(THREADS),-t $(THREADS))
# What the cache's content depends on.
ENCODE_SETTINGS := --model $(MODEL) $(if $(RESOLUTION),--resolution $(RESOLUTION)) \
    $(if $(filter 1,$(FLIP)),--flip)
# What a checkpoint must have been made with to be resumed (not STEPS: a
# resume continues to the new STEPS).
TRAIN_ARGS := --model $(MODEL) --cache $(CACHE) --out $(OUT) --rank $(RANK) \
    $(if $(ALPHA),--alpha $(ALPHA)) --unet-lr $(LR) $(if $(TEXT_LR),--text-encoder-lr $(TEXT_LR)) \
    $(if $(filter 1,$(TEXT_ENCODER)),--train-text-encoder) --batch-size $(BATCH) --seed $(SEED) \
    $(if $(filter 1,$(FLIP)),--random-flip) $(TRAIN_FLAGS)
STEPS_SETTINGS := --max-steps $(STEPS) --save-every $(SAVE_EVERY)
SAMPLE_ARGS := --model $(MODEL) --steps $(SAMPLE_STEPS) --guidance $(GUIDANCE) $(SAMPLE_FLAGS)
SAMPLE_SETTINGS := $(SAMPLE_ARGS) --seeds $(SEEDS) --scale $(LORA_SCALE) --baseline $(BASELINE)

.PHONY: all cache lora samples clean
.DELETE_ON_ERROR:

all: $(SAMPLES)/index.html
cache: $(WORK)/latents.jsonl
lora: $(LORA)
samples: $(SAMPLES)/index.html

ifneq ($(MAKECMDGOALS),clean)
ifeq ($(MODEL),)
$(error set MODEL to a diffusers folder of Stable Diffusion 2.x)
endif
# $(call remember,FILE,VARIABLE): write the variable's value into FILE unless
# FILE holds it already, so that FILE's time is that of the last change.
# Runs while the makefile is read, before any target is considered.
same = $(and $(findstring x$1x,x$2x),$(findstring x$2x,x$1x))
remember = $(if $(call same,$(file <$1),$($2)),,$(file >$1,$($2)))
$(shell mkdir -p $(WORK))
$(call remember,$(WORK)/encode.settings,ENCODE_SETTINGS)
$(call remember,$(WORK)/train.settings,TRAIN_ARGS)
$(call remember,$(WORK)/steps.settings,STEPS_SETTINGS)
$(call remember,$(WORK)/sample.settings,SAMPLE_SETTINGS)
endif

# 1. The latent cache; $(CACHE)/.train-mk marks a cache this file made (with
# its settings). An image that left the dataset is a file_name of the cache's
# index that no record of this run (encoded or found cached) has: with the
# index's names listed once and the records' twice, `uniq -u` keeps those.
names = grep -ho '"file_name":"\([^"\\]\|\\.\)*"' $1 | sort -u
$(WORK)/latents.jsonl: $(DATASET)/metadata.jsonl $(WORK)/encode.settings
	@if [ -f $(CACHE)/.train-mk ] && ! cmp -s $(CACHE)/.train-mk $(WORK)/encode.settings; then \
	    echo "train.mk: model, RESOLUTION or FLIP changed: encoding $(CACHE) afresh"; \
	    rm -rf $(CACHE); fi
	@mkdir -p $(CACHE) && if [ -z "$$(ls -A $(CACHE))" ]; then \
	    cp $(WORK)/encode.settings $(CACHE)/.train-mk; fi
	$(DF_ENCODE) $(ENCODE_SETTINGS) --root $(DATASET) --out $(CACHE) $(THREADS_FLAG) \
	    $(ENCODE_FLAGS) < $(DATASET)/metadata.jsonl > $@.tmp
	@gone=$$({ $(call names,$(CACHE)/index*.jsonl); grep -v '"error":' $@.tmp | $(call names,); \
	    grep -v '"error":' $@.tmp | $(call names,); } | sort | uniq -u | wc -l); \
	if [ $$gone -gt 0 ] && [ -f $(CACHE)/.train-mk ]; then \
	    echo "train.mk: $$gone cached images are no longer in the dataset: encoding $(CACHE) afresh"; \
	    rm -rf $(CACHE) && mkdir -p $(CACHE) && cp $(WORK)/encode.settings $(CACHE)/.train-mk && \
	    $(DF_ENCODE) $(ENCODE_SETTINGS) --root $(DATASET) --out $(CACHE) $(THREADS_FLAG) \
	        $(ENCODE_FLAGS) < $(DATASET)/metadata.jsonl > $@.tmp; \
	elif [ $$gone -gt 0 ]; then \
	    echo "train.mk: warning: $$gone images in $(CACHE) are not in $(DATASET); df-train uses them"; fi
	mv $@.tmp $@

# 2. The LoRA. $(OUT)/.train-mk holds what its checkpoints were made with:
# the settings and a checksum of the cache's index. When they still hold,
# the metrics of steps after the last checkpoint (which the resume redoes)
# are dropped before it appends its own.
$(LORA): $(WORK)/latents.jsonl $(WORK)/train.settings $(WORK)/steps.settings
	@mkdir -p $(OUT)
	@{ cat $(WORK)/train.settings; cat $(CACHE)/index*.jsonl | cksum; } > $(OUT)/.train-mk.tmp
	@last=$$(sed -n 's/^checkpoint-//p' $(OUT)/latest 2>/dev/null); \
	if ! cmp -s $(OUT)/.train-mk.tmp $(OUT)/.train-mk || [ "$${last:-0}" -gt $(STEPS) ]; then \
	    if [ -e $(OUT)/latest ]; then echo "train.mk: cache or settings changed: training afresh"; fi; \
	    rm -rf $(OUT)/checkpoint-* $(OUT)/latest $@; : > $(WORK)/metrics.jsonl; \
	else \
	    touch $(WORK)/metrics.jsonl; \
	    awk -v n="$${last:-0}" '{ s = $$0; sub(/^\{"step":/, "", s); if (s + 0 <= n) print }' \
	        $(WORK)/metrics.jsonl > $(WORK)/metrics.jsonl.tmp && \
	    mv $(WORK)/metrics.jsonl.tmp $(WORK)/metrics.jsonl; \
	fi; mv $(OUT)/.train-mk.tmp $(OUT)/.train-mk
	$(DF_TRAIN) $(TRAIN_ARGS) $(STEPS_SETTINGS) $(THREADS_FLAG) \
	    $$(if [ -e $(OUT)/latest ]; then echo --resume; fi) >> $(WORK)/metrics.jsonl
	@awk '{ s = $$0; sub(/.*"loss":/, "", s); l[NR] = s + 0 } END { if (NR) { \
	    k = NR < 10 ? NR : 10; for (i = 1; i <= k; i++) { a += l[i]; b += l[NR - k + i] } \
	    printf "train.mk: %d steps; mean loss of the first %d: %.4f, of the last %d: %.4f\n", \
	        NR, k, a / k, k, b / k } }' $(WORK)/metrics.jsonl

# 3. Samples: the prompts as df-sample records, prompt by prompt, seed by seed.
$(WORK)/prompts.txt:
	@mkdir -p $(@D)
	printf '%s\n' "a portrait of a smiling person with long red hair" \
	    "a portrait of a serious person with short black hair and glasses" \
	    "a portrait of a smiling person with short white hair, blue background" > $@

$(SAMPLES)/prompts.jsonl: $(PROMPTS) $(WORK)/sample.settings
	@mkdir -p $(@D)
	sed 's/\\/\\\\/g; s/"/\\"/g' $(PROMPTS) | while IFS= read -r p || [ -n "$$p" ]; do \
	    [ -z "$$p" ] || for s in $(SEEDS); do printf '{"prompt":"%s","seed":%s}\n' "$$p" "$$s"; done; \
	done > $@

$(SAMPLES)/lora.jsonl: $(SAMPLES)/prompts.jsonl $(LORA)
	rm -rf $(SAMPLES)/lora
	$(DF_SAMPLE) $(SAMPLE_ARGS) $(THREADS_FLAG) --lora $(LORA):$(LORA_SCALE) \
	    --out $(SAMPLES)/lora < $< > $@.tmp
	mv $@.tmp $@

$(SAMPLES)/base.jsonl: $(SAMPLES)/prompts.jsonl
	rm -rf $(SAMPLES)/base
ifeq ($(BASELINE),1)
	$(DF_SAMPLE) $(SAMPLE_ARGS) $(THREADS_FLAG) --out $(SAMPLES)/base < $< > $@.tmp
	mv $@.tmp $@
else
	: > $@
endif

# index.html: a row per prompt, a cell per seed with the image without and
# with the LoRA. Reads prompts.jsonl, then lora.jsonl and base.jsonl, whose
# lines are the same images in the same order.
define GRID_AWK
function str(s, k) {   # the string field k of JSON line s (escapes kept but \")
    if (!match(s, "\"" k "\":\"([^\"\\\\]|\\\\.)*\"")) return ""
    s = substr(s, RSTART + length(k) + 4, RLENGTH - length(k) - 5)
    gsub(/\\"/, "\"", s)
    return s
}
function html(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/"/, "\\&quot;", s); return s }
function file(s) { s = str(s, "file_name"); sub(/.*\//, "", s); return s }
FILENAME ~ /prompts.jsonl$$/ { n = FNR; p[n] = str($$0, "prompt"); match($$0, /"seed":[0-9]+/)
                               seed[n] = substr($$0, RSTART + 7, RLENGTH - 7); next }
FILENAME ~ /lora.jsonl$$/ { lora[FNR] = file($$0); next }
{ base[FNR] = file($$0) }
END {
    print "<!doctype html><meta charset=utf-8><title>train.mk samples</title>"
    print "<style>img{width:160px;image-rendering:pixelated}td{vertical-align:top}</style>"
    print "<p>LoRA " lora_file " at scale " scale "; each cell: " \
          (nbase ? "without the LoRA, with it" : "with the LoRA") "</p><table>"
    for (i = 1; i <= n; i++) {
        if (i == 1 || p[i] != p[i - 1]) printf "<tr><td>%s</td>", html(p[i])
        printf "<td>seed %s<br>", seed[i]
        if (base[i] != "") printf "<img src=\"base/%s\"> ", base[i]
        printf "<img src=\"lora/%s\"></td>", lora[i]
        if (i == n || p[i + 1] != p[i]) print "</tr>"
    }
    print "</table>"
}
endef
export GRID_AWK

$(SAMPLES)/index.html: $(SAMPLES)/prompts.jsonl $(SAMPLES)/lora.jsonl $(SAMPLES)/base.jsonl
	awk -v scale=$(LORA_SCALE) -v lora_file=$(LORA) -v nbase=$$(wc -l < $(SAMPLES)/base.jsonl) \
	    "$$GRID_AWK" $^ > $@.tmp
	mv $@.tmp $@
	@echo "train.mk: $$(wc -l < $(SAMPLES)/lora.jsonl) images with the LoRA in $(SAMPLES)/lora/$(if \
	    $(filter 1,$(BASELINE)), and without it in $(SAMPLES)/base/); both side by side: $@"

# Removes what this file made (a cache or LoRA directory it did not make
# stays).
clean:
	if [ -f $(CACHE)/.train-mk ]; then rm -rf $(CACHE); fi
	if [ -f $(OUT)/.train-mk ]; then rm -rf $(OUT); fi
	rm -rf $(SAMPLES) $(WORK)/latents.jsonl $(WORK)/metrics.jsonl $(WORK)/*.settings \
	    $(WORK)/prompts.txt
