/* scheduler_ddim.c - the alphas_cumprod samplers of diffusers 0.27.2: DDIM
 * (eta 0), DDPM (fixed_small variance) and PNDM's PLMS steps
 * (skip_prk_steps). Scalars are float32 as diffusers' 0-dim tensors are;
 * every expression keeps diffusers' evaluation order so that rounding
 * matches. Tested by the fixture checker (refs/schedulers/{ddim,ddpm,pndm}_*)
 * and tests/unit/test_scheduler.c. */
#include "scheduler_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Descending int timesteps of DDIM/DDPM for each spacing (numpy in diffusers). */
static int ddim_like_timesteps(const df_scheduler *s, int n, double *ts)
{
    int N = s->num_train;
    if (s->spacing == DF_SPACING_LINSPACE) {
        df_sched_np_linspace(N - 1, n, ts);
        for (int k = 0; k < n / 2; k++) {
            double t = ts[k];
            ts[k] = ts[n - 1 - k];
            ts[n - 1 - k] = t;
        }
        for (int k = 0; k < n; k++)
            ts[k] = df_sched_np_round(ts[k]);
        return n;
    }
    if (s->spacing == DF_SPACING_LEADING) {
        int ratio = N / n;
        for (int k = 0; k < n; k++)
            ts[k] = (double)(n - 1 - k) * ratio + s->steps_offset;
        return n;
    }
    int len = df_sched_np_arange_down(N, (double)N / n, ts, n + 1);
    for (int k = 0; k < len; k++)
        ts[k] = df_sched_np_round(ts[k]) - 1;
    return len;
}

/* PNDM: ascending base timesteps, then the PLMS order with the repeated one:
 * concat(ts[:-1], ts[-2:-1], ts[-1:]) reversed. */
static int pndm_timesteps(const df_scheduler *s, int n, double *out)
{
    int N = s->num_train, len = n;
    double *base = malloc(sizeof(double) * (n + 1));
    if (!base)
        return -1;
    if (s->spacing == DF_SPACING_LINSPACE) {
        df_sched_np_linspace(N - 1, n, base);
        for (int k = 0; k < n; k++)
            base[k] = df_sched_np_round(base[k]);
    } else if (s->spacing == DF_SPACING_LEADING) {
        int ratio = N / n;
        for (int k = 0; k < n; k++)
            base[k] = (double)k * ratio + s->steps_offset;
    } else {
        double *d = malloc(sizeof(double) * (n + 1));
        if (!d) {
            free(base);
            return -1;
        }
        len = df_sched_np_arange_down(N, (double)N / n, d, n + 1);
        for (int k = 0; k < len; k++)
            base[k] = df_sched_np_round(d[len - 1 - k]) - 1;
        free(d);
    }
    int m = 0;
    double plms[len + 1];
    for (int k = 0; k < len - 1; k++)
        plms[m++] = base[k];
    if (len >= 2)
        plms[m++] = base[len - 2];
    plms[m++] = base[len - 1];
    for (int k = 0; k < m; k++)
        out[k] = plms[m - 1 - k];
    free(base);
    return m;
}

df_status df_sched_alpha_timesteps(df_scheduler *s, int steps)
{
    s->ts = malloc(sizeof(double) * (steps + 2));
    if (!s->ts)
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    s->count = s->kind == DF_SK_PNDM ? pndm_timesteps(s, steps, s->ts)
                                     : ddim_like_timesteps(s, steps, s->ts);
    if (s->count < 0)
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    s->ts_int = true;
    for (int k = 0; k < s->count; k++)
        if (s->ts[k] < 0 || s->ts[k] >= s->num_train)
            return df_fail(DF_ERR_RANGE, "scheduler: timestep %g outside [0, %d) (steps_offset %d "
                           "too large for %d steps?)", s->ts[k], s->num_train, s->steps_offset,
                           steps);
    s->init_noise_sigma = 1.0f;
    return DF_OK;
}

/* x0 from the model output (DDIM and DDPM), then clip_sample. */
static void pred_x0(const df_scheduler *s, float a_t, const float *mo, const float *x, float *x0,
                    size_t n)
{
    float b_t = 1.0f - a_t, sa = sqrtf(a_t), sb = sqrtf(b_t);
    for (size_t k = 0; k < n; k++) {
        if (s->pred == DF_PRED_EPSILON)
            x0[k] = (x[k] - sb * mo[k]) / sa;
        else if (s->pred == DF_PRED_V)
            x0[k] = sa * x[k] - sb * mo[k];
        else
            x0[k] = mo[k];
    }
    if (s->clip_sample) {
        float r = (float)s->clip_sample_range;
        for (size_t k = 0; k < n; k++)
            x0[k] = x0[k] < -r ? -r : x0[k] > r ? r : x0[k];
    }
}

static void ddim_step(df_scheduler *s, int t, const float *mo, const float *x, float *out, size_t n)
{
    int prev_t = t - s->num_train / s->steps;
    float a_t = s->acp[t], a_prev = prev_t >= 0 ? s->acp[prev_t] : s->final_acp;
    float b_t = 1.0f - a_t, sa = sqrtf(a_t), sb = sqrtf(b_t);
    pred_x0(s, a_t, mo, x, s->x0, n);
    float c_dir = sqrtf(1.0f - a_prev - 0.0f), c_x0 = sqrtf(a_prev);   /* eta = 0 */
    for (size_t k = 0; k < n; k++) {
        float eps;
        if (s->pred == DF_PRED_EPSILON)
            eps = mo[k];
        else if (s->pred == DF_PRED_V)
            eps = sa * mo[k] + sb * x[k];
        else
            eps = (x[k] - sa * mo[k]) / sb;   /* before clipping, as diffusers */
        out[k] = c_x0 * s->x0[k] + c_dir * eps;
    }
    s->has_x0 = true;
}

static df_status ddpm_step(df_scheduler *s, int t, const float *mo, const float *x, float *out,
                           size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    int prev_t = t - s->num_train / s->steps;
    float a_t = s->acp[t], a_prev = prev_t >= 0 ? s->acp[prev_t] : 1.0f;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    pred_x0(s, a_t, mo, x, s->x0, n);
    float c_x0 = (sqrtf(a_prev) * cur_beta) / b_t;
    float c_x = sqrtf(cur_alpha) * b_prev / b_t;
    for (size_t k = 0; k < n; k++)
        out[k] = c_x0 * s->x0[k] + c_x * x[k];
    s->has_x0 = true;
    if (t > 0) {
        if (!noise_fn)
            return df_fail(DF_ERR_ARG, "DDPM step needs a noise source");
        df_status st = noise_fn(noise_ctx, s->noise, n);
        if (st)
            return st;
        float var = (1.0f - a_prev) / (1.0f - a_t) * cur_beta;   /* fixed_small */
        var = var < 1e-20f ? 1e-20f : var;
        float sd = sqrtf(var);
        for (size_t k = 0; k < n; k++)
            out[k] = out[k] + sd * s->noise[k];
    }
    return DF_OK;
}

/* PNDM's _get_prev_sample (formula (9) of the PNDM paper). */
static void pndm_prev(const df_scheduler *s, int t, int prev_t, const float *mo, const float *x,
                      float *out, size_t n)
{
    float a_t = s->acp[t], a_prev = prev_t >= 0 ? s->acp[prev_t] : s->final_acp;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float c_x = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float diff = a_prev - a_t;
    for (size_t k = 0; k < n; k++) {
        float e = s->pred == DF_PRED_V ? sa * mo[k] + sb * x[k] : mo[k];
        out[k] = c_x * x[k] - diff * e / denom;
    }
}

/* step_plms: linear multistep over the last (up to) four model outputs. */
static void pndm_step(df_scheduler *s, int i, int t, const float *mo, const float *x, float *out,
                      size_t n)
{
    int ratio = s->num_train / s->steps, prev_t = t - ratio;
    i -= s->begin;   /* diffusers' counter: steps taken since set_timesteps */
    float *e = s->tmp;
    const float *sample = x;
    if (i != 1) {
        df_sched_push_hist(s, mo, n, 4);
    } else {
        prev_t = t;
        t = t + ratio;
    }
    float **h = s->hist;
    int m = s->nhist;
    if (m == 1 && i == 0) {
        memcpy(e, mo, n * sizeof(float));
        memcpy(s->cur_sample, x, n * sizeof(float));
    } else if (m == 1 && i == 1) {
        for (size_t k = 0; k < n; k++)
            e[k] = (mo[k] + h[0][k]) / 2.0f;
        sample = s->cur_sample;
    } else if (m == 2) {
        for (size_t k = 0; k < n; k++)
            e[k] = (3.0f * h[1][k] - h[0][k]) / 2.0f;
    } else if (m == 3) {
        for (size_t k = 0; k < n; k++)
            e[k] = (23.0f * h[2][k] - 16.0f * h[1][k] + 5.0f * h[0][k]) / 12.0f;
    } else {
        const float c = (float)(1.0 / 24);
        for (size_t k = 0; k < n; k++)
            e[k] = c * (55.0f * h[3][k] - 59.0f * h[2][k] + 37.0f * h[1][k] - 9.0f * h[0][k]);
    }
    pndm_prev(s, t, prev_t, e, sample, out, n);
}

df_status df_sched_alpha_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                              size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    int t = (int)s->ts[i];
    /* compute into tmp-free order: out may alias x, so work from a copy. */
    const float *xin = x;
    if (out == x) {
        memcpy(s->last_sample, x, n * sizeof(float));
        xin = s->last_sample;
    }
    switch (s->kind) {
    case DF_SK_DDIM:
        ddim_step(s, t, mo, xin, out, n);
        return DF_OK;
    case DF_SK_DDPM:
        return ddpm_step(s, t, mo, xin, out, n, noise_fn, noise_ctx);
    default:
        pndm_step(s, i, t, mo, xin, out, n);
        return DF_OK;
    }
}
