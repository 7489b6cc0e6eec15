/* check_unet.c - checks lib/models/unet against refs/unet.safetensors, diffusers'
 * UNet2DConditionModel(sample, timesteps, encoder_hidden_states).sample.
 *
 * Lines: time_proj and time_embedding (the time conditioning alone), out
 * (F32 weights) and out_from_fp16_weights (the fp16 variant file upcast),
 * each within 1e-4 x max(1, max|ref|). The UNet comes from pipeline/unet;
 * B, h, w, T and D come from the stored inputs' shapes. */
#include <stdio.h>
#include <stdlib.h>

#include "model_refs.h"
#include "unet.h"

typedef struct {
    cf_ref sample, timesteps, ehs;
    int B, C, h, w, T, D;
} unet_inputs;

static int read_inputs(const cf_ctx *c, const df_safetensors *st, unet_inputs *in)
{
    if (cf_ref_get(c, st, "sample", &in->sample) ||
        cf_ref_get(c, st, "timesteps", &in->timesteps) ||
        cf_ref_get(c, st, "encoder_hidden_states", &in->ehs))
        return 1;
    if (in->sample.ndim != 4 || in->ehs.ndim != 3 || in->timesteps.ndim != 1 ||
        in->ehs.shape[0] != in->sample.shape[0] || in->timesteps.shape[0] != in->sample.shape[0])
        return cf_ref_fail(c, "sample", "inputs' shapes are not (B,C,h,w), (B), (B,T,D)");
    in->B = (int)in->sample.shape[0], in->C = (int)in->sample.shape[1];
    in->h = (int)in->sample.shape[2], in->w = (int)in->sample.shape[3];
    in->T = (int)in->ehs.shape[1], in->D = (int)in->ehs.shape[2];
    return 0;
}

/* Load the UNet (variant NULL or "fp16"), run it, compare with `tensor`. */
static int check_forward(const cf_ctx *c, const df_safetensors *st, const unet_inputs *in,
                         const char *variant, const char *tensor)
{
    cf_ref ref;
    if (cf_ref_get(c, st, tensor, &ref))
        return 1;
    df_unet *u;
    int fails = 0;
    if (df_unet_load(cf_path(c, "pipeline/unet"), variant, &u) != DF_OK) {
        fails = cf_ref_fail(c, tensor, df_last_error());
    } else {
        float *out = calloc(ref.n, sizeof *out);
        if (df_unet_out_channels(u) * (size_t)in->B * in->h * in->w != ref.n || !out)
            fails = cf_ref_fail(c, tensor, "reference shape is not (B,out_channels,h,w)");
        else if (df_unet_forward(u, in->sample.data, in->timesteps.data, in->ehs.data, in->B,
                                 in->h, in->w, in->T, out) != DF_OK)
            fails = cf_ref_fail(c, tensor, df_last_error());
        else
            fails = cf_ref_compare(c, tensor, out, &ref);
        free(out);
        df_unet_free(u);
    }
    cf_ref_free(&ref);
    return fails;
}

/* time_proj and time_embedding from the stored timesteps. */
static int check_time(const cf_ctx *c, const df_safetensors *st, const unet_inputs *in)
{
    cf_ref tp, te;
    df_unet *u = NULL;
    int fails = cf_ref_get(c, st, "time_proj", &tp);
    fails += cf_ref_get(c, st, "time_embedding", &te);
    if (fails) {
        /* a missing reference is already a FAIL line */
    } else if (df_unet_load(cf_path(c, "pipeline/unet"), NULL, &u) != DF_OK) {
        fails += cf_ref_fail(c, "time_proj", df_last_error());
        fails += cf_ref_fail(c, "time_embedding", df_last_error());
    } else if ((size_t)in->B * df_unet_time_proj_dim(u) != tp.n ||
               (size_t)in->B * df_unet_time_embed_dim(u) != te.n) {
        fails += cf_ref_fail(c, "time_proj", "reference shapes differ from the config's widths");
        fails += cf_ref_fail(c, "time_embedding", "reference shapes differ from the config's widths");
    } else {
        float *p = calloc(tp.n, sizeof *p), *e = calloc(te.n, sizeof *e);
        if (!p || !e || df_unet_time_embedding(u, in->timesteps.data, in->B, p, e) != DF_OK) {
            fails += cf_ref_fail(c, "time_proj", df_last_error());
            fails += cf_ref_fail(c, "time_embedding", df_last_error());
        } else {
            fails += cf_ref_compare(c, "time_proj", p, &tp);
            fails += cf_ref_compare(c, "time_embedding", e, &te);
        }
        free(p);
        free(e);
    }
    df_unet_free(u);
    cf_ref_free(&tp);
    cf_ref_free(&te);
    return fails;
}

int cf_check_unet(const cf_ctx *c)
{
    static const char *const known[] = {"sample", "timesteps", "encoder_hidden_states", "out",
                                        "out_from_fp16_weights", "time_proj", "time_embedding",
                                        NULL};
    df_safetensors *st;
    if (df_st_open(cf_path(c, c->file), &st) != DF_OK)
        return cf_ref_fail(c, "*", df_last_error());
    unet_inputs in = {0};
    int fails = read_inputs(c, st, &in);
    if (!fails) {
        fails += check_time(c, st, &in);
        fails += check_forward(c, st, &in, NULL, "out");
        fails += check_forward(c, st, &in, "fp16", "out_from_fp16_weights");
    }
    fails += cf_ref_unknown(c, known);
    cf_ref_free(&in.sample);
    cf_ref_free(&in.timesteps);
    cf_ref_free(&in.ehs);
    df_st_close(st);
    return fails;
}
