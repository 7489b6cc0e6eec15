/* vae.h - the Stable Diffusion autoencoder (diffusers AutoencoderKL): the
 * encoder (image -> quant_conv moments) and the decoder (post_quant_conv ->
 * image), built from a diffusers folder's vae/config.json and its weights.
 *
 * Structure from the config (block_out_channels, layers_per_block,
 * norm_num_groups, latent/in/out channels, block types); eps 1e-6 throughout;
 * the mid-block attention is single-headed. scaling_factor is read from the
 * config, 0.18215 when absent (as in the real SD 2.1 file). Both attention
 * weight namings are accepted: to_q/to_k/to_v/to_out.0 and the older
 * query/key/value/proj_attn of checkpoints saved before diffusers 0.14.
 *
 * Images are processed one at a time through the network, so memory does
 * not grow with the batch: at 768 px the decoder's last blocks work on
 * 128-channel 768x768 maps (300 MB each in F32), and only the buffers the
 * current layer needs are kept.
 * Tested by tests/check_fixtures/check_vae.c (fixture outputs of diffusers)
 * and tests/unit/test_vae.c (bad configs and weight files). */
#ifndef DF_VAE_H
#define DF_VAE_H

#include <jansson.h>
#include <stddef.h>

#include "status.h"
#include "weights.h"

typedef struct df_vae df_vae;

/* Load dir/config.json and the weights (variant NULL or "fp16"). */
df_status df_vae_load(const char *dir, const char *variant, df_vae **out);
/* The same from a parsed config.json (label names it in messages) and an
 * open weight table, which the model takes over (freed on failure too):
 * a single-file checkpoint's view (lib/models/single_file.h). */
df_status df_vae_load_json(const json_t *config, const char *label, df_weights *w,
                            df_vae **out);
void df_vae_free(df_vae *v);

/* Latent size for an image of H x W (each downsampler halves, rounding
 * down), and image size for a latent (each upsampler doubles). */
void df_vae_latent_size(const df_vae *v, int H, int W, int *h, int *w);
void df_vae_image_size(const df_vae *v, int h, int w, int *H, int *W);

/* image (B,in_channels,H,W) in [-1,1] -> moments (B,2*latent_channels,h,w)
 * (= quant_conv(encoder(image)): channels [0,L) mean, [L,2L) raw logvar). */
df_status df_vae_encode(df_vae *v, const float *image, int B, int H, int W, float *moments);

/* latents (B,latent_channels,h,w), already divided by the scaling factor ->
 * image (B,out_channels,H,W), roughly [-1,1]. DF_ERR_NUMERIC on NaN/Inf. */
df_status df_vae_decode(df_vae *v, const float *latents, int B, int h, int w, float *image);

/* DiagonalGaussianDistribution of moments (B,2L,HW): mean (B,L,HW), logvar
 * clamped to [-30,20], std = exp(0.5 logvar). Any output may be NULL. */
void df_vae_posterior(const float *moments, int B, int L, int HW, float *mean, float *logvar,
                      float *std);

float df_vae_scaling_factor(const df_vae *v);
int df_vae_latent_channels(const df_vae *v);
int df_vae_in_channels(const df_vae *v);
int df_vae_out_channels(const df_vae *v);
int df_vae_sample_size(const df_vae *v);           /* image side the model was trained at */
/* Free the activation arena now (it is kept between calls otherwise). */
void df_vae_release_activations(df_vae *v);
/* Bytes the encodes/decodes so far held at most in activations (for reports). */
size_t df_vae_peak_activation_bytes(const df_vae *v);

df_weights *df_vae_weights(df_vae *v);

#endif
