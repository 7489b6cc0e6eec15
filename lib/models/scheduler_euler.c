/* scheduler_euler.c - the k-diffusion samplers of diffusers 0.27.2 on the
 * sigma schedule: Euler (s_churn 0), Euler ancestral and LMS (order 4).
 * Timesteps and sigmas come from numpy in diffusers (double, cast to
 * float32); the per-element math is float32 in diffusers' order.
 * Tested by the fixture checker (refs/schedulers/{euler,euler_ancestral,lms}_*). */
#include "scheduler_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

df_status df_sched_k_timesteps(df_scheduler *s, int steps)
{
    int N = s->num_train, n = steps;
    double *ts = malloc(sizeof(double) * (n + 2));
    double *sig = malloc(sizeof(double) * (n + 2));
    float *train = malloc(sizeof(float) * N);
    if (!ts || !sig || !train) {
        free(ts), free(sig), free(train);
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    /* timesteps as float32, descending */
    if (s->spacing == DF_SPACING_LINSPACE) {
        df_sched_np_linspace(N - 1, n, sig);
        for (int k = 0; k < n; k++)
            ts[k] = (float)sig[n - 1 - k];
    } else if (s->spacing == DF_SPACING_LEADING) {
        int ratio = N / n;
        for (int k = 0; k < n; k++)
            ts[k] = (float)((float)((double)(n - 1 - k) * ratio) + (float)s->steps_offset);
    } else {
        n = df_sched_np_arange_down(N, (double)N / n, sig, n + 1);
        for (int k = 0; k < n; k++)
            ts[k] = (float)((float)df_sched_np_round(sig[k]) - 1.0f);
    }
    for (int k = 0; k < N; k++)
        train[k] = df_sched_train_sigma(s, k);
    for (int k = 0; k < n; k++)
        sig[k] = df_sched_np_interp(ts[k], train, N);
    if (s->use_karras) {
        double smin = s->kind == DF_SK_EULER && !isnan(s->sigma_min) ? s->sigma_min : sig[n - 1];
        double smax = s->kind == DF_SK_EULER && !isnan(s->sigma_max) ? s->sigma_max : sig[0];
        float *ls = df_sched_log_sigmas(s);
        if (!ls) {
            free(ts), free(sig), free(train);
            return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        df_sched_karras(s, smin, smax, n, sig);
        for (int k = 0; k < n; k++) {
            double t = df_sched_sigma_to_t(ls, N, sig[k]);
            ts[k] = s->kind == DF_SK_EULER ? (double)(float)t : t;   /* LMS keeps float64 */
        }
        free(ls);
    }
    free(train);
    s->sigmas = malloc(sizeof(float) * (n + 1));
    if (!s->sigmas) {
        free(ts), free(sig);
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    float mx = 0;
    for (int k = 0; k < n; k++) {
        s->sigmas[k] = (float)sig[k];
        mx = s->sigmas[k] > mx ? s->sigmas[k] : mx;
    }
    s->sigmas[n] = 0.0f;
    free(sig);
    s->ts = ts;
    s->count = n;
    s->ts_int = false;
    s->init_noise_sigma = s->spacing == DF_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
    return DF_OK;
}

/* x0 from the model output at sigma (Euler, Euler a, LMS). */
static void k_x0(const df_scheduler *s, float sigma, const float *mo, const float *x, float *x0,
                 size_t n)
{
    float s2 = sigma * sigma;
    float cv = -sigma / sqrtf(s2 + 1.0f), dv = s2 + 1.0f;
    for (size_t k = 0; k < n; k++) {
        if (s->pred == DF_PRED_EPSILON)
            x0[k] = x[k] - sigma * mo[k];
        else if (s->pred == DF_PRED_V)
            x0[k] = mo[k] * cv + x[k] / dv;
        else
            x0[k] = mo[k];
    }
}

static df_status euler_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                            size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    float sigma = s->sigmas[i];
    /* diffusers draws the churn noise every step and uses it only when
     * s_churn > 0 (never here); draw it anyway so a shared generator
     * advances as in diffusers. */
    if (noise_fn) {
        df_status st = noise_fn(noise_ctx, s->noise, n);
        if (st)
            return st;
    }
    float sigma_hat = sigma * (0.0f + 1.0f);
    k_x0(s, sigma, mo, x, s->x0, n);
    float dt = s->sigmas[i + 1] - sigma_hat;
    for (size_t k = 0; k < n; k++) {
        float d = (x[k] - s->x0[k]) / sigma_hat;
        out[k] = x[k] + d * dt;
    }
    s->has_x0 = true;
    return DF_OK;
}

static df_status euler_a_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                              size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    if (!noise_fn)
        return df_fail(DF_ERR_ARG, "Euler ancestral step needs a noise source");
    float sigma = s->sigmas[i], from = sigma, to = s->sigmas[i + 1];
    float up = sqrtf(to * to * (from * from - to * to) / (from * from));
    float down = sqrtf(to * to - up * up);
    float dt = down - sigma;
    k_x0(s, sigma, mo, x, s->x0, n);
    for (size_t k = 0; k < n; k++) {
        float d = (x[k] - s->x0[k]) / sigma;
        out[k] = x[k] + d * dt;
    }
    df_status st = noise_fn(noise_ctx, s->noise, n);
    if (st)
        return st;
    for (size_t k = 0; k < n; k++)
        out[k] = out[k] + s->noise[k] * up;
    s->has_x0 = true;
    return DF_OK;
}

/* Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of
 * node i-c among nodes i, i-1, .., i-order+1 (diffusers integrates it with
 * scipy's quad; the 2-point Gauss-Legendre rule is exact for degree <= 3). */
static double lms_coeff(const float *sig, int order, int i, int c)
{
    double a = sig[i], b = sig[i + 1], mid = 0.5 * (a + b), half = 0.5 * (b - a);
    double nodes[2] = {mid - half / sqrt(3.0), mid + half / sqrt(3.0)}, sum = 0;
    for (int q = 0; q < 2; q++) {
        double prod = 1.0;
        for (int k = 0; k < order; k++) {
            if (k == c)
                continue;
            prod *= (nodes[q] - sig[i - k]) / ((double)sig[i - c] - sig[i - k]);
        }
        sum += prod;
    }
    return sum * half;
}

static void lms_step(df_scheduler *s, int i, const float *mo, const float *x, float *out, size_t n)
{
    float sigma = s->sigmas[i];
    k_x0(s, sigma, mo, x, s->x0, n);
    float *d = s->tmp;
    for (size_t k = 0; k < n; k++)
        d[k] = (x[k] - s->x0[k]) / sigma;
    df_sched_push_hist(s, d, n, 4);
    int order = i + 1 < 4 ? i + 1 : 4;
    float c[4];
    for (int q = 0; q < order; q++)
        c[q] = (float)lms_coeff(s->sigmas, order, i, q);
    for (size_t k = 0; k < n; k++) {
        float acc = c[0] * s->hist[s->nhist - 1][k];
        /* After a begin index fewer derivatives than the order exist;
         * diffusers' zip() pairs only those. */
        for (int q = 1; q < order && q < s->nhist; q++)
            acc = acc + c[q] * s->hist[s->nhist - 1 - q][k];
        out[k] = x[k] + acc;
    }
    s->has_x0 = true;
}

df_status df_sched_k_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                          size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    const float *xin = x;
    if (out == x) {
        memcpy(s->last_sample, x, n * sizeof(float));
        xin = s->last_sample;
    }
    switch (s->kind) {
    case DF_SK_EULER:
        return euler_step(s, i, mo, xin, out, n, noise_fn, noise_ctx);
    case DF_SK_EULER_A:
        return euler_a_step(s, i, mo, xin, out, n, noise_fn, noise_ctx);
    default:
        lms_step(s, i, mo, xin, out, n);
        return DF_OK;
    }
}
