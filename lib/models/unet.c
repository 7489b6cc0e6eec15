/* unet.c - diffusers UNet2DConditionModel (the SD 2.x UNet) on the op set of
 * ops.h, built from unet/config.json (see unet.h).
 *
 * Structure (names as in the diffusers state dict):
 *   time_proj (sinusoidal) -> time_embedding.linear_1 -> silu -> linear_2
 *   conv_in -> down_blocks[i] {resnets[j] (+ attentions[j]), downsamplers.0}
 *   -> mid_block {resnets.0, attentions.0, resnets.1}
 *   -> up_blocks[i] {cat(h, skip) -> resnets[j] (+ attentions[j]), upsamplers.0}
 *   -> conv_norm_out -> silu -> conv_out
 * attentions[j] is a Transformer2DModel: GroupNorm(eps 1e-6) -> proj_in
 * (linear or 1x1 conv) -> BasicTransformerBlocks (LN -> self-attn, LN ->
 * cross-attn on the text states, LN -> GEGLU feed-forward, each residual)
 * -> proj_out -> + input.
 *
 * Activations: one arena per (B,h,w,T), laid out by plan_arena() from the
 * same walk over the blocks that the forward makes: the skip tensors, two
 * ping-pong maps P/Q, a resnet scratch map, and the transformer's token
 * buffers. The feed-forward runs in row chunks so its 8C-wide hidden layer
 * never exists for all tokens at once.
 * Tested by tests/check_fixtures/check_unet.c and tests/unit/test_unet.c. */
#include "unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "ops.h"
#include "unet_internal.h"

/* ---------------------------------------------------------------- config */

static df_status check_unsupported(const df_nn_cfg *c)
{
    df_status s;
    static const char *must_be_false[] = {"dual_cross_attention", "only_cross_attention",
                                          "resnet_skip_time_act", "class_embeddings_concat",
                                          "mid_block_only_cross_attention"};
    static const char *must_be_null[] = {
        "num_class_embeds", "class_embed_type", "addition_embed_type", "time_cond_proj_dim",
        "encoder_hid_dim", "encoder_hid_dim_type", "timestep_post_act", "time_embedding_act_fn",
        "cross_attention_norm", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
        "reverse_transformer_layers_per_block"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++)
        if ((s = df_nn_cfg_expect_false(c, must_be_false[i])) != DF_OK)
            return s;
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++)
        if ((s = df_nn_cfg_expect_null(c, must_be_null[i])) != DF_OK)
            return s;
    if ((s = df_nn_cfg_expect_str(c, "_class_name", "UNet2DConditionModel")) ||
        (s = df_nn_cfg_expect_str(c, "time_embedding_type", "positional")) ||
        (s = df_nn_cfg_expect_str(c, "resnet_time_scale_shift", "default")) ||
        (s = df_nn_cfg_expect_str(c, "attention_type", "default")) ||
        (s = df_nn_cfg_expect_num(c, "conv_in_kernel", 3)) ||
        (s = df_nn_cfg_expect_num(c, "conv_out_kernel", 3)) ||
        (s = df_nn_cfg_expect_num(c, "resnet_out_scale_factor", 1.0)))
        return s;
    const char *act;
    if ((s = df_nn_cfg_str(c, "act_fn", "silu", &act)) != DF_OK)
        return s;
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return df_fail(DF_ERR_UNSUPPORTED, "%s: act_fn \"%s\" not supported (silu only)", c->path,
                       act);
    return DF_OK;
}

/* Block kinds: attention or not, from the type names diffusers uses. */
static df_status block_kinds(const df_nn_cfg *c, const char *key, const char *with_attn,
                             const char *plain, int want, int *has_attn)
{
    const char *types[MAX_BLOCKS];
    int n;
    df_status s = df_nn_cfg_strs(c, key, MAX_BLOCKS, types, &n);
    if (s != DF_OK)
        return s;
    if (n != want)
        return df_fail(DF_ERR_FORMAT, "%s: \"%s\" has %d entries but block_out_channels %d",
                       c->path, key, n, want);
    for (int i = 0; i < n; i++) {
        if (!strcmp(types[i], with_attn))
            has_attn[i] = 1;
        else if (!strcmp(types[i], plain))
            has_attn[i] = 0;
        else
            return df_fail(DF_ERR_UNSUPPORTED, "%s: %s[%d] \"%s\" not supported (%s or %s)",
                           c->path, key, i, types[i], with_attn, plain);
    }
    return DF_OK;
}

/* Heads per block: num_attention_heads when set, else attention_head_dim
 * (which SD 2 configs use for the head count, as diffusers reads it). */
static df_status read_heads(const df_nn_cfg *c, int n, int *heads)
{
    const char *key = json_is_null(json_object_get(c->j, "num_attention_heads")) ||
                              !json_object_get(c->j, "num_attention_heads")
                          ? "attention_head_dim"
                          : "num_attention_heads";
    return df_nn_cfg_ints(c, key, n, true, 8, 1, 4096, heads);
}

static void init_resnet(df_unet *u, df_nn_resnet *r, int cin, int cout, float scale,
                        const char *kind, int i, int j)
{
    if (i < 0)
        snprintf(r->pre, sizeof r->pre, "mid_block.resnets.%d", j);
    else
        snprintf(r->pre, sizeof r->pre, "%s_blocks.%d.resnets.%d", kind, i, j);
    r->cin = cin;
    r->cout = cout;
    r->temb_dim = u->temb_dim;
    r->groups = u->groups;
    r->eps = u->eps;
    r->out_scale = scale;
}

static df_status init_xformer(const df_nn_cfg *c, xformer *x, int C, int heads, int ntb,
                              const char *pre)
{
    snprintf(x->pre, sizeof x->pre, "%s", pre);
    if (C % heads)
        return df_fail(DF_ERR_FORMAT, "%s: %s: %d channels not divisible by %d heads", c->path,
                       pre, C, heads);
    x->C = C;
    x->heads = heads;
    x->ntb = ntb;
    return DF_OK;
}

/* Channel counts must split into the GroupNorm groups. */
static df_status check_groups(const df_nn_cfg *c, df_unet *u)
{
    for (int i = 0; i < u->nblocks; i++)
        if (u->ch[i] % u->groups)
            return df_fail(DF_ERR_FORMAT, "%s: block_out_channels[%d] = %d not divisible by "
                           "norm_num_groups %d", c->path, i, u->ch[i], u->groups);
    return DF_OK;
}

static df_status build_down(const df_nn_cfg *c, df_unet *u, const int *attn, const int *layers,
                            const int *heads, const int *tl)
{
    int C = u->ch[0];
    for (int i = 0; i < u->nblocks; i++) {
        block *b = &u->down[i];
        int cin = C;
        C = u->ch[i];
        b->C = C;
        b->nres = layers[i];
        b->has_attn = attn[i];
        b->has_sampler = i < u->nblocks - 1;
        for (int j = 0; j < b->nres; j++)
            init_resnet(u, &b->res[j], j == 0 ? cin : C, C, 1.0f, "down", i, j);
        if (b->has_attn) {
            if (!(b->att = calloc((size_t)b->nres, sizeof *b->att)))
                return df_fail(DF_ERR_NOMEM, "unet: out of memory");
            for (int j = 0; j < b->nres; j++) {
                char pre[128];
                snprintf(pre, sizeof pre, "down_blocks.%d.attentions.%d", i, j);
                df_status s = init_xformer(c, &b->att[j], C, heads[i], tl[i], pre);
                if (s != DF_OK)
                    return s;
            }
        }
    }
    return DF_OK;
}

/* Up block i mirrors down block n-1-i; its resnet j takes the running
 * channels plus the channels of the skip it pops (diffusers get_up_block). */
static df_status build_up(const df_nn_cfg *c, df_unet *u, const int *attn, const int *layers,
                          const int *heads, const int *tl)
{
    int n = u->nblocks, C = u->ch[n - 1];
    for (int i = 0; i < n; i++) {
        block *b = &u->up[i];
        int prev = C;
        C = u->ch[n - 1 - i];
        int cskip_last = u->ch[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
        b->C = C;
        b->nres = layers[n - 1 - i] + 1;
        b->has_attn = attn[i];
        b->has_sampler = i < n - 1;
        for (int j = 0; j < b->nres; j++) {
            int skip = j == b->nres - 1 ? cskip_last : C;
            int cin = (j == 0 ? prev : C) + skip;
            init_resnet(u, &b->res[j], cin, C, 1.0f, "up", i, j);
        }
        if (b->has_attn) {
            if (!(b->att = calloc((size_t)b->nres, sizeof *b->att)))
                return df_fail(DF_ERR_NOMEM, "unet: out of memory");
            for (int j = 0; j < b->nres; j++) {
                char pre[128];
                snprintf(pre, sizeof pre, "up_blocks.%d.attentions.%d", i, j);
                df_status s = init_xformer(c, &b->att[j], C, heads[n - 1 - i], tl[n - 1 - i], pre);
                if (s != DF_OK)
                    return s;
            }
        }
    }
    return DF_OK;
}

static df_status read_config(const df_nn_cfg *c, df_unet *u)
{
    df_status s;
    int attn_down[MAX_BLOCKS], attn_up[MAX_BLOCKS], layers[MAX_BLOCKS], heads[MAX_BLOCKS],
        tl[MAX_BLOCKS];
    double eps, shift, mid_scale;
    bool flip, center, linear;
    const char *mid;
    json_t *boc = json_object_get(c->j, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) == 0)
        return df_fail(DF_ERR_FORMAT, "%s: \"block_out_channels\" must be a non-empty list",
                       c->path);
    if (json_array_size(boc) > MAX_BLOCKS)
        return df_fail(DF_ERR_UNSUPPORTED, "%s: more than %d blocks", c->path, MAX_BLOCKS);
    u->nblocks = (int)json_array_size(boc);
    int n = u->nblocks;
    if ((s = check_unsupported(c)) ||
        (s = df_nn_cfg_ints(c, "block_out_channels", n, false, 0, 1, 65536, u->ch)) ||
        (s = df_nn_cfg_int(c, "in_channels", false, 4, 1, 65536, &u->in_ch)) ||
        (s = df_nn_cfg_int(c, "out_channels", false, 4, 1, 65536, &u->out_ch)) ||
        (s = df_nn_cfg_int(c, "sample_size", false, 64, 1, 65536, &u->sample_size)) ||
        (s = df_nn_cfg_int(c, "cross_attention_dim", false, 1280, 1, 65536, &u->cross_dim)) ||
        (s = df_nn_cfg_int(c, "norm_num_groups", false, 32, 1, 65536, &u->groups)) ||
        (s = df_nn_cfg_int(c, "downsample_padding", false, 1, 0, 1, &u->down_pad)) ||
        (s = df_nn_cfg_int(c, "time_embedding_dim", false, 4 * u->ch[0], 1, 1 << 20,
                           &u->temb_dim)) ||
        (s = df_nn_cfg_num(c, "norm_eps", 1e-5, 0, 1, &eps)) ||
        (s = df_nn_cfg_num(c, "freq_shift", 0, -1e6, 1e6, &shift)) ||
        (s = df_nn_cfg_num(c, "mid_block_scale_factor", 1, 1e-6, 1e6, &mid_scale)) ||
        (s = df_nn_cfg_bool(c, "flip_sin_to_cos", true, &flip)) ||
        (s = df_nn_cfg_bool(c, "center_input_sample", false, &center)) ||
        (s = df_nn_cfg_bool(c, "use_linear_projection", false, &linear)) ||
        (s = df_nn_cfg_ints(c, "layers_per_block", n, true, 2, 1, MAX_LAYERS, layers)) ||
        (s = df_nn_cfg_ints(c, "transformer_layers_per_block", n, true, 1, 1, MAX_LAYERS, tl)) ||
        (s = read_heads(c, n, heads)) ||
        (s = block_kinds(c, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", n,
                         attn_down)) ||
        (s = block_kinds(c, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", n, attn_up)) ||
        (s = df_nn_cfg_str(c, "mid_block_type", "UNetMidBlock2DCrossAttn", &mid)))
        return s;
    /* A null mid_block_type means no mid block, as in diffusers. */
    json_t *mj = json_object_get(c->j, "mid_block_type");
    u->mid = !(mj && json_is_null(mj));
    if (u->mid && strcmp(mid, "UNetMidBlock2DCrossAttn"))
        return df_fail(DF_ERR_UNSUPPORTED, "%s: mid_block_type \"%s\" not supported", c->path, mid);
    u->eps = (float)eps;
    u->freq_shift = (float)shift;
    u->mid_scale = (float)mid_scale;
    u->flip_sin_to_cos = flip;
    u->center_input = center;
    u->linear_proj = linear;
    if ((s = check_groups(c, u)) || (s = build_down(c, u, attn_down, layers, heads, tl)) ||
        (s = build_up(c, u, attn_up, layers, heads, tl)))
        return s;
    if (u->mid) {
        int C = u->ch[n - 1];
        init_resnet(u, &u->mid_res[0], C, C, u->mid_scale, "mid", -1, 0);
        init_resnet(u, &u->mid_res[1], C, C, u->mid_scale, "mid", -1, 1);
        if ((s = init_xformer(c, &u->mid_att, C, heads[n - 1], tl[n - 1],
                              "mid_block.attentions.0")))
            return s;
    }
    return DF_OK;
}

/* --------------------------------------------------------------- weights */

static void bind_lin(df_nn_binder *b, df_nn_lin *l, int OC, int C, int bias, const char *pre,
                     const char *name)
{
    l->w = df_nn_get(b, 2, (int64_t[]){OC, C}, "%s.%s.weight", pre, name);
    l->b = bias ? df_nn_get(b, 1, (int64_t[]){OC}, "%s.%s.bias", pre, name) : NULL;
}

static void bind_normp(df_nn_binder *b, df_nn_norm *n, int C, const char *pre, const char *name)
{
    n->g = df_nn_get(b, 1, (int64_t[]){C}, "%s.%s.weight", pre, name);
    n->b = df_nn_get(b, 1, (int64_t[]){C}, "%s.%s.bias", pre, name);
}

static void bind_convp(df_nn_binder *b, df_nn_lin *l, int OC, int C, int K, const char *name)
{
    l->w = df_nn_get(b, 4, (int64_t[]){OC, C, K, K}, "%s.weight", name);
    l->b = df_nn_get(b, 1, (int64_t[]){OC}, "%s.bias", name);
}

static void bind_xformer(df_nn_binder *b, xformer *x, int D, int linear)
{
    int C = x->C;
    char pre[192];
    bind_normp(b, &x->gn, C, x->pre, "norm");
    for (int p = 0; p < 2; p++) {
        df_nn_lin *l = p ? &x->pout : &x->pin;
        const char *nm = p ? "proj_out" : "proj_in";
        if (linear)
            bind_lin(b, l, C, C, 1, x->pre, nm);
        else {
            snprintf(pre, sizeof pre, "%s.%s", x->pre, nm);
            bind_convp(b, l, C, C, 1, pre);
        }
    }
    for (int i = 0; i < x->ntb; i++) {
        tblock *t = &x->tb[i];
        snprintf(pre, sizeof pre, "%s.transformer_blocks.%d", x->pre, i);
        bind_normp(b, &t->n1, C, pre, "norm1");
        bind_normp(b, &t->n2, C, pre, "norm2");
        bind_normp(b, &t->n3, C, pre, "norm3");
        bind_lin(b, &t->q1, C, C, 0, pre, "attn1.to_q");
        bind_lin(b, &t->k1, C, C, 0, pre, "attn1.to_k");
        bind_lin(b, &t->v1, C, C, 0, pre, "attn1.to_v");
        bind_lin(b, &t->o1, C, C, 1, pre, "attn1.to_out.0");
        bind_lin(b, &t->q2, C, C, 0, pre, "attn2.to_q");
        bind_lin(b, &t->k2, C, D, 0, pre, "attn2.to_k");
        bind_lin(b, &t->v2, C, D, 0, pre, "attn2.to_v");
        bind_lin(b, &t->o2, C, C, 1, pre, "attn2.to_out.0");
        bind_lin(b, &t->ff1, 8 * C, C, 1, pre, "ff.net.0.proj");
        bind_lin(b, &t->ff2, C, 4 * C, 1, pre, "ff.net.2");
    }
}

static void bind_block(df_nn_binder *b, df_unet *u, block *k, const char *kind, int i)
{
    char name[128];
    for (int j = 0; j < k->nres; j++) {
        df_nn_resnet_bind(b, &k->res[j]);
        if (k->has_attn)
            bind_xformer(b, &k->att[j], u->cross_dim, u->linear_proj);
    }
    if (k->has_sampler) {
        snprintf(name, sizeof name, "%s_blocks.%d.%s.0.conv", kind, i,
                 kind[0] == 'd' ? "downsamplers" : "upsamplers");
        bind_convp(b, &k->sampler, k->C, k->C, 3, name);
    }
}

/* Look every weight up (again): at load this checks names and shapes, at
 * each forward it picks up private copies made by df_weights_mut. */
static df_status bind_all(df_unet *u, bool collect)
{
    df_nn_binder b = {.w = u->w, .component = "unet", .collect = collect};
    int C0 = u->ch[0], E = u->temb_dim;
    bind_convp(&b, &u->conv_in, C0, u->in_ch, 3, "conv_in");
    bind_lin(&b, &u->lin1, E, C0, 1, "time_embedding", "linear_1");
    bind_lin(&b, &u->lin2, E, E, 1, "time_embedding", "linear_2");
    for (int i = 0; i < u->nblocks; i++)
        bind_block(&b, u, &u->down[i], "down", i);
    if (u->mid) {
        df_nn_resnet_bind(&b, &u->mid_res[0]);
        bind_xformer(&b, &u->mid_att, u->cross_dim, u->linear_proj);
        df_nn_resnet_bind(&b, &u->mid_res[1]);
    }
    for (int i = 0; i < u->nblocks; i++)
        bind_block(&b, u, &u->up[i], "up", i);
    u->norm_out.g = df_nn_get(&b, 1, (int64_t[]){C0}, "conv_norm_out.weight");
    u->norm_out.b = df_nn_get(&b, 1, (int64_t[]){C0}, "conv_norm_out.bias");
    bind_convp(&b, &u->conv_out, u->out_ch, C0, 3, "conv_out");
    df_status s = collect ? df_nn_binder_check_unused(&b) : b.st;
    df_nn_binder_free(&b);
    return s;
}

/* ------------------------------------------------------------------ load */

df_status df_unet_load_json(const json_t *config, const char *label, df_weights *w,
                            df_unet **out)
{
    *out = NULL;
    df_unet *m = calloc(1, sizeof *m);
    if (!m) {
        df_weights_free(w);
        return df_fail(DF_ERR_NOMEM, "unet: out of memory");
    }
    m->w = w;
    df_nn_cfg c = {.j = (json_t *)config};
    snprintf(c.path, sizeof c.path, "%s", label);
    df_status s = json_is_object(config) ? read_config(&c, m)
                                         : df_fail(DF_ERR_FORMAT, "%s: not a JSON object", label);
    if (s == DF_OK)
        s = bind_all(m, true);
    if (s != DF_OK) {
        df_unet_free(m);
        return s;
    }
    *out = m;
    return DF_OK;
}

df_status df_unet_load(const char *dir, const char *variant, df_unet **out)
{
    *out = NULL;
    df_unet *u = calloc(1, sizeof *u);
    if (!u)
        return df_fail(DF_ERR_NOMEM, "unet: out of memory");
    df_nn_cfg c;
    df_status s = df_nn_cfg_load(dir, &c);
    if (s == DF_OK)
        s = read_config(&c, u);
    df_nn_cfg_free(&c);
    if (s == DF_OK)
        s = df_weights_open_dir(dir, variant, &u->w);
    if (s == DF_OK)
        s = bind_all(u, true);
    if (s != DF_OK) {
        df_unet_free(u);
        return s;
    }
    *out = u;
    return DF_OK;
}

void df_unet_free(df_unet *u)
{
    if (!u)
        return;
    for (int i = 0; i < MAX_BLOCKS; i++) {
        free(u->down[i].att);
        free(u->up[i].att);
    }
    free(u->arena);
    df_weights_free(u->w);
    free(u);
}

/* ----------------------------------------------------------------- arena */

/* Scratch regions of the arena, each sized to its largest use. */
enum { R_P, R_Q, R_T, R_TOK, R_NRM, R_Q1, R_K1, R_V1, R_O1, R_FF, R_GG, R_TIME, R_RT, R_N };

typedef struct {
    size_t need[R_N];
    size_t skip[1 + MAX_BLOCKS * (MAX_LAYERS + 1)];
    int nskip;
} plan;

static void need(plan *p, int r, size_t n)
{
    if (n > p->need[r])
        p->need[r] = n;
}

static void plan_resnet(plan *p, size_t B, const df_nn_resnet *r, size_t HW)
{
    size_t cmax = (size_t)(r->cin > r->cout ? r->cin : r->cout);
    need(p, R_P, B * cmax * HW);           // input map, clobbered, holds conv2's output
    need(p, R_Q, B * cmax * HW);           // out and in swap between P and Q
    need(p, R_T, B * r->cout * HW);
    need(p, R_RT, B * r->cout);            // the resnet's time projection
}

static void plan_xformer(plan *p, size_t B, const xformer *x, size_t HW, size_t T)
{
    size_t N = B * HW, C = (size_t)x->C, M = B * (HW > T ? HW : T);
    size_t chunk = N < FF_CHUNK ? N : FF_CHUNK;
    need(p, R_T, N * C);
    need(p, R_TOK, N * C);
    need(p, R_NRM, N * C);
    need(p, R_Q1, N * C);
    need(p, R_K1, M * C);
    need(p, R_V1, M * C);
    need(p, R_O1, N * C);
    need(p, R_FF, chunk * 8 * C);
    need(p, R_GG, chunk * 4 * C);
}

static void plan_push(plan *p, size_t n)
{
    p->skip[p->nskip++] = n;
}

/* The forward's walk, recording sizes only; h, w, T are already bounded so
 * that no product below overflows size_t (see check_args). */
static void plan_walk(const df_unet *u, plan *p, size_t B, int h, int w, size_t T)
{
    int H = h, W = w, n = u->nblocks;
    int hs[MAX_BLOCKS + 1], ws[MAX_BLOCKS + 1];
    memset(p, 0, sizeof *p);
    need(p, R_TIME, B * (size_t)(u->ch[0] + 2 * u->temb_dim));
    need(p, R_P, B * (size_t)u->ch[0] * H * W);
    need(p, R_Q, B * (size_t)u->in_ch * H * W);     // centered input
    plan_push(p, B * (size_t)u->ch[0] * H * W);
    for (int i = 0; i < n; i++) {
        const block *k = &u->down[i];
        hs[i] = H, ws[i] = W;
        for (int j = 0; j < k->nres; j++) {
            plan_resnet(p, B, &k->res[j], (size_t)H * W);
            if (k->has_attn)
                plan_xformer(p, B, &k->att[j], (size_t)H * W, T);
            plan_push(p, B * (size_t)k->C * H * W);
        }
        if (k->has_sampler) {
            df_nn_downsample_size(u->down_pad, H, W, &H, &W);
            need(p, R_Q, B * (size_t)k->C * H * W);
            plan_push(p, B * (size_t)k->C * H * W);
        }
    }
    if (u->mid) {
        plan_resnet(p, B, &u->mid_res[0], (size_t)H * W);
        plan_xformer(p, B, &u->mid_att, (size_t)H * W, T);
        plan_resnet(p, B, &u->mid_res[1], (size_t)H * W);
    }
    for (int i = 0; i < n; i++) {
        const block *k = &u->up[i];
        for (int j = 0; j < k->nres; j++) {
            plan_resnet(p, B, &k->res[j], (size_t)H * W);
            if (k->has_attn)
                plan_xformer(p, B, &k->att[j], (size_t)H * W, T);
        }
        if (k->has_sampler) {
            // the up-sampler targets the size of the skip the next block pops
            H = hs[n - 2 - i], W = ws[n - 2 - i];
            need(p, R_T, df_nn_upsample_scratch(k->C, H, W));
            need(p, R_Q, B * (size_t)k->C * H * W);
        }
    }
    // P and Q trade roles at every layer
    need(p, R_P, p->need[R_Q]);
    need(p, R_Q, p->need[R_P]);
}

/* Inputs are bounded so that every size product fits comfortably. */
static df_status check_args(const df_unet *u, int B, int h, int w, int T)
{
    // the ops count rows (B*h*w tokens) in int: keep them far below INT_MAX
    if (B < 1 || B > 4096 || h < 1 || h > 16384 || w < 1 || w > 16384 || T < 1 || T > 65536 ||
        (size_t)B * h * w > ((size_t)1 << 26) || (size_t)B * T > ((size_t)1 << 26))
        return df_fail(DF_ERR_ARG, "unet: bad input size B=%d h=%d w=%d T=%d", B, h, w, T);
    for (int i = 0, H = h, W = w; i < u->nblocks; i++)
        if (u->down[i].has_sampler) {
            df_nn_downsample_size(u->down_pad, H, W, &H, &W);
            if (H < 1 || W < 1)
                return df_fail(DF_ERR_ARG, "unet: latent %dx%d too small for %d downsamplers",
                               h, w, u->nblocks - 1);
        }
    return DF_OK;
}

static df_status ensure_arena(df_unet *u, int B, int h, int w, int T)
{
    if (u->arena && u->aB == B && u->ah == h && u->aw == w && u->aT == T)
        return DF_OK;
    df_unet_release_activations(u);
    plan p;
    plan_walk(u, &p, (size_t)B, h, w, (size_t)T);
    size_t total = 0;
    for (int r = 0; r < R_N; r++)
        if (!df_nn_add(&total, p.need[r]))
            return df_fail(DF_ERR_NOMEM, "unet: activation size overflows");
    for (int k = 0; k < p.nskip; k++)
        if (!df_nn_add(&total, p.skip[k]))
            return df_fail(DF_ERR_NOMEM, "unet: activation size overflows");
    size_t bytes;
    if (!df_nn_mul(total, sizeof(float), &bytes) || !(u->arena = malloc(bytes)))
        return df_fail(DF_ERR_NOMEM, "unet: cannot allocate %zu MB of activations for "
                       "B=%d %dx%d", total / (1 << 18), B, h, w);
    u->arena_floats = total;
    u->aB = B, u->ah = h, u->aw = w, u->aT = T;
    return DF_OK;
}

void df_unet_release_activations(df_unet *u)
{
    free(u->arena);
    u->arena = NULL;
    u->arena_floats = 0;
    u->aB = u->ah = u->aw = u->aT = 0;
}

size_t df_unet_activation_bytes(const df_unet *u)
{
    return u->arena_floats * sizeof(float);
}

/* --------------------------------------------------------------- forward */

typedef struct {
    int B, T;                   /* B: the items computed now (see expand_batch) */
    int Bfull;                  /* the batch */
    float *xm;                  /* the transformer input being updated, (Bfull,C,HW) */
    int xm_C, xm_HW;
    const float *ehs;           /* (B,T,D) */
    float *r[R_N];              /* scratch regions */
    float *skip[1 + MAX_BLOCKS * (MAX_LAYERS + 1)];
    size_t skip_n[1 + MAX_BLOCKS * (MAX_LAYERS + 1)];
    int nskip, top;             /* skips laid out, skips on the stack */
    const float *temb_act;      /* silu(temb) (B,E) */
} fwd;

static void lay_out(df_unet *u, fwd *f, const plan *p)
{
    float *a = u->arena;
    for (int r = 0; r < R_N; r++) {
        f->r[r] = a;
        a += p->need[r];
    }
    for (int k = 0; k < p->nskip; k++) {
        f->skip[k] = a;
        f->skip_n[k] = p->skip[k];
        a += p->skip[k];
    }
    f->nskip = p->nskip;
    f->top = 0;
}

/* The items computed now (f->B of the batch) of x onto the skip stack. */
static void push(fwd *f, const float *x)
{
    memcpy(f->skip[f->top], x, f->skip_n[f->top] / f->Bfull * f->B * sizeof *x);
    f->top++;
}

/* Classifier-free guidance runs the UNet on a batch whose items share the
 * latents and the timestep and differ only in the text: up to the first
 * cross-attention every item computes the same values (conv_in, the first
 * resnet, the first transformer's self-attention: at 768 px the largest
 * attention of all). So when the items are identical the forward starts
 * with item 0 alone (f->B = 1) and copies it to the others here, before the
 * first op that reads the text: the tokens, the transformer's input and
 * every skip pushed so far. No op mixes items, so the result is what the
 * whole batch computes, up to float rounding where the batch size changes
 * an op's path (a linear over few rows takes another GEMM); at SD's sizes
 * it is bit for bit (check-fixtures prints the same errors either way). */
static void expand_batch(fwd *f, int HW, int C)
{
    if (f->B == f->Bfull)
        return;
    size_t ntok = (size_t)HW * C, nxm = (size_t)f->xm_C * f->xm_HW;
    for (int b = 1; b < f->Bfull; b++) {
        memcpy(f->r[R_TOK] + b * ntok, f->r[R_TOK], ntok * sizeof(float));
        memcpy(f->xm + b * nxm, f->xm, nxm * sizeof(float));
        for (int k = 0; k < f->top; k++) {
            size_t item = f->skip_n[k] / f->Bfull;
            memcpy(f->skip[k] + b * item, f->skip[k], item * sizeof(float));
        }
    }
    f->B = f->Bfull;
}

/* Whether the B items of sample (B, per) and timesteps are all the same. */
static bool items_identical(const float *sample, const float *timesteps, int B, size_t per)
{
    for (int b = 1; b < B; b++)
        if (timesteps[b] != timesteps[0] ||
            memcmp(sample + b * per, sample, per * sizeof(float)) != 0)
            return false;
    return true;
}

/* One attention of a transformer block: tok += to_out(attn(LN'd tokens)).
 * ctx NULL: self-attention on nrm; else keys/values from ctx (B,Tk,D). */
static void attn_forward(const xformer *x, fwd *f, const df_nn_lin *q, const df_nn_lin *k,
                         const df_nn_lin *v, const df_nn_lin *o, int HW, const float *ctx,
                         int Tk, int D)
{
    // nrm (B*HW,C) -> q (B*HW,C); k, v (B*Tk,C); o (B*HW,C)
    int B = f->B, C = x->C, N = B * HW, hs = C / x->heads;
    float *nrm = f->r[R_NRM], *qb = f->r[R_Q1], *kb = f->r[R_K1], *vb = f->r[R_V1],
          *ob = f->r[R_O1];
    if (!ctx) {
        ctx = nrm;
        Tk = HW;
        D = C;
    }
    df_linear_forward(qb, nrm, q->w, NULL, N, C, C);
    df_linear_forward(kb, ctx, k->w, NULL, B * Tk, D, C);
    df_linear_forward(vb, ctx, v->w, NULL, B * Tk, D, C);
    df_attention_forward(ob, qb, kb, vb, B, HW, Tk, x->heads, hs,
                         (float)(1.0 / sqrt((double)hs)), 0);
    df_linear_forward(nrm, ob, o->w, o->b, N, C, C);
    df_add_forward(f->r[R_TOK], f->r[R_TOK], nrm, (size_t)N * C);
}

/* GEGLU feed-forward in row chunks: tok += ff2(geglu(ff1(nrm))). */
static void ff_forward(const tblock *t, fwd *f, int N, int C)
{
    float *nrm = f->r[R_NRM], *tok = f->r[R_TOK], *ff = f->r[R_FF], *gg = f->r[R_GG],
          *o = f->r[R_O1];
    for (int r0 = 0; r0 < N; r0 += FF_CHUNK) {
        int n = N - r0 < FF_CHUNK ? N - r0 : FF_CHUNK;
        df_linear_forward(ff, nrm + (size_t)r0 * C, t->ff1.w, t->ff1.b, n, C, 8 * C);
        df_geglu_forward(gg, ff, n, 4 * C);
        df_linear_forward(o, gg, t->ff2.w, t->ff2.b, n, 4 * C, C);
        df_add_forward(tok + (size_t)r0 * C, tok + (size_t)r0 * C, o, (size_t)n * C);
    }
}

static void tblock_forward(const xformer *x, const tblock *t, fwd *f, int HW, int D)
{
    int C = x->C, N = f->B * HW;
    float *tok = f->r[R_TOK], *nrm = f->r[R_NRM];
    df_layernorm_forward(nrm, tok, t->n1.g, t->n1.b, N, C, 1e-5f);
    attn_forward(x, f, &t->q1, &t->k1, &t->v1, &t->o1, HW, NULL, 0, 0);
    expand_batch(f, HW, C);   // the text comes in: every item from here
    N = f->B * HW;
    df_layernorm_forward(nrm, tok, t->n2.g, t->n2.b, N, C, 1e-5f);
    attn_forward(x, f, &t->q2, &t->k2, &t->v2, &t->o2, HW, f->ehs, f->T, D);
    df_layernorm_forward(nrm, tok, t->n3.g, t->n3.b, N, C, 1e-5f);
    ff_forward(t, f, N, C);
}

/* Transformer2DModel in place: x (B,C,HW) += proj_out(blocks(proj_in(GN(x)))). */
static void xformer_forward(const df_unet *u, const xformer *x, fwd *f, float *xm, int H, int W)
{
    int B = f->B, C = x->C, HW = H * W, N = B * HW;
    float *t = f->r[R_T], *tok = f->r[R_TOK], *nrm = f->r[R_NRM];
    static const df_conv2d_geom c1 = {.K = 1, .stride = 1};
    f->xm = xm, f->xm_C = C, f->xm_HW = HW;
    df_groupnorm_forward(t, xm, x->gn.g, x->gn.b, B, C, HW, u->groups, 1e-6f);
    if (u->linear_proj) {
        df_nchw_to_nhwc(nrm, t, B, C, HW);
        df_linear_forward(tok, nrm, x->pin.w, x->pin.b, N, C, C);
    } else {
        df_conv2d_forward(nrm, t, x->pin.w, x->pin.b, B, C, H, W, C, &c1);
        df_nchw_to_nhwc(tok, nrm, B, C, HW);
    }
    for (int i = 0; i < x->ntb; i++)
        tblock_forward(x, &x->tb[i], f, HW, u->cross_dim);
    B = f->B, N = B * HW;   // the blocks may have expanded the batch
    if (u->linear_proj) {
        df_linear_forward(nrm, tok, x->pout.w, x->pout.b, N, C, C);
        df_nhwc_to_nchw(t, nrm, B, C, HW);
    } else {
        df_nhwc_to_nchw(nrm, tok, B, C, HW);
        df_conv2d_forward(t, nrm, x->pout.w, x->pout.b, B, C, H, W, C, &c1);
    }
    df_add_forward(xm, t, xm, (size_t)B * C * HW);
}

static void resnet(fwd *f, const df_nn_resnet *r, float *x, float *out, int H, int W)
{
    df_nn_resnet_forward(r, x, out, f->r[R_T], f->temb_act, f->r[R_RT], f->B, H, W);
}

static void swap(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

/* Down path: h in *P on entry and exit; every output is pushed as a skip. */
static void down_forward(const df_unet *u, fwd *f, float **P, float **Q, int *H, int *W,
                         int *hs, int *ws)
{
    for (int i = 0; i < u->nblocks; i++) {
        const block *k = &u->down[i];
        hs[i] = *H, ws[i] = *W;
        for (int j = 0; j < k->nres; j++) {
            resnet(f, &k->res[j], *P, *Q, *H, *W);
            if (k->has_attn)
                xformer_forward(u, &k->att[j], f, *Q, *H, *W);
            push(f, *Q);
            swap(P, Q);
        }
        if (k->has_sampler) {
            int OH, OW;
            df_nn_downsample_size(u->down_pad, *H, *W, &OH, &OW);
            df_nn_downsample_forward(&k->sampler, u->down_pad, *Q, *P, f->B, k->C, *H, *W);
            *H = OH, *W = OW;
            push(f, *Q);
            swap(P, Q);
        }
    }
}

/* Up path: each resnet takes cat([h, skip]) with the skip popped from the
 * end; the up-sampler targets the size of the next skip (diffusers'
 * upsample_size), which is 2x except for sides not divisible by 2^n. */
static void up_forward(const df_unet *u, fwd *f, float **P, float **Q, int *H, int *W,
                       const int *hs, const int *ws)
{
    int n = u->nblocks;
    for (int i = 0; i < n; i++) {
        const block *k = &u->up[i];
        for (int j = 0; j < k->nres; j++) {
            const df_nn_resnet *r = &k->res[j];
            int HW = *H * *W, B = f->B;
            const float *skip = f->skip[--f->top];
            int cskip = (int)(f->skip_n[f->top] / ((size_t)f->Bfull * HW)), cs = r->cin - cskip;
            df_concat_channels(*Q, *P, cs, skip, cskip, B, HW);
            resnet(f, r, *Q, *P, *H, *W);
            if (k->has_attn)
                xformer_forward(u, &k->att[j], f, *P, *H, *W);
        }
        if (k->has_sampler) {
            int OH = hs[n - 2 - i], OW = ws[n - 2 - i];
            df_nn_upsample_forward(&k->sampler, *Q, f->r[R_T], *P, f->B, k->C, *H, *W, OH, OW);
            *H = OH, *W = OW;
            swap(P, Q);
        }
    }
}

static void time_forward(const df_unet *u, const float *timesteps, int B, float *tproj,
                         float *temb, float *temb_act)
{
    int C0 = u->ch[0], E = u->temb_dim;
    df_timestep_embedding(tproj, timesteps, B, C0, u->flip_sin_to_cos, u->freq_shift, 10000.0f);
    df_linear_forward(temb_act, tproj, u->lin1.w, u->lin1.b, B, C0, E);
    df_silu_forward(temb_act, temb_act, (size_t)B * E);
    df_linear_forward(temb, temb_act, u->lin2.w, u->lin2.b, B, E, E);
    df_silu_forward(temb_act, temb, (size_t)B * E);   // what every resnet projects
}

df_status df_unet_time_embedding(df_unet *u, const float *timesteps, int B, float *time_proj,
                                 float *time_emb)
{
    if (B < 1 || B > 1 << 20)
        return df_fail(DF_ERR_ARG, "unet: bad batch %d", B);
    df_status s = bind_all(u, false);
    if (s != DF_OK)
        return s;
    size_t C0 = (size_t)u->ch[0], E = (size_t)u->temb_dim;
    float *buf = malloc((size_t)B * (C0 + 2 * E) * sizeof *buf);
    if (!buf)
        return df_fail(DF_ERR_NOMEM, "unet: out of memory");
    time_forward(u, timesteps, B, buf, buf + B * C0, buf + B * (C0 + E));
    if (time_proj)
        memcpy(time_proj, buf, (size_t)B * C0 * sizeof *buf);
    if (time_emb)
        memcpy(time_emb, buf + B * C0, (size_t)B * E * sizeof *buf);
    free(buf);
    return DF_OK;
}

df_status df_unet_forward(df_unet *u, const float *sample, const float *timesteps,
                          const float *encoder_hidden_states, int B, int h, int w, int T,
                          float *out)
{
    df_status s;
    if ((s = check_args(u, B, h, w, T)) || (s = bind_all(u, false)) ||
        (s = ensure_arena(u, B, h, w, T)))
        return s;
    plan p;
    plan_walk(u, &p, (size_t)B, h, w, (size_t)T);
    size_t per = (size_t)u->in_ch * h * w;
    fwd f = {.B = B, .Bfull = B, .T = T, .ehs = encoder_hidden_states};
    if (B > 1 && items_identical(sample, timesteps, B, per))
        f.B = 1;   // see expand_batch
    lay_out(u, &f, &p);
    // time conditioning: R_TIME holds tproj (B,C0), temb (B,E), silu(temb) (B,E)
    float *tb = f.r[R_TIME], *temb = tb + (size_t)B * u->ch[0];
    float *temb_act = temb + (size_t)B * u->temb_dim;
    time_forward(u, timesteps, B, tb, temb, temb_act);
    f.temb_act = temb_act;
    float *P = f.r[R_P], *Q = f.r[R_Q];
    size_t nin = (size_t)B * u->in_ch * h * w;
    const float *x = sample;
    if (u->center_input) {
        df_scale_forward(Q, sample, 2.0f, nin);     // 2 * sample - 1
        for (size_t i = 0; i < nin; i++)
            Q[i] -= 1.0f;
        x = Q;
    }
    static const df_conv2d_geom c3 = {.K = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1,
                                      .pad_r = 1};
    df_conv2d_forward(P, x, u->conv_in.w, u->conv_in.b, f.B, u->in_ch, h, w, u->ch[0], &c3);
    push(&f, P);
    int H = h, W = w, hs[MAX_BLOCKS], ws[MAX_BLOCKS];
    down_forward(u, &f, &P, &Q, &H, &W, hs, ws);
    if (u->mid) {
        resnet(&f, &u->mid_res[0], P, Q, H, W);
        xformer_forward(u, &u->mid_att, &f, Q, H, W);
        resnet(&f, &u->mid_res[1], Q, P, H, W);
    }
    up_forward(u, &f, &P, &Q, &H, &W, hs, ws);
    size_t n0 = (size_t)f.B * u->ch[0] * h * w, nout = (size_t)u->out_ch * h * w;
    df_groupnorm_forward(P, P, u->norm_out.g, u->norm_out.b, f.B, u->ch[0], h * w, u->groups,
                         u->eps);
    df_silu_forward(P, P, n0);
    df_conv2d_forward(out, P, u->conv_out.w, u->conv_out.b, f.B, u->ch[0], h, w, u->out_ch, &c3);
    for (int b = f.B; b < B; b++)   // no cross-attention: one item was the whole batch
        memcpy(out + b * nout, out, nout * sizeof *out);
    if (!df_nn_all_finite(out, (size_t)B * u->out_ch * h * w))
        return df_fail(DF_ERR_NUMERIC, "unet: NaN or Inf in the output");
    return DF_OK;
}

df_weights *df_unet_weights(df_unet *u) { return u->w; }
df_status df_unet_bind(df_unet *u) { return bind_all(u, false); }
int df_unet_in_channels(const df_unet *u) { return u->in_ch; }
int df_unet_out_channels(const df_unet *u) { return u->out_ch; }
int df_unet_sample_size(const df_unet *u) { return u->sample_size; }
int df_unet_cross_attention_dim(const df_unet *u) { return u->cross_dim; }
int df_unet_time_proj_dim(const df_unet *u) { return u->ch[0]; }
int df_unet_time_embed_dim(const df_unet *u) { return u->temb_dim; }
