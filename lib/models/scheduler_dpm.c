/* scheduler_dpm.c - the exponential-integrator multistep samplers of
 * diffusers 0.27.2: DPM-Solver++ (2M; midpoint or heun; ODE or SDE) and
 * UniPC (bh1/bh2 predictor-corrector). Schedules come from numpy (double,
 * cast to float32); every 0-dim torch scalar (alpha_t, sigma_t, lambda, h,
 * the UniPC rhos) is float32, in diffusers' evaluation order.
 * Tested by the fixture checker (refs/schedulers/{dpmpp_2m,dpmpp_2m_karras,unipc}_*). */
#include "scheduler_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* DPM's lambda_min_clipped cut: how many of the smallest lambdas are below it. */
static int clipped_count(const df_scheduler *s)
{
    if (!(s->lambda_min_clipped > -INFINITY))
        return 0;
    int c = 0;
    for (int k = 0; k < s->num_train; k++) {   /* flip(lambda_t) is ascending */
        float a = s->acp[s->num_train - 1 - k];
        float lam = logf(sqrtf(a)) - logf(sqrtf(1.0f - a));
        if (lam < s->lambda_min_clipped)
            c++;
    }
    return c;
}

/* Descending int timesteps: n+1 points, the last (0) dropped. */
static int dpm_int_timesteps(const df_scheduler *s, int n, int last, double *ts)
{
    int N = s->num_train;
    double tmp[n + 2];
    if (s->spacing == DF_SPACING_LINSPACE) {
        df_sched_np_linspace(last - 1, n + 1, tmp);
        for (int k = 0; k < n; k++)
            ts[k] = df_sched_np_round(tmp[n - k]);
        return n;
    }
    if (s->spacing == DF_SPACING_LEADING) {
        int ratio = last / (n + 1);
        for (int k = 0; k < n; k++)
            ts[k] = (double)(n - k) * ratio + s->steps_offset;
        return n;
    }
    int len = df_sched_np_arange_down(last, (double)N / n, ts, n + 1);
    for (int k = 0; k < len; k++)
        ts[k] = df_sched_np_round(ts[k]) - 1;
    return len;
}

df_status df_sched_dpm_timesteps(df_scheduler *s, int steps)
{
    int N = s->num_train, n = steps;
    int last = s->kind == DF_SK_DPM ? N - clipped_count(s) : N;
    if (last < 1)
        return df_fail(DF_ERR_RANGE, "scheduler: lambda_min_clipped removes every timestep");
    double *ts = malloc(sizeof(double) * (n + 2));
    double *sig = malloc(sizeof(double) * (n + 2));
    float *train = malloc(sizeof(float) * N);
    s->sigmas = malloc(sizeof(float) * (n + 2));
    if (!ts || !sig || !train || !s->sigmas) {
        free(ts), free(sig), free(train);
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    n = dpm_int_timesteps(s, n, last, ts);
    for (int k = 0; k < N; k++)
        train[k] = df_sched_train_sigma(s, k);
    if (s->use_karras) {
        float *ls = df_sched_log_sigmas(s);
        if (!ls) {
            free(ts), free(sig), free(train);
            return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        df_sched_karras(s, train[0], train[N - 1], n, sig);
        for (int k = 0; k < n; k++)
            ts[k] = df_sched_np_round(df_sched_sigma_to_t(ls, N, sig[k]));
        free(ls);
    } else {
        for (int k = 0; k < n; k++)
            sig[k] = df_sched_np_interp(ts[k], train, N);
    }
    for (int k = 0; k < n; k++)
        s->sigmas[k] = (float)sig[k];
    if (s->kind == DF_SK_DPM)
        s->sigmas[n] = s->final_sigma_zero ? 0.0f : train[0];
    else
        s->sigmas[n] = s->use_karras ? s->sigmas[n - 1] : train[0];
    free(sig);
    free(train);
    s->ts = ts;
    s->count = n;
    s->ts_int = true;
    s->init_noise_sigma = 1.0f;
    return DF_OK;
}

/* diffusers' _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma). */
typedef struct { float alpha, sigma, lambda; } dpm_point;

static dpm_point point(float sig)
{
    dpm_point p;
    p.alpha = 1.0f / sqrtf(sig * sig + 1.0f);
    p.sigma = sig * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

/* convert_model_output: x0 (data prediction) or epsilon, at sigmas[i]. */
static void to_x0_or_eps(const df_scheduler *s, int i, bool x0, const float *mo, const float *x,
                         float *out, size_t n)
{
    dpm_point p = point(s->sigmas[i]);
    for (size_t k = 0; k < n; k++) {
        if (x0) {
            out[k] = s->pred == DF_PRED_EPSILON ? (x[k] - p.sigma * mo[k]) / p.alpha
                   : s->pred == DF_PRED_V       ? p.alpha * x[k] - p.sigma * mo[k]
                                                : mo[k];
        } else {
            out[k] = s->pred == DF_PRED_EPSILON ? mo[k]
                   : s->pred == DF_PRED_V       ? p.alpha * mo[k] + p.sigma * x[k]
                                                : (x[k] - p.alpha * mo[k]) / p.sigma;
        }
    }
}

/* ---- DPM-Solver++ ---- */

static void dpm_first_order(const df_scheduler *s, int i, const float *m, const float *x,
                            const float *noise, float *out, size_t n)
{
    dpm_point t = point(s->sigmas[i + 1]), src = point(s->sigmas[i]);
    float h = t.lambda - src.lambda;
    if (s->dpm_algo == DF_DPM_PP) {
        float a = t.sigma / src.sigma, b = t.alpha * (expf(-h) - 1.0f);
        for (size_t k = 0; k < n; k++)
            out[k] = a * x[k] - b * m[k];
    } else {
        float e2 = expf(-2.0f * h);
        float a = t.sigma / src.sigma * expf(-h), b = t.alpha * (1.0f - e2);
        float c = t.sigma * sqrtf(1.0f - e2);
        for (size_t k = 0; k < n; k++)
            out[k] = a * x[k] + b * m[k] + c * noise[k];
    }
}

static void dpm_second_order(const df_scheduler *s, int i, const float *x, const float *noise,
                             float *out, size_t n)
{
    dpm_point t = point(s->sigmas[i + 1]), s0 = point(s->sigmas[i]), s1 = point(s->sigmas[i - 1]);
    const float *m0 = s->hist[s->nhist - 1], *m1 = s->hist[s->nhist - 2];
    float h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda;
    float r0 = h0 / h, cd = 1.0f / r0;
    if (s->dpm_algo == DF_DPM_PP) {
        float e = expf(-h) - 1.0f;
        float a = t.sigma / s0.sigma, b = t.alpha * e;
        float c = s->dpm_heun ? t.alpha * (e / h + 1.0f) : 0.5f * (t.alpha * e);
        for (size_t k = 0; k < n; k++) {
            float d1 = cd * (m0[k] - m1[k]);
            out[k] = s->dpm_heun ? a * x[k] - b * m0[k] + c * d1 : a * x[k] - b * m0[k] - c * d1;
        }
    } else {
        float e2 = expf(-2.0f * h);
        float a = t.sigma / s0.sigma * expf(-h), b = t.alpha * (1.0f - e2);
        float c = s->dpm_heun ? t.alpha * ((1.0f - e2) / (-2.0f * h) + 1.0f) : 0.5f * b;
        float q = t.sigma * sqrtf(1.0f - e2);
        for (size_t k = 0; k < n; k++) {
            float d1 = cd * (m0[k] - m1[k]);
            out[k] = a * x[k] + b * m0[k] + c * d1 + q * noise[k];
        }
    }
}

df_status df_sched_dpm_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                            size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    if (s->kind == DF_SK_UNIPC)
        return df_sched_unipc_step(s, i, mo, x, out, n);
    int cnt = s->count;
    bool low_final = i == cnt - 1 && (s->euler_at_final || (s->lower_order_final && cnt < 15) ||
                                      s->final_sigma_zero);
    bool low_second = i == cnt - 2 && s->lower_order_final && cnt < 15;
    to_x0_or_eps(s, i, true, mo, x, s->tmp, n);
    df_sched_push_hist(s, s->tmp, n, s->solver_order);
    const float *noise = NULL;
    if (s->dpm_algo == DF_DPM_SDE_PP) {
        if (!noise_fn)
            return df_fail(DF_ERR_ARG, "DPM-Solver++ SDE step needs a noise source");
        df_status st = noise_fn(noise_ctx, s->noise, n);
        if (st)
            return st;
        noise = s->noise;
    }
    /* hist holds copies, so out may alias x */
    if (s->solver_order == 1 || s->lower_order_nums < 1 || low_final)
        dpm_first_order(s, i, s->hist[s->nhist - 1], x, noise, out, n);
    else
        dpm_second_order(s, i, x, noise, out, n);
    (void)low_second;   /* solver_order <= 2: the second-order branch is the last */
    if (s->lower_order_nums < s->solver_order)
        s->lower_order_nums++;
    return DF_OK;
}

/* ---- UniPC ---- */

/* Solve the k x k system A r = b in float as LAPACK's sgesv does (partial
 * pivoting, L scaled by the reciprocal pivot). k <= DF_SCHED_MAX_ORDER. */
static void solve_small(int k, float A[][DF_SCHED_MAX_ORDER], float *b, float *r)
{
    for (int c = 0; c < k; c++) {
        int p = c;
        for (int q = c + 1; q < k; q++)
            if (fabsf(A[q][c]) > fabsf(A[p][c]))
                p = q;
        if (p != c) {
            for (int j = 0; j < k; j++) {
                float t = A[c][j];
                A[c][j] = A[p][j];
                A[p][j] = t;
            }
            float t = b[c];
            b[c] = b[p];
            b[p] = t;
        }
        float inv = 1.0f / A[c][c];
        for (int q = c + 1; q < k; q++) {
            float l = A[q][c] * inv;
            for (int j = c + 1; j < k; j++)
                A[q][j] -= l * A[c][j];
            b[q] -= l * b[c];
        }
    }
    for (int c = k - 1; c >= 0; c--) {
        float v = b[c];
        for (int j = c + 1; j < k; j++)
            v -= A[c][j] * r[j];
        r[c] = v / A[c][c];
    }
}

/* The B(h) coefficients shared by the predictor and the corrector: fills
 * R (order x order, rows rks^j) and b; returns h_phi_1 and B_h. */
static void unipc_coeffs(const df_scheduler *s, float h, int order, const float *rks,
                         float R[][DF_SCHED_MAX_ORDER], float *b, float *h_phi_1, float *B_h)
{
    float hh = s->predict_x0 ? -h : h;
    *h_phi_1 = expm1f(hh);
    float h_phi_k = *h_phi_1 / hh - 1.0f;
    int fact = 1;
    *B_h = s->unipc_bh1 ? hh : expm1f(hh);
    for (int j = 1; j <= order; j++) {
        for (int c = 0; c < order; c++)
            R[j - 1][c] = j == 1 ? 1.0f : j == 2 ? rks[c] : rks[c] * rks[c];
        b[j - 1] = h_phi_k * (float)fact / *B_h;
        fact *= j + 1;
        h_phi_k = h_phi_k / hh - (float)(1.0 / fact);
    }
}

/* One UniP (predictor) or UniC (corrector) update. For the predictor the
 * step goes from sigmas[i] to sigmas[i+1] with history m0 = hist[-1]; for
 * the corrector from sigmas[i-1] to sigmas[i], adding model_t's term. */
static void unipc_update(df_scheduler *s, int i, int order, bool corrector, const float *x,
                         const float *model_t, float *out, size_t n)
{
    int it = corrector ? i : i + 1, is0 = corrector ? i - 1 : i;
    dpm_point t = point(s->sigmas[it]), s0 = point(s->sigmas[is0]);
    float h = t.lambda - s0.lambda;
    const float *m0 = s->hist[s->nhist - 1];
    float rks[DF_SCHED_MAX_ORDER];
    const float *mk[DF_SCHED_MAX_ORDER];
    for (int k = 1; k < order; k++) {
        dpm_point pk = point(s->sigmas[is0 - k]);
        rks[k - 1] = (pk.lambda - s0.lambda) / h;
        mk[k - 1] = s->hist[s->nhist - 1 - k];
    }
    rks[order - 1] = 1.0f;
    float R[DF_SCHED_MAX_ORDER][DF_SCHED_MAX_ORDER], b[DF_SCHED_MAX_ORDER], h_phi_1, B_h;
    unipc_coeffs(s, h, order, rks, R, b, &h_phi_1, &B_h);
    float rhos[DF_SCHED_MAX_ORDER] = {0};
    int nd = order - 1;   /* number of D1 terms */
    if (corrector) {
        if (order == 1)
            rhos[0] = 0.5f;
        else
            solve_small(order, R, b, rhos);
    } else if (nd > 0) {
        if (order == 2)
            rhos[0] = 0.5f;
        else
            solve_small(order - 1, R, b, rhos);
    }
    float cx = s->predict_x0 ? t.sigma / s0.sigma : t.alpha / s0.alpha;
    float cm = s->predict_x0 ? t.alpha * h_phi_1 : t.sigma * h_phi_1;
    float cb = s->predict_x0 ? t.alpha * B_h : t.sigma * B_h;
    for (size_t e = 0; e < n; e++) {
        float xt = cx * x[e] - cm * m0[e];
        float res = 0.0f;
        for (int k = 0; k < nd; k++) {
            float d1 = (mk[k][e] - m0[e]) / rks[k];
            res = k == 0 ? rhos[k] * d1 : res + rhos[k] * d1;
        }
        if (corrector)
            res = (nd > 0 ? res : 0.0f) + rhos[order - 1] * (model_t[e] - m0[e]);
        out[e] = (nd > 0 || corrector) ? xt - cb * res : xt;
    }
}

static bool corrector_disabled(const df_scheduler *s, int step)
{
    for (int k = 0; k < s->n_disable_corrector; k++)
        if (s->disable_corrector[k] == step)
            return true;
    return false;
}

df_status df_sched_unipc_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                              size_t n)
{
    /* diffusers also needs a last_sample, which the first step taken lacks */
    bool use_corrector = i > s->begin && !corrector_disabled(s, i - 1);
    float *mc = s->noise;   /* the converted model output, scratch */
    to_x0_or_eps(s, i, s->predict_x0, mo, x, mc, n);
    float *sample = s->tmp;
    if (use_corrector)
        unipc_update(s, i, s->this_order, true, s->last_sample, mc, sample, n);
    else
        memcpy(sample, x, n * sizeof(float));
    df_sched_push_hist(s, mc, n, s->solver_order);
    int order = s->solver_order;
    if (s->lower_order_final && s->count - i < order)
        order = s->count - i;
    if (order > s->lower_order_nums + 1)
        order = s->lower_order_nums + 1;
    s->this_order = order;
    memcpy(s->last_sample, sample, n * sizeof(float));
    unipc_update(s, i, order, false, s->last_sample, NULL, out, n);
    if (s->lower_order_nums < s->solver_order)
        s->lower_order_nums++;
    return DF_OK;
}
