/* pipeline_edit.h - private to lib/models/pipeline*.c: the img2img and
 * inpainting parts of df_pipeline_generate, as diffusers 0.27.2's
 * StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline compute
 * them. Not part of the library API.
 *
 * What diffusers does, in the order it draws from the generator:
 *   t_start = steps - int(steps * strength); the scheduler starts there
 *   image latents = scaling_factor * (mean + std * randn) of vae.encode(image)
 *       (img2img always; inpainting with a 4-channel UNet or strength < 1)
 *   noise = randn (batch, C, h, w)
 *   start latents = add_noise(image latents, noise, step t_start), or for
 *       inpainting at strength 1 noise * init_noise_sigma
 *   inpainting: mask = binarized mask (>= 0.5) sampled at every 8th pixel;
 *       masked image latents = encode(image * (mask < 0.5)) with a draw
 *       (always drawn, also for a 4-channel UNet, which never uses them)
 *   each step: 9-channel UNet input = cat(latents, mask, masked latents);
 *       4-channel UNet: after the step, latents = (1 - mask) * image latents
 *       noised to the next step (unnoised after the last) + mask * latents
 * The output is the decoded latents; diffusers pastes nothing back (only
 * with padding_mask_crop, which we do not offer).
 * Tested against diffusers by tests/tools/test-df-sample-edit.sh
 * (tests/data/edit_refs, made by tests/refs/make_edit_refs.py). */
#ifndef DF_PIPELINE_EDIT_H
#define DF_PIPELINE_EDIT_H

#include <stdbool.h>

#include "pipeline.h"
#include "rng.h"
#include "vae.h"

/* The in_channels of an inpainting UNet (latents 4 + mask 1 + masked 4),
 * the only layout diffusers' inpainting pipeline accepts besides 4. */
#define DF_INPAINT_UNET_CHANNELS 9

typedef struct {
    int begin;               /* first schedule step run (t_start) */
    bool inpaint;            /* a mask was given */
    bool concat;             /* 9-channel UNet: mask and masked latents in its input */
    bool from_image;         /* start from the noised image latents (else noise * sigma0) */
    int B, C, h, w;
    float *image_latents;    /* (B,C,h,w) or NULL when not needed */
    float *noise;            /* (B,C,h,w) */
    float *mask;             /* (h,w) 0 or 1, inpainting */
    float *masked_latents;   /* (B,C,h,w), 9-channel UNet only */
} df_edit;

/* Check an img2img / inpainting request against the UNet's in_channels
 * before anything is loaded: strength in (0, 1], a mask needs an image, a
 * 9-channel UNet needs a mask, and at least one step runs. *begin gets
 * t_start. */
df_status df_edit_check(const df_pipeline_params *pp, int unet_in_channels, int *begin);

/* Encode the image (and its masked form for inpainting), drawing from rng
 * in diffusers' order, and draw the noise. The VAE's latent_channels must
 * be C. On failure e holds nothing to free beyond df_edit_free. */
df_status df_edit_prepare(df_vae *vae, const df_pipeline_params *pp, int B, int C, int h, int w,
                          int begin, bool concat, df_rng *rng, df_edit *e);
void df_edit_free(df_edit *e);

/* The UNet's input for one step: x (NB, Cin, h, w) from the scaled latents
 * (B, C, h, w), item b taking latents b % B (the CFG batch repeats them);
 * with concat each item also gets the mask and its masked latents. */
void df_edit_unet_input(const df_edit *e, const float *scaled, int NB, int B, int C, int hw,
                        float *x);

/* 4-channel inpainting after a step: latents = (1 - mask) * proper + mask *
 * latents, proper (B,C,h,w) the image latents noised to the next step. */
void df_edit_blend(const df_edit *e, const float *proper, float *latents);

#endif
