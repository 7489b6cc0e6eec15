/* single_file_model.c - configs, scheduler, tokenizer and prediction type
 * for a single-file checkpoint (see single_file.h, df_sf_model_open).
 * Tested by tests/unit/test_single_file.c and
 * tests/tools/test-df-sample-single-file.sh. */
#include "single_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"
#include "scheduler.h"
#include "sd21_config.h"

static const char *const comp_dir[DF_SF_COMPONENTS] = {"unet", "vae", "text_encoder"};

static df_status load_configs(df_sf_model *m, const char *dir)
{
    static const char *const builtin[DF_SF_COMPONENTS] = {
        df_sd21_unet_config, df_sd21_vae_config, df_sd21_text_encoder_config};
    df_status st = DF_OK;
    for (int c = 0; st == DF_OK && c < DF_SF_COMPONENTS; c++) {
        if (dir) {
            snprintf(m->label[c], sizeof m->label[c], "%s/%s/config.json", dir, comp_dir[c]);
            st = df_json_load_file(m->label[c], &m->config[c]);
            continue;
        }
        snprintf(m->label[c], sizeof m->label[c], "built-in SD 2.1 %s/config.json", comp_dir[c]);
        json_error_t e;
        if (!(m->config[c] = json_loads(builtin[c], JSON_REJECT_DUPLICATES, &e)))
            st = df_fail(DF_ERR_FORMAT, "%s: %s", m->label[c], e.text);   /* a bug of ours */
    }
    if (st != DF_OK)
        return st;
    char path[4200];
    if (dir) {
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
        if ((st = df_scheduler_load_config(path, &m->scheduler)) != DF_OK)
            return st;
        snprintf(path, sizeof path, "%s/tokenizer", dir);
        return df_tokenizer_load(path, &m->tok);
    }
    if ((st = df_scheduler_parse_config(df_sd21_scheduler_config, &m->scheduler)) != DF_OK)
        return st;
    return df_tokenizer_load_builtin(&m->tok);
}

/* An integer key in [lo, hi]; for a list, its length. */
static df_status int_key(const df_sf_model *m, int c, const char *key, int lo, int hi, int *out)
{
    const json_t *v = json_object_get(m->config[c], key);
    long long x = json_is_array(v) ? (long long)json_array_size(v)
                  : json_is_integer(v) ? json_integer_value(v) : lo - 1LL;
    if (x < lo || x > hi)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" is not an integer (or list) of %d to %d",
                       m->label[c], key, lo, hi);
    *out = (int)x;
    return DF_OK;
}

/* Which up blocks have attentions (the inverse mapping's upsampler index). */
static unsigned up_attention(const json_t *unet)
{
    unsigned mask = 0;
    const json_t *types = json_object_get(unet, "up_block_types");
    for (size_t i = 0; i < json_array_size(types) && i < 32; i++) {
        const char *t = json_string_value(json_array_get(types, i));
        if (t && strstr(t, "CrossAttn"))
            mask |= 1u << i;
    }
    return mask;
}

static df_status decide_prediction(df_sf_model *m, const char *asked)
{
    if (asked && strcmp(asked, "v") && strcmp(asked, "v_prediction") && strcmp(asked, "epsilon"))
        return df_fail(DF_ERR_ARG, "prediction \"%s\": v or epsilon", asked);
    m->prediction = asked ? (asked[0] == 'v' ? "v_prediction" : "epsilon")
                          : m->unet_sample_size == 96 ? "v_prediction" : "epsilon";
    const char *cfg = json_string_value(json_object_get(m->scheduler, "prediction_type"));
    if (!asked && cfg && strcmp(cfg, m->prediction))
        snprintf(m->note, sizeof m->note, "%s: prediction %s by the UNet's sample_size %d (96: v, "
                 "else epsilon); the scheduler config says %s; --prediction chooses",
                 m->label[DF_SF_UNET], m->prediction, m->unet_sample_size, cfg);
    if (json_object_set_new(m->scheduler, "prediction_type", json_string(m->prediction)))
        return df_fail(DF_ERR_NOMEM, "out of memory");
    /* Fail now, not at the first prompt, on a scheduler config we cannot run. */
    df_scheduler *s = NULL;
    df_status st = df_scheduler_create(NULL, m->scheduler, NULL, &s);
    df_scheduler_free(s);
    return st;
}

df_status df_sf_model_open(const char *path, const char *config_dir, const char *prediction,
                           df_sf_model *m)
{
    memset(m, 0, sizeof *m);
    df_status st = load_configs(m, config_dir);
    int lpb = 0, text_layers = 0;
    if (st == DF_OK)
        st = int_key(m, DF_SF_UNET, "sample_size", 1, 1024, &m->unet_sample_size);
    if (st == DF_OK)
        st = int_key(m, DF_SF_UNET, "in_channels", 1, 64, &m->unet_in_channels);
    if (st == DF_OK)
        st = int_key(m, DF_SF_UNET, "layers_per_block", 1, 64, &lpb);
    if (st == DF_OK)
        st = int_key(m, DF_SF_VAE, "block_out_channels", 1, 8, &m->vae_blocks);
    if (st == DF_OK)
        st = int_key(m, DF_SF_TEXT, "num_hidden_layers", 1, 1024, &text_layers);
    if (st == DF_OK)
        st = decide_prediction(m, prediction);
    if (st == DF_OK) {
        df_sf_layout lay = {.unet_layers_per_block = lpb,
                            .unet_up_attention = up_attention(m->config[DF_SF_UNET]),
                            .vae_blocks = m->vae_blocks, .text_layers = text_layers};
        st = df_single_file_open(path, &lay, &m->file);
    }
    if (st != DF_OK)
        df_sf_model_free(m);
    return st;
}

void df_sf_model_free(df_sf_model *m)
{
    df_single_file_free(m->file);
    for (int c = 0; c < DF_SF_COMPONENTS; c++)
        json_decref(m->config[c]);
    json_decref(m->scheduler);
    df_tokenizer_free(m->tok);
    memset(m, 0, sizeof *m);
}
