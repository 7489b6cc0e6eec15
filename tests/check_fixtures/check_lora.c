/* check_lora.c - checks LoRA inference against refs/lora_inference.safetensors:
 * diffusers' UNet and text encoder with a LoRA loaded (PEFT backend) at a
 * user scale.
 *
 * Tensor names are "<format>.<unet|te>_out_scale<s>": the format names the
 * LoRA file in lora/ (diffusers: pytorch_lora_weights.safetensors, kohya: the
 * file with "kohya" in its name, peft: the one with "peft"), s the scale. The
 * inputs (sample, timesteps, encoder_hidden_states, te_input_ids) are in the
 * same file. Each diffusers-format reference is also checked with the PEFT
 * file, which diffusers loads to identical outputs (README, B7). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"
#include "lora.h"
#include "model_refs.h"
#include "unet.h"

/* lora/<file> for a format name, found by listing the folder. */
static const char *lora_file(const cf_ctx *c, const char *fmt)
{
    static char found[1024];
    if (!strcmp(fmt, "diffusers")) {
        snprintf(found, sizeof found, "%s", cf_path(c, "lora/pytorch_lora_weights.safetensors"));
        return found;
    }
    DIR *d = opendir(cf_path(c, "lora"));
    const char *res = NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strstr(e->d_name, fmt) && n > 12 && !strcmp(e->d_name + n - 12, ".safetensors")) {
            snprintf(found, sizeof found, "%s/%s", cf_path(c, "lora"), e->d_name);
            res = found;
            break;
        }
    }
    if (d)
        closedir(d);
    return res;
}

static int run_unet(const cf_ctx *c, const df_safetensors *st, const char *lora, float scale,
                    const char *tensor, const char *label)
{
    cf_ref sample, ts, ehs, ref;
    int fails = 0;
    if (cf_ref_get(c, st, "sample", &sample) || cf_ref_get(c, st, "timesteps", &ts) ||
        cf_ref_get(c, st, "encoder_hidden_states", &ehs) || cf_ref_get(c, st, tensor, &ref))
        return 1;
    df_unet *u = NULL;
    df_lora_report rep = {0};
    float *out = calloc(ref.n, sizeof *out);
    int B = (int)sample.shape[0], h = (int)sample.shape[2], w = (int)sample.shape[3];
    if (sample.ndim != 4 || ehs.ndim != 3 || !out)
        fails = cf_ref_fail(c, label, "inputs are not (B,C,h,w) and (B,T,D)");
    else if (df_unet_load(cf_path(c, "pipeline/unet"), NULL, &u) != DF_OK ||
             df_lora_apply(lora, scale, df_unet_weights(u), NULL, &rep) != DF_OK)
        fails = cf_ref_fail(c, label, df_last_error());
    else if (rep.n_unet_pairs == 0)
        fails = cf_ref_fail(c, label, "no LoRA tensor matched the UNet");
    else if (df_unet_forward(u, sample.data, ts.data, ehs.data, B, h, w, (int)ehs.shape[1], out))
        fails = cf_ref_fail(c, label, df_last_error());
    else
        fails = cf_ref_compare(c, label, out, &ref);
    df_lora_report_free(&rep);
    df_unet_free(u);
    free(out);
    cf_ref_free(&sample);
    cf_ref_free(&ts);
    cf_ref_free(&ehs);
    cf_ref_free(&ref);
    return fails;
}

static int run_te(const cf_ctx *c, const df_safetensors *st, const char *lora, float scale,
                  const char *tensor, const char *label)
{
    cf_ref idsf, ref;
    if (cf_ref_get(c, st, "te_input_ids", &idsf) || cf_ref_get(c, st, tensor, &ref))
        return 1;
    int fails = 0;
    int B = (int)idsf.shape[0], T = idsf.ndim == 2 ? (int)idsf.shape[1] : 0;
    int32_t *ids = malloc(idsf.n * sizeof *ids);
    float *out = calloc(ref.n, sizeof *out);
    for (size_t i = 0; ids && i < idsf.n; i++)
        ids[i] = (int32_t)idsf.data[i];
    df_clip *m = NULL;
    df_lora_report rep = {0};
    if (!ids || !out || T == 0)
        fails = cf_ref_fail(c, label, "te_input_ids is not (B,T)");
    else if (df_clip_load(cf_path(c, "pipeline/text_encoder"), NULL, &m) != DF_OK ||
             df_lora_apply(lora, scale, NULL, df_clip_weights(m), &rep) != DF_OK)
        fails = cf_ref_fail(c, label, df_last_error());
    else if (rep.n_te_pairs == 0)
        fails = cf_ref_fail(c, label, "no LoRA tensor matched the text encoder");
    else if (df_clip_forward(m, ids, B, T, out, NULL, NULL) != DF_OK)
        fails = cf_ref_fail(c, label, df_last_error());
    else
        fails = cf_ref_compare(c, label, out, &ref);
    df_lora_report_free(&rep);
    df_clip_free(m);
    free(ids);
    free(out);
    cf_ref_free(&idsf);
    cf_ref_free(&ref);
    return fails;
}

int cf_check_lora_inference(const cf_ctx *c)
{
    df_safetensors *st;
    if (df_st_open(cf_path(c, c->file), &st) != DF_OK)
        return cf_ref_fail(c, "*", df_last_error());
    int fails = 0;
    for (size_t i = 0; i < df_st_count(st); i++) {
        const char *name = df_st_at(st, i)->name;
        const char *dot = strchr(name, '.');
        const char *kind = dot ? strstr(dot, "_out_scale") : NULL;
        if (!kind)
            continue;   /* an input */
        char fmt[64];
        snprintf(fmt, sizeof fmt, "%.*s", (int)(dot - name), name);
        char *end;
        float scale = strtof(kind + strlen("_out_scale"), &end);
        const char *file = lora_file(c, fmt);
        if (*end || !file) {
            fails += cf_ref_fail(c, name, "cannot tell the LoRA file or scale from the name");
            continue;
        }
        int is_unet = !strncmp(dot + 1, "unet", 4);
        fails += is_unet ? run_unet(c, st, file, scale, name, name)
                         : run_te(c, st, file, scale, name, name);
        const char *peft = strcmp(fmt, "diffusers") ? NULL : lora_file(c, "peft");
        if (peft) {
            char label[256];
            snprintf(label, sizeof label, "%s(peft file)", name);
            char pf[1024];
            snprintf(pf, sizeof pf, "%s", peft);
            fails += is_unet ? run_unet(c, st, pf, scale, name, label)
                             : run_te(c, st, pf, scale, name, label);
        }
    }
    df_st_close(st);
    return fails;
}
