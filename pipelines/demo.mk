# pipelines/demo.mk - the whole system in about half a minute, with nothing to
# download: a tiny model of the Stable Diffusion 2.1 architecture with random
# weights, a synthetic captioned dataset, then pipelines/train.mk: latent
# cache, LoRA training (the loss printed), samples with and without the LoRA.
#
#   make demo                                  (the Makefile: builds the tools, then this)
#   make -f pipelines/demo.mk DEMO_DIR=/tmp/demo DEMO_STEPS=300
#
# The model: build/tools/mkmodel --keep-sizes writes random weights for the
# configs of a template folder. The template is written here: the configs
# of the test fixtures' tiny pipeline (the real SD 2.1 files with sizes
# shrunk: UNet channels 32-64, VAE 32-64, a 2-layer text encoder of width
# 32; 64 x 64 images, 8 x 8 latents), the real SD 2.1 scheduler config, and
# a CLIP byte-level BPE tokenizer of its own, small enough to write here:
# the printable ASCII characters, with and without the end-of-word mark,
# merges that make each word of the captions one token, and the two
# specials. The dataset: build/tools/mkdataset draws cartoon faces and
# captions them by what it drew. With random weights the samples are
# noise-like: the demo shows every stage work, not what a trained SD 2.1
# makes. A second `make demo` finds everything done; each stage is redone
# only when its inputs change, as in train.mk.

DEMO_DIR    ?= build/demo
DEMO_STEPS  ?= 150
DEMO_IMAGES ?= 32
DEMO_LR     ?= 2e-3
DEMO_SEEDS  ?= 1 2
# Where the build put mkmodel and mkdataset, and the df- programs.
THIS        := $(lastword $(MAKEFILE_LIST))
HERE        := $(dir $(THIS))
BUILD       ?= $(HERE)../build
BIN         ?= $(if $(wildcard $(HERE)../bin/df-train),$(HERE)../bin/,)
MKMODEL     ?= $(BUILD)/tools/mkmodel
MKDATASET   ?= $(BUILD)/tools/mkdataset

TEMPLATE    := $(DEMO_DIR)/template
MODEL       := $(DEMO_DIR)/model
DATASET     := $(DEMO_DIR)/dataset

.PHONY: demo clean
.DELETE_ON_ERROR:

demo: $(MODEL)/text_encoder/model.safetensors $(DATASET)/metadata.jsonl $(DEMO_DIR)/prompts.txt
	@$(MAKE) --no-print-directory -f $(HERE)train.mk BIN=$(BIN) MODEL=$(MODEL) DATASET=$(DATASET) \
	    WORK=$(DEMO_DIR) STEPS=$(DEMO_STEPS) RANK=4 LR=$(DEMO_LR) BATCH=4 SAVE_EVERY=50 \
	    SEEDS="$(DEMO_SEEDS)" SAMPLE_STEPS=20 PROMPTS=$(DEMO_DIR)/prompts.txt
	@echo "demo: model    $(MODEL) (random weights, SD 2.1 architecture, $$(du -sh $(MODEL) | cut -f1))"
	@echo "demo: dataset  $(DATASET) ($$(wc -l < $(DATASET)/metadata.jsonl) captioned images)"
	@echo "demo: cache    $(DEMO_DIR)/latents (df-encode-latents records: $(DEMO_DIR)/latents.jsonl)"
	@echo "demo: LoRA     $(DEMO_DIR)/lora/pytorch_lora_weights.safetensors (metrics: $(DEMO_DIR)/metrics.jsonl)"
	@echo "demo: samples  $(DEMO_DIR)/samples/base/ (without the LoRA), $(DEMO_DIR)/samples/lora/ (with it)"
	@echo "demo: open $(DEMO_DIR)/samples/index.html to see them side by side"

# The dataset: mkdataset writes metadata.jsonl last, so its presence means complete.
$(DATASET)/metadata.jsonl: $(MKDATASET)
	@mkdir -p $(DEMO_DIR)
	$(MKDATASET) --count $(DEMO_IMAGES) --size 64 $(DATASET)

$(DEMO_DIR)/prompts.txt:
	@: $(shell mkdir -p $(@D))
	$(file >$@,$(DEMO_PROMPTS))

# The model: mkmodel writes the text encoder's weights last. (A recipe is
# expanded whole before its first line runs, so the directories for $(file)
# are made by $(shell) during that expansion.)
$(MODEL)/text_encoder/model.safetensors: $(TEMPLATE)/tokenizer/vocab.json $(MKMODEL)
	@mkdir -p $(MODEL)
	$(MKMODEL) --keep-sizes $(TEMPLATE) $(MODEL)

$(TEMPLATE)/tokenizer/vocab.json: $(THIS)
	@: $(shell mkdir -p $(TEMPLATE)/unet $(TEMPLATE)/vae $(TEMPLATE)/text_encoder \
	    $(TEMPLATE)/scheduler $(TEMPLATE)/tokenizer)
	$(file >$(TEMPLATE)/model_index.json,$(MODEL_INDEX))
	$(file >$(TEMPLATE)/scheduler/scheduler_config.json,$(SCHEDULER_CONFIG))
	$(file >$(TEMPLATE)/unet/config.json,$(UNET_CONFIG))
	$(file >$(TEMPLATE)/vae/config.json,$(VAE_CONFIG))
	$(file >$(TEMPLATE)/text_encoder/config.json,$(TEXT_CONFIG))
	$(file >$(TEMPLATE)/tokenizer/special_tokens_map.json,$(SPECIAL_TOKENS))
	$(file >$(TEMPLATE)/tokenizer/tokenizer_config.json,$(TOKENIZER_CONFIG))
	awk -v words="$(WORDS)" -v vocab_size=$(VOCAB_SIZE) -v merges=$(TEMPLATE)/tokenizer/merges.txt \
	    -v vocab=$@.tmp "$$VOCAB_AWK"
	mv $@.tmp $@
	@echo "demo: model template in $(TEMPLATE)"

clean:
	rm -rf $(DEMO_DIR)

# ---------------------------------------------------------------- contents

define DEMO_PROMPTS
a portrait of a smiling person with long red hair, blue background
a portrait of a serious person with short black hair and glasses, green background
a portrait of a smiling person with short white hair and glasses, purple background
endef

# Every word of mkdataset's captions and of the prompts above becomes one token.
WORDS := a portrait of smiling serious person with long short black brown blond red white \
    hair and glasses background blue green yellow purple grey face man woman old young
VOCAB_SIZE := 512

# Tokens: ids 0-93 the characters ! to ~, 94-187 the same with </w>, then one
# per merge, then <|startoftext|> and <|endoftext|> (the highest id, as in
# CLIP). The JSON form of each token is kept beside it (" and \ escaped).
define VOCAB_AWK
function add(t, j) { if (!(t in id)) { id[t] = nv; json[nv++] = j } }
BEGIN {
    for (e = 0; e < 2; e++)
        for (i = 33; i < 127; i++) {
            c = sprintf("%c", i); j = c == "\"" ? "\\\"" : c == "\\" ? "\\\\" : c
            add(c (e ? "</w>" : ""), j (e ? "</w>" : ""))
        }
    print "#version: 0.2" > merges
    n = split(words, w, " ")
    for (k = 1; k <= n; k++) {
        t = substr(w[k], 1, 1)
        for (i = 2; i <= length(w[k]); i++) {
            c = substr(w[k], i, 1) (i == length(w[k]) ? "</w>" : "")
            if (!((t " " c) in seen)) { seen[t " " c] = 1; print t " " c > merges }
            t = t c; add(t, t)
        }
    }
    add("<|startoftext|>", "<|startoftext|>"); add("<|endoftext|>", "<|endoftext|>")
    if (nv > vocab_size) {
        print "demo.mk: " nv " tokens, more than the text encoder's " vocab_size > "/dev/stderr"
        exit 1
    }
    printf "{" > vocab
    for (i = 0; i < nv; i++) printf "%s\"%s\": %d", (i ? ", " : ""), json[i], i > vocab
    print "}" > vocab
}
endef
export VOCAB_AWK

define MODEL_INDEX
{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.8.0",
  "feature_extractor": ["transformers", "CLIPImageProcessor"],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "DDIMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
endef

define SCHEDULER_CONFIG
{
  "_class_name": "DDIMScheduler",
  "_diffusers_version": "0.8.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "prediction_type": "v_prediction",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
endef

define UNET_CONFIG
{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.10.0.dev0",
  "act_fn": "silu",
  "attention_head_dim": [2, 2, 2, 4],
  "block_out_channels": [32, 32, 32, 64],
  "center_input_sample": false,
  "cross_attention_dim": 32,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                       "DownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "sample_size": 8,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "use_linear_projection": true,
  "upcast_attention": true
}
endef

define VAE_CONFIG
{
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.8.0",
  "act_fn": "silu",
  "block_out_channels": [32, 32, 64, 64],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                       "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 64,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}
endef

define TEXT_CONFIG
{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_size": 32,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 64,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "pad_token_id": 1,
  "projection_dim": 512,
  "torch_dtype": "float32",
  "vocab_size": $(VOCAB_SIZE)
}
endef

define SPECIAL_TOKENS
{
  "bos_token": "<|startoftext|>",
  "eos_token": "<|endoftext|>",
  "pad_token": "!",
  "unk_token": "<|endoftext|>"
}
endef

define TOKENIZER_CONFIG
{
  "add_prefix_space": false,
  "bos_token": "<|startoftext|>",
  "do_lower_case": true,
  "eos_token": "<|endoftext|>",
  "errors": "replace",
  "model_max_length": 77,
  "pad_token": "!",
  "tokenizer_class": "CLIPTokenizer",
  "unk_token": "<|endoftext|>"
}
endef
