/* nn.c - config reading, weight binding and the layers shared by the UNet
 * and the VAE (see nn.h). Tested through the models' fixture checkers
 * (tests/check_fixtures/check_unet.c, check_vae.c) and their unit tests
 * (tests/unit/test_unet.c, test_vae.c). */
#include "nn.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* ---- config.json ---- */

df_status df_nn_cfg_load(const char *dir, df_nn_cfg *c)
{
    c->j = NULL;
    int n = snprintf(c->path, sizeof c->path, "%s/config.json", dir);
    if (n < 0 || (size_t)n >= sizeof c->path)
        return df_fail(DF_ERR_ARG, "%s: path too long", dir);
    json_error_t e;
    c->j = json_load_file(c->path, JSON_REJECT_DUPLICATES, &e);
    if (!c->j) {
        FILE *f = fopen(c->path, "r");
        if (!f)
            return df_fail(DF_ERR_NOTFOUND, "%s: cannot open", c->path);
        fclose(f);
        return df_fail(DF_ERR_FORMAT, "%s: line %d: %s", c->path, e.line, e.text);
    }
    if (!json_is_object(c->j)) {
        json_decref(c->j);
        c->j = NULL;
        return df_fail(DF_ERR_FORMAT, "%s: not a JSON object", c->path);
    }
    return DF_OK;
}

void df_nn_cfg_free(df_nn_cfg *c)
{
    json_decref(c->j);
    c->j = NULL;
}

/* The value of key, NULL when absent or null. */
static json_t *cfg_get(const df_nn_cfg *c, const char *key)
{
    json_t *v = json_object_get(c->j, key);
    return json_is_null(v) ? NULL : v;
}

static df_status int_value(const df_nn_cfg *c, const char *key, json_t *v, int lo, int hi,
                           int *out)
{
    /* JSON writers may emit 2.0 for an integer; accept integral reals. */
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
        d = json_real_value(v);
    else
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" must be an integer", c->path, key);
    if (d < lo || d > hi)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" = %g outside [%d, %d]", c->path, key, d, lo, hi);
    *out = (int)d;
    return DF_OK;
}

df_status df_nn_cfg_int(const df_nn_cfg *c, const char *key, bool required, int dflt, int lo,
                        int hi, int *out)
{
    json_t *v = cfg_get(c, key);
    if (!v) {
        if (required)
            return df_fail(DF_ERR_FORMAT, "%s: missing \"%s\"", c->path, key);
        *out = dflt;
        return DF_OK;
    }
    return int_value(c, key, v, lo, hi, out);
}

df_status df_nn_cfg_num(const df_nn_cfg *c, const char *key, double dflt, double lo, double hi,
                        double *out)
{
    json_t *v = cfg_get(c, key);
    if (!v) {
        *out = dflt;
        return DF_OK;
    }
    if (!json_is_number(v))
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" must be a number", c->path, key);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" = %g outside [%g, %g]", c->path, key, d, lo, hi);
    *out = d;
    return DF_OK;
}

df_status df_nn_cfg_bool(const df_nn_cfg *c, const char *key, bool dflt, bool *out)
{
    json_t *v = cfg_get(c, key);
    if (!v) {
        *out = dflt;
        return DF_OK;
    }
    if (!json_is_boolean(v))
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" must be true or false", c->path, key);
    *out = json_is_true(v);
    return DF_OK;
}

df_status df_nn_cfg_str(const df_nn_cfg *c, const char *key, const char *dflt, const char **out)
{
    json_t *v = cfg_get(c, key);
    if (!v) {
        *out = dflt;
        return DF_OK;
    }
    if (!json_is_string(v))
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" must be a string", c->path, key);
    *out = json_string_value(v);
    return DF_OK;
}

df_status df_nn_cfg_ints(const df_nn_cfg *c, const char *key, int n, bool dflt_ok, int dflt,
                         int lo, int hi, int *out)
{
    json_t *v = cfg_get(c, key);
    df_status s;
    if (!v && !dflt_ok)
        return df_fail(DF_ERR_FORMAT, "%s: missing \"%s\"", c->path, key);
    if (!v || !json_is_array(v)) {
        int one = dflt;
        if (v && (s = int_value(c, key, v, lo, hi, &one)) != DF_OK)
            return s;
        for (int i = 0; i < n; i++)
            out[i] = one;
        return DF_OK;
    }
    if ((int)json_array_size(v) != n)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" has %zu entries, expected %d (one per block)",
                       c->path, key, json_array_size(v), n);
    for (int i = 0; i < n; i++)
        if ((s = int_value(c, key, json_array_get(v, (size_t)i), lo, hi, &out[i])) != DF_OK)
            return s;
    return DF_OK;
}

df_status df_nn_cfg_strs(const df_nn_cfg *c, const char *key, int max, const char **out, int *n)
{
    json_t *v = cfg_get(c, key);
    if (!json_is_array(v) || json_array_size(v) == 0)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" must be a non-empty list", c->path, key);
    if ((int)json_array_size(v) > max)
        return df_fail(DF_ERR_UNSUPPORTED, "%s: \"%s\" has %zu entries, at most %d supported",
                       c->path, key, json_array_size(v), max);
    *n = (int)json_array_size(v);
    for (int i = 0; i < *n; i++) {
        out[i] = json_string_value(json_array_get(v, (size_t)i));
        if (!out[i])
            return df_fail(DF_ERR_FORMAT, "%s: \"%s\"[%d] must be a string", c->path, key, i);
    }
    return DF_OK;
}

df_status df_nn_cfg_expect_false(const df_nn_cfg *c, const char *key)
{
    json_t *v = cfg_get(c, key), *e;
    size_t i;
    if (!v || json_is_false(v))
        return DF_OK;
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
            if (!json_is_false(e))
                goto bad;
        return DF_OK;
    }
bad:
    return df_fail(DF_ERR_UNSUPPORTED, "%s: \"%s\" must be false (other values not supported)",
                   c->path, key);
}

df_status df_nn_cfg_expect_null(const df_nn_cfg *c, const char *key)
{
    if (!cfg_get(c, key))
        return DF_OK;
    return df_fail(DF_ERR_UNSUPPORTED, "%s: \"%s\" must be null (other values not supported)",
                   c->path, key);
}

df_status df_nn_cfg_expect_num(const df_nn_cfg *c, const char *key, double v)
{
    json_t *j = cfg_get(c, key);
    if (!j || (json_is_number(j) && json_number_value(j) == v))
        return DF_OK;
    return df_fail(DF_ERR_UNSUPPORTED, "%s: \"%s\" must be %g (other values not supported)",
                   c->path, key, v);
}

df_status df_nn_cfg_expect_str(const df_nn_cfg *c, const char *key, const char *v)
{
    json_t *j = cfg_get(c, key);
    if (!j || (json_is_string(j) && !strcmp(json_string_value(j), v)))
        return DF_OK;
    return df_fail(DF_ERR_UNSUPPORTED, "%s: \"%s\" must be \"%s\" (other values not supported)",
                   c->path, key, v);
}

/* ---- weights ---- */

static void binder_note_used(df_nn_binder *b, const char *name)
{
    if (!b->collect || b->st != DF_OK)
        return;
    if (b->nused == b->capused) {
        size_t cap = b->capused ? 2 * b->capused : 256;
        char **u = realloc(b->used, cap * sizeof *u);
        if (!u) {
            b->st = df_fail(DF_ERR_NOMEM, "%s: out of memory", b->component);
            return;
        }
        b->used = u;
        b->capused = cap;
    }
    if (!(b->used[b->nused] = strdup(name))) {
        b->st = df_fail(DF_ERR_NOMEM, "%s: out of memory", b->component);
        return;
    }
    b->nused++;
}

/* Record the first failure with the component's name in front. */
static void binder_failed(df_nn_binder *b, df_status s)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", df_last_error());
    b->st = df_fail(s, "%s: %s", b->component, msg);
}

static const float *binder_get(df_nn_binder *b, const char *name, int ndim,
                               const int64_t *shape)
{
    if (b->st != DF_OK)
        return NULL;
    df_status s;
    const float *p = df_weights_get(b->w, name, ndim, shape, &s);
    if (!p) {
        binder_failed(b, s);
        return NULL;
    }
    binder_note_used(b, name);
    return b->st == DF_OK ? p : NULL;
}

const float *df_nn_get(df_nn_binder *b, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (b->st != DF_OK)
        return NULL;
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) {
        b->st = df_fail(DF_ERR_ARG, "%s: tensor name too long", b->component);
        return NULL;
    }
    return binder_get(b, name, ndim, shape);
}

const float *df_nn_get_linear(df_nn_binder *b, int OC, int C, const char *name, const char *alt)
{
    if (b->st != DF_OK)
        return NULL;
    if (alt && !df_weights_has(b->w, name) && df_weights_has(b->w, alt))
        name = alt;
    const df_st_tensor *t = df_st_find(df_weights_file(b->w), name);
    int64_t shape[4] = {OC, C, 1, 1};
    int ndim = t && t->ndim == 4 ? 4 : 2;
    return binder_get(b, name, ndim, shape);
}

const float *df_nn_get_vec(df_nn_binder *b, int n, const char *name, const char *alt)
{
    if (b->st != DF_OK)
        return NULL;
    if (alt && !df_weights_has(b->w, name) && df_weights_has(b->w, alt))
        name = alt;
    return binder_get(b, name, 1, (int64_t[]){n});
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

df_status df_nn_binder_check_unused(df_nn_binder *b)
{
    if (b->st != DF_OK)
        return b->st;
    if (b->nused)
        qsort(b->used, b->nused, sizeof *b->used, cmp_str);
    const df_safetensors *f = df_weights_file(b->w);
    for (size_t i = 0; i < df_st_count(f); i++) {
        const char *name = df_st_at(f, i)->name;
        if (!bsearch(&name, b->used, b->nused, sizeof *b->used, cmp_str))
            return b->st = df_fail(DF_ERR_FORMAT,
                                   "%s: %s: unexpected tensor \"%s\": the weights do not match "
                                   "config.json (%zu tensors in the file, %zu expected)",
                                   b->component, df_st_path(f), name, df_st_count(f), b->nused);
    }
    return DF_OK;
}

void df_nn_binder_free(df_nn_binder *b)
{
    for (size_t i = 0; i < b->nused; i++)
        free(b->used[i]);
    free(b->used);
    b->used = NULL;
    b->nused = b->capused = 0;
}

/* ---- layers ---- */

static void bind_norm(df_nn_binder *b, df_nn_norm *n, int C, const char *pre, const char *name)
{
    n->g = df_nn_get(b, 1, (int64_t[]){C}, "%s.%s.weight", pre, name);
    n->b = df_nn_get(b, 1, (int64_t[]){C}, "%s.%s.bias", pre, name);
}

static void bind_conv(df_nn_binder *b, df_nn_lin *l, int OC, int C, int K, const char *pre,
                      const char *name)
{
    l->w = df_nn_get(b, 4, (int64_t[]){OC, C, K, K}, "%s.%s.weight", pre, name);
    l->b = df_nn_get(b, 1, (int64_t[]){OC}, "%s.%s.bias", pre, name);
}

void df_nn_resnet_bind(df_nn_binder *b, df_nn_resnet *r)
{
    bind_norm(b, &r->n1, r->cin, r->pre, "norm1");
    bind_conv(b, &r->c1, r->cout, r->cin, 3, r->pre, "conv1");
    if (r->temb_dim > 0) {
        r->temb.w = df_nn_get(b, 2, (int64_t[]){r->cout, r->temb_dim}, "%s.time_emb_proj.weight",
                              r->pre);
        r->temb.b = df_nn_get(b, 1, (int64_t[]){r->cout}, "%s.time_emb_proj.bias", r->pre);
    }
    bind_norm(b, &r->n2, r->cout, r->pre, "norm2");
    bind_conv(b, &r->c2, r->cout, r->cout, 3, r->pre, "conv2");
    r->sc.w = r->sc.b = NULL;
    if (r->cin != r->cout)
        bind_conv(b, &r->sc, r->cout, r->cin, 1, r->pre, "conv_shortcut");
}

static const df_conv2d_geom conv3 = {.K = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1,
                                     .pad_r = 1};
static const df_conv2d_geom conv1 = {.K = 1, .stride = 1};

/* conv1 of silu(GN(inp)) into t, plus the time projection; then t =
 * silu(GN(t)). inp is overwritten with silu(GN(inp)) when dst == inp. */
static void resnet_branch_head(const df_nn_resnet *r, float *dst, const float *inp, float *t,
                               const float *temb_act, float *tproj, int B, int H, int W)
{
    int HW = H * W;
    df_groupnorm_forward(dst, inp, r->n1.g, r->n1.b, B, r->cin, HW, r->groups, r->eps);
    df_silu_forward(dst, dst, (size_t)B * r->cin * HW);
    df_conv2d_forward(t, dst, r->c1.w, r->c1.b, B, r->cin, H, W, r->cout, &conv3);
    if (r->temb_dim > 0 && temb_act) {
        // tproj (B,cout) = time_emb_proj(silu(temb)), added per channel
        df_linear_forward(tproj, temb_act, r->temb.w, r->temb.b, B, r->temb_dim, r->cout);
        df_add_channel_bias(t, t, tproj, B, r->cout, HW);
    }
    df_groupnorm_forward(t, t, r->n2.g, r->n2.b, B, r->cout, HW, r->groups, r->eps);
    df_silu_forward(t, t, (size_t)B * r->cout * HW);
}

void df_nn_resnet_forward(const df_nn_resnet *r, float *x, float *out, float *t,
                          const float *temb_act, float *tproj, int B, int H, int W)
{
    // x (B,cin,HW), out (B,cout,HW), t (B,cout,HW)
    size_t nout = (size_t)B * r->cout * H * W;
    if (r->sc.w) {
        // shortcut first, so that x is free to hold the main branch
        df_conv2d_forward(out, x, r->sc.w, r->sc.b, B, r->cin, H, W, r->cout, &conv1);
        resnet_branch_head(r, x, x, t, temb_act, tproj, B, H, W);
        df_conv2d_forward(x, t, r->c2.w, r->c2.b, B, r->cout, H, W, r->cout, &conv3);
        df_add_forward(out, out, x, nout);               // shortcut + h
    } else {
        // identity shortcut: out serves as the branch's scratch, x stays intact
        resnet_branch_head(r, out, x, t, temb_act, tproj, B, H, W);
        df_conv2d_forward(out, t, r->c2.w, r->c2.b, B, r->cout, H, W, r->cout, &conv3);
        df_add_forward(out, x, out, nout);               // x + h
    }
    // diffusers: (input + hidden) / output_scale_factor
    if (r->out_scale != 1.0f)
        df_scale_forward(out, out, 1.0f / r->out_scale, nout);
}

static df_conv2d_geom down_geom(int pad)
{
    // pad 0 is diffusers' Downsample2D with padding=0: F.pad (0,1,0,1), conv pad 0
    if (pad == 0)
        return (df_conv2d_geom){.K = 3, .stride = 2, .pad_b = 1, .pad_r = 1};
    return (df_conv2d_geom){.K = 3, .stride = 2, .pad_t = pad, .pad_l = pad, .pad_b = pad,
                            .pad_r = pad};
}

void df_nn_downsample_size(int pad, int H, int W, int *OH, int *OW)
{
    // 0 where the padded input is smaller than the kernel (PyTorch refuses those)
    df_conv2d_geom g = down_geom(pad);
    df_conv2d_out_size(&g, H, W, OH, OW);
    if (H + g.pad_t + g.pad_b < g.K)
        *OH = 0;
    if (W + g.pad_l + g.pad_r < g.K)
        *OW = 0;
}

void df_nn_downsample_forward(const df_nn_lin *conv, int pad, float *out, const float *x, int B,
                              int C, int H, int W)
{
    df_conv2d_geom g = down_geom(pad);
    df_conv2d_forward(out, x, conv->w, conv->b, B, C, H, W, C, &g);
}

/* Rows of nearest upsampling (src = floor(dst*H/OH), as F.interpolate with a
 * size; exact 2x included): rows [y0,y1) of the (C,OH,OW) map into u. */
static void upsample_rows(float *u, const float *x, int C, int H, int W, int OH, int OW, int y0,
                          int y1)
{
    int rows = y1 - y0;
    for (int c = 0; c < C; c++)
        for (int y = y0; y < y1; y++) {
            const float *src = x + ((size_t)c * H + (size_t)((long long)y * H / OH)) * W;
            float *dst = u + ((size_t)c * rows + (y - y0)) * OW;
            for (int ox = 0; ox < OW; ox++)
                dst[ox] = src[(long long)ox * W / OW];
        }
}

size_t df_nn_upsample_scratch(int C, int OH, int OW)
{
    int R = OH < DF_NN_UP_BAND ? OH : DF_NN_UP_BAND;
    return (size_t)C * OW * ((size_t)R + 2 + (size_t)R);
}

void df_nn_upsample_forward(const df_nn_lin *conv, float *out, float *u, const float *x, int B,
                            int C, int H, int W, int OH, int OW)
{
    // per image and band of output rows [r0,r1): upsample rows [r0-1,r1+1)
    // (clipped; the conv pads the image edges) into u, conv into ob, copy out
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * C * H * W;
        float *yb = out + (size_t)b * C * OH * OW;
        for (int r0 = 0; r0 < OH; r0 += DF_NN_UP_BAND) {
            int r1 = r0 + DF_NN_UP_BAND < OH ? r0 + DF_NN_UP_BAND : OH;
            int ia = r0 > 0 ? r0 - 1 : 0, ib = r1 < OH ? r1 + 1 : OH, R = r1 - r0;
            float *ob = u + (size_t)C * (ib - ia) * OW;
            df_conv2d_geom g = {.K = 3, .stride = 1, .pad_t = r0 == 0, .pad_l = 1,
                                .pad_b = r1 == OH, .pad_r = 1};
            upsample_rows(u, xb, C, H, W, OH, OW, ia, ib);
            df_conv2d_forward(ob, u, conv->w, conv->b, 1, C, ib - ia, OW, C, &g);
            for (int c = 0; c < C; c++)
                memcpy(yb + ((size_t)c * OH + r0) * OW, ob + (size_t)c * R * OW,
                       (size_t)R * OW * sizeof *ob);
        }
    }
}

void df_nn_spatial_attn_bind(df_nn_binder *b, df_nn_spatial_attn *a, const char *pre)
{
    char n1[256], n2[256];
    int C = a->C;
    bind_norm(b, &a->gn, C, pre, "group_norm");
    // current diffusers names first, then the pre-0.14 ones
    static const char *names[4][2] = {
        {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};
    df_nn_lin *l[4] = {&a->q, &a->k, &a->v, &a->o};
    for (int i = 0; i < 4; i++) {
        snprintf(n1, sizeof n1, "%s.%s.weight", pre, names[i][0]);
        snprintf(n2, sizeof n2, "%s.%s.weight", pre, names[i][1]);
        l[i]->w = df_nn_get_linear(b, C, C, n1, n2);
        snprintf(n1, sizeof n1, "%s.%s.bias", pre, names[i][0]);
        snprintf(n2, sizeof n2, "%s.%s.bias", pre, names[i][1]);
        l[i]->b = df_nn_get_vec(b, C, n1, n2);
    }
}

void df_nn_spatial_attn_forward(const df_nn_spatial_attn *a, float *x, float *t, float *q,
                                float *k, float *v, float *o, int B, int HW)
{
    // x (B,C,HW); per image: t (C,HW) -> tokens q (HW,C) ... -> x += to_out
    int C = a->C, HS = C / a->heads;
    float scale = (float)(1.0 / sqrt((double)HS));
    size_t img = (size_t)C * HW;
    for (int b = 0; b < B; b++) {
        float *xb = x + b * img;
        df_groupnorm_forward(t, xb, a->gn.g, a->gn.b, 1, C, HW, a->groups, a->eps);
        df_nchw_to_nhwc(o, t, 1, C, HW);                          // o (HW,C) normalized tokens
        df_linear_forward(q, o, a->q.w, a->q.b, HW, C, C);
        df_linear_forward(k, o, a->k.w, a->k.b, HW, C, C);
        df_linear_forward(v, o, a->v.w, a->v.b, HW, C, C);
        df_attention_forward(o, q, k, v, 1, HW, HW, a->heads, HS, scale, 0);
        df_linear_forward(q, o, a->o.w, a->o.b, HW, C, C);        // q (HW,C) projected
        df_nhwc_to_nchw(t, q, 1, C, HW);
        df_add_forward(xb, xb, t, img);                           // residual
    }
}

bool df_nn_mul(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

bool df_nn_add(size_t *acc, size_t a)
{
    return !__builtin_add_overflow(*acc, a, acc);
}

bool df_nn_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}
