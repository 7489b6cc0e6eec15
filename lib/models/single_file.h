/* single_file.h - the original Stable Diffusion single-file checkpoint
 * layout (the LatentDiffusion state dict saved as one .safetensors, as
 * v2-1_768-ema-pruned.safetensors) read under the diffusers names that
 * unet.c, vae.c and clip.c bind:
 *
 *   model.diffusion_model.*   UNet (openaimodel: input_blocks, middle_block,
 *                             output_blocks, time_embed, out)
 *   first_stage_model.*       VAE (encoder/decoder down/up.N.block.M, mid,
 *                             norm_out; quant_conv, post_quant_conv)
 *   cond_stage_model.model.*  OpenCLIP text tower (transformer.resblocks.N,
 *                             token_embedding, positional_embedding, ln_final);
 *                             also cond_stage_model.transformer.text_model.*,
 *                             a transformers CLIPTextModel inside the file
 *
 * Nothing is copied: each component's table is a view of the file
 * (df_st_view_new) whose entries point into the one mapping. A fused
 * OpenCLIP attn.in_proj_weight (3C,C) / in_proj_bias (3C) becomes q/k/v
 * row thirds, and the VAE mid attention's 1x1 convolutions (C,C,1,1) are
 * read as the linear (C,C) weights diffusers has: both are the same bytes
 * under another shape. The OpenCLIP tower has one layer more than SD 2.x
 * uses (its text features are the penultimate layer's, then ln_final);
 * resblocks from the text config's num_hidden_layers on are skipped.
 *
 * Every tensor of the file is classified: mapped (to one name, or three for
 * in_proj), skipped with a reason (DDPM schedule buffers, the EMA copy,
 * text_projection, logit_scale, the dropped resblock), or unknown (counted
 * and named, for the caller to report).
 * Tested by tests/unit/test_single_file.c and, through df-sample on a file
 * written by tools/mk-single-file.c, by tests/tools/test-df-sample-single-file.sh. */
#ifndef DF_SINGLE_FILE_H
#define DF_SINGLE_FILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "status.h"
#include "tokenizer.h"
#include "weights.h"

typedef enum { DF_SF_UNET, DF_SF_VAE, DF_SF_TEXT, DF_SF_COMPONENTS } df_sf_component;

/* What the mapping needs from the configs: input/output block numbering
 * depends on layers_per_block, the VAE decoder's up.N order on the number
 * of blocks, and the text layers kept on num_hidden_layers. */
typedef struct {
    int unet_layers_per_block;
    unsigned unet_up_attention;   /* bit i: up block i has attentions (the inverse
                                   * needs it: the upsampler is output_blocks.N.1 or .2) */
    int vae_blocks;
    int text_layers;
} df_sf_layout;

typedef enum { DF_SF_UNKNOWN, DF_SF_SKIPPED, DF_SF_MAPPED } df_sf_kind;

#define DF_SF_NAME_MAX 192

typedef struct {
    df_sf_kind kind;
    df_sf_component comp;            /* MAPPED */
    int n;                           /* MAPPED: 1, or 3 for in_proj (q, k, v thirds) */
    char names[3][DF_SF_NAME_MAX];   /* MAPPED: the diffusers names */
    bool squeeze;                    /* (C,C,1,1) read as (C,C) */
    const char *why;                 /* SKIPPED: the reason */
} df_sf_map;

/* Classify one checkpoint tensor name. */
df_sf_kind df_sf_map_name(const char *name, const df_sf_layout *lay, df_sf_map *m);

/* The inverse: the checkpoint name holding diffusers `name` of component c
 * (written to buf); *part gets 0, 1, 2 for the q, k, v third of a fused
 * in_proj, -1 otherwise. False when name has no place in the layout. */
bool df_sf_file_name(df_sf_component c, const char *name, const df_sf_layout *lay, char *buf,
                     size_t cap, int *part);

typedef struct df_single_file df_single_file;

/* Open and validate (safetensors header checks, then every tensor
 * classified; a fused in_proj must split in three). A file without
 * tensors of one of the three components fails, naming its prefix. */
df_status df_single_file_open(const char *path, const df_sf_layout *lay, df_single_file **out);
void df_single_file_free(df_single_file *sf);

/* Component c's weights under diffusers names: a view of the file (F32
 * tensors are not copied; F16/BF16 are upcast on first use, as from a
 * folder). A tensor the model asks for and the file lacks is named as the
 * file would name it. The table keeps the file mapped until freed. */
df_status df_single_file_weights(df_single_file *sf, df_sf_component c, df_weights **out);

/* Counts over the file's tensors: total, per kind, mapped per component. */
size_t df_single_file_count(const df_single_file *sf, df_sf_kind kind);
size_t df_single_file_component_count(const df_single_file *sf, df_sf_component c);
size_t df_single_file_tensors(const df_single_file *sf);
/* The file itself (names as stored). */
const df_safetensors *df_single_file_file(const df_single_file *sf);
/* The i-th unknown tensor name (i < count(DF_SF_UNKNOWN)). */
const char *df_single_file_unknown(const df_single_file *sf, size_t i);

/* ---- a whole model from one file ---- */

/* What a pipeline needs besides the weights: the component configs, the
 * scheduler config and the tokenizer, built in (SD 2.1, lib/models/
 * sd21_config.h, the CLIP BPE of clip_bpe.c) or from config_dir, a diffusers
 * folder whose unet/, vae/, text_encoder/ config.json, scheduler/ and
 * tokenizer/ are read (its weights are not). */
typedef struct {
    df_single_file *file;
    json_t *config[DF_SF_COMPONENTS];    /* config.json of unet, vae, text encoder */
    char label[DF_SF_COMPONENTS][1024];  /* their paths, for messages */
    json_t *scheduler;                   /* prediction_type set as decided */
    df_tokenizer *tok;
    int unet_sample_size, unet_in_channels, vae_blocks;
    const char *prediction;              /* "v_prediction" or "epsilon" */
    char note[1400];                     /* a line for the user, or "" */
} df_sf_model;

/* prediction: "v" (or "v_prediction"), "epsilon", or NULL to decide by the
 * UNet's sample_size: 96 (768 px, SD 2.x's v-inference yaml) -> v,
 * otherwise epsilon. On failure nothing is left to free. */
df_status df_sf_model_open(const char *path, const char *config_dir, const char *prediction,
                           df_sf_model *m);
void df_sf_model_free(df_sf_model *m);

#endif
