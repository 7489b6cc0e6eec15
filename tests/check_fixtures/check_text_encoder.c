/* check_text_encoder.c - checks lib/models/clip (and lib/models/tokenizer on the
 * MANIFEST prompts) against refs/text_encoder.safetensors, transformers'
 * CLIPTextModel(input_ids, output_hidden_states=True).
 *
 * Lines: input_ids and attention_mask (our tokenization of the MANIFEST
 * prompts, set_config.te_prompts, must be identical; max_abs = number of
 * differing ids), then every float tensor of the file the encoder produces
 * (embeddings_output, hidden_states.N, last_hidden_state, pooler_output)
 * within 1e-4 x max(1, max|ref|), and last_hidden_state once more through
 * df_clip_encode_text on the prompts (the pipeline's encode_prompt path).
 * Sizes come from the file and the config. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clip.h"
#include "safetensors.h"
#include "tokenizer.h"

static int fail_line(const cf_ctx *c, const char *tensor, const char *why)
{
    char name[512];
    snprintf(name, sizeof name, "%s:%s", c->file, tensor);
    cf_line("FAIL", name, NAN, NAN, why);
    return 1;
}

/* Compare within 1e-4 x max(1, max|ref|). */
static int compare(const cf_ctx *c, const char *tensor, const float *got, const float *ref,
                   size_t n)
{
    double max_ref = 0;
    for (size_t i = 0; i < n; i++)
        max_ref = fmax(max_ref, fabs(ref[i]));
    return cf_compare(c->file, tensor, got, ref, n, 1e-4 * fmax(1.0, max_ref), 0);
}

/* Tokenize the MANIFEST prompts; compare ids and mask with the file's.
 * Returns the number of FAIL lines. */
static int check_ids(const cf_ctx *c, const int64_t *ref_ids, const int64_t *ref_mask, int B,
                     int T)
{
    const json_t *prompts = json_object_get(json_object_get(c->manifest, "set_config"),
                                            "te_prompts");
    if (!json_is_array(prompts) || (int)json_array_size(prompts) != B)
        return fail_line(c, "input_ids", "MANIFEST set_config.te_prompts missing or not B prompts");
    df_tokenizer *tok;
    if (df_tokenizer_load(cf_path(c, "pipeline/tokenizer"), &tok))
        return fail_line(c, "input_ids", df_last_error());
    if (df_tokenizer_max_length(tok) != T) {
        df_tokenizer_free(tok);
        return fail_line(c, "input_ids", "tokenizer model_max_length differs from the ids' length");
    }
    size_t bad_ids = 0, bad_mask = 0;
    int32_t *ids = malloc((size_t)T * sizeof *ids), *mask = malloc((size_t)T * sizeof *mask);
    int fails = 0;
    for (int b = 0; b < B && ids && mask; b++) {
        const json_t *p = json_array_get(prompts, (size_t)b);
        if (df_tokenizer_encode_len(tok, json_string_value(p) ? json_string_value(p) : "",
                                    json_string_length(p), ids, mask, NULL)) {
            fails += fail_line(c, "input_ids", df_last_error());
            break;
        }
        for (int t = 0; t < T; t++) {
            bad_ids += ids[t] != ref_ids[(size_t)b * T + t];
            bad_mask += ref_mask && mask[t] != ref_mask[(size_t)b * T + t];
        }
    }
    char name[512];
    snprintf(name, sizeof name, "%s:input_ids", c->file);
    cf_line(bad_ids || !ids ? "FAIL" : "PASS", name, (double)bad_ids, 0,
            "tokenized MANIFEST prompts vs stored ids (max_abs = differing ids)");
    snprintf(name, sizeof name, "%s:attention_mask", c->file);
    if (ref_mask)
        cf_line(bad_mask || !mask ? "FAIL" : "PASS", name, (double)bad_mask, 0,
                "tokenizer mask vs stored mask (max_abs = differing entries)");
    fails += (bad_ids > 0 || !ids) + (ref_mask && (bad_mask > 0 || !mask));
    free(ids);
    free(mask);
    df_tokenizer_free(tok);
    return fails;
}

/* The encoder's output for a reference tensor name, or NULL if it is not
 * one it produces; *n gets the element count. */
static const float *output_for(const char *name, const float *last, const float *hs,
                               const float *pooled, int L, size_t N, size_t BC, size_t *n)
{
    char *end;
    *n = N;
    if (!strcmp(name, "last_hidden_state"))
        return last;
    if (!strcmp(name, "embeddings_output"))
        return hs;
    if (!strcmp(name, "pooler_output")) {
        *n = BC;
        return pooled;
    }
    if (!strncmp(name, "hidden_states.", 14)) {
        long l = strtol(name + 14, &end, 10);
        if (end != name + 14 && !*end && l >= 0 && l <= L)
            return hs + (size_t)l * N;
    }
    return NULL;
}

/* Run the encoder on the stored ids and compare every float tensor. */
static int check_outputs(const cf_ctx *c, const df_safetensors *ref, const int64_t *ids64, int B,
                         int T)
{
    df_clip *clip;
    if (df_clip_load(cf_path(c, "pipeline/text_encoder"), NULL, &clip))
        return fail_line(c, "last_hidden_state", df_last_error());
    const df_clip_config *g = df_clip_get_config(clip);
    const int C = g->hidden_size, L = g->num_layers;
    const size_t N = (size_t)B * T * C;
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    float *last = malloc(N * sizeof *last), *hs = malloc((size_t)(L + 1) * N * sizeof *hs);
    float *pooled = malloc((size_t)B * C * sizeof *pooled);
    int fails = 0;
    if (!ids || !last || !hs || !pooled) {
        fails += fail_line(c, "last_hidden_state", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < (size_t)B * T; i++)
        ids[i] = ids64[i] < INT32_MIN || ids64[i] > INT32_MAX ? -1 : (int32_t)ids64[i];
    if (df_clip_forward(clip, ids, B, T, last, hs, pooled)) {
        fails += fail_line(c, "last_hidden_state", df_last_error());
        goto out;
    }
    for (size_t i = 0; i < df_st_count(ref); i++) {
        const df_st_tensor *t = df_st_at(ref, i);
        if (t->dtype != DF_DTYPE_F32)
            continue;   /* input_ids, attention_mask: checked above */
        size_t n;
        const float *got = output_for(t->name, last, hs, pooled, L, N, (size_t)B * C, &n);
        if (!got) {
            fails += fail_line(c, t->name, "unknown reference tensor (no output to compare)");
            continue;
        }
        float *r;
        if (t->numel != n) {
            fails += fail_line(c, t->name, "reference size differs from the config's");
        } else if (df_st_load_f32(ref, t->name, -1, NULL, &r)) {
            fails += fail_line(c, t->name, df_last_error());
        } else {
            fails += compare(c, t->name, got, r, n);
            free(r);
        }
    }
out:
    free(ids);
    free(last);
    free(hs);
    free(pooled);
    df_clip_free(clip);
    return fails;
}

/* The prompts straight to embeddings, against the stored last_hidden_state. */
static int check_encode_text(const cf_ctx *c, const df_safetensors *ref, int B)
{
    const json_t *prompts = json_object_get(json_object_get(c->manifest, "set_config"),
                                            "te_prompts");
    const char *name = "last_hidden_state(encode_text)";
    if (!json_is_array(prompts) || (int)json_array_size(prompts) != B)
        return fail_line(c, name, "MANIFEST set_config.te_prompts missing or not B prompts");
    const char **texts = calloc((size_t)B, sizeof *texts);
    for (int b = 0; texts && b < B; b++) {
        const char *s = json_string_value(json_array_get(prompts, (size_t)b));
        texts[b] = s ? s : "";
    }
    df_tokenizer *tok = NULL;
    df_clip *clip = NULL;
    float *got = NULL, *r = NULL;
    int fails = 0;
    const df_st_tensor *t = df_st_find(ref, "last_hidden_state");
    if (!texts || !t)
        fails = fail_line(c, name, "no last_hidden_state in the reference file");
    else if (df_tokenizer_load(cf_path(c, "pipeline/tokenizer"), &tok) ||
             df_clip_load(cf_path(c, "pipeline/text_encoder"), NULL, &clip) ||
             df_st_load_f32(ref, "last_hidden_state", -1, NULL, &r))
        fails = fail_line(c, name, df_last_error());
    else if (!(got = malloc(t->numel * sizeof *got)) ||
             t->numel != (size_t)B * df_tokenizer_max_length(tok) * df_clip_get_config(clip)->hidden_size)
        fails = fail_line(c, name, "reference size differs from the config's");
    else if (df_clip_encode_text(clip, tok, texts, B, got, NULL))
        fails = fail_line(c, name, df_last_error());
    else
        fails = compare(c, name, got, r, t->numel);
    free(texts);
    free(got);
    free(r);
    df_clip_free(clip);
    df_tokenizer_free(tok);
    return fails;
}

int cf_check_text_encoder(const cf_ctx *c)
{
    df_safetensors *ref;
    if (df_st_open(cf_path(c, c->file), &ref))
        return fail_line(c, "input_ids", df_last_error());
    const df_st_tensor *ti = df_st_find(ref, "input_ids");
    const df_st_tensor *tm = df_st_find(ref, "attention_mask");
    int fails = 0;
    if (!ti || ti->ndim != 2 || ti->shape[0] < 1 || ti->shape[1] < 1) {
        fails = fail_line(c, "input_ids", "no input_ids [B,T] in the reference file");
        goto out;
    }
    int B = (int)ti->shape[0], T = (int)ti->shape[1];
    int64_t *ids = malloc(ti->numel * sizeof *ids);
    int64_t *mask = tm && tm->numel == ti->numel ? malloc(tm->numel * sizeof *mask) : NULL;
    if (!ids || df_st_to_i64(ti, ids) || (mask && df_st_to_i64(tm, mask))) {
        fails = fail_line(c, "input_ids", df_last_error());
    } else {
        fails += check_ids(c, ids, mask, B, T);
        fails += check_outputs(c, ref, ids, B, T);
        fails += check_encode_text(c, ref, B);
    }
    free(ids);
    free(mask);
out:
    df_st_close(ref);
    return fails;
}
