/* check_vae.c - checks lib/models/vae against refs/vae.safetensors, diffusers'
 * AutoencoderKL: moments = quant_conv(encoder(image)), the posterior's mean,
 * logvar (clamped) and std, decoded = decode(latents) and
 * decoded_scaled_input = decode(latents / scaling_factor), where the scaling
 * factor is the config's (0.18215 when absent), itself checked against the
 * stored scaling_factor. Tolerance 1e-4 x max(1, max|ref|); sizes from the
 * stored tensors' shapes. */
#include <stdio.h>
#include <stdlib.h>

#include "model_refs.h"
#include "vae.h"

static int check_encoder(const cf_ctx *c, const df_safetensors *st, df_vae *v)
{
    static const char *const outs[] = {"moments", "mean", "logvar", "std"};
    cf_ref img, ref[4];
    int fails = cf_ref_get(c, st, "image", &img);
    for (int i = 0; i < 4; i++)
        fails += cf_ref_get(c, st, outs[i], &ref[i]);
    if (fails)
        goto done;
    int B = (int)img.shape[0], H = (int)img.shape[2], W = (int)img.shape[3], h, w;
    int L = df_vae_latent_channels(v);
    df_vae_latent_size(v, H, W, &h, &w);
    size_t nm = (size_t)B * 2 * L * h * w;
    float *got = NULL;
    if (img.ndim != 4 || ref[0].n != nm || ref[1].n != nm / 2) {
        for (int i = 0; i < 4; i++)
            fails += cf_ref_fail(c, outs[i], "reference shapes differ from the config's");
    } else if (!(got = malloc(nm * 5 / 2 * sizeof *got)) ||
               df_vae_encode(v, img.data, B, H, W, got) != DF_OK) {
        for (int i = 0; i < 4; i++)
            fails += cf_ref_fail(c, outs[i], got ? df_last_error() : "out of memory");
    } else {
        fails += cf_ref_compare(c, "moments", got, &ref[0]);
        float *mean = got + nm, *lv = mean + nm / 2, *sd = lv + nm / 2;
        df_vae_posterior(got, B, L, h * w, mean, lv, sd);
        fails += cf_ref_compare(c, "mean", mean, &ref[1]);
        fails += cf_ref_compare(c, "logvar", lv, &ref[2]);
        fails += cf_ref_compare(c, "std", sd, &ref[3]);
    }
    free(got);
done:
    cf_ref_free(&img);
    for (int i = 0; i < 4; i++)
        cf_ref_free(&ref[i]);
    return fails;
}

/* decode(latents * scale) compared with `tensor`. */
static int check_decode(const cf_ctx *c, df_vae *v, const cf_ref *lat, float scale,
                        const df_safetensors *st, const char *tensor)
{
    cf_ref ref;
    if (cf_ref_get(c, st, tensor, &ref))
        return 1;
    int B = (int)lat->shape[0], h = (int)lat->shape[2], w = (int)lat->shape[3], H, W, fails;
    df_vae_image_size(v, h, w, &H, &W);
    float *in = malloc(lat->n * sizeof *in), *out = NULL;
    if (lat->ndim != 4 || ref.n != (size_t)B * df_vae_out_channels(v) * H * W)
        fails = cf_ref_fail(c, tensor, "reference shape differs from the config's");
    else if (!in || !(out = malloc(ref.n * sizeof *out)))
        fails = cf_ref_fail(c, tensor, "out of memory");
    else {
        for (size_t i = 0; i < lat->n; i++)
            in[i] = scale == 1.0f ? lat->data[i] : lat->data[i] / scale;
        if (df_vae_decode(v, in, B, h, w, out) != DF_OK)
            fails = cf_ref_fail(c, tensor, df_last_error());
        else
            fails = cf_ref_compare(c, tensor, out, &ref);
    }
    free(in);
    free(out);
    cf_ref_free(&ref);
    return fails;
}

static int check_decoder(const cf_ctx *c, const df_safetensors *st, df_vae *v)
{
    cf_ref lat, sf;
    int fails = cf_ref_get(c, st, "latents", &lat);
    if (!fails) {
        fails += check_decode(c, v, &lat, 1.0f, st, "decoded");
        fails += check_decode(c, v, &lat, df_vae_scaling_factor(v), st, "decoded_scaled_input");
    }
    if (!cf_ref_get(c, st, "scaling_factor", &sf)) {
        float got = df_vae_scaling_factor(v);
        fails += sf.n == 1 ? cf_ref_compare(c, "scaling_factor", &got, &sf)
                           : cf_ref_fail(c, "scaling_factor", "not one value");
        cf_ref_free(&sf);
    } else
        fails++;
    cf_ref_free(&lat);
    return fails;
}

int cf_check_vae(const cf_ctx *c)
{
    static const char *const known[] = {"image", "latents", "moments", "mean", "logvar", "std",
                                        "decoded", "decoded_scaled_input", "scaling_factor",
                                        NULL};
    df_safetensors *st;
    df_vae *v;
    if (df_st_open(cf_path(c, c->file), &st) != DF_OK)
        return cf_ref_fail(c, "*", df_last_error());
    int fails = 0;
    if (df_vae_load(cf_path(c, "pipeline/vae"), NULL, &v) != DF_OK) {
        fails += cf_ref_fail(c, "*", df_last_error());
    } else {
        fails += check_encoder(c, st, v);
        fails += check_decoder(c, st, v);
        df_vae_free(v);
    }
    fails += cf_ref_unknown(c, known);
    df_st_close(st);
    return fails;
}
