/* optim.c - AdamW (torch 1.13 rounding), gradient clipping and LR schedules;
 * see optim.h. Tested by tests/unit/test_optim.c against the fixtures'
 * AdamW steps (refs/train_lora_*.safetensors). */
#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The update must round exactly where torch rounds: no contraction of the
 * plain multiply-adds (GCC's -std=c11 default; clang needs the pragma), and
 * explicit fmaf() where torch's kernels fuse. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

df_status df_adamw_init(df_adamw *o, size_t n)
{
    memset(o, 0, sizeof *o);
    if (n > SIZE_MAX / sizeof(float))
        return df_fail(DF_ERR_NOMEM, "AdamW: %zu parameters overflow", n);
    /* calloc(0) may return NULL; keep one element so NULL always means failure. */
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    if (!o->m || !o->v) {
        df_adamw_free(o);
        return df_fail(DF_ERR_NOMEM, "AdamW: out of memory for %zu moments", n);
    }
    o->n = n;
    return DF_OK;
}

void df_adamw_free(df_adamw *o)
{
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

void df_adamw_begin_step(df_adamw *o)
{
    o->step++;
}

void df_adamw_update(df_adamw *o, size_t off, float *p, const float *g, size_t n,
                     const df_adamw_hparams *h)
{
    /* Scalars as torch forms them: Python doubles, rounded to float when
     * they meet the float tensors. */
    double k = (double)o->step;
    double bc1 = 1.0 - pow(h->beta1, k), bc2 = 1.0 - pow(h->beta2, k);
    const float decay = (float)(1.0 - h->lr * h->weight_decay);
    const float b1 = (float)h->beta1, c1 = (float)(1.0 - h->beta1);
    const float b2 = (float)h->beta2, c2 = (float)(1.0 - h->beta2);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)h->eps;
    const float neg_step = (float)(-(h->lr / bc1));
    float *m = o->m + off, *v = o->v + off;
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        m[i] = fmaf(g[i], c1, m[i] * b1);
        v[i] = fmaf(c2 * g[i], g[i], v[i] * b2);
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] = pi + (neg_step * m[i]) / denom;
    }
}

double df_grad_clip(float *g, size_t n, double max_norm, double *coef)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)g[i] * g[i];
    double norm = sqrt(ss);
    float c = 1.0f;
    if (max_norm > 0) {
        /* torch: clip_coef = max_norm / (total_norm + 1e-6) on a float
         * tensor, i.e. reciprocal(total_norm + 1e-6) * max_norm, clamped. */
        c = (1.0f / ((float)norm + 1e-6f)) * (float)max_norm;
        if (!(c < 1.0f))
            c = 1.0f;   /* also when the norm is NaN: leave g as it is */
        if (c < 1.0f)
            for (size_t i = 0; i < n; i++)
                g[i] *= c;
    }
    if (coef)
        *coef = c;
    return norm;
}

static const char *const schedules[] = {"constant", "constant_with_warmup", "linear", "cosine"};

int df_lr_schedule_valid(const char *schedule)
{
    for (size_t i = 0; schedule && i < sizeof schedules / sizeof schedules[0]; i++)
        if (!strcmp(schedule, schedules[i]))
            return 1;
    return 0;
}

static double max1(long x)
{
    return (double)(x > 1 ? x : 1);
}

double df_lr_multiplier(const char *schedule, long step, long warmup, long total)
{
    if (!df_lr_schedule_valid(schedule))
        return -1;
    if (!strcmp(schedule, "constant"))
        return 1.0;
    if (step < warmup)
        return (double)step / max1(warmup);
    if (!strcmp(schedule, "constant_with_warmup"))
        return 1.0;
    if (!strcmp(schedule, "linear"))
        return fmax(0.0, (double)(total - step) / max1(total - warmup));
    double progress = (double)(step - warmup) / max1(total - warmup);
    return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
}
