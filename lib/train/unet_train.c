/* unet_train.c - forward with kept activations and backward of the UNet
 * (see unet_train.h), walking the structure that lib/models/unet.c builds
 * (lib/models/unet_internal.h).
 *
 * The forward is a list of units in execution order, each with the units
 * that produced its input: conv_in, resnets (up-path resnets take
 * cat([h, skip]) from two producers), transformers, down- and up-samplers
 * and the output head. The backward walks the list in reverse: a unit's
 * output gradient is complete when its turn comes (every consumer comes
 * later in the forward), it adds its input gradients into its producers'
 * gradient buffers and frees its own activations, so memory falls as the
 * backward goes.
 *
 * Allocation failures jump back to the API call (longjmp) and return
 * DF_ERR_NOMEM; the graph's buffers are freed, temporaries of the op that
 * failed are lost, which is acceptable for a process about to report it. */
#include "unet_train.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_linear.h"
#include "ops.h"
#include "ops_backward.h"
#include "unet_internal.h"

enum { U_CONV_IN, U_RESNET, U_XFORMER, U_DOWN, U_UP, U_OUT };

/* The LoRA parameters of one transformer block's eight projections. */
typedef struct {
    df_lora_param *q1, *k1, *v1, *o1, *q2, *k2, *v2, *o2;
} tb_lora;

typedef struct {
    const xformer *x;
    tb_lora tb[MAX_LAYERS];
} xf_lora;

/* What a transformer block's backward reads: (N,C) each but k2, v2
 * (B*T,C) and f (N,8C), the feed-forward's GEGLU input. */
typedef struct {
    float *tok0, *n1, *q1, *k1, *v1, *o1, *tok1, *n2, *q2, *k2, *v2, *o2, *tok2, *f;
} tb_tape;

/* A resnet's: GN1 output, conv1 output (+ time), GN2 output; the
 * concatenated input when the unit has two producers. */
typedef struct {
    float *g1, *h1, *g2, *cat;
} res_tape;

typedef struct {
    int kind;
    const void *mod;        /* df_nn_resnet, xformer, df_nn_lin (sampler) */
    const xf_lora *lora;    /* U_XFORMER */
    int src, src2;          /* producers of the input (src2: the skip), -1 none */
    int cin, C, H, W, OH, OW;
    float *out, *grad;
    size_t nout;
    void *tape;             /* res_tape, tb_tape[ntb] or the head's GN output */
} unit;

struct df_unet_train {
    df_unet *u;
    df_lora_set *lora;
    int rank;
    float s;
    bool ckpt;
    xf_lora *xl;
    int nxl;
    /* the forward being trained */
    int B, h, w, T;
    const float *ehs;
    float *temb_act;        /* (B,E) silu(time embedding) */
    float *centered;        /* 2 * sample - 1 (center_input_sample) */
    unit *units;
    int nunits, capunits;
    size_t bytes, peak;
    jmp_buf oom;
};

static const df_conv2d_geom conv3 = {.K = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1,
                                     .pad_r = 1};
static const df_conv2d_geom conv1 = {.K = 1, .stride = 1};

/* ------------------------------------------------------------ memory */

/* Buffers carry their size in front, for the peak count. */
static float *talloc(df_unet_train *t, size_t n, bool zero)
{
    size_t bytes = n * sizeof(float) + 64;
    char *p = zero ? calloc(1, bytes) : malloc(bytes);
    if (!p)
        longjmp(t->oom, 1);
    *(size_t *)p = bytes;
    t->bytes += bytes;
    if (t->bytes > t->peak)
        t->peak = t->bytes;
    return (float *)(p + 64);
}

static void tfree(df_unet_train *t, float *f)
{
    if (!f)
        return;
    char *p = (char *)f - 64;
    t->bytes -= *(size_t *)p;
    free(p);
}

static void lin_fwd(df_unet_train *t, float *y, const float *x, const df_nn_lin *l,
                    const df_lora_param *p, int N, int C, int OC)
{
    if (df_lora_linear_forward(y, x, l->w, l->b, p, t->rank, t->s, N, C, OC))
        longjmp(t->oom, 1);
}

static void lin_bwd(df_unet_train *t, float *dx, const float *dy, const float *x,
                    const df_nn_lin *l, df_lora_param *p, int N, int C, int OC)
{
    if (df_lora_linear_backward(dx, dy, x, l->w, p, t->rank, t->s, N, C, OC))
        longjmp(t->oom, 1);
}

/* ------------------------------------------------------------ resnet */

static void resnet_fwd(df_unet_train *t, const df_nn_resnet *r, const float *x, float *out,
                       res_tape *tp, int H, int W)
{
    int B = t->B, HW = H * W;
    size_t nin = (size_t)B * r->cin * HW, nout = (size_t)B * r->cout * HW;
    tp->g1 = talloc(t, nin, false);
    df_groupnorm_forward(tp->g1, x, r->n1.g, r->n1.b, B, r->cin, HW, r->groups, r->eps);
    float *a = talloc(t, nin, false);
    df_silu_forward(a, tp->g1, nin);
    tp->h1 = talloc(t, nout, false);
    df_conv2d_forward(tp->h1, a, r->c1.w, r->c1.b, B, r->cin, H, W, r->cout, &conv3);
    tfree(t, a);
    if (r->temb_dim > 0) {
        float *tproj = talloc(t, (size_t)B * r->cout, false);
        df_linear_forward(tproj, t->temb_act, r->temb.w, r->temb.b, B, r->temb_dim, r->cout);
        df_add_channel_bias(tp->h1, tp->h1, tproj, B, r->cout, HW);
        tfree(t, tproj);
    }
    tp->g2 = talloc(t, nout, false);
    df_groupnorm_forward(tp->g2, tp->h1, r->n2.g, r->n2.b, B, r->cout, HW, r->groups, r->eps);
    if (!out)   // a recompute: the tape is all the backward needs
        return;
    float *a2 = talloc(t, nout, false);
    df_silu_forward(a2, tp->g2, nout);
    df_conv2d_forward(out, a2, r->c2.w, r->c2.b, B, r->cout, H, W, r->cout, &conv3);
    if (r->sc.w) {
        df_conv2d_forward(a2, x, r->sc.w, r->sc.b, B, r->cin, H, W, r->cout, &conv1);
        df_add_forward(out, out, a2, nout);
    } else {
        df_add_forward(out, x, out, nout);
    }
    tfree(t, a2);
    if (r->out_scale != 1.0f)
        df_scale_forward(out, out, 1.0f / r->out_scale, nout);
}

/* dx (B,cin,HW) += dLoss/dx given dout (B,cout,HW). */
static void resnet_bwd(df_unet_train *t, const df_nn_resnet *r, const float *x,
                       const res_tape *tp, const float *dout, float *dx, int H, int W)
{
    int B = t->B, HW = H * W;
    size_t nin = (size_t)B * r->cin * HW, nout = (size_t)B * r->cout * HW;
    float *d = NULL;
    if (r->out_scale != 1.0f) {
        d = talloc(t, nout, false);
        df_scale_forward(d, dout, 1.0f / r->out_scale, nout);
        dout = d;
    }
    float *da2 = talloc(t, nout, true);
    df_conv2d_backward(da2, NULL, NULL, dout, NULL, r->c2.w, B, r->cout, H, W, r->cout, &conv3);
    float *dg2 = talloc(t, nout, true);
    df_silu_backward(dg2, da2, tp->g2, nout);
    tfree(t, da2);
    float *dh1 = talloc(t, nout, true);
    df_groupnorm_backward(dh1, NULL, NULL, dg2, tp->h1, r->n2.g, B, r->cout, HW, r->groups,
                          r->eps);
    tfree(t, dg2);
    float *da1 = talloc(t, nin, true);
    df_conv2d_backward(da1, NULL, NULL, dh1, NULL, r->c1.w, B, r->cin, H, W, r->cout, &conv3);
    tfree(t, dh1);
    float *dg1 = talloc(t, nin, true);
    df_silu_backward(dg1, da1, tp->g1, nin);
    tfree(t, da1);
    df_groupnorm_backward(dx, NULL, NULL, dg1, x, r->n1.g, B, r->cin, HW, r->groups, r->eps);
    tfree(t, dg1);
    if (r->sc.w)
        df_conv2d_backward(dx, NULL, NULL, dout, NULL, r->sc.w, B, r->cin, H, W, r->cout,
                           &conv1);
    else
        df_add_forward(dx, dx, dout, nout);
    tfree(t, d);
}

static void res_tape_free(df_unet_train *t, res_tape *tp)
{
    tfree(t, tp->g1);
    tfree(t, tp->h1);
    tfree(t, tp->g2);
    tp->g1 = tp->h1 = tp->g2 = NULL;
}

/* ------------------------------------------------------- transformer */

static float attn_scale(int hs) { return (float)(1.0 / sqrt((double)hs)); }

/* One BasicTransformerBlock on tok0 (N,C), which the tape takes over;
 * returns the block's output tokens (N,C). */
static float *tblock_fwd(df_unet_train *t, const xformer *X, const tblock *b, const tb_lora *l,
                         tb_tape *tp, float *tok0, int HW)
{
    const df_unet *u = t->u;
    int B = t->B, C = X->C, N = B * HW, T = t->T, D = u->cross_dim, hs = C / X->heads;
    size_t n = (size_t)N * C, nk = (size_t)B * T * C;
    float *y = talloc(t, n, false);
    tp->tok0 = tok0;
    // self-attention: tok1 = tok0 + to_out(attn(LN1(tok0)))
    tp->n1 = talloc(t, n, false);
    df_layernorm_forward(tp->n1, tok0, b->n1.g, b->n1.b, N, C, 1e-5f);
    tp->q1 = talloc(t, n, false), tp->k1 = talloc(t, n, false), tp->v1 = talloc(t, n, false);
    lin_fwd(t, tp->q1, tp->n1, &b->q1, l->q1, N, C, C);
    lin_fwd(t, tp->k1, tp->n1, &b->k1, l->k1, N, C, C);
    lin_fwd(t, tp->v1, tp->n1, &b->v1, l->v1, N, C, C);
    tp->o1 = talloc(t, n, false);
    df_attention_forward(tp->o1, tp->q1, tp->k1, tp->v1, B, HW, HW, X->heads, hs,
                         attn_scale(hs), 0);
    lin_fwd(t, y, tp->o1, &b->o1, l->o1, N, C, C);
    tp->tok1 = talloc(t, n, false);
    df_add_forward(tp->tok1, tok0, y, n);
    // cross-attention on the text states
    tp->n2 = talloc(t, n, false);
    df_layernorm_forward(tp->n2, tp->tok1, b->n2.g, b->n2.b, N, C, 1e-5f);
    tp->q2 = talloc(t, n, false), tp->k2 = talloc(t, nk, false), tp->v2 = talloc(t, nk, false);
    lin_fwd(t, tp->q2, tp->n2, &b->q2, l->q2, N, C, C);
    lin_fwd(t, tp->k2, t->ehs, &b->k2, l->k2, B * T, D, C);
    lin_fwd(t, tp->v2, t->ehs, &b->v2, l->v2, B * T, D, C);
    tp->o2 = talloc(t, n, false);
    df_attention_forward(tp->o2, tp->q2, tp->k2, tp->v2, B, HW, T, X->heads, hs,
                         attn_scale(hs), 0);
    lin_fwd(t, y, tp->o2, &b->o2, l->o2, N, C, C);
    tp->tok2 = talloc(t, n, false);
    df_add_forward(tp->tok2, tp->tok1, y, n);
    // GEGLU feed-forward: tok3 = tok2 + ff2(geglu(ff1(LN3(tok2))))
    float *n3 = talloc(t, n, false);
    df_layernorm_forward(n3, tp->tok2, b->n3.g, b->n3.b, N, C, 1e-5f);
    tp->f = talloc(t, n * 8, false);
    df_linear_forward(tp->f, n3, b->ff1.w, b->ff1.b, N, C, 8 * C);
    tfree(t, n3);
    float *g = talloc(t, n * 4, false);
    df_geglu_forward(g, tp->f, N, 4 * C);
    df_linear_forward(y, g, b->ff2.w, b->ff2.b, N, 4 * C, C);
    tfree(t, g);
    float *tok3 = talloc(t, n, false);
    df_add_forward(tok3, tp->tok2, y, n);
    tfree(t, y);
    return tok3;
}

static void tb_tape_free(df_unet_train *t, tb_tape *tp)
{
    float **f[] = {&tp->tok0, &tp->n1, &tp->q1, &tp->k1, &tp->v1, &tp->o1, &tp->tok1,
                   &tp->n2, &tp->q2, &tp->k2, &tp->v2, &tp->o2, &tp->tok2, &tp->f};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        tfree(t, *f[i]);
        *f[i] = NULL;
    }
}

/* One attention's backward: dtok is dLoss/d(attention output added to
 * the residual); dn (N,C) += dLoss/d(normed tokens); the keys and values
 * come from kv_in (self-attention: NULL, the normed tokens) and their
 * input gradient goes to dkv (NULL: not wanted). */
static void attn_bwd(df_unet_train *t, const xformer *X, const float *dtok, const float *nrm,
                     const float *q, const float *k, const float *v, const float *o,
                     const df_nn_lin *lq, const df_nn_lin *lk, const df_nn_lin *lv,
                     const df_nn_lin *lo, df_lora_param *pq, df_lora_param *pk,
                     df_lora_param *pv, df_lora_param *po, const float *kv_in, int Tk, int D,
                     float *dn, float *dkv, int HW)
{
    int B = t->B, C = X->C, N = B * HW, hs = C / X->heads;
    size_t n = (size_t)N * C, nk = (size_t)B * Tk * C;
    float *dO = talloc(t, n, true);
    lin_bwd(t, dO, dtok, o, lo, po, N, C, C);
    float *dq = talloc(t, n, true), *dk = talloc(t, nk, true), *dv = talloc(t, nk, true);
    df_attention_backward(dq, dk, dv, dO, q, k, v, o, B, HW, Tk, X->heads, hs, attn_scale(hs), 0);
    tfree(t, dO);
    lin_bwd(t, dn, dq, nrm, lq, pq, N, C, C);
    if (!kv_in) {
        lin_bwd(t, dn, dk, nrm, lk, pk, N, C, C);
        lin_bwd(t, dn, dv, nrm, lv, pv, N, C, C);
    } else {
        lin_bwd(t, dkv, dk, kv_in, lk, pk, B * Tk, D, C);
        lin_bwd(t, dkv, dv, kv_in, lv, pv, B * Tk, D, C);
    }
    tfree(t, dq);
    tfree(t, dk);
    tfree(t, dv);
}

/* dtok (N,C): dLoss/d(block output) in, dLoss/d(block input) out. */
static void tblock_bwd(df_unet_train *t, const xformer *X, const tblock *b, const tb_lora *l,
                       const tb_tape *tp, float *dtok, float *d_ehs, int HW)
{
    int B = t->B, C = X->C, N = B * HW;
    size_t n = (size_t)N * C;
    // feed-forward
    float *dg = talloc(t, n * 4, true);
    df_linear_backward(dg, NULL, NULL, dtok, NULL, b->ff2.w, N, 4 * C, C);
    float *df = talloc(t, n * 8, true);
    df_geglu_backward(df, dg, tp->f, N, 4 * C);
    tfree(t, dg);
    float *dn = talloc(t, n, true);
    df_linear_backward(dn, NULL, NULL, df, NULL, b->ff1.w, N, C, 8 * C);
    tfree(t, df);
    df_layernorm_backward(dtok, NULL, NULL, dn, tp->tok2, b->n3.g, N, C, 1e-5f);
    // cross-attention
    memset(dn, 0, n * sizeof *dn);
    attn_bwd(t, X, dtok, tp->n2, tp->q2, tp->k2, tp->v2, tp->o2, &b->q2, &b->k2, &b->v2, &b->o2,
             l->q2, l->k2, l->v2, l->o2, t->ehs, t->T, t->u->cross_dim, dn, d_ehs, HW);
    df_layernorm_backward(dtok, NULL, NULL, dn, tp->tok1, b->n2.g, N, C, 1e-5f);
    // self-attention
    memset(dn, 0, n * sizeof *dn);
    attn_bwd(t, X, dtok, tp->n1, tp->q1, tp->k1, tp->v1, tp->o1, &b->q1, &b->k1, &b->v1, &b->o1,
             l->q1, l->k1, l->v1, l->o1, NULL, HW, C, dn, NULL, HW);
    df_layernorm_backward(dtok, NULL, NULL, dn, tp->tok0, b->n1.g, N, C, 1e-5f);
    tfree(t, dn);
}

/* Transformer2DModel: out = x + proj_out(blocks(proj_in(GN(x)))); out
 * NULL recomputes the tape only. */
static void xformer_fwd(df_unet_train *t, const xformer *X, const xf_lora *l, const float *x,
                        float *out, tb_tape *tp, int H, int W)
{
    const df_unet *u = t->u;
    int B = t->B, C = X->C, HW = H * W, N = B * HW;
    size_t n = (size_t)N * C;
    float *g = talloc(t, n, false), *tmp = talloc(t, n, false), *tok = talloc(t, n, false);
    df_groupnorm_forward(g, x, X->gn.g, X->gn.b, B, C, HW, u->groups, 1e-6f);
    if (u->linear_proj) {
        df_nchw_to_nhwc(tmp, g, B, C, HW);
        df_linear_forward(tok, tmp, X->pin.w, X->pin.b, N, C, C);
    } else {
        df_conv2d_forward(tmp, g, X->pin.w, X->pin.b, B, C, H, W, C, &conv1);
        df_nchw_to_nhwc(tok, tmp, B, C, HW);
    }
    for (int i = 0; i < X->ntb; i++)
        tok = tblock_fwd(t, X, &X->tb[i], &l->tb[i], &tp[i], tok, HW);
    if (out) {
        if (u->linear_proj) {
            df_linear_forward(tmp, tok, X->pout.w, X->pout.b, N, C, C);
            df_nhwc_to_nchw(g, tmp, B, C, HW);
        } else {
            df_nhwc_to_nchw(tmp, tok, B, C, HW);
            df_conv2d_forward(g, tmp, X->pout.w, X->pout.b, B, C, H, W, C, &conv1);
        }
        df_add_forward(out, g, x, n);
    }
    tfree(t, tok);
    tfree(t, g);
    tfree(t, tmp);
}

static void xformer_bwd(df_unet_train *t, const xformer *X, const xf_lora *l, const float *x,
                        const tb_tape *tp, const float *dout, float *dx, float *d_ehs, int H,
                        int W)
{
    const df_unet *u = t->u;
    int B = t->B, C = X->C, HW = H * W, N = B * HW;
    size_t n = (size_t)N * C;
    df_add_forward(dx, dx, dout, n);   // the residual
    float *tmp = talloc(t, n, false), *dtok = talloc(t, n, true);
    if (u->linear_proj) {
        df_nchw_to_nhwc(tmp, dout, B, C, HW);
        df_linear_backward(dtok, NULL, NULL, tmp, NULL, X->pout.w, N, C, C);
    } else {
        memset(tmp, 0, n * sizeof *tmp);
        df_conv2d_backward(tmp, NULL, NULL, dout, NULL, X->pout.w, B, C, H, W, C, &conv1);
        df_nchw_to_nhwc(dtok, tmp, B, C, HW);
    }
    for (int i = X->ntb - 1; i >= 0; i--)
        tblock_bwd(t, X, &X->tb[i], &l->tb[i], &tp[i], dtok, d_ehs, HW);
    float *dg = talloc(t, n, true);
    if (u->linear_proj) {
        memset(tmp, 0, n * sizeof *tmp);
        df_linear_backward(tmp, NULL, NULL, dtok, NULL, X->pin.w, N, C, C);
        df_nhwc_to_nchw(dg, tmp, B, C, HW);
    } else {
        df_nhwc_to_nchw(tmp, dtok, B, C, HW);
        df_conv2d_backward(dg, NULL, NULL, tmp, NULL, X->pin.w, B, C, H, W, C, &conv1);
    }
    df_groupnorm_backward(dx, NULL, NULL, dg, x, X->gn.g, B, C, HW, u->groups, 1e-6f);
    tfree(t, dg);
    tfree(t, dtok);
    tfree(t, tmp);
}

/* ------------------------------------------------------------- units */

static int add_unit(df_unet_train *t, int kind, const void *mod, int src, int src2, int cin,
                    int C, int H, int W)
{
    if (t->nunits == t->capunits) {
        int cap = t->capunits ? 2 * t->capunits : 64;
        unit *nu = realloc(t->units, (size_t)cap * sizeof *nu);
        if (!nu)
            longjmp(t->oom, 1);
        t->units = nu;
        t->capunits = cap;
    }
    unit *k = &t->units[t->nunits];
    memset(k, 0, sizeof *k);
    k->kind = kind, k->mod = mod, k->src = src, k->src2 = src2;
    k->cin = cin, k->C = C, k->H = k->OH = H, k->W = k->OW = W;
    return t->nunits++;
}

static const xf_lora *find_xl(const df_unet_train *t, const xformer *X)
{
    for (int i = 0; i < t->nxl; i++)
        if (t->xl[i].x == X)
            return &t->xl[i];
    return NULL;
}

/* The input of unit k: its producer's output, or the concatenation of
 * both producers' (kept in the resnet tape). */
static const float *unit_input(df_unet_train *t, unit *k, res_tape *tp)
{
    unit *a = &t->units[k->src];
    if (k->src2 < 0)
        return a->out;
    unit *b = &t->units[k->src2];
    int HW = k->H * k->W;
    tp->cat = talloc(t, (size_t)t->B * k->cin * HW, false);
    df_concat_channels(tp->cat, a->out, a->C, b->out, b->C, t->B, HW);
    return tp->cat;
}

/* Run unit k: its output (when out) and its tape. */
static void unit_fwd(df_unet_train *t, int ki, const float *sample, float *out)
{
    unit *k = &t->units[ki];
    int B = t->B, HW = k->H * k->W;
    switch (k->kind) {
    case U_CONV_IN:
        df_conv2d_forward(out, sample, t->u->conv_in.w, t->u->conv_in.b, B, t->u->in_ch, k->H,
                          k->W, k->C, &conv3);
        break;
    case U_RESNET: {
        res_tape *tp = k->tape;
        resnet_fwd(t, k->mod, unit_input(t, k, tp), out, tp, k->H, k->W);
        break;
    }
    case U_XFORMER:
        xformer_fwd(t, k->mod, k->lora, t->units[k->src].out, out, k->tape, k->H, k->W);
        break;
    case U_DOWN: {
        df_conv2d_geom g = {.K = 3, .stride = 2, .pad_t = t->u->down_pad,
                            .pad_l = t->u->down_pad, .pad_b = 1, .pad_r = 1};
        const df_nn_lin *c = k->mod;
        df_conv2d_forward(out, t->units[k->src].out, c->w, c->b, B, k->C, k->H, k->W, k->C, &g);
        break;
    }
    case U_UP: {
        const df_nn_lin *c = k->mod;
        float *up = talloc(t, (size_t)B * k->C * k->OH * k->OW, false);
        df_upsample_nearest_forward(up, t->units[k->src].out, B, k->C, k->H, k->W, k->OH, k->OW);
        df_conv2d_forward(out, up, c->w, c->b, B, k->C, k->OH, k->OW, k->C, &conv3);
        tfree(t, up);
        break;
    }
    case U_OUT: {
        const df_unet *u = t->u;
        size_t n = (size_t)B * k->C * HW;
        float *g = talloc(t, n, false), *a = talloc(t, n, false);
        df_groupnorm_forward(g, t->units[k->src].out, u->norm_out.g, u->norm_out.b, B, k->C, HW,
                             u->groups, u->eps);
        df_silu_forward(a, g, n);
        df_conv2d_forward(out, a, u->conv_out.w, u->conv_out.b, B, k->C, k->H, k->W, u->out_ch,
                          &conv3);
        tfree(t, a);
        k->tape = g;
        break;
    }
    }
}

static void unit_tape_free(df_unet_train *t, unit *k)
{
    if (!k->tape)
        return;
    if (k->kind == U_RESNET) {
        res_tape *tp = k->tape;
        res_tape_free(t, tp);
        tfree(t, tp->cat);
        tp->cat = NULL;
    } else if (k->kind == U_XFORMER) {
        const xformer *X = k->mod;
        tb_tape *tp = k->tape;
        for (int i = 0; i < X->ntb; i++)
            tb_tape_free(t, &tp[i]);
    } else if (k->kind == U_OUT) {
        tfree(t, k->tape);
        k->tape = NULL;
    }
}

static bool tape_empty(const unit *k)
{
    if (k->kind == U_RESNET)
        return ((res_tape *)k->tape)->g1 == NULL;
    if (k->kind == U_XFORMER)
        return ((tb_tape *)k->tape)[0].tok0 == NULL;
    return false;
}

static float *grad_of(df_unet_train *t, int ki)
{
    unit *k = &t->units[ki];
    if (!k->grad)
        k->grad = talloc(t, k->nout, true);
    return k->grad;
}

/* Unit k's backward: its output gradient into its producers'. */
static void unit_bwd(df_unet_train *t, int ki, float *d_ehs)
{
    unit *k = &t->units[ki];
    int B = t->B, HW = k->H * k->W;
    const float *dout = k->grad;
    if (k->kind == U_CONV_IN)
        return;   // the sample gets no gradient
    if ((k->kind == U_RESNET || k->kind == U_XFORMER) && tape_empty(k))
        unit_fwd(t, ki, NULL, NULL);   // checkpointed: recompute the activations
    switch (k->kind) {
    case U_RESNET: {
        res_tape *tp = k->tape;
        const float *x = tp->cat ? tp->cat : t->units[k->src].out;
        if (k->src2 < 0) {
            resnet_bwd(t, k->mod, x, tp, dout, grad_of(t, k->src), k->H, k->W);
            break;
        }
        // split d cat([h, skip]) between the two producers
        unit *a = &t->units[k->src], *b = &t->units[k->src2];
        float *dcat = talloc(t, (size_t)B * k->cin * HW, true);
        resnet_bwd(t, k->mod, x, tp, dout, dcat, k->H, k->W);
        float *da = grad_of(t, k->src), *db = grad_of(t, k->src2);
        for (int i = 0; i < B; i++) {
            const float *src = dcat + (size_t)i * k->cin * HW;
            df_add_forward(da + (size_t)i * a->C * HW, da + (size_t)i * a->C * HW, src,
                           (size_t)a->C * HW);
            df_add_forward(db + (size_t)i * b->C * HW, db + (size_t)i * b->C * HW,
                           src + (size_t)a->C * HW, (size_t)b->C * HW);
        }
        tfree(t, dcat);
        break;
    }
    case U_XFORMER:
        xformer_bwd(t, k->mod, k->lora, t->units[k->src].out, k->tape, dout, grad_of(t, k->src),
                    d_ehs, k->H, k->W);
        break;
    case U_DOWN: {
        df_conv2d_geom g = {.K = 3, .stride = 2, .pad_t = t->u->down_pad,
                            .pad_l = t->u->down_pad, .pad_b = 1, .pad_r = 1};
        const df_nn_lin *c = k->mod;
        df_conv2d_backward(grad_of(t, k->src), NULL, NULL, dout, NULL, c->w, B, k->C, k->H, k->W,
                           k->C, &g);
        break;
    }
    case U_UP: {
        const df_nn_lin *c = k->mod;
        float *dup = talloc(t, (size_t)B * k->C * k->OH * k->OW, true);
        df_conv2d_backward(dup, NULL, NULL, dout, NULL, c->w, B, k->C, k->OH, k->OW, k->C, &conv3);
        df_upsample_nearest_backward(grad_of(t, k->src), dup, B, k->C, k->H, k->W, k->OH, k->OW);
        tfree(t, dup);
        break;
    }
    case U_OUT: {
        const df_unet *u = t->u;
        size_t n = (size_t)B * k->C * HW;
        float *da = talloc(t, n, true), *dg = talloc(t, n, true);
        df_conv2d_backward(da, NULL, NULL, dout, NULL, u->conv_out.w, B, k->C, k->H, k->W,
                           u->out_ch, &conv3);
        df_silu_backward(dg, da, k->tape, n);
        df_groupnorm_backward(grad_of(t, k->src), NULL, NULL, dg, t->units[k->src].out,
                              u->norm_out.g, B, k->C, HW, u->groups, u->eps);
        tfree(t, da);
        tfree(t, dg);
        break;
    }
    }
}

/* ----------------------------------------------------- graph building */

/* Append the units of the forward walk (as lib/models/unet.c's forward). */
static void build_units(df_unet_train *t)
{
    df_unet *u = t->u;
    int n = u->nblocks, H = t->h, W = t->w, hs[MAX_BLOCKS], ws[MAX_BLOCKS];
    int skip[1 + MAX_BLOCKS * (MAX_LAYERS + 1)], top = 0;
    int cur = add_unit(t, U_CONV_IN, NULL, -1, -1, u->in_ch, u->ch[0], H, W);
    skip[top++] = cur;
    for (int i = 0; i < n; i++) {
        const block *k = &u->down[i];
        hs[i] = H, ws[i] = W;
        for (int j = 0; j < k->nres; j++) {
            cur = add_unit(t, U_RESNET, &k->res[j], cur, -1, k->res[j].cin, k->C, H, W);
            if (k->has_attn)
                cur = add_unit(t, U_XFORMER, &k->att[j], cur, -1, k->C, k->C, H, W);
            skip[top++] = cur;
        }
        if (k->has_sampler) {
            cur = add_unit(t, U_DOWN, &k->sampler, cur, -1, k->C, k->C, H, W);
            df_nn_downsample_size(u->down_pad, H, W, &H, &W);
            t->units[cur].OH = H, t->units[cur].OW = W;
            skip[top++] = cur;
        }
    }
    if (u->mid) {
        int C = u->ch[n - 1];
        cur = add_unit(t, U_RESNET, &u->mid_res[0], cur, -1, C, C, H, W);
        cur = add_unit(t, U_XFORMER, &u->mid_att, cur, -1, C, C, H, W);
        cur = add_unit(t, U_RESNET, &u->mid_res[1], cur, -1, C, C, H, W);
    }
    for (int i = 0; i < n; i++) {
        const block *k = &u->up[i];
        for (int j = 0; j < k->nres; j++) {
            int s = skip[--top];
            cur = add_unit(t, U_RESNET, &k->res[j], cur, s, k->res[j].cin, k->C, H, W);
            if (k->has_attn)
                cur = add_unit(t, U_XFORMER, &k->att[j], cur, -1, k->C, k->C, H, W);
        }
        if (k->has_sampler) {
            cur = add_unit(t, U_UP, &k->sampler, cur, -1, k->C, k->C, H, W);
            H = hs[n - 2 - i], W = ws[n - 2 - i];
            t->units[cur].OH = H, t->units[cur].OW = W;
        }
    }
    add_unit(t, U_OUT, NULL, cur, -1, u->ch[0], u->ch[0], H, W);
}

/* Output sizes, tapes and the transformers' LoRA tables. */
static void prepare_units(df_unet_train *t)
{
    for (int i = 0; i < t->nunits; i++) {
        unit *k = &t->units[i];
        int C = k->kind == U_OUT ? t->u->out_ch : k->C;
        k->nout = (size_t)t->B * C * k->OH * k->OW;
        if (k->kind == U_RESNET) {
            if (!(k->tape = calloc(1, sizeof(res_tape))))
                longjmp(t->oom, 1);
        } else if (k->kind == U_XFORMER) {
            const xformer *X = k->mod;
            if (!(k->tape = calloc((size_t)X->ntb, sizeof(tb_tape))))
                longjmp(t->oom, 1);
            k->lora = find_xl(t, X);
        }
    }
}

static void release_units(df_unet_train *t)
{
    for (int i = 0; i < t->nunits; i++) {
        unit *k = &t->units[i];
        unit_tape_free(t, k);
        if (k->kind == U_RESNET || k->kind == U_XFORMER)
            free(k->tape);
        k->tape = NULL;
        tfree(t, k->out);
        tfree(t, k->grad);
        k->out = k->grad = NULL;
    }
    t->nunits = 0;
    tfree(t, t->temb_act);
    tfree(t, t->centered);
    t->temb_act = t->centered = NULL;
}

/* ------------------------------------------------------------- create */

static df_lora_param *find_param(df_unet_train *t, const char *pre, int i, const char *name,
                                 int *bound)
{
    if (!t->lora)
        return NULL;
    char module[256];
    snprintf(module, sizeof module, "%s.transformer_blocks.%d.%s", pre, i, name);
    df_lora_param *p = df_lora_set_find(t->lora, DF_LORA_UNET, module);
    *bound += p != NULL;
    return p;
}

static void bind_xformer_lora(df_unet_train *t, const xformer *X, int *bound)
{
    xf_lora *l = &t->xl[t->nxl++];
    l->x = X;
    for (int i = 0; i < X->ntb; i++) {
        tb_lora *b = &l->tb[i];
        b->q1 = find_param(t, X->pre, i, "attn1.to_q", bound);
        b->k1 = find_param(t, X->pre, i, "attn1.to_k", bound);
        b->v1 = find_param(t, X->pre, i, "attn1.to_v", bound);
        b->o1 = find_param(t, X->pre, i, "attn1.to_out.0", bound);
        b->q2 = find_param(t, X->pre, i, "attn2.to_q", bound);
        b->k2 = find_param(t, X->pre, i, "attn2.to_k", bound);
        b->v2 = find_param(t, X->pre, i, "attn2.to_v", bound);
        b->o2 = find_param(t, X->pre, i, "attn2.to_out.0", bound);
    }
}

/* Whether p is one of the parameters bound to a transformer. */
static bool is_bound(const df_unet_train *t, const df_lora_param *p)
{
    for (int i = 0; i < t->nxl; i++)
        for (int j = 0; j < t->xl[i].x->ntb; j++) {
            const tb_lora *b = &t->xl[i].tb[j];
            if (p == b->q1 || p == b->k1 || p == b->v1 || p == b->o1 || p == b->q2 ||
                p == b->k2 || p == b->v2 || p == b->o2)
                return true;
        }
    return false;
}

df_status df_unet_train_create(df_unet *u, df_lora_set *lora, bool checkpointing,
                               df_unet_train **out)
{
    *out = NULL;
    df_status s = df_unet_bind(u);
    if (s != DF_OK)
        return s;
    df_unet_train *t = calloc(1, sizeof *t);
    int nx = 1;
    for (int i = 0; i < u->nblocks; i++)
        nx += (u->down[i].has_attn ? u->down[i].nres : 0) + (u->up[i].has_attn ? u->up[i].nres : 0);
    if (!t || !(t->xl = calloc((size_t)nx, sizeof *t->xl))) {
        free(t);
        return df_fail(DF_ERR_NOMEM, "unet training: out of memory");
    }
    t->u = u, t->lora = lora, t->ckpt = checkpointing;
    if (lora) {
        t->rank = lora->rank;
        t->s = lora->alpha / (float)lora->rank;
    }
    int bound = 0;
    for (int i = 0; i < u->nblocks; i++) {
        for (int j = 0; u->down[i].has_attn && j < u->down[i].nres; j++)
            bind_xformer_lora(t, &u->down[i].att[j], &bound);
        for (int j = 0; u->up[i].has_attn && j < u->up[i].nres; j++)
            bind_xformer_lora(t, &u->up[i].att[j], &bound);
    }
    if (u->mid)
        bind_xformer_lora(t, &u->mid_att, &bound);
    for (size_t i = 0; lora && i < lora->n; i++) {
        const df_lora_param *p = &lora->p[i];
        if (p->component == DF_LORA_UNET && !is_bound(t, p)) {
            df_unet_train_free(t);
            return df_fail(DF_ERR_UNSUPPORTED, "unet training: LoRA on %s is not supported "
                           "(attention projections to_q, to_k, to_v, to_out.0 only)", p->module);
        }
    }
    *out = t;
    return DF_OK;
}

void df_unet_train_free(df_unet_train *t)
{
    if (!t)
        return;
    release_units(t);
    free(t->units);
    free(t->xl);
    free(t);
}

size_t df_unet_train_peak_bytes(const df_unet_train *t) { return t->peak; }

/* ----------------------------------------------------------- forward */

/* The forward proper; allocation failures longjmp to the caller. */
static df_status forward_units(df_unet_train *t, const float *sample, const float *timesteps,
                               float *out)
{
    df_unet *u = t->u;
    int B = t->B;
    size_t E = (size_t)u->temb_dim;
    t->temb_act = talloc(t, (size_t)B * E, false);
    df_status s = df_unet_time_embedding(u, timesteps, B, NULL, t->temb_act);
    if (s != DF_OK)
        return s;
    df_silu_forward(t->temb_act, t->temb_act, (size_t)B * E);
    if (u->center_input) {
        size_t nin = (size_t)B * u->in_ch * t->h * t->w;
        t->centered = talloc(t, nin, false);
        for (size_t i = 0; i < nin; i++)
            t->centered[i] = 2.0f * sample[i] - 1.0f;
        sample = t->centered;
    }
    build_units(t);
    prepare_units(t);
    for (int i = 0; i < t->nunits; i++) {
        unit *k = &t->units[i];
        k->out = talloc(t, k->nout, false);
        unit_fwd(t, i, sample, k->out);
        // checkpointing keeps the units' inputs and outputs only; the
        // backward recomputes resnets and transformers (the head's one map stays)
        if (t->ckpt && (k->kind == U_RESNET || k->kind == U_XFORMER))
            unit_tape_free(t, k);
    }
    tfree(t, t->centered);
    t->centered = NULL;
    unit *last = &t->units[t->nunits - 1];
    memcpy(out, last->out, last->nout * sizeof *out);
    if (!df_nn_all_finite(out, last->nout))
        return df_fail(DF_ERR_NUMERIC, "unet training: NaN or Inf in the output");
    return DF_OK;
}

df_status df_unet_train_forward(df_unet_train *t, const float *sample, const float *timesteps,
                                const float *encoder_hidden_states, int B, int h, int w, int T,
                                float *out)
{
    if (B < 1 || B > 4096 || h < 1 || w < 1 || h > 16384 || w > 16384 || T < 1 || T > 65536 ||
        (size_t)B * h * w > ((size_t)1 << 26))
        return df_fail(DF_ERR_ARG, "unet training: bad input size B=%d h=%d w=%d T=%d", B, h, w,
                       T);
    release_units(t);
    t->B = B, t->h = h, t->w = w, t->T = T, t->ehs = encoder_hidden_states;
    if (setjmp(t->oom)) {
        release_units(t);
        return df_fail(DF_ERR_NOMEM, "unet training: out of memory for the activations of "
                       "B=%d %dx%d", t->B, t->h, t->w);
    }
    df_status s = forward_units(t, sample, timesteps, out);
    if (s != DF_OK)
        release_units(t);
    return s;
}

df_status df_unet_train_backward(df_unet_train *t, const float *dout, float *d_ehs)
{
    if (t->nunits == 0)
        return df_fail(DF_ERR_ARG, "unet training: backward without a forward");
    if (setjmp(t->oom)) {
        release_units(t);
        return df_fail(DF_ERR_NOMEM, "unet training: out of memory in the backward");
    }
    unit *last = &t->units[t->nunits - 1];
    memcpy(grad_of(t, t->nunits - 1), dout, last->nout * sizeof *dout);
    for (int i = t->nunits - 1; i >= 0; i--) {
        unit *k = &t->units[i];
        if (k->grad)
            unit_bwd(t, i, d_ehs);
        unit_tape_free(t, k);
        tfree(t, k->grad);
        tfree(t, k->out);
        k->grad = k->out = NULL;
    }
    release_units(t);
    return DF_OK;
}
