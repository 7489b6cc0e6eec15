/* pipeline_edit.c - img2img and inpainting for df_pipeline_generate: the
 * encode of the init image (and the masked image), the generator's draws in
 * diffusers' order, the latent mask, the 9-channel UNet input and the
 * 4-channel blend. See pipeline_edit.h for the diffusers computation.
 * Tested by tests/tools/test-df-sample-edit.sh against diffusers 0.27.2. */
#include "pipeline_edit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The double a user's strength stands for: the shortest decimal that reads
 * back as the float, as Python holds "0.7" (0.69999999999999996). The float
 * itself is 0.69999998807907104, and int(10 * that) would be 6, not 7. */
static double as_decimal(float f)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return strtod(buf, NULL);
}

df_status df_edit_check(const df_pipeline_params *pp, int unet_in, int *begin)
{
    *begin = 0;
    if (!pp->init_image && !pp->mask) {
        if (unet_in == DF_INPAINT_UNET_CHANNELS)
            return df_fail(DF_ERR_ARG, "this UNet has %d input channels (an inpainting model): "
                           "it needs an init image and a mask", unet_in);
        return DF_OK;
    }
    if (!pp->init_image)
        return df_fail(DF_ERR_ARG, "a mask needs an init image");
    if (!pp->mask && unet_in == DF_INPAINT_UNET_CHANNELS)
        return df_fail(DF_ERR_ARG, "this UNet has %d input channels (an inpainting model): "
                       "img2img needs a 4-channel UNet; give a mask to inpaint", unet_in);
    if (unet_in != 4 && unet_in != DF_INPAINT_UNET_CHANNELS)
        return df_fail(DF_ERR_UNSUPPORTED, "img2img and inpainting need a UNet with 4 or %d input "
                       "channels, not %d", DF_INPAINT_UNET_CHANNELS, unet_in);
    if (!(pp->strength > 0.0f && pp->strength <= 1.0f))
        return df_fail(DF_ERR_ARG, "strength %g is outside (0, 1]", (double)pp->strength);
    /* diffusers' get_timesteps: init_timestep = min(int(steps * strength), steps) */
    int init = (int)((double)pp->steps * as_decimal(pp->strength));
    if (init > pp->steps)
        init = pp->steps;
    if (init < 1)
        return df_fail(DF_ERR_ARG, "strength %g with %d steps runs no step (int(%d * %g) = 0); "
                       "raise the strength or the steps", (double)pp->strength, pp->steps,
                       pp->steps, (double)pp->strength);
    *begin = pp->steps - init;
    return DF_OK;
}

/* One image's latents as diffusers' _encode_vae_image with a generator:
 * scaling_factor * (mean + std * randn(C, h, w)). rgb (H,W,3) uint8 is
 * normalized as the image processor does, 2 * (v / 255) - 1 in float32;
 * with keep (H,W) non-NULL (inpainting's masked image) pixels where keep is
 * 0 are zeroed, as image * (mask < 0.5). */
static df_status encode_one(df_vae *vae, const uint8_t *rgb, const float *keep, int H, int W,
                            int C, int hw, df_rng *rng, float *out)
{
    size_t HW = (size_t)H * W;
    float *img = malloc(3 * HW * sizeof *img);
    float *moments = malloc(2 * (size_t)C * hw * sizeof *moments);
    float *mean = malloc((size_t)C * hw * sizeof *mean);
    float *std = malloc((size_t)C * hw * sizeof *std);
    float *eps = malloc((size_t)C * hw * sizeof *eps);
    df_status st = img && moments && mean && std && eps ? DF_OK
                 : df_fail(DF_ERR_NOMEM, "out of memory for the init image");
    for (size_t q = 0; st == DF_OK && q < HW; q++)
        for (int c = 0; c < 3; c++) {
            float v = 2.0f * ((float)rgb[q * 3 + c] / 255.0f) - 1.0f;
            img[c * HW + q] = keep ? v * keep[q] : v;
        }
    if (st == DF_OK)
        st = df_vae_encode(vae, img, 1, H, W, moments);
    if (st == DF_OK) {
        df_vae_posterior(moments, 1, C, hw, mean, NULL, std);
        df_rng_randn(rng, eps, (size_t)C * hw);   /* latent_dist.sample's draw */
        const float sf = df_vae_scaling_factor(vae);
        for (size_t k = 0; k < (size_t)C * hw; k++)
            out[k] = sf * (mean[k] + std[k] * eps[k]);
    }
    free(img);
    free(moments);
    free(mean);
    free(std);
    free(eps);
    return st;
}

/* Copy item 0 to items 1..B-1 (the pipelines' repeat of one image). */
static void repeat_items(float *v, int B, size_t per)
{
    for (int b = 1; b < B; b++)
        memcpy(v + b * per, v, per * sizeof *v);
}

df_status df_edit_prepare(df_vae *vae, const df_pipeline_params *pp, int B, int C, int h, int w,
                          int begin, bool concat, df_rng *rng, df_edit *e)
{
    memset(e, 0, sizeof *e);
    e->begin = begin;
    e->inpaint = pp->mask != NULL;
    e->concat = concat;
    /* img2img always starts from the image; inpainting only below strength 1
     * (diffusers' is_strength_max compares the float with 1.0). */
    e->from_image = !e->inpaint || pp->strength != 1.0f;
    e->B = B, e->C = C, e->h = h, e->w = w;
    int H = pp->height, W = pp->width, m = H / h;
    size_t hw = (size_t)h * w, per = (size_t)C * hw, n = (size_t)B * per, HW = (size_t)H * W;
    if (df_vae_latent_channels(vae) != C)
        return df_fail(DF_ERR_SHAPE, "vae latent_channels %d, the UNet works on %d",
                       df_vae_latent_channels(vae), C);
    bool need_image = !e->inpaint || !concat || e->from_image;
    e->noise = malloc(n * sizeof *e->noise);
    if (need_image)
        e->image_latents = malloc(n * sizeof *e->image_latents);
    if (e->inpaint) {
        e->mask = malloc(hw * sizeof *e->mask);
        e->masked_latents = malloc(n * sizeof *e->masked_latents);
    }
    float *keep = e->inpaint ? malloc(HW * sizeof *keep) : NULL;
    df_status st = DF_OK;
    if (!e->noise || (need_image && !e->image_latents) ||
        (e->inpaint && (!e->mask || !e->masked_latents || !keep)))
        st = df_fail(DF_ERR_NOMEM, "out of memory for img2img");
    if (st == DF_OK && need_image) {
        st = encode_one(vae, pp->init_image, NULL, H, W, C, (int)hw, rng, e->image_latents);
        repeat_items(e->image_latents, B, per);
    }
    if (st == DF_OK)
        df_rng_randn(rng, e->noise, n);   /* one draw for the batch, as randn_tensor */
    if (st == DF_OK && e->inpaint) {
        /* Binarized as the mask processor does: v / 255 >= 0.5, i.e. v >= 128. */
        for (size_t q = 0; q < HW; q++)
            keep[q] = (float)pp->mask[q] / 255.0f >= 0.5f ? 0.0f : 1.0f;
        /* interpolate(mode="nearest") to (h, w): pixel (y*m, x*m). */
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                e->mask[(size_t)y * w + x] = 1.0f - keep[(size_t)y * m * W + (size_t)x * m];
        if (concat) {
            st = encode_one(vae, pp->init_image, keep, H, W, C, (int)hw, rng, e->masked_latents);
            repeat_items(e->masked_latents, B, per);
        } else {
            /* diffusers encodes the masked image for a 4-channel UNet too and
             * never uses it; its draw still moves the generator, which only
             * matters for samplers that draw later (Euler a, DDPM, SDE). */
            df_rng_randn(rng, e->masked_latents, per);
        }
    }
    free(keep);
    return st;
}

void df_edit_free(df_edit *e)
{
    free(e->image_latents);
    free(e->noise);
    free(e->mask);
    free(e->masked_latents);
    memset(e, 0, sizeof *e);
}

void df_edit_unet_input(const df_edit *e, const float *scaled, int NB, int B, int C, int hw,
                        float *x)
{
    bool concat = e && e->concat;
    size_t per = (size_t)C * hw, cin = concat ? 2 * per + hw : per;
    for (int b = 0; b < NB; b++) {
        float *o = x + b * cin;
        memcpy(o, scaled + (b % B) * per, per * sizeof *o);
        if (concat) {
            memcpy(o + per, e->mask, hw * sizeof *o);
            memcpy(o + per + hw, e->masked_latents + (b % B) * per, per * sizeof *o);
        }
    }
}

void df_edit_blend(const df_edit *e, const float *proper, float *latents)
{
    size_t hw = (size_t)e->h * e->w;
    for (int b = 0; b < e->B; b++)
        for (int c = 0; c < e->C; c++) {
            size_t off = ((size_t)b * e->C + c) * hw;
            for (size_t q = 0; q < hw; q++) {
                float mk = e->mask[q];
                latents[off + q] = (1.0f - mk) * proper[off + q] + mk * latents[off + q];
            }
        }
}
