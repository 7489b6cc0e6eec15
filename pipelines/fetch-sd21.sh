#!/usr/bin/env bash
# fetch-sd21.sh - download Stable Diffusion 2.1 in the diffusers layout and
# the published DiffyFace LoRA with df-fetch: parallel, verified, resumable
# (rerun it after an interruption; finished files are not fetched again).
#
#   pipelines/fetch-sd21.sh [DEST]        default DEST: models
#   pipelines/fetch-sd21.sh --list        print the JSONL URL list only
#
# Result: DEST/stable-diffusion-2-1/{model_index.json,unet/,vae/,...} and
# DEST/diffyface-lora/pytorch_lora_weights.safetensors, plus DEST/fetch.jsonl
# (one record per file: file_name, bytes, sha256, or error).
#
# Settings (environment):
#   HF_TOKEN     sent as "Authorization: Bearer ..." when set (gated repos);
#                df-fetch never prints it
#   HF_BASE      hub address (default https://huggingface.co); the tests
#                point it at a local server holding the same paths
#   SD_REPO      base model repo (default stabilityai/stable-diffusion-2-1;
#                set it to a mirror if that repo moves)
#   SD_REVISION  branch or commit (default main)
#   VARIANT      "fp16" fetches the *.fp16.safetensors weights instead
#   LORA_REPO    the original project's LoRA (default rigvedrs/DiffyFace,
#                published by the DiffyFace authors on the hub)
#   LORA_FILE    default pytorch_lora_weights.safetensors
#   JOBS         transfers in flight (default 4)
#   DF_FETCH     df-fetch to run (default: the one on PATH)
# Tested by tests/tools/test-df-fetch.sh (HF_BASE on 127.0.0.1).
set -euo pipefail

HF_BASE=${HF_BASE:-https://huggingface.co}
SD_REPO=${SD_REPO:-stabilityai/stable-diffusion-2-1}
SD_REVISION=${SD_REVISION:-main}
VARIANT=${VARIANT:-}
LORA_REPO=${LORA_REPO:-rigvedrs/DiffyFace}
LORA_FILE=${LORA_FILE:-pytorch_lora_weights.safetensors}
JOBS=${JOBS:-4}
DF_FETCH=${DF_FETCH:-df-fetch}

# The diffusers folder of SD 2.1: configs, tokenizer, and the weights of
# text_encoder, unet and vae (with a ".fp16" infix for the fp16 variant).
sd_files() {
    local w=""
    [ -n "$VARIANT" ] && w=".$VARIANT"
    cat <<LIST
model_index.json
feature_extractor/preprocessor_config.json
scheduler/scheduler_config.json
text_encoder/config.json
text_encoder/model$w.safetensors
tokenizer/merges.txt
tokenizer/special_tokens_map.json
tokenizer/tokenizer_config.json
tokenizer/vocab.json
unet/config.json
unet/diffusion_pytorch_model$w.safetensors
vae/config.json
vae/diffusion_pytorch_model$w.safetensors
LIST
}

url_list() {
    local f
    sd_files | while read -r f; do
        printf '{"url":"%s/%s/resolve/%s/%s","file_name":"stable-diffusion-2-1/%s"}\n' \
            "$HF_BASE" "$SD_REPO" "$SD_REVISION" "$f" "$f"
    done
    printf '{"url":"%s/%s/resolve/main/%s","file_name":"diffyface-lora/%s"}\n' \
        "$HF_BASE" "$LORA_REPO" "$LORA_FILE" "$LORA_FILE"
}

if [ "${1:-}" = "--list" ]; then
    url_list
    exit 0
fi
dest=${1:-models}
mkdir -p "$dest"
auth=()
[ -n "${HF_TOKEN:-}" ] && auth=(--header "Authorization: Bearer $HF_TOKEN")
# --timeout is a stall limit, so multi-GB files are fine on slow links.
url_list | "$DF_FETCH" --out "$dest" -j "$JOBS" --retries 5 --timeout 60 --strict \
    "${auth[@]}" > "$dest/fetch.jsonl"
