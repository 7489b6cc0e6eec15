/* clip_train.c - CLIPTextModel forward with kept activations and its
 * backward (see clip_train.h). Per layer the backward reads: the residual
 * stream at the layer's input and after the attention (for the two
 * LayerNorm backwards), the first LayerNorm's output (the projections'
 * input), q (already scaled), k, v and the attention output (the attention
 * backward and out_proj's LoRA), and the MLP's pre-activation. The text
 * encoder sees 77 tokens a caption, so everything is kept; no
 * checkpointing is needed. */
#include "clip_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_linear.h"
#include "ops.h"
#include "ops_backward.h"

typedef struct {
    const float *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    const float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    df_lora_param *lq, *lk, *lv, *lo;
} layer_w;

typedef struct {
    float *x0, *h1, *q, *k, *v, *a, *x1, *m;   /* (BT,C) each, m (BT,I) */
} layer_tape;

struct df_clip_train {
    df_clip *c;
    df_lora_set *lora;
    int rank;
    float s;
    layer_w *lw;
    layer_tape *tp;
    const float *tok_emb, *pos_emb, *lnf_w, *lnf_b;
    float *xf;              /* input of the final LayerNorm (BT,C) */
    int B, T;
};

static const float *wget(df_clip *c, df_status *st, int64_t d0, int64_t d1, const char *fmt,
                         int l)
{
    if (*st)
        return NULL;
    char name[256];
    snprintf(name, sizeof name, fmt, l);
    int64_t shape[2] = {d0, d1};
    return df_weights_get(df_clip_weights(c), name, d1 ? 2 : 1, shape, st);
}

static df_lora_param *lora_of(df_clip_train *t, int l, const char *proj, int *bound)
{
    if (!t->lora)
        return NULL;
    char module[256];
    snprintf(module, sizeof module, "text_model.encoder.layers.%d.self_attn.%s", l, proj);
    df_lora_param *p = df_lora_set_find(t->lora, DF_LORA_TE, module);
    *bound += p != NULL;
    return p;
}

static df_status bind(df_clip_train *t, int *bound)
{
    const df_clip_config *g = df_clip_get_config(t->c);
    const int64_t C = g->hidden_size, I = g->intermediate_size;
    df_status st = DF_OK;
    df_clip *c = t->c;
    t->tok_emb = wget(c, &st, g->vocab_size, C, "text_model.embeddings.token_embedding.weight", 0);
    t->pos_emb = wget(c, &st, g->max_positions, C,
                      "text_model.embeddings.position_embedding.weight", 0);
    t->lnf_w = wget(c, &st, C, 0, "text_model.final_layer_norm.weight", 0);
    t->lnf_b = wget(c, &st, C, 0, "text_model.final_layer_norm.bias", 0);
    for (int l = 0; l < g->num_layers; l++) {
        layer_w *y = &t->lw[l];
#define P "text_model.encoder.layers.%d."
        y->ln1_w = wget(c, &st, C, 0, P "layer_norm1.weight", l);
        y->ln1_b = wget(c, &st, C, 0, P "layer_norm1.bias", l);
        y->q_w = wget(c, &st, C, C, P "self_attn.q_proj.weight", l);
        y->q_b = wget(c, &st, C, 0, P "self_attn.q_proj.bias", l);
        y->k_w = wget(c, &st, C, C, P "self_attn.k_proj.weight", l);
        y->k_b = wget(c, &st, C, 0, P "self_attn.k_proj.bias", l);
        y->v_w = wget(c, &st, C, C, P "self_attn.v_proj.weight", l);
        y->v_b = wget(c, &st, C, 0, P "self_attn.v_proj.bias", l);
        y->o_w = wget(c, &st, C, C, P "self_attn.out_proj.weight", l);
        y->o_b = wget(c, &st, C, 0, P "self_attn.out_proj.bias", l);
        y->ln2_w = wget(c, &st, C, 0, P "layer_norm2.weight", l);
        y->ln2_b = wget(c, &st, C, 0, P "layer_norm2.bias", l);
        y->fc1_w = wget(c, &st, I, C, P "mlp.fc1.weight", l);
        y->fc1_b = wget(c, &st, I, 0, P "mlp.fc1.bias", l);
        y->fc2_w = wget(c, &st, C, I, P "mlp.fc2.weight", l);
        y->fc2_b = wget(c, &st, C, 0, P "mlp.fc2.bias", l);
#undef P
        y->lq = lora_of(t, l, "q_proj", bound);
        y->lk = lora_of(t, l, "k_proj", bound);
        y->lv = lora_of(t, l, "v_proj", bound);
        y->lo = lora_of(t, l, "out_proj", bound);
    }
    return st;
}

df_status df_clip_train_create(df_clip *c, df_lora_set *lora, df_clip_train **out)
{
    *out = NULL;
    const df_clip_config *g = df_clip_get_config(c);
    df_clip_train *t = calloc(1, sizeof *t);
    if (!t || !(t->lw = calloc((size_t)g->num_layers, sizeof *t->lw)) ||
        !(t->tp = calloc((size_t)g->num_layers, sizeof *t->tp))) {
        df_clip_train_free(t);
        return df_fail(DF_ERR_NOMEM, "text encoder training: out of memory");
    }
    t->c = c, t->lora = lora;
    if (lora) {
        t->rank = lora->rank;
        t->s = lora->alpha / (float)lora->rank;
    }
    int bound = 0, want = 0;
    df_status st = bind(t, &bound);
    for (size_t i = 0; lora && i < lora->n; i++)
        want += lora->p[i].component == DF_LORA_TE;
    if (!st && bound != want) {
        for (size_t i = 0; i < lora->n; i++) {
            const df_lora_param *p = &lora->p[i];
            if (p->component == DF_LORA_TE && !strstr(p->module, ".self_attn.")) {
                st = df_fail(DF_ERR_UNSUPPORTED, "text encoder training: LoRA on %s is not "
                             "supported (q_proj, k_proj, v_proj, out_proj only)", p->module);
                break;
            }
        }
        if (!st)
            st = df_fail(DF_ERR_UNSUPPORTED, "text encoder training: %d of %d LoRA parameters "
                         "are not on self-attention projections", want - bound, want);
    }
    if (st) {
        df_clip_train_free(t);
        return st;
    }
    *out = t;
    return DF_OK;
}

static void free_tapes(df_clip_train *t)
{
    const df_clip_config *g = df_clip_get_config(t->c);
    for (int l = 0; t->tp && l < g->num_layers; l++) {
        free(t->tp[l].x0);   // one block per layer, see alloc_tape
        memset(&t->tp[l], 0, sizeof t->tp[l]);
    }
    free(t->xf);
    t->xf = NULL;
}

void df_clip_train_free(df_clip_train *t)
{
    if (!t)
        return;
    if (t->c)
        free_tapes(t);
    free(t->lw);
    free(t->tp);
    free(t);
}

static int alloc_tape(layer_tape *tp, size_t N, size_t M)
{
    float *b = malloc((7 * N + M) * sizeof *b);
    if (!b)
        return -1;
    tp->x0 = b, tp->h1 = b + N, tp->q = b + 2 * N, tp->k = b + 3 * N, tp->v = b + 4 * N;
    tp->a = b + 5 * N, tp->x1 = b + 6 * N, tp->m = b + 7 * N;
    return 0;
}

df_status df_clip_train_forward(df_clip_train *t, const int32_t *ids, int B, int T,
                                float *last_hidden)
{
    const df_clip_config *g = df_clip_get_config(t->c);
    const int C = g->hidden_size, I = g->intermediate_size, NH = g->num_heads, HS = C / NH;
    if (B < 1 || T < 1 || T > g->max_positions || (size_t)B * T > (1u << 20))
        return df_fail(DF_ERR_RANGE, "text encoder training: batch %d x %d tokens", B, T);
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= g->vocab_size)
            return df_fail(DF_ERR_RANGE, "text encoder: token id %d outside [0, %d)",
                           (int)ids[i], g->vocab_size);
    free_tapes(t);
    t->B = B, t->T = T;
    const int BT = B * T;
    const size_t N = (size_t)BT * C, M = (size_t)BT * I;
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    int oom = !x || !y;
    for (int l = 0; !oom && l < g->num_layers; l++)
        oom = alloc_tape(&t->tp[l], N, M);
    if (oom || !(t->xf = malloc(N * sizeof *t->xf))) {
        free(x);
        free(y);
        free_tapes(t);
        return df_fail(DF_ERR_NOMEM, "text encoder training: out of memory for batch %d", B);
    }
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            const float *te = t->tok_emb + (size_t)ids[(size_t)b * T + i] * C;
            const float *pe = t->pos_emb + (size_t)i * C;
            float *xo = x + ((size_t)b * T + i) * C;
            for (int c = 0; c < C; c++)
                xo[c] = te[c] + pe[c];
        }
    const float qscale = (float)pow((double)HS, -0.5);
    for (int l = 0; l < g->num_layers && !oom; l++) {
        const layer_w *w = &t->lw[l];
        layer_tape *tp = &t->tp[l];
        memcpy(tp->x0, x, N * sizeof *x);
        df_layernorm_forward(tp->h1, x, w->ln1_w, w->ln1_b, BT, C, g->layer_norm_eps);
        oom |= df_lora_linear_forward(tp->q, tp->h1, w->q_w, w->q_b, w->lq, t->rank, t->s, BT, C,
                                      C);
        oom |= df_lora_linear_forward(tp->k, tp->h1, w->k_w, w->k_b, w->lk, t->rank, t->s, BT, C,
                                      C);
        oom |= df_lora_linear_forward(tp->v, tp->h1, w->v_w, w->v_b, w->lv, t->rank, t->s, BT, C,
                                      C);
        df_scale_forward(tp->q, tp->q, qscale, N);
        df_attention_forward(tp->a, tp->q, tp->k, tp->v, B, T, T, NH, HS, 1.0f, 1);
        oom |= df_lora_linear_forward(y, tp->a, w->o_w, w->o_b, w->lo, t->rank, t->s, BT, C, C);
        df_add_forward(x, x, y, N);
        memcpy(tp->x1, x, N * sizeof *x);
        df_layernorm_forward(y, x, w->ln2_w, w->ln2_b, BT, C, g->layer_norm_eps);
        df_linear_forward(tp->m, y, w->fc1_w, w->fc1_b, BT, C, I);
        float *act = malloc(M * sizeof *act);
        if (!act) {
            oom = 1;
            break;
        }
        if (g->act == DF_CLIP_ACT_GELU)
            df_gelu_forward(act, tp->m, M);
        else
            for (size_t i = 0; i < M; i++)
                act[i] = tp->m[i] * (1.0f / (1.0f + expf(-1.702f * tp->m[i])));
        df_linear_forward(y, act, w->fc2_w, w->fc2_b, BT, I, C);
        free(act);
        df_add_forward(x, x, y, N);
    }
    if (!oom) {
        memcpy(t->xf, x, N * sizeof *x);
        df_layernorm_forward(last_hidden, x, t->lnf_w, t->lnf_b, BT, C, g->layer_norm_eps);
    }
    free(x);
    free(y);
    if (oom) {
        free_tapes(t);
        return df_fail(DF_ERR_NOMEM, "text encoder training: out of memory for batch %d", B);
    }
    return DF_OK;
}

df_status df_clip_train_backward(df_clip_train *t, const float *dlast)
{
    const df_clip_config *g = df_clip_get_config(t->c);
    if (!t->xf)
        return df_fail(DF_ERR_ARG, "text encoder training: backward without a forward");
    const int C = g->hidden_size, I = g->intermediate_size, NH = g->num_heads, HS = C / NH;
    const int B = t->B, T = t->T, BT = B * T;
    const size_t N = (size_t)BT * C, M = (size_t)BT * I;
    const float qscale = (float)pow((double)HS, -0.5);
    // dx: dLoss/d residual stream; d1, dq, dk, dv (BT,C), dm (BT,I) scratch
    float *dx = calloc(N, sizeof *dx), *d1 = malloc(N * sizeof *d1),
          *dq = malloc(N * sizeof *dq), *dk = malloc(N * sizeof *dk),
          *dv = malloc(N * sizeof *dv), *dm = malloc(M * sizeof *dm);
    int oom = !dx || !d1 || !dq || !dk || !dv || !dm;
    if (!oom)
        df_layernorm_backward(dx, NULL, NULL, dlast, t->xf, t->lnf_w, BT, C, g->layer_norm_eps);
    for (int l = g->num_layers - 1; l >= 0 && !oom; l--) {
        const layer_w *w = &t->lw[l];
        const layer_tape *tp = &t->tp[l];
        // MLP: x2 = x1 + fc2(act(fc1(LN2(x1))))
        memset(dm, 0, M * sizeof *dm);
        df_linear_backward(dm, NULL, NULL, dx, NULL, w->fc2_w, BT, I, C);
        float *dpre = calloc(M, sizeof *dpre);
        if (!dpre) {
            oom = 1;
            break;
        }
        if (g->act == DF_CLIP_ACT_GELU)
            df_gelu_backward(dpre, dm, tp->m, M);
        else
            df_quick_gelu_backward(dpre, dm, tp->m, M);
        memset(d1, 0, N * sizeof *d1);
        df_linear_backward(d1, NULL, NULL, dpre, NULL, w->fc1_w, BT, C, I);
        free(dpre);
        df_layernorm_backward(dx, NULL, NULL, d1, tp->x1, w->ln2_w, BT, C, g->layer_norm_eps);
        // attention: x1 = x0 + out_proj(attn(q*scale, k, v))
        memset(d1, 0, N * sizeof *d1);
        oom |= df_lora_linear_backward(d1, dx, tp->a, w->o_w, w->lo, t->rank, t->s, BT, C, C);
        memset(dq, 0, N * sizeof *dq);
        memset(dk, 0, N * sizeof *dk);
        memset(dv, 0, N * sizeof *dv);
        df_attention_backward(dq, dk, dv, d1, tp->q, tp->k, tp->v, tp->a, B, T, T, NH, HS, 1.0f,
                              1);
        df_scale_forward(dq, dq, qscale, N);
        memset(d1, 0, N * sizeof *d1);
        oom |= df_lora_linear_backward(d1, dq, tp->h1, w->q_w, w->lq, t->rank, t->s, BT, C, C);
        oom |= df_lora_linear_backward(d1, dk, tp->h1, w->k_w, w->lk, t->rank, t->s, BT, C, C);
        oom |= df_lora_linear_backward(d1, dv, tp->h1, w->v_w, w->lv, t->rank, t->s, BT, C, C);
        // layer 0's input is the embeddings, which are frozen: stop there
        if (l > 0)
            df_layernorm_backward(dx, NULL, NULL, d1, tp->x0, w->ln1_w, BT, C,
                                  g->layer_norm_eps);
    }
    free(dx);
    free(d1);
    free(dq);
    free(dk);
    free(dv);
    free(dm);
    free_tapes(t);
    if (oom)
        return df_fail(DF_ERR_NOMEM, "text encoder training: out of memory in the backward");
    return DF_OK;
}
