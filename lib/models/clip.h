/* clip.h - the CLIP text encoder (transformers' CLIPTextModel) of a diffusers
 * `text_encoder/` folder: config.json for every size, weights through
 * lib/io/weights (F32, F16 or BF16 files).
 *
 * Forward for token ids (B,T): token + position embeddings, num_hidden_layers
 * pre-LayerNorm transformer layers with a causal mask and no padding mask
 * (the pipeline passes none), q scaled by head_dim^-0.5 before q.k^T, MLP
 * with exact-erf gelu (or quick_gelu, SD 1.x's OpenAI CLIP), final
 * LayerNorm -> last_hidden_state, which SD 2.x feeds the UNet.
 * Weights are fetched from the df_weights table on every forward, so a LoRA
 * merged with df_weights_mut (into q/k/v/out_proj) takes effect at once.
 *
 * Tested against refs/text_encoder.safetensors by
 * tests/check_fixtures/check_text_encoder.c. */
#ifndef DF_CLIP_H
#define DF_CLIP_H

#include <jansson.h>
#include <stdint.h>

#include <stddef.h>

#include "status.h"
#include "tokenizer.h"
#include "weights.h"

typedef enum { DF_CLIP_ACT_GELU, DF_CLIP_ACT_QUICK_GELU } df_clip_act;

typedef struct {
    int hidden_size;        /* C */
    int num_layers;         /* L */
    int num_heads;          /* NH, head dim C/NH */
    int intermediate_size;  /* I, MLP width */
    int max_positions;      /* max_position_embeddings, 77: the longest T */
    int vocab_size;
    int eos_token_id;       /* config's; 2 (legacy) selects pooling at argmax(ids) */
    float layer_norm_eps;
    df_clip_act act;
} df_clip_config;

typedef struct df_clip df_clip;

/* Load dir/config.json and the weights (variant NULL or "fp16", as
 * df_weights_open_dir). Every weight is checked against the config here,
 * so a missing tensor or a shape mismatch fails the load, naming the
 * tensor. Unknown keys (position_ids) are ignored. */
df_status df_clip_load(const char *dir, const char *variant, df_clip **out);
/* The same from a parsed config.json (label names it in messages) and an
 * open weight table, which the model takes over (freed on failure too):
 * a single-file checkpoint's view (lib/models/single_file.h). */
df_status df_clip_load_json(const json_t *config, const char *label, df_weights *w,
                            df_clip **out);
void df_clip_free(df_clip *c);

const df_clip_config *df_clip_get_config(const df_clip *c);
/* The weight table, for LoRA merges (df_weights_mut). Owned by c. */
df_weights *df_clip_weights(df_clip *c);

/* ids (B,T), 1 <= T <= max_positions, each id in [0, vocab_size).
 * last_hidden (B,T,C): after final_layer_norm.
 * hidden_states (L+1,B,T,C) or NULL: [0] the embeddings, [l] layer l's
 * output before the final LayerNorm (transformers' output_hidden_states).
 * pooled (B,C) or NULL: last_hidden at the eos position (transformers'
 * pooler_output: argmax(ids) when eos_token_id is 2, else the first eos).
 * Returns DF_ERR_RANGE for a bad id or T, DF_ERR_NOMEM, or a weight error. */
df_status df_clip_forward(df_clip *c, const int32_t *ids, int B, int T, float *last_hidden,
                          float *hidden_states, float *pooled);

/* StableDiffusionPipeline.encode_prompt for B texts: tokenize each (padded
 * and truncated to T = df_tokenizer_max_length), forward, and write
 * last_hidden_state to out (B,T,C). n_untruncated (B entries, may be NULL)
 * gets each text's length before truncation (> T: the caller warns). */
df_status df_clip_encode_text(df_clip *c, const df_tokenizer *tok, const char *const *texts,
                              int B, float *out, size_t *n_untruncated);

#endif
