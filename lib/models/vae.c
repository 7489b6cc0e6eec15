/* vae.c - diffusers AutoencoderKL (the SD VAE) on the op set of ops.h, built
 * from vae/config.json (see vae.h).
 *
 * Encoder: conv_in -> down_blocks[i] {resnets[j], downsamplers.0 (pad
 * right/bottom by 1, 3x3 stride 2)} -> mid_block {resnets.0, attentions.0,
 * resnets.1} -> conv_norm_out -> silu -> conv_out (2L) -> quant_conv.
 * Decoder: post_quant_conv -> conv_in -> mid_block -> up_blocks[i]
 * {resnets[j] (layers_per_block + 1), upsamplers.0 (nearest x2, 3x3)} ->
 * conv_norm_out -> silu -> conv_out. GroupNorm eps 1e-6 everywhere.
 *
 * Images go through one at a time, with three maps P, Q, T (sized by
 * plan() for the largest map each must hold) plus the mid-block attention's
 * token buffers; the arena is kept for the next call and grows when needed.
 * Tested by tests/check_fixtures/check_vae.c and tests/unit/test_vae.c. */
#include "vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "ops.h"

#define MAX_BLOCKS 8
#define MAX_LAYERS 16
#define VAE_EPS 1e-6f

typedef struct {
    df_nn_lin conv_in, conv_out;
    df_nn_norm norm_out;
    df_nn_resnet res[MAX_BLOCKS][MAX_LAYERS + 1];
    df_nn_lin sampler[MAX_BLOCKS];
    df_nn_resnet mid[2];
    df_nn_spatial_attn attn;
} coder;

struct df_vae {
    df_weights *w;
    int in_ch, out_ch, L, groups, nblocks, layers, sample_size;
    int quant, post_quant, mid_attn;
    int ch[MAX_BLOCKS];
    float sf;
    coder enc, dec;
    df_nn_lin quant_conv, post_quant_conv;
    float *arena;
    size_t arena_floats, peak_bytes;
};

/* ---------------------------------------------------------------- config */

static df_status check_types(const df_nn_cfg *c, const char *key, const char *want, int n)
{
    const char *types[MAX_BLOCKS];
    int m;
    df_status s = df_nn_cfg_strs(c, key, MAX_BLOCKS, types, &m);
    if (s != DF_OK)
        return s;
    if (m != n)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" has %d entries but block_out_channels %d",
                       c->path, key, m, n);
    for (int i = 0; i < m; i++)
        if (strcmp(types[i], want))
            return df_fail(DF_ERR_UNSUPPORTED, "%s: %s[%d] \"%s\" not supported (%s only)",
                           c->path, key, i, types[i], want);
    return DF_OK;
}

static df_status check_unsupported(const df_nn_cfg *c)
{
    df_status s;
    const char *act;
    if ((s = df_nn_cfg_expect_str(c, "_class_name", "AutoencoderKL")) ||
        (s = df_nn_cfg_expect_null(c, "shift_factor")) ||
        (s = df_nn_cfg_expect_null(c, "latents_mean")) ||
        (s = df_nn_cfg_expect_null(c, "latents_std")) ||
        (s = df_nn_cfg_str(c, "act_fn", "silu", &act)))
        return s;
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return df_fail(DF_ERR_UNSUPPORTED, "%s: act_fn \"%s\" not supported (silu only)", c->path,
                       act);
    return DF_OK;
}

static void init_resnet(df_vae *v, df_nn_resnet *r, int cin, int cout, const char *pre)
{
    snprintf(r->pre, sizeof r->pre, "%s", pre);
    r->cin = cin;
    r->cout = cout;
    r->temb_dim = 0;
    r->groups = v->groups;
    r->eps = VAE_EPS;
    r->out_scale = 1.0f;
}

/* Mid block of encoder or decoder: resnet, single-head attention, resnet. */
static void init_mid(df_vae *v, coder *k, const char *side)
{
    char pre[128];
    int C = v->ch[v->nblocks - 1];
    for (int j = 0; j < 2; j++) {
        snprintf(pre, sizeof pre, "%s.mid_block.resnets.%d", side, j);
        init_resnet(v, &k->mid[j], C, C, pre);
    }
    k->attn = (df_nn_spatial_attn){.C = C, .heads = 1, .groups = v->groups, .eps = VAE_EPS};
}

static void build(df_vae *v)
{
    char pre[128];
    int n = v->nblocks, C = v->ch[0];
    for (int i = 0; i < n; i++) {           // encoder: ch[i-1] -> ch[i]
        int cin = C;
        C = v->ch[i];
        for (int j = 0; j < v->layers; j++) {
            snprintf(pre, sizeof pre, "encoder.down_blocks.%d.resnets.%d", i, j);
            init_resnet(v, &v->enc.res[i][j], j ? C : cin, C, pre);
        }
    }
    init_mid(v, &v->enc, "encoder");
    C = v->ch[n - 1];
    for (int i = 0; i < n; i++) {           // decoder: reversed channels
        int cin = C;
        C = v->ch[n - 1 - i];
        for (int j = 0; j < v->layers + 1; j++) {
            snprintf(pre, sizeof pre, "decoder.up_blocks.%d.resnets.%d", i, j);
            init_resnet(v, &v->dec.res[i][j], j ? C : cin, C, pre);
        }
    }
    init_mid(v, &v->dec, "decoder");
}

static df_status read_config(const df_nn_cfg *c, df_vae *v)
{
    df_status s;
    double sf;
    bool quant, post_quant, mid_attn;
    json_t *boc = json_object_get(c->j, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) == 0)
        return df_fail(DF_ERR_FORMAT, "%s: \"block_out_channels\" must be a non-empty list",
                       c->path);
    if (json_array_size(boc) > MAX_BLOCKS)
        return df_fail(DF_ERR_UNSUPPORTED, "%s: more than %d blocks", c->path, MAX_BLOCKS);
    int n = v->nblocks = (int)json_array_size(boc);
    if ((s = check_unsupported(c)) ||
        (s = df_nn_cfg_ints(c, "block_out_channels", n, false, 0, 1, 65536, v->ch)) ||
        (s = df_nn_cfg_int(c, "in_channels", false, 3, 1, 65536, &v->in_ch)) ||
        (s = df_nn_cfg_int(c, "out_channels", false, 3, 1, 65536, &v->out_ch)) ||
        (s = df_nn_cfg_int(c, "latent_channels", false, 4, 1, 65536, &v->L)) ||
        (s = df_nn_cfg_int(c, "layers_per_block", false, 1, 1, MAX_LAYERS, &v->layers)) ||
        (s = df_nn_cfg_int(c, "norm_num_groups", false, 32, 1, 65536, &v->groups)) ||
        (s = df_nn_cfg_int(c, "sample_size", false, 32, 1, 1 << 20, &v->sample_size)) ||
        (s = df_nn_cfg_num(c, "scaling_factor", 0.18215, 1e-30, 1e30, &sf)) ||
        (s = df_nn_cfg_bool(c, "use_quant_conv", true, &quant)) ||
        (s = df_nn_cfg_bool(c, "use_post_quant_conv", true, &post_quant)) ||
        (s = df_nn_cfg_bool(c, "mid_block_add_attention", true, &mid_attn)) ||
        (s = check_types(c, "down_block_types", "DownEncoderBlock2D", n)) ||
        (s = check_types(c, "up_block_types", "UpDecoderBlock2D", n)))
        return s;
    for (int i = 0; i < n; i++)
        if (v->ch[i] % v->groups)
            return df_fail(DF_ERR_FORMAT, "%s: block_out_channels[%d] = %d not divisible by "
                           "norm_num_groups %d", c->path, i, v->ch[i], v->groups);
    v->sf = (float)sf;
    v->quant = quant;
    v->post_quant = post_quant;
    v->mid_attn = mid_attn;
    build(v);
    return DF_OK;
}

/* --------------------------------------------------------------- weights */

static void bind_conv(df_nn_binder *b, df_nn_lin *l, int OC, int C, int K, const char *name)
{
    l->w = df_nn_get(b, 4, (int64_t[]){OC, C, K, K}, "%s.weight", name);
    l->b = df_nn_get(b, 1, (int64_t[]){OC}, "%s.bias", name);
}

static void bind_norm(df_nn_binder *b, df_nn_norm *l, int C, const char *name)
{
    l->g = df_nn_get(b, 1, (int64_t[]){C}, "%s.weight", name);
    l->b = df_nn_get(b, 1, (int64_t[]){C}, "%s.bias", name);
}

static void bind_mid(df_nn_binder *b, df_vae *v, coder *k, const char *side)
{
    char pre[128];
    df_nn_resnet_bind(b, &k->mid[0]);
    if (v->mid_attn) {
        snprintf(pre, sizeof pre, "%s.mid_block.attentions.0", side);
        df_nn_spatial_attn_bind(b, &k->attn, pre);
    }
    df_nn_resnet_bind(b, &k->mid[1]);
}

static void bind_encoder(df_nn_binder *b, df_vae *v)
{
    char name[128];
    int n = v->nblocks, C0 = v->ch[0], CL = v->ch[n - 1];
    bind_conv(b, &v->enc.conv_in, C0, v->in_ch, 3, "encoder.conv_in");
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers; j++)
            df_nn_resnet_bind(b, &v->enc.res[i][j]);
        if (i < n - 1) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            bind_conv(b, &v->enc.sampler[i], v->ch[i], v->ch[i], 3, name);
        }
    }
    bind_mid(b, v, &v->enc, "encoder");
    bind_norm(b, &v->enc.norm_out, CL, "encoder.conv_norm_out");
    bind_conv(b, &v->enc.conv_out, 2 * v->L, CL, 3, "encoder.conv_out");
    if (v->quant)
        bind_conv(b, &v->quant_conv, 2 * v->L, 2 * v->L, 1, "quant_conv");
}

static void bind_decoder(df_nn_binder *b, df_vae *v)
{
    char name[128];
    int n = v->nblocks, C0 = v->ch[0], CL = v->ch[n - 1];
    if (v->post_quant)
        bind_conv(b, &v->post_quant_conv, v->L, v->L, 1, "post_quant_conv");
    bind_conv(b, &v->dec.conv_in, CL, v->L, 3, "decoder.conv_in");
    bind_mid(b, v, &v->dec, "decoder");
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers + 1; j++)
            df_nn_resnet_bind(b, &v->dec.res[i][j]);
        if (i < n - 1) {
            int C = v->ch[n - 1 - i];
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            bind_conv(b, &v->dec.sampler[i], C, C, 3, name);
        }
    }
    bind_norm(b, &v->dec.norm_out, C0, "decoder.conv_norm_out");
    bind_conv(b, &v->dec.conv_out, v->out_ch, C0, 3, "decoder.conv_out");
}

/* Look every weight up; at load also name any tensor the config leaves out. */
static df_status bind_all(df_vae *v, bool collect)
{
    df_nn_binder b = {.w = v->w, .component = "vae", .collect = collect};
    bind_encoder(&b, v);
    bind_decoder(&b, v);
    df_status s = collect ? df_nn_binder_check_unused(&b) : b.st;
    df_nn_binder_free(&b);
    return s;
}

/* ------------------------------------------------------------------ load */

df_status df_vae_load_json(const json_t *config, const char *label, df_weights *w,
                            df_vae **out)
{
    *out = NULL;
    df_vae *m = calloc(1, sizeof *m);
    if (!m) {
        df_weights_free(w);
        return df_fail(DF_ERR_NOMEM, "vae: out of memory");
    }
    m->w = w;
    df_nn_cfg c = {.j = (json_t *)config};
    snprintf(c.path, sizeof c.path, "%s", label);
    df_status s = json_is_object(config) ? read_config(&c, m)
                                         : df_fail(DF_ERR_FORMAT, "%s: not a JSON object", label);
    if (s == DF_OK)
        s = bind_all(m, true);
    if (s != DF_OK) {
        df_vae_free(m);
        return s;
    }
    *out = m;
    return DF_OK;
}

df_status df_vae_load(const char *dir, const char *variant, df_vae **out)
{
    *out = NULL;
    df_vae *v = calloc(1, sizeof *v);
    if (!v)
        return df_fail(DF_ERR_NOMEM, "vae: out of memory");
    df_nn_cfg c;
    df_status s = df_nn_cfg_load(dir, &c);
    if (s == DF_OK)
        s = read_config(&c, v);
    df_nn_cfg_free(&c);
    if (s == DF_OK)
        s = df_weights_open_dir(dir, variant, &v->w);
    if (s == DF_OK)
        s = bind_all(v, true);
    if (s != DF_OK) {
        df_vae_free(v);
        return s;
    }
    *out = v;
    return DF_OK;
}

void df_vae_free(df_vae *v)
{
    if (!v)
        return;
    free(v->arena);
    df_weights_free(v->w);
    free(v);
}

void df_vae_release_activations(df_vae *v)
{
    free(v->arena);
    v->arena = NULL;
    v->arena_floats = 0;
}

/* ----------------------------------------------------------------- sizes */

void df_vae_latent_size(const df_vae *v, int H, int W, int *h, int *w)
{
    for (int i = 0; i < v->nblocks - 1; i++)
        df_nn_downsample_size(0, H, W, &H, &W);
    *h = H, *w = W;
}

void df_vae_image_size(const df_vae *v, int h, int w, int *H, int *W)
{
    *H = h << (v->nblocks - 1);
    *W = w << (v->nblocks - 1);
}

/* Buffers of one image's pass: the two maps that trade roles at every
 * layer (sized separately by following the same swaps as the forward: at
 * 768 px only one of them ever holds the 256-channel 768x768 map), the
 * resnet/upsampler scratch t, and the attention's q, k, v, o. */
typedef struct {
    size_t map[2], t, tok;
    int cur;                  /* which map holds the running activation */
} plan;

static void need(size_t *r, size_t n)
{
    if (n > *r)
        *r = n;
}

/* A resnet from map[cur] into the other map, which becomes current. */
static void plan_resnet(plan *p, const df_nn_resnet *r, size_t HW)
{
    need(&p->map[p->cur], (size_t)(r->cin > r->cout ? r->cin : r->cout) * HW);
    need(&p->map[!p->cur], (size_t)r->cout * HW);
    need(&p->t, (size_t)r->cout * HW);
    p->cur = !p->cur;
}

static void plan_mid(plan *p, const coder *k, size_t HW)
{
    plan_resnet(p, &k->mid[0], HW);
    plan_resnet(p, &k->mid[1], HW);
    need(&p->t, (size_t)k->attn.C * HW);
    need(&p->tok, (size_t)k->attn.C * HW);
}

static plan plan_encoder(const df_vae *v, int H, int W)
{
    plan p = {0};
    need(&p.map[0], (size_t)v->ch[0] * H * W);
    for (int i = 0; i < v->nblocks; i++) {
        for (int j = 0; j < v->layers; j++)
            plan_resnet(&p, &v->enc.res[i][j], (size_t)H * W);
        if (i < v->nblocks - 1) {
            df_nn_downsample_size(0, H, W, &H, &W);
            need(&p.map[!p.cur], (size_t)v->ch[i] * H * W);
            p.cur = !p.cur;
        }
    }
    plan_mid(&p, &v->enc, (size_t)H * W);
    need(&p.map[!p.cur], (size_t)2 * v->L * H * W);    // conv_out before quant_conv
    return p;
}

static plan plan_decoder(const df_vae *v, int h, int w)
{
    plan p = {0};
    int H = h, W = w, n = v->nblocks;
    need(&p.map[1], (size_t)v->L * H * W);              // post_quant_conv
    need(&p.map[0], (size_t)v->ch[n - 1] * H * W);      // conv_in
    plan_mid(&p, &v->dec, (size_t)H * W);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers + 1; j++)
            plan_resnet(&p, &v->dec.res[i][j], (size_t)H * W);
        if (i < n - 1) {
            int C = v->ch[n - 1 - i];
            H *= 2, W *= 2;
            need(&p.map[!p.cur], (size_t)C * H * W);
            need(&p.t, df_nn_upsample_scratch(C, H, W));
            p.cur = !p.cur;
        }
    }
    return p;
}

typedef struct {
    float *P, *Q, *T, *q, *k, *v, *o;
} bufs;

/* Grow the arena to the plan; keep it for later calls. */
static df_status ensure_arena(df_vae *v, const plan *p, bufs *b)
{
    size_t total = 0, sizes[7] = {p->map[0], p->map[1], p->t, p->tok, p->tok, p->tok, p->tok};
    for (int i = 0; i < 7; i++)
        if (!df_nn_add(&total, sizes[i]))
            return df_fail(DF_ERR_NOMEM, "vae: activation size overflows");
    if (total > v->arena_floats) {
        size_t bytes;
        df_vae_release_activations(v);
        if (!df_nn_mul(total, sizeof(float), &bytes) || !(v->arena = malloc(bytes)))
            return df_fail(DF_ERR_NOMEM, "vae: cannot allocate %zu MB of activations",
                           total / (1 << 18));
        v->arena_floats = total;
    }
    float *a = v->arena, **dst[7] = {&b->P, &b->Q, &b->T, &b->q, &b->k, &b->v, &b->o};
    for (int i = 0; i < 7; i++) {
        *dst[i] = a;
        a += sizes[i];
    }
    if (total * sizeof(float) > v->peak_bytes)
        v->peak_bytes = total * sizeof(float);
    return DF_OK;
}

/* --------------------------------------------------------------- forward */

static const df_conv2d_geom conv3 = {.K = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1,
                                     .pad_r = 1};
static const df_conv2d_geom conv1 = {.K = 1, .stride = 1};

static void swap(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

/* Mid block on *P (one image), result in *P. */
static void mid_forward(const df_vae *v, const coder *k, bufs *b, int HW, int H, int W)
{
    df_nn_resnet_forward(&k->mid[0], b->P, b->Q, b->T, NULL, NULL, 1, H, W);
    if (v->mid_attn)
        df_nn_spatial_attn_forward(&k->attn, b->Q, b->T, b->q, b->k, b->v, b->o, 1, HW);
    df_nn_resnet_forward(&k->mid[1], b->Q, b->P, b->T, NULL, NULL, 1, H, W);
}

/* norm_out -> silu -> conv_out of *P (C channels) into out. */
static void head_forward(const df_vae *v, const coder *k, float *P, int C, int H, int W,
                         int OC, float *out)
{
    df_groupnorm_forward(P, P, k->norm_out.g, k->norm_out.b, 1, C, H * W, v->groups, VAE_EPS);
    df_silu_forward(P, P, (size_t)C * H * W);
    df_conv2d_forward(out, P, k->conv_out.w, k->conv_out.b, 1, C, H, W, OC, &conv3);
}

/* One image (in_ch,H,W) -> moments (2L,h,w). */
static void encode_one(const df_vae *v, bufs b, const float *img, int H, int W, float *mom)
{
    int n = v->nblocks, L2 = 2 * v->L;
    df_conv2d_forward(b.P, img, v->enc.conv_in.w, v->enc.conv_in.b, 1, v->in_ch, H, W, v->ch[0],
                      &conv3);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers; j++) {
            df_nn_resnet_forward(&v->enc.res[i][j], b.P, b.Q, b.T, NULL, NULL, 1, H, W);
            swap(&b.P, &b.Q);
        }
        if (i < n - 1) {
            df_nn_downsample_forward(&v->enc.sampler[i], 0, b.Q, b.P, 1, v->ch[i], H, W);
            df_nn_downsample_size(0, H, W, &H, &W);
            swap(&b.P, &b.Q);
        }
    }
    mid_forward(v, &v->enc, &b, H * W, H, W);
    if (!v->quant) {
        head_forward(v, &v->enc, b.P, v->ch[n - 1], H, W, L2, mom);
        return;
    }
    head_forward(v, &v->enc, b.P, v->ch[n - 1], H, W, L2, b.Q);
    df_conv2d_forward(mom, b.Q, v->quant_conv.w, v->quant_conv.b, 1, L2, H, W, L2, &conv1);
}

/* One latent (L,h,w) -> image (out_ch,H,W). */
static void decode_one(const df_vae *v, bufs b, const float *lat, int H, int W, float *img)
{
    int n = v->nblocks;
    const float *x = lat;
    if (v->post_quant) {
        df_conv2d_forward(b.Q, lat, v->post_quant_conv.w, v->post_quant_conv.b, 1, v->L, H, W,
                          v->L, &conv1);
        x = b.Q;
    }
    df_conv2d_forward(b.P, x, v->dec.conv_in.w, v->dec.conv_in.b, 1, v->L, H, W, v->ch[n - 1],
                      &conv3);
    mid_forward(v, &v->dec, &b, H * W, H, W);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers + 1; j++) {
            df_nn_resnet_forward(&v->dec.res[i][j], b.P, b.Q, b.T, NULL, NULL, 1, H, W);
            swap(&b.P, &b.Q);
        }
        if (i < n - 1) {
            int C = v->ch[n - 1 - i];
            df_nn_upsample_forward(&v->dec.sampler[i], b.Q, b.T, b.P, 1, C, H, W, 2 * H, 2 * W);
            H *= 2, W *= 2;
            swap(&b.P, &b.Q);
        }
    }
    head_forward(v, &v->dec, b.P, v->ch[0], H, W, v->out_ch, img);
}

/* The ops take int sizes: one image's H*W stays far below INT_MAX. */
static df_status check_batch(int B, int H, int W, const char *what)
{
    if (B < 1 || B > 1 << 20 || H < 1 || H > 1 << 16 || W < 1 || W > 1 << 16 ||
        (size_t)H * W > ((size_t)1 << 28))
        return df_fail(DF_ERR_ARG, "vae: bad %s size B=%d %dx%d", what, B, H, W);
    return DF_OK;
}

df_status df_vae_encode(df_vae *v, const float *image, int B, int H, int W, float *moments)
{
    df_status s;
    int h, w;
    if ((s = check_batch(B, H, W, "image")) != DF_OK)
        return s;
    df_vae_latent_size(v, H, W, &h, &w);
    if (h < 1 || w < 1)
        return df_fail(DF_ERR_ARG, "vae: image %dx%d too small for %d downsamplers", H, W,
                       v->nblocks - 1);
    plan p = plan_encoder(v, H, W);
    bufs b;
    if ((s = bind_all(v, false)) || (s = ensure_arena(v, &p, &b)))
        return s;
    size_t in = (size_t)v->in_ch * H * W, mo = (size_t)2 * v->L * h * w;
    for (int i = 0; i < B; i++)
        encode_one(v, b, image + i * in, H, W, moments + i * mo);
    if (!df_nn_all_finite(moments, B * mo))
        return df_fail(DF_ERR_NUMERIC, "vae: NaN or Inf in the encoder output");
    return DF_OK;
}

df_status df_vae_decode(df_vae *v, const float *latents, int B, int h, int w, float *image)
{
    df_status s;
    int H, W;
    if ((s = check_batch(B, h, w, "latent")) != DF_OK)
        return s;
    if (h > (1 << 16) >> (v->nblocks - 1) || w > (1 << 16) >> (v->nblocks - 1) ||
        (size_t)h * w > ((size_t)1 << 28) >> (2 * (v->nblocks - 1)))
        return df_fail(DF_ERR_ARG, "vae: latent %dx%d too large", h, w);
    df_vae_image_size(v, h, w, &H, &W);
    plan p = plan_decoder(v, h, w);
    bufs b;
    if ((s = bind_all(v, false)) || (s = ensure_arena(v, &p, &b)))
        return s;
    size_t in = (size_t)v->L * h * w, out = (size_t)v->out_ch * H * W;
    for (int i = 0; i < B; i++)
        decode_one(v, b, latents + i * in, h, w, image + i * out);
    if (!df_nn_all_finite(image, B * out))
        return df_fail(DF_ERR_NUMERIC, "vae: NaN or Inf in the decoded image");
    return DF_OK;
}

void df_vae_posterior(const float *moments, int B, int L, int HW, float *mean, float *logvar,
                      float *std)
{
    // moments (B,2L,HW): [0,L) mean, [L,2L) logvar; outputs (B,L,HW)
    size_t n = (size_t)L * HW;
    for (int b = 0; b < B; b++) {
        const float *m = moments + 2 * n * b, *lv = m + n;
        for (size_t i = 0; i < n; i++) {
            float l = fminf(fmaxf(lv[i], -30.0f), 20.0f);
            if (mean)
                mean[b * n + i] = m[i];
            if (logvar)
                logvar[b * n + i] = l;
            if (std)
                std[b * n + i] = expf(0.5f * l);
        }
    }
}

float df_vae_scaling_factor(const df_vae *v) { return v->sf; }
int df_vae_latent_channels(const df_vae *v) { return v->L; }
int df_vae_in_channels(const df_vae *v) { return v->in_ch; }
int df_vae_out_channels(const df_vae *v) { return v->out_ch; }
int df_vae_sample_size(const df_vae *v) { return v->sample_size; }
size_t df_vae_peak_activation_bytes(const df_vae *v) { return v->peak_bytes; }
df_weights *df_vae_weights(df_vae *v) { return v->w; }
