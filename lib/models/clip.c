/* clip.c - CLIPTextModel forward (transformers 4.40) on the ops of lib/ops/ops.
 *
 * Every size comes from config.json; weights are looked up by their
 * transformers names in the df_weights table on each forward (a LoRA merge
 * through df_weights_mut is seen at once). Activations are allocated per
 * call in one block, so concurrent forwards on one model are safe.
 *
 * Tested against refs/text_encoder.safetensors (embeddings, every layer's
 * hidden state, last_hidden_state, pooler_output) by
 * tests/check_fixtures/check_text_encoder.c. */
#include "clip.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"
#include "ops.h"

struct df_clip {
    df_clip_config cfg;
    df_weights *w;
};

const df_clip_config *df_clip_get_config(const df_clip *c) { return &c->cfg; }
df_weights *df_clip_weights(df_clip *c) { return c->w; }

void df_clip_free(df_clip *c)
{
    if (!c)
        return;
    df_weights_free(c->w);
    free(c);
}

/* ---- config ---- */

/* A required integer key in [lo, hi]. */
static df_status cfg_int(const json_t *j, const char *path, const char *key, long lo, long hi,
                         int *out)
{
    const json_t *v = json_object_get(j, key);
    if (!v)
        return df_fail(DF_ERR_FORMAT, "%s: missing \"%s\"", path, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return df_fail(DF_ERR_RANGE, "%s: \"%s\" is not an integer in [%ld, %ld]", path, key, lo, hi);
    *out = (int)json_integer_value(v);
    return DF_OK;
}

static df_status parse_config(const json_t *j, const char *path, df_clip_config *cfg);

static df_status read_config(const char *dir, df_clip_config *cfg)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *j;
    df_status st = df_json_load_file(path, &j);
    if (st)
        return st;
    st = parse_config(j, path, cfg);
    json_decref(j);
    return st;
}

static df_status parse_config(const json_t *j, const char *path, df_clip_config *cfg)
{
    df_status st = DF_OK;
    if (!json_is_object(j))
        return df_fail(DF_ERR_FORMAT, "%s: not a JSON object", path);
    if ((st = cfg_int(j, path, "hidden_size", 1, 1 << 16, &cfg->hidden_size)) ||
        (st = cfg_int(j, path, "num_hidden_layers", 1, 1024, &cfg->num_layers)) ||
        (st = cfg_int(j, path, "num_attention_heads", 1, 1 << 12, &cfg->num_heads)) ||
        (st = cfg_int(j, path, "intermediate_size", 1, 1 << 18, &cfg->intermediate_size)) ||
        (st = cfg_int(j, path, "max_position_embeddings", 1, 1 << 16, &cfg->max_positions)) ||
        (st = cfg_int(j, path, "vocab_size", 1, 1 << 24, &cfg->vocab_size)))
        goto out;
    /* CLIPTextConfig's default eos is 49407; SD's files say 2 (legacy). */
    cfg->eos_token_id = 49407;
    if (json_object_get(j, "eos_token_id") &&
        (st = cfg_int(j, path, "eos_token_id", 0, 1 << 24, &cfg->eos_token_id)))
        goto out;
    const json_t *eps = json_object_get(j, "layer_norm_eps");
    if (!eps) {
        st = df_fail(DF_ERR_FORMAT, "%s: missing \"layer_norm_eps\"", path);
        goto out;
    }
    if (!json_is_number(eps) || !(json_number_value(eps) > 0) || json_number_value(eps) > 1) {
        st = df_fail(DF_ERR_RANGE, "%s: \"layer_norm_eps\" is not a number in (0, 1]", path);
        goto out;
    }
    cfg->layer_norm_eps = (float)json_number_value(eps);
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (!act) {
        st = df_fail(DF_ERR_FORMAT, "%s: missing \"hidden_act\"", path);
        goto out;
    }
    if (!strcmp(act, "gelu"))
        cfg->act = DF_CLIP_ACT_GELU;
    else if (!strcmp(act, "quick_gelu"))
        cfg->act = DF_CLIP_ACT_QUICK_GELU;
    else {
        st = df_fail(DF_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" (gelu and quick_gelu are supported)",
                     path, act);
        goto out;
    }
    if (cfg->hidden_size % cfg->num_heads)
        st = df_fail(DF_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                     path, cfg->hidden_size, cfg->num_heads);
out:
    return st;
}

/* ---- weights: one table line per tensor ---- */

typedef struct {
    const float *tok_emb;   // (V,C)
    const float *pos_emb;   // (P,C)
    const float *lnf_w, *lnf_b;   // (C)
} clip_top;

typedef struct {
    const float *ln1_w, *ln1_b;                 // (C)
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;   // (C,C), (C)
    const float *ln2_w, *ln2_b;                 // (C)
    const float *fc1_w, *fc1_b;                 // (I,C), (I)
    const float *fc2_w, *fc2_b;                 // (C,I), (C)
} clip_layer;

typedef struct {
    const float **dst;
    const char *name;
    int64_t d0, d1;         /* d1 == 0: a 1-D tensor */
} wspec;

static df_status fetch(df_weights *w, const char *prefix, const wspec *specs, size_t n)
{
    df_status st = DF_OK;
    for (size_t i = 0; i < n; i++) {
        int64_t shape[2] = {specs[i].d0, specs[i].d1};
        *specs[i].dst = df_weights_getf(w, &st, specs[i].d1 ? 2 : 1, shape, "%s%s", prefix,
                                        specs[i].name);
        if (!*specs[i].dst)
            return st;
    }
    return DF_OK;
}

static df_status get_top(df_clip *c, clip_top *t)
{
    const df_clip_config *g = &c->cfg;
    const wspec specs[] = {
        {&t->tok_emb, "embeddings.token_embedding.weight", g->vocab_size, g->hidden_size},
        {&t->pos_emb, "embeddings.position_embedding.weight", g->max_positions, g->hidden_size},
        {&t->lnf_w, "final_layer_norm.weight", g->hidden_size, 0},
        {&t->lnf_b, "final_layer_norm.bias", g->hidden_size, 0},
    };
    return fetch(c->w, "text_model.", specs, sizeof specs / sizeof *specs);
}

static df_status get_layer(df_clip *c, int l, clip_layer *y)
{
    const int64_t C = c->cfg.hidden_size, I = c->cfg.intermediate_size;
    const wspec specs[] = {
        {&y->ln1_w, "layer_norm1.weight", C, 0},
        {&y->ln1_b, "layer_norm1.bias", C, 0},
        {&y->q_w, "self_attn.q_proj.weight", C, C},
        {&y->q_b, "self_attn.q_proj.bias", C, 0},
        {&y->k_w, "self_attn.k_proj.weight", C, C},
        {&y->k_b, "self_attn.k_proj.bias", C, 0},
        {&y->v_w, "self_attn.v_proj.weight", C, C},
        {&y->v_b, "self_attn.v_proj.bias", C, 0},
        {&y->o_w, "self_attn.out_proj.weight", C, C},
        {&y->o_b, "self_attn.out_proj.bias", C, 0},
        {&y->ln2_w, "layer_norm2.weight", C, 0},
        {&y->ln2_b, "layer_norm2.bias", C, 0},
        {&y->fc1_w, "mlp.fc1.weight", I, C},
        {&y->fc1_b, "mlp.fc1.bias", I, 0},
        {&y->fc2_w, "mlp.fc2.weight", C, I},
        {&y->fc2_b, "mlp.fc2.bias", C, 0},
    };
    char prefix[64];
    snprintf(prefix, sizeof prefix, "text_model.encoder.layers.%d.", l);
    return fetch(c->w, prefix, specs, sizeof specs / sizeof *specs);
}

static df_status check_weights(df_clip *c, df_status st);

df_status df_clip_load(const char *dir, const char *variant, df_clip **out)
{
    *out = NULL;
    df_clip *c = calloc(1, sizeof *c);
    if (!c)
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", dir);
    df_status st = read_config(dir, &c->cfg);
    if (!st)
        st = df_weights_open_dir(dir, variant, &c->w);
    if ((st = check_weights(c, st))) {
        df_clip_free(c);
        return st;
    }
    *out = c;
    return DF_OK;
}

df_status df_clip_load_json(const json_t *config, const char *label, df_weights *w,
                            df_clip **out)
{
    *out = NULL;
    df_clip *c = calloc(1, sizeof *c);
    if (!c) {
        df_weights_free(w);
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
    }
    c->w = w;
    df_status st = check_weights(c, parse_config(config, label, &c->cfg));
    if (st) {
        df_clip_free(c);
        return st;
    }
    *out = c;
    return DF_OK;
}

/* After the config (st: how reading it went) and the table are in c. */
static df_status check_weights(df_clip *c, df_status st)
{
    /* Fetch every weight once now, so that a missing or misshapen tensor
     * fails the load (naming it) rather than the first forward. */
    clip_top top;
    clip_layer lw;
    if (!st)
        st = get_top(c, &top);
    for (int l = 0; !st && l < c->cfg.num_layers; l++)
        st = get_layer(c, l, &lw);
    if (st && c->w)   /* a tensor's detail: say whose it is */
        st = df_fail(st, "text encoder: %s", df_last_error());
    return st;
}

/* ---- forward ---- */

static void quick_gelu(float *x, size_t n)
{
    // x * sigmoid(1.702 x), as transformers' QuickGELUActivation
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
}

/* One pre-LN encoder layer on the residual stream x (BT,C), in place.
 * Scratch: h, q, k, v, a (BT,C) each, m (BT,I). */
static void layer_forward(const df_clip_config *g, const clip_layer *y, float *x, float *h,
                          float *q, float *k, float *v, float *a, float *m, int B, int T)
{
    const int C = g->hidden_size, I = g->intermediate_size, NH = g->num_heads, HS = C / NH;
    const int BT = B * T;
    // attention block: x += out_proj(attn(ln1(x)))
    df_layernorm_forward(h, x, y->ln1_w, y->ln1_b, BT, C, g->layer_norm_eps);
    df_linear_forward(q, h, y->q_w, y->q_b, BT, C, C);
    df_linear_forward(k, h, y->k_w, y->k_b, BT, C, C);
    df_linear_forward(v, h, y->v_w, y->v_b, BT, C, C);
    // transformers scales q (not the scores) by head_dim^-0.5, in float32
    df_scale_forward(q, q, (float)pow((double)HS, -0.5), (size_t)BT * C);
    df_attention_forward(a, q, k, v, B, T, T, NH, HS, 1.0f, 1);
    df_linear_forward(h, a, y->o_w, y->o_b, BT, C, C);
    df_add_forward(x, x, h, (size_t)BT * C);
    // MLP block: x += fc2(act(fc1(ln2(x))))
    df_layernorm_forward(h, x, y->ln2_w, y->ln2_b, BT, C, g->layer_norm_eps);
    df_linear_forward(m, h, y->fc1_w, y->fc1_b, BT, C, I);
    if (g->act == DF_CLIP_ACT_GELU)
        df_gelu_forward(m, m, (size_t)BT * I);
    else
        quick_gelu(m, (size_t)BT * I);
    df_linear_forward(h, m, y->fc2_w, y->fc2_b, BT, I, C);
    df_add_forward(x, x, h, (size_t)BT * C);
}

/* Pooled row of sequence b: transformers takes argmax(ids) (the first
 * maximum) when the config's eos_token_id is the legacy 2, else the first
 * position holding eos_token_id (0 when there is none). */
static int pool_index(const df_clip_config *g, const int32_t *ids, int T)
{
    int best = 0;
    for (int t = 0; t < T; t++) {
        if (g->eos_token_id == 2) {
            if (ids[t] > ids[best])
                best = t;
        } else if (ids[t] == g->eos_token_id) {
            return t;
        }
    }
    return best;
}

static df_status check_args(const df_clip_config *g, const int32_t *ids, int B, int T)
{
    if (B < 1 || T < 1 || T > g->max_positions)
        return df_fail(DF_ERR_RANGE, "text encoder: batch %d x %d tokens (1..%d tokens accepted)",
                       B, T, g->max_positions);
    // the largest activation, BT x max(C, I) floats, must fit comfortably in size_t and int
    size_t BT = (size_t)B * (size_t)T, W = (size_t)(g->intermediate_size > g->hidden_size
                                                        ? g->intermediate_size : g->hidden_size);
    if (BT > (size_t)INT32_MAX / 16 || BT * W > SIZE_MAX / 64)
        return df_fail(DF_ERR_RANGE, "text encoder: batch %d too large", B);
    for (size_t i = 0; i < BT; i++)
        if (ids[i] < 0 || ids[i] >= g->vocab_size)
            return df_fail(DF_ERR_RANGE, "text encoder: token id %d at %zu outside [0, %d)",
                           (int)ids[i], i, g->vocab_size);
    return DF_OK;
}

df_status df_clip_forward(df_clip *c, const int32_t *ids, int B, int T, float *last_hidden,
                          float *hidden_states, float *pooled)
{
    const df_clip_config *g = &c->cfg;
    df_status st = check_args(g, ids, B, T);
    clip_top top;
    if (st || (st = get_top(c, &top)))
        return st;
    const int C = g->hidden_size, I = g->intermediate_size;
    const size_t BT = (size_t)B * T, N = BT * C;
    // activations in one block: x h q k v a (BT,C) each, m (BT,I)
    float *x = malloc((6 * N + BT * I) * sizeof *x);
    if (!x)
        return df_fail(DF_ERR_NOMEM, "text encoder: out of memory for batch %d", B);
    float *h = x + N, *q = h + N, *k = q + N, *v = k + N, *a = v + N, *m = a + N;
    // embeddings: x[b,t,:] = token_embedding[ids[b,t],:] + position_embedding[t,:]
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *te = top.tok_emb + (size_t)ids[(size_t)b * T + t] * C;
            const float *pe = top.pos_emb + (size_t)t * C;
            float *xo = x + ((size_t)b * T + t) * C;
            for (int i = 0; i < C; i++)
                xo[i] = te[i] + pe[i];
        }
    if (hidden_states)
        memcpy(hidden_states, x, N * sizeof *x);
    for (int l = 0; l < g->num_layers; l++) {
        clip_layer lw;
        if ((st = get_layer(c, l, &lw)))
            break;
        layer_forward(g, &lw, x, h, q, k, v, a, m, B, T);
        if (hidden_states)
            memcpy(hidden_states + (size_t)(l + 1) * N, x, N * sizeof *x);
    }
    if (!st) {
        df_layernorm_forward(last_hidden, x, top.lnf_w, top.lnf_b, (int)BT, C, g->layer_norm_eps);
        for (int b = 0; pooled && b < B; b++)
            memcpy(pooled + (size_t)b * C,
                   last_hidden + ((size_t)b * T + pool_index(g, ids + (size_t)b * T, T)) * C,
                   (size_t)C * sizeof *pooled);
    }
    free(x);
    return st;
}

df_status df_clip_encode_text(df_clip *c, const df_tokenizer *tok, const char *const *texts,
                              int B, float *out, size_t *n_untruncated)
{
    const int T = df_tokenizer_max_length(tok);
    if (B < 1 || T > c->cfg.max_positions)
        return df_fail(DF_ERR_RANGE, "text encoder: %d texts of %d tokens (at most %d positions)",
                       B, T, c->cfg.max_positions);
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    if (!ids)
        return df_fail(DF_ERR_NOMEM, "text encoder: out of memory for %d texts", B);
    df_status st = DF_OK;
    for (int b = 0; b < B && !st; b++)
        st = df_tokenizer_encode(tok, texts[b], ids + (size_t)b * T, NULL,
                                 n_untruncated ? n_untruncated + b : NULL);
    if (!st)
        st = df_clip_forward(c, ids, B, T, out, NULL, NULL);
    free(ids);
    return st;
}
