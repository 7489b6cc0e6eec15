/* unet.h - the Stable Diffusion UNet (diffusers UNet2DConditionModel), built
 * from a diffusers folder's unet/config.json and its safetensors weights.
 *
 * Everything structural comes from the config (block types, channels, heads,
 * layers per block, groups, linear or 1x1-conv projections, cross-attention
 * dim), so the tiny fixture UNet and the real SD 2.1 UNet run through the
 * same code. Values the code does not implement are load errors that name the
 * config key; a weight whose name or shape does not match the config is a
 * load error naming the tensor.
 *
 * Weights live in a df_weights table (F32 views into the mapping, F16/BF16
 * upcast once). The forward looks its weight pointers up again at every call,
 * so a LoRA merged with df_weights_mut(df_unet_weights(u), ...) is used by the
 * next forward without any further call.
 *
 * Activations come from one arena sized from the config for the (B,h,w,T) of
 * the call; it is kept for the next call of the same shape (a sampling loop)
 * and freed by df_unet_release_activations() or df_unet_free().
 * Tested by tests/check_fixtures/check_unet.c (fixture outputs of diffusers)
 * and tests/unit/test_unet.c (bad configs and weight files). */
#ifndef DF_UNET_H
#define DF_UNET_H

#include <jansson.h>
#include <stddef.h>

#include "status.h"
#include "weights.h"

typedef struct df_unet df_unet;

/* Load dir/config.json and the weights (variant NULL: F32 file; "fp16":
 * diffusion_pytorch_model.fp16.safetensors, upcast to F32). */
df_status df_unet_load(const char *dir, const char *variant, df_unet **out);
/* The same from a parsed config.json (label names it in messages) and an
 * open weight table, which the model takes over (freed on failure too):
 * a single-file checkpoint's view (lib/models/single_file.h). */
df_status df_unet_load_json(const json_t *config, const char *label, df_weights *w,
                            df_unet **out);
void df_unet_free(df_unet *u);

/* sample (B,in_channels,h,w), timesteps (B), encoder_hidden_states
 * (B,T,cross_attention_dim) -> out (B,out_channels,h,w). Any h, w >= 1 (sides
 * that are not a multiple of 2^downsamplers are handled as diffusers does:
 * each up-sampler targets its skip tensor's size). DF_ERR_NUMERIC when the
 * output holds NaN or Inf. */
df_status df_unet_forward(df_unet *u, const float *sample, const float *timesteps,
                          const float *encoder_hidden_states, int B, int h, int w, int T,
                          float *out);

/* The time conditioning alone, for checking and for callers that cache it:
 * time_proj (B,block_out_channels[0]) = sinusoidal embedding of timesteps,
 * time_emb (B,4*block_out_channels[0]) = linear_2(silu(linear_1(time_proj))).
 * Either output may be NULL. */
df_status df_unet_time_embedding(df_unet *u, const float *timesteps, int B, float *time_proj,
                                 float *time_emb);

/* Free the activation arena now (e.g. before the VAE decode). */
void df_unet_release_activations(df_unet *u);
/* Bytes of the activation arena currently held. */
size_t df_unet_activation_bytes(const df_unet *u);

/* The weight table, for LoRA merges (df_weights_mut) and memory reports. */
df_weights *df_unet_weights(df_unet *u);

/* Config values callers need. */
int df_unet_in_channels(const df_unet *u);
int df_unet_out_channels(const df_unet *u);
int df_unet_sample_size(const df_unet *u);         /* latent side the model was trained at */
int df_unet_cross_attention_dim(const df_unet *u);
int df_unet_time_proj_dim(const df_unet *u);       /* block_out_channels[0] */
int df_unet_time_embed_dim(const df_unet *u);      /* 4 * block_out_channels[0] */

#endif
