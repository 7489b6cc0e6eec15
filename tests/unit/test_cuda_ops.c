/* test_cuda_ops.c - every CUDA op (lib/ops/ops_cuda.h, kernels/) against its
 * CPU reference op on random inputs of Stable Diffusion 2.1's shapes, in
 * fp32, fp16 and bf16. Built only by `make CUDA=1`; without a GPU it prints
 * "skipped: no GPU" and exits 77 (run-tests.sh counts that as skipped).
 *
 * The norm: err = max |gpu - ref| / max |ref| over the whole output
 * (relative to the output's scale, so tiny reference values do not blow it
 * up). fp32 must be within 1e-5 (the reference mode). For fp16 and
 * bf16 the inputs are first rounded to the storage type on the host, so the
 * reference sees exactly the GPU's inputs, and the tolerance below covers
 * the output's rounding (2^-11 for fp16, 2^-8 for bf16, relative) plus the
 * rounding of fp16/bf16 intermediates an op stores (per op, stated in
 * TOL_*). The scheduler step and AdamW repeat the CPU's float operations and
 * must match bit for bit. Each case prints its error and the GPU time of
 * the op (one call after a warm-up call, synchronized: a first figure, not a
 * benchmark). DF_CUDA_TEST=regex runs a subset (see want()). */
#include <math.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops.h"
#include "ops_backward.h"
#include "ops_cuda.h"
#include "optim.h"
#include "scheduler.h"
#include "status.h"
#include "unit.h"

static df_cuda_ctx *ctx;
static const df_dtype DTYPES[] = {DF_DTYPE_F32, DF_DTYPE_F16, DF_DTYPE_BF16};

/* Tolerances (err as above) per dtype: fp32, fp16, bf16. */
static const double TOL_ELT[3] = {1e-5, 1e-3, 8e-3};   /* elementwise: output rounding */
static const double TOL_GEMM[3] = {1e-5, 2e-3, 1e-2};  /* GEMM/conv/attention: fp32 sums, rounded out */
/* Backward ops add into an fp16/bf16 gradient already holding values and
 * the norms' backward rounds dout*gamma etc.; twice the output rounding. */
static const double TOL_BWD[3] = {1e-5, 4e-3, 2e-2};

static int di(df_dtype dt) { return dt == DF_DTYPE_F16 ? 1 : dt == DF_DTYPE_BF16 ? 2 : 0; }

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1,1) from a 64-bit xorshift*; fixed seed, so failures repeat. */
static float frand(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545F4914F6CDD1Dull;
    return (float)((r >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_cuda_ops: out of memory\n");
        exit(1);
    }
    return p;
}

/* ---- host rounding references for fp16 and bf16 (round to nearest even) ---- */

static float bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u)
        return x;   /* inf, nan */
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* fp16 rounding in double arithmetic: spacing 2^(e-10) for normal values,
 * 2^-24 below 2^-14; rint rounds half to even; overflow past 65520 is inf. */
static float f16_round(float x)
{
    if (isnan(x) || isinf(x))
        return x;
    double a = fabs((double)x);
    if (a >= 65520.0)
        return x > 0 ? INFINITY : -INFINITY;
    int e;
    frexp(a, &e);   /* a = m 2^e, m in [0.5,1): the spacing is 2^(e-11) */
    double ulp = a < ldexp(1.0, -14) ? ldexp(1.0, -24) : ldexp(1.0, e - 11);
    double r = rint(a / ulp) * ulp;
    return (float)copysign(r, x);   /* -0 and negatives that round to 0 stay -0 */
}

static float round_to(float x, df_dtype dt)
{
    return dt == DF_DTYPE_F16 ? f16_round(x) : dt == DF_DTYPE_BF16 ? bf16_round(x) : x;
}

/* n random values in [-scale, scale), already representable in dt. */
static float *rand_host(size_t n, float scale, df_dtype dt)
{
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = round_to(scale * frand(), dt);
    return p;
}

/* A device copy of h in dt (h must be representable in dt). */
static void *to_dev(const float *h, size_t n, df_dtype dt)
{
    void *d = NULL;
    if (df_cuda_malloc(ctx, &d, n * df_dtype_size(dt)) != DF_OK ||
        df_cuda_upload_f32(ctx, d, dt, h, n) != DF_OK) {
        fprintf(stderr, "test_cuda_ops: %s\n", df_last_error());
        exit(1);
    }
    return d;
}

static float *from_dev(const void *d, size_t n, df_dtype dt)
{
    float *h = xmalloc(n * sizeof(float));
    if (df_cuda_download_f32(ctx, h, d, dt, n) != DF_OK) {
        fprintf(stderr, "test_cuda_ops: %s\n", df_last_error());
        exit(1);
    }
    return h;
}

static double rel_err(const float *got, const float *ref, size_t n)
{
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d != d)
            return INFINITY;
        m = d > m ? d : m;
        r = fabs(ref[i]) > r ? fabs(ref[i]) : r;
    }
    return r > 0 ? m / r : m;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Compare a device result with its reference and report. */
static void compare(const char *what, df_dtype dt, const void *dgot, const float *ref, size_t n,
                    double tol, double ms)
{
    float *got = from_dev(dgot, n, dt);
    double e = rel_err(got, ref, n);
    printf("%-44s %s  err %.3g (tol %.0e)  %.3f ms\n", what, df_compute_dtype_name(dt), e, tol, ms);
    CHECK_MSG(e <= tol, "%s %s: err %g > %g", what, df_compute_dtype_name(dt), e, tol);
    free(got);
}

/* Run an op call, check its status, and time a second call. OP is a
 * statement list evaluating to df_status; it runs twice (warm-up: cuBLAS
 * and cuDNN plans), so ops that accumulate are timed on a copy. */
#define RUN(ms, call) do { \
    df_status s_ = (call); \
    CHECK_MSG(s_ == DF_OK, "%s: %s", #call, df_last_error()); \
    CHECK(df_cuda_sync(ctx) == DF_OK); \
    double t0_ = now_ms(); \
    (void)(call); \
    CHECK(df_cuda_sync(ctx) == DF_OK); \
    ms = now_ms() - t0_; } while (0)
/* Once, for ops that accumulate (+=) or step state; timed. */
#define RUN1(ms, call) do { \
    double t0_ = now_ms(); \
    df_status s_ = (call); \
    CHECK_MSG(s_ == DF_OK, "%s: %s", #call, df_last_error()); \
    CHECK(df_cuda_sync(ctx) == DF_OK); \
    ms = now_ms() - t0_; } while (0)

/* ------------------------------------------------------------------ forward */

static void test_linear(df_dtype dt, int N, int C, int OC, int with_bias)
{
    float *x = rand_host((size_t)N * C, 1.0f, dt), *w = rand_host((size_t)OC * C, 0.1f, dt);
    float *b = with_bias ? rand_host(OC, 0.5f, dt) : NULL;
    float *ref = xmalloc((size_t)N * OC * sizeof(float));
    df_linear_forward_ref(ref, x, w, b, N, C, OC);
    void *dx = to_dev(x, (size_t)N * C, dt), *dw = to_dev(w, (size_t)OC * C, dt);
    void *db = b ? to_dev(b, OC, dt) : NULL, *dy = NULL;
    df_cuda_malloc(ctx, &dy, (size_t)N * OC * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_linear_forward(ctx, dt, dy, dx, dw, db, N, C, OC));
    char what[96];
    snprintf(what, sizeof what, "linear %dx%dx%d%s", N, C, OC, b ? " +bias" : "");
    compare(what, dt, dy, ref, (size_t)N * OC, TOL_GEMM[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dw), df_cuda_free(ctx, db), df_cuda_free(ctx, dy);
    free(x), free(w), free(b), free(ref);
}

static void test_conv2d(df_dtype dt, int B, int C, int H, int W, int OC, df_conv2d_geom g)
{
    int OH, OW, K = g.K;
    df_conv2d_out_size(&g, H, W, &OH, &OW);
    size_t nx = (size_t)B * C * H * W, nw = (size_t)OC * C * K * K, ny = (size_t)B * OC * OH * OW;
    float *x = rand_host(nx, 1.0f, dt), *w = rand_host(nw, 0.05f, dt), *b = rand_host(OC, 0.5f, dt);
    float *ref = xmalloc(ny * sizeof(float));
    df_conv2d_forward_ref(ref, x, w, b, B, C, H, W, OC, &g);
    void *dx = to_dev(x, nx, dt), *dw = to_dev(w, nw, dt), *db = to_dev(b, OC, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, ny * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_conv2d_forward(ctx, dt, dy, dx, dw, db, B, C, H, W, OC, &g));
    char what[96];
    snprintf(what, sizeof what, "conv2d %d->%d k%d s%d pad %d,%d,%d,%d on %dx%d", C, OC, K,
             g.stride, g.pad_t, g.pad_l, g.pad_b, g.pad_r, H, W);
    compare(what, dt, dy, ref, ny, TOL_GEMM[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dw), df_cuda_free(ctx, db), df_cuda_free(ctx, dy);
    free(x), free(w), free(b), free(ref);
}

/* Attention; the reference is computed for the query rows [0, nref) and
 * [Tq - nref, Tq) only (B = 1 when nref < Tq: rows of one image are
 * contiguous), since a full 4096 x 4096 reference in double takes minutes. */
static void test_attention(df_dtype dt, int B, int Tq, int Tk, int NH, int HS, int causal, int nref)
{
    int C = NH * HS;
    size_t nq = (size_t)B * Tq * C, nk = (size_t)B * Tk * C;
    float *q = rand_host(nq, 1.0f, dt), *k = rand_host(nk, 1.0f, dt), *v = rand_host(nk, 1.0f, dt);
    float scale = 1.0f / sqrtf((float)HS);
    void *dq = to_dev(q, nq, dt), *dk = to_dev(k, nk, dt), *dv = to_dev(v, nk, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, nq * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_attention_forward(ctx, dt, dy, dq, dk, dv, B, Tq, Tk, NH, HS, scale, causal));
    float *got = from_dev(dy, nq, dt);
    char what[96];
    snprintf(what, sizeof what, "attention B%d %dx%d heads %dx%d%s", B, Tq, Tk, NH, HS,
             causal ? " causal" : "");
    double e;
    if (nref >= Tq) {
        float *ref = xmalloc(nq * sizeof(float));
        df_attention_forward_ref(ref, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
        e = rel_err(got, ref, nq);
        free(ref);
    } else {
        size_t part = (size_t)nref * C;
        float *ref = xmalloc(2 * part * sizeof(float)), *sel = xmalloc(2 * part * sizeof(float));
        df_attention_forward_ref(ref, q, k, v, 1, nref, Tk, NH, HS, scale, 0);
        df_attention_forward_ref(ref + part, q + (size_t)(Tq - nref) * C, k, v, 1, nref, Tk, NH,
                                 HS, scale, 0);
        memcpy(sel, got, part * sizeof(float));
        memcpy(sel + part, got + (size_t)(Tq - nref) * C, part * sizeof(float));
        e = rel_err(sel, ref, 2 * part);
        free(ref), free(sel);
        snprintf(what + strlen(what), sizeof what - strlen(what), " (%d+%d rows)", nref, nref);
    }
    double tol = TOL_GEMM[di(dt)];
    printf("%-44s %s  err %.3g (tol %.0e)  %.3f ms\n", what, df_compute_dtype_name(dt), e, tol, ms);
    CHECK_MSG(e <= tol, "%s %s: err %g > %g", what, df_compute_dtype_name(dt), e, tol);
    df_cuda_free(ctx, dq), df_cuda_free(ctx, dk), df_cuda_free(ctx, dv), df_cuda_free(ctx, dy);
    free(q), free(k), free(v), free(got);
}

static void test_groupnorm(df_dtype dt, int B, int C, int HW, int G, int silu)
{
    size_t n = (size_t)B * C * HW;
    float *x = rand_host(n, 2.0f, dt), *ga = rand_host(C, 1.0f, dt), *be = rand_host(C, 0.5f, dt);
    for (size_t i = 0; i < n; i++)   /* an offset, so that the mean matters */
        x[i] = round_to(x[i] + 0.75f, dt);
    float *ref = xmalloc(n * sizeof(float));
    df_groupnorm_forward_ref(ref, x, ga, be, B, C, HW, G, 1e-5f);
    if (silu)
        df_silu_forward_ref(ref, ref, n);
    void *dx = to_dev(x, n, dt), *dg = to_dev(ga, C, dt), *db = to_dev(be, C, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, n * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_groupnorm_forward(ctx, dt, dy, dx, dg, db, B, C, HW, G, 1e-5f, silu));
    char what[96];
    snprintf(what, sizeof what, "groupnorm%s B%d C%d HW%d G%d", silu ? "+silu" : "", B, C, HW, G);
    compare(what, dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    // in place (out aliases inp), as the models call it
    RUN1(ms, df_cuda_groupnorm_forward(ctx, dt, dx, dx, dg, db, B, C, HW, G, 1e-5f, silu));
    compare("  ... in place", dt, dx, ref, n, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dg), df_cuda_free(ctx, db), df_cuda_free(ctx, dy);
    free(x), free(ga), free(be), free(ref);
}

static void test_layernorm(df_dtype dt, int N, int C)
{
    size_t n = (size_t)N * C;
    float *x = rand_host(n, 2.0f, dt), *ga = rand_host(C, 1.0f, dt), *be = rand_host(C, 0.5f, dt);
    float *ref = xmalloc(n * sizeof(float));
    df_layernorm_forward_ref(ref, x, ga, be, N, C, 1e-5f);
    void *dx = to_dev(x, n, dt), *dg = to_dev(ga, C, dt), *db = to_dev(be, C, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, n * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_layernorm_forward(ctx, dt, dy, dx, dg, db, N, C, 1e-5f));
    char what[96];
    snprintf(what, sizeof what, "layernorm %dx%d", N, C);
    compare(what, dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dg), df_cuda_free(ctx, db), df_cuda_free(ctx, dy);
    free(x), free(ga), free(be), free(ref);
}

static void test_elementwise(df_dtype dt)
{
    size_t n = (size_t)320 * 4096 + 7;
    float *x = rand_host(n, 6.0f, dt), *y = rand_host(n, 1.0f, dt), *ref = xmalloc(n * sizeof(float));
    void *dx = to_dev(x, n, dt), *dy2 = to_dev(y, n, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, n * df_dtype_size(dt));
    double ms;
    df_silu_forward_ref(ref, x, n);
    RUN(ms, df_cuda_silu_forward(ctx, dt, dy, dx, n));
    compare("silu 320x4096+7", dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_gelu_forward_ref(ref, x, n);
    RUN(ms, df_cuda_gelu_forward(ctx, dt, dy, dx, n));
    compare("gelu 320x4096+7", dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    for (size_t i = 0; i < n; i++)   // quick_gelu of lib/models/clip.c (static there)
        ref[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
    RUN(ms, df_cuda_quick_gelu_forward(ctx, dt, dy, dx, n));
    compare("quick_gelu 320x4096+7", dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_add_forward(ref, x, y, n);
    RUN(ms, df_cuda_add_forward(ctx, dt, dy, dx, dy2, n));
    compare("add", dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_scale_forward(ref, x, 0.18215f, n);
    RUN(ms, df_cuda_scale_forward(ctx, dt, dy, dx, 0.18215f, n));
    compare("scale", dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dy2), df_cuda_free(ctx, dy);
    free(x), free(y), free(ref);

    // geglu: the feed-forward's (4096, 2*1280) projection output
    int N = 4096, C = 1280;
    x = rand_host((size_t)N * 2 * C, 3.0f, dt);
    ref = xmalloc((size_t)N * C * sizeof(float));
    df_geglu_forward_ref(ref, x, N, C);
    dx = to_dev(x, (size_t)N * 2 * C, dt);
    df_cuda_malloc(ctx, &dy, (size_t)N * C * df_dtype_size(dt));
    RUN(ms, df_cuda_geglu_forward(ctx, dt, dy, dx, N, C));
    compare("geglu 4096x1280", dt, dy, ref, (size_t)N * C, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dy);
    free(x), free(ref);
}

static void test_softmax(df_dtype dt, int N, int C)
{
    size_t n = (size_t)N * C;
    float *x = rand_host(n, 8.0f, dt), *ref = xmalloc(n * sizeof(float));
    df_softmax_forward_ref(ref, x, N, C);
    void *dx = to_dev(x, n, dt), *dy = NULL;
    df_cuda_malloc(ctx, &dy, n * df_dtype_size(dt));
    double ms;
    RUN(ms, df_cuda_softmax_forward(ctx, dt, dy, dx, N, C));
    char what[96];
    snprintf(what, sizeof what, "softmax %dx%d", N, C);
    compare(what, dt, dy, ref, n, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dy);
    free(x), free(ref);
}

static void test_small_ops(df_dtype dt)
{
    double ms;
    // timestep embedding as the UNet's time_proj: dim 320, flip_sin_to_cos, shift 0
    float t[3] = {999.0f, 1.0f, 500.0f}, ref[3 * 321];
    float *dt_t = to_dev(t, 3, DF_DTYPE_F32);
    void *dy = NULL;
    df_cuda_malloc(ctx, &dy, 3 * 321 * df_dtype_size(dt));
    df_timestep_embedding(ref, t, 3, 320, 1, 0.0f, 10000.0f);
    for (int i = 0; i < 3 * 320; i++)
        ref[i] = round_to(ref[i], dt);
    RUN(ms, df_cuda_timestep_embedding(ctx, dt, dy, dt_t, 3, 320, 1, 0.0f, 10000.0f));
    compare("timestep embedding 3x320 flip", dt, dy, ref, 3 * 320, TOL_ELT[di(dt)], ms);
    df_timestep_embedding(ref, t, 3, 321, 0, 1.0f, 10000.0f);
    for (int i = 0; i < 3 * 321; i++)
        ref[i] = round_to(ref[i], dt);
    RUN(ms, df_cuda_timestep_embedding(ctx, dt, dy, dt_t, 3, 321, 0, 1.0f, 10000.0f));
    compare("timestep embedding 3x321 shift 1", dt, dy, ref, 3 * 321, TOL_ELT[di(dt)], ms);
    df_cuda_free(ctx, dt_t), df_cuda_free(ctx, dy);

    // upsample 2x (the UNet's) and an odd ratio; channel bias; concat: exact copies
    int B = 2, C = 64, H = 17, W = 13, OH = 34, OW = 29;
    size_t nx = (size_t)B * C * H * W, ny = (size_t)B * C * OH * OW;
    float *x = rand_host(nx, 1.0f, dt), *r = xmalloc(ny * sizeof(float));
    void *dx = to_dev(x, nx, dt);
    df_cuda_malloc(ctx, &dy, ny * df_dtype_size(dt));
    df_upsample_nearest_forward(r, x, B, C, H, W, OH, OW);
    RUN(ms, df_cuda_upsample_nearest_forward(ctx, dt, dy, dx, B, C, H, W, OH, OW));
    compare("upsample nearest 17x13 -> 34x29", dt, dy, r, ny, 0.0, ms);
    float *bias = rand_host((size_t)B * C, 1.0f, dt);
    void *dbias = to_dev(bias, (size_t)B * C, dt);
    df_add_channel_bias(r, x, bias, B, C, H * W);
    RUN(ms, df_cuda_add_channel_bias(ctx, dt, dy, dx, dbias, B, C, H * W));
    compare("add channel bias", dt, dy, r, nx, TOL_ELT[di(dt)], ms);
    float *x2 = rand_host((size_t)B * 32 * H * W, 1.0f, dt);
    void *dx2 = to_dev(x2, (size_t)B * 32 * H * W, dt);
    df_concat_channels(r, x, C, x2, 32, B, H * W);
    RUN(ms, df_cuda_concat_channels(ctx, dt, dy, dx, C, dx2, 32, B, H * W));
    compare("concat channels 64+32", dt, dy, r, (size_t)B * 96 * H * W, 0.0, ms);
    CHECK(df_cuda_concat_channels(ctx, dt, dx, dx, C, dx2, 32, B, H * W) == DF_ERR_ARG);
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dx2), df_cuda_free(ctx, dy), df_cuda_free(ctx, dbias);
    free(x), free(x2), free(r), free(bias);
}

/* ----------------------------------------------------------------- backward */

/* The gradients start from small random values (backward ops accumulate),
 * the same on host and device: small, so that the op's own contribution,
 * not the prefill's rounding, dominates the comparison. */
#define PREFILL 0.01f
static void test_linear_backward(df_dtype dt, int N, int C, int OC)
{
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, ny = (size_t)N * OC;
    float *x = rand_host(nx, 1.0f, dt), *w = rand_host(nw, 0.1f, dt), *dy = rand_host(ny, 1.0f, dt);
    float *dx = rand_host(nx, PREFILL, dt), *dw = rand_host(nw, PREFILL, dt);
    float *db = rand_host(OC, PREFILL, dt);
    void *gx = to_dev(x, nx, dt), *gw = to_dev(w, nw, dt), *gdy = to_dev(dy, ny, dt);
    void *gdx = to_dev(dx, nx, dt), *gdw = to_dev(dw, nw, dt), *gdb = to_dev(db, OC, dt);
    df_linear_backward_ref(dx, dw, db, dy, x, w, N, C, OC);
    double ms;
    RUN1(ms, df_cuda_linear_backward(ctx, dt, gdx, gdw, gdb, gdy, gx, gw, N, C, OC));
    char what[96];
    snprintf(what, sizeof what, "linear backward %dx%dx%d dinp", N, C, OC);
    compare(what, dt, gdx, dx, nx, TOL_BWD[di(dt)], ms);
    compare("  ... dweight", dt, gdw, dw, nw, TOL_BWD[di(dt)], ms);
    compare("  ... dbias", dt, gdb, db, OC, TOL_BWD[di(dt)], ms);
    df_cuda_free(ctx, gx), df_cuda_free(ctx, gw), df_cuda_free(ctx, gdy);
    df_cuda_free(ctx, gdx), df_cuda_free(ctx, gdw), df_cuda_free(ctx, gdb);
    free(x), free(w), free(dy), free(dx), free(dw), free(db);
}

static void test_conv2d_backward(df_dtype dt, int B, int C, int H, int W, int OC, df_conv2d_geom g)
{
    int OH, OW, K = g.K;
    df_conv2d_out_size(&g, H, W, &OH, &OW);
    size_t nx = (size_t)B * C * H * W, nw = (size_t)OC * C * K * K, ny = (size_t)B * OC * OH * OW;
    float *x = rand_host(nx, 1.0f, dt), *w = rand_host(nw, 0.1f, dt), *dy = rand_host(ny, 1.0f, dt);
    float *dx = rand_host(nx, PREFILL, dt), *dw = rand_host(nw, PREFILL, dt);
    float *db = rand_host(OC, PREFILL, dt);
    void *gx = to_dev(x, nx, dt), *gw = to_dev(w, nw, dt), *gdy = to_dev(dy, ny, dt);
    void *gdx = to_dev(dx, nx, dt), *gdw = to_dev(dw, nw, dt), *gdb = to_dev(db, OC, dt);
    df_conv2d_backward_ref(dx, dw, db, dy, x, w, B, C, H, W, OC, &g);
    double ms;
    RUN1(ms, df_cuda_conv2d_backward(ctx, dt, gdx, gdw, gdb, gdy, gx, gw, B, C, H, W, OC, &g));
    char what[96];
    snprintf(what, sizeof what, "conv2d backward %d->%d k%d s%d pad %d,%d,%d,%d dinp", C, OC, K,
             g.stride, g.pad_t, g.pad_l, g.pad_b, g.pad_r);
    compare(what, dt, gdx, dx, nx, TOL_BWD[di(dt)], ms);
    compare("  ... dweight", dt, gdw, dw, nw, TOL_BWD[di(dt)], ms);
    compare("  ... dbias", dt, gdb, db, OC, TOL_BWD[di(dt)], ms);
    df_cuda_free(ctx, gx), df_cuda_free(ctx, gw), df_cuda_free(ctx, gdy);
    df_cuda_free(ctx, gdx), df_cuda_free(ctx, gdw), df_cuda_free(ctx, gdb);
    free(x), free(w), free(dy), free(dx), free(dw), free(db);
}

static void test_attention_backward(df_dtype dt, int B, int Tq, int Tk, int NH, int HS, int causal)
{
    size_t nq = (size_t)B * Tq * NH * HS, nk = (size_t)B * Tk * NH * HS;
    float *q = rand_host(nq, 1.0f, dt), *k = rand_host(nk, 1.0f, dt), *v = rand_host(nk, 1.0f, dt);
    float *dy = rand_host(nq, 1.0f, dt), *o = xmalloc(nq * sizeof(float));
    float *dq = rand_host(nq, PREFILL, dt), *dk = rand_host(nk, PREFILL, dt);
    float *dv = rand_host(nk, PREFILL, dt);
    float scale = 1.0f / sqrtf((float)HS);
    // the forward's output as the device would hold it (rounded to dt)
    df_attention_forward_ref(o, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
    for (size_t i = 0; i < nq; i++)
        o[i] = round_to(o[i], dt);
    void *gq = to_dev(q, nq, dt), *gk = to_dev(k, nk, dt), *gv = to_dev(v, nk, dt);
    void *gdy = to_dev(dy, nq, dt), *go = to_dev(o, nq, dt);
    void *gdq = to_dev(dq, nq, dt), *gdk = to_dev(dk, nk, dt), *gdv = to_dev(dv, nk, dt);
    df_attention_backward_ref(dq, dk, dv, dy, q, k, v, o, B, Tq, Tk, NH, HS, scale, causal);
    double ms;
    RUN1(ms, df_cuda_attention_backward(ctx, dt, gdq, gdk, gdv, gdy, gq, gk, gv, go, B, Tq, Tk, NH,
                                        HS, scale, causal));
    char what[96];
    snprintf(what, sizeof what, "attention backward B%d %dx%d heads %dx%d%s dq", B, Tq, Tk, NH, HS,
             causal ? " causal" : "");
    compare(what, dt, gdq, dq, nq, TOL_BWD[di(dt)], ms);
    compare("  ... dk", dt, gdk, dk, nk, TOL_BWD[di(dt)], ms);
    compare("  ... dv", dt, gdv, dv, nk, TOL_BWD[di(dt)], ms);
    void *vs[] = {gq, gk, gv, gdy, go, gdq, gdk, gdv};
    for (int i = 0; i < 8; i++)
        df_cuda_free(ctx, vs[i]);
    free(q), free(k), free(v), free(dy), free(o), free(dq), free(dk), free(dv);
}

static void test_upsample_backward(df_dtype dt, int B, int C, int H, int W, int OH, int OW)
{
    size_t nx = (size_t)B * C * H * W, ny = (size_t)B * C * OH * OW;
    float *dy = rand_host(ny, 1.0f, dt), *dx = rand_host(nx, PREFILL, dt);
    void *gdy = to_dev(dy, ny, dt), *gdx = to_dev(dx, nx, dt);
    df_upsample_nearest_backward(dx, dy, B, C, H, W, OH, OW);
    double ms;
    RUN1(ms, df_cuda_upsample_nearest_backward(ctx, dt, gdx, gdy, B, C, H, W, OH, OW));
    char what[96];
    snprintf(what, sizeof what, "upsample backward %dx%d -> %dx%d", H, W, OH, OW);
    compare(what, dt, gdx, dx, nx, TOL_BWD[di(dt)], ms);
    df_cuda_free(ctx, gdy), df_cuda_free(ctx, gdx);
    free(dy), free(dx);
}

static void test_norm_backward(df_dtype dt, int group, int B, int C, int HW, int G)
{
    // layer norm: B rows of C (HW, G unused)
    size_t n = group ? (size_t)B * C * HW : (size_t)B * C;
    float *x = rand_host(n, 2.0f, dt), *ga = rand_host(C, 1.0f, dt), *dy = rand_host(n, 1.0f, dt);
    float *dx = rand_host(n, PREFILL, dt), *dg = rand_host(C, PREFILL, dt);
    float *db = rand_host(C, PREFILL, dt);
    void *gx = to_dev(x, n, dt), *gga = to_dev(ga, C, dt), *gdy = to_dev(dy, n, dt);
    void *gdx = to_dev(dx, n, dt), *gdg = to_dev(dg, C, dt), *gdb = to_dev(db, C, dt);
    double ms;
    char what[96];
    if (group) {
        df_groupnorm_backward_ref(dx, dg, db, dy, x, ga, B, C, HW, G, 1e-5f);
        RUN1(ms, df_cuda_groupnorm_backward(ctx, dt, gdx, gdg, gdb, gdy, gx, gga, B, C, HW, G,
                                            1e-5f));
        snprintf(what, sizeof what, "groupnorm backward B%d C%d HW%d G%d dinp", B, C, HW, G);
    } else {
        df_layernorm_backward_ref(dx, dg, db, dy, x, ga, B, C, 1e-5f);
        RUN1(ms, df_cuda_layernorm_backward(ctx, dt, gdx, gdg, gdb, gdy, gx, gga, B, C, 1e-5f));
        snprintf(what, sizeof what, "layernorm backward %dx%d dinp", B, C);
    }
    compare(what, dt, gdx, dx, n, TOL_BWD[di(dt)], ms);
    compare("  ... dgamma", dt, gdg, dg, C, TOL_BWD[di(dt)], ms);
    compare("  ... dbeta", dt, gdb, db, C, TOL_BWD[di(dt)], ms);
    df_cuda_free(ctx, gx), df_cuda_free(ctx, gga), df_cuda_free(ctx, gdy);
    df_cuda_free(ctx, gdx), df_cuda_free(ctx, gdg), df_cuda_free(ctx, gdb);
    free(x), free(ga), free(dy), free(dx), free(dg), free(db);
}

static void test_act_backward(df_dtype dt)
{
    size_t n = (size_t)320 * 1024 + 3;
    float *x = rand_host(n, 6.0f, dt), *dy = rand_host(n, 1.0f, dt);
    static const char *names[] = {"silu backward", "gelu backward", "quick_gelu backward"};
    for (int act = 0; act < 3; act++) {
        float *dx = rand_host(n, PREFILL, dt);
        void *gx = to_dev(x, n, dt), *gdy = to_dev(dy, n, dt), *gdx = to_dev(dx, n, dt);
        double ms;
        if (act == 0) {
            df_silu_backward_ref(dx, dy, x, n);
            RUN1(ms, df_cuda_silu_backward(ctx, dt, gdx, gdy, gx, n));
        } else if (act == 1) {
            df_gelu_backward_ref(dx, dy, x, n);
            RUN1(ms, df_cuda_gelu_backward(ctx, dt, gdx, gdy, gx, n));
        } else {   // one CPU version, checked against finite differences by test_ops_backward
            df_quick_gelu_backward(dx, dy, x, n);
            RUN1(ms, df_cuda_quick_gelu_backward(ctx, dt, gdx, gdy, gx, n));
        }
        compare(names[act], dt, gdx, dx, n, TOL_BWD[di(dt)], ms);
        df_cuda_free(ctx, gx), df_cuda_free(ctx, gdy), df_cuda_free(ctx, gdx);
        free(dx);
    }
    free(x), free(dy);
    int N = 1024, C = 1280;
    size_t ni = (size_t)N * 2 * C, no = (size_t)N * C;
    x = rand_host(ni, 3.0f, dt);
    dy = rand_host(no, 1.0f, dt);
    float *dx = rand_host(ni, PREFILL, dt);
    void *gx = to_dev(x, ni, dt), *gdy = to_dev(dy, no, dt), *gdx = to_dev(dx, ni, dt);
    df_geglu_backward_ref(dx, dy, x, N, C);
    double ms;
    RUN1(ms, df_cuda_geglu_backward(ctx, dt, gdx, gdy, gx, N, C));
    compare("geglu backward 1024x1280", dt, gdx, dx, ni, TOL_BWD[di(dt)], ms);
    df_cuda_free(ctx, gx), df_cuda_free(ctx, gdy), df_cuda_free(ctx, gdx);
    free(x), free(dy), free(dx);
}

/* ------------------------------------------- scheduler, LoRA, optimizer (fp32) */

static size_t count_diff(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return d;
}

static void test_ddim(const char *pred_name, int pred)
{
    // DDIMScheduler's defaults but clip_sample off, as in SD 2.1's config
    json_t *cfg = NULL;
    df_scheduler *s = NULL;
    CHECK(df_scheduler_parse_config("{\"clip_sample\": false}", &cfg) == DF_OK);
    CHECK(df_scheduler_create("ddim", cfg, pred_name, &s) == DF_OK);
    json_decref(cfg);
    if (!s)
        return;
    CHECK(df_scheduler_set_timesteps(s, 20) == DF_OK);
    const float *acp = df_scheduler_alphas_cumprod(s);
    int ratio = df_scheduler_num_train_timesteps(s) / 20;
    size_t n = (size_t)2 * 4 * 64 * 64;
    float *x = rand_host(n, 1.0f, DF_DTYPE_F32), *mo = rand_host(n, 1.0f, DF_DTYPE_F32);
    float *cpu = xmalloc(n * sizeof(float));
    void *dx = to_dev(x, n, DF_DTYPE_F32), *dmo = to_dev(mo, n, DF_DTYPE_F32), *dx0 = NULL;
    df_cuda_malloc(ctx, &dx0, n * sizeof(float));
    // the first three steps, each feeding its output to the next, as a sampler does
    for (int i = 0; i < 3; i++) {
        int t = (int)df_scheduler_timestep_int(s, i), prev = t - ratio;
        CHECK(prev >= 0);
        CHECK(df_scheduler_step(s, i, mo, x, cpu, n, NULL, NULL) == DF_OK);
        double ms;
        RUN1(ms, df_cuda_ddim_step(ctx, dx, dx0, dmo, dx, acp[t], acp[prev], pred, n));
        float *got = from_dev(dx, n, DF_DTYPE_F32), *x0 = from_dev(dx0, n, DF_DTYPE_F32);
        size_t d = count_diff(got, cpu, n), d0 = count_diff(x0, df_scheduler_pred_original(s), n);
        printf("ddim step %d (%s) 2x4x64x64: %zu of %zu values differ, x0 %zu  %.3f ms\n", i,
               pred_name, d, n, d0, ms);
        CHECK(d == 0 && d0 == 0);
        memcpy(x, cpu, n * sizeof(float));
        free(got), free(x0);
    }
    df_cuda_free(ctx, dx), df_cuda_free(ctx, dmo), df_cuda_free(ctx, dx0);
    free(x), free(mo), free(cpu);
    df_scheduler_free(s);
}

static void test_lora_merge(int OC, int R, int IN, float f)
{
    size_t nw = (size_t)OC * IN;
    float *w = rand_host(nw, 0.1f, DF_DTYPE_F32), *up = rand_host((size_t)OC * R, 0.1f, DF_DTYPE_F32);
    float *down = rand_host((size_t)R * IN, 0.1f, DF_DTYPE_F32);
    void *dw = to_dev(w, nw, DF_DTYPE_F32), *dup = to_dev(up, (size_t)OC * R, DF_DTYPE_F32);
    void *ddown = to_dev(down, (size_t)R * IN, DF_DTYPE_F32);
    // merge() of lib/models/lora.c (static there): double sums, scaled, added in float
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < IN; i++) {
            double acc = 0;
            for (int k = 0; k < R; k++)
                acc += (double)up[(size_t)o * R + k] * down[(size_t)k * IN + i];
            w[(size_t)o * IN + i] += (float)(f * acc);
        }
    double ms;
    RUN1(ms, df_cuda_lora_merge(ctx, dw, dup, ddown, OC, R, IN, f));
    char what[96];
    snprintf(what, sizeof what, "lora merge %dx%d rank %d", OC, IN, R);
    compare(what, DF_DTYPE_F32, dw, w, nw, 1e-5, ms);
    df_cuda_free(ctx, dw), df_cuda_free(ctx, dup), df_cuda_free(ctx, ddown);
    free(w), free(up), free(down);
}

static void test_adamw(void)
{
    size_t n = 100003;
    float *p = rand_host(n, 1.0f, DF_DTYPE_F32), *g = xmalloc(n * sizeof(float));
    void *dp = to_dev(p, n, DF_DTYPE_F32), *dg = NULL, *dm = NULL, *dv = NULL;
    df_cuda_malloc(ctx, &dg, n * sizeof(float));
    df_cuda_malloc(ctx, &dm, n * sizeof(float));
    df_cuda_malloc(ctx, &dv, n * sizeof(float));
    df_cuda_memzero(ctx, dm, n * sizeof(float));
    df_cuda_memzero(ctx, dv, n * sizeof(float));
    df_adamw o;
    CHECK(df_adamw_init(&o, n) == DF_OK);
    df_adamw_hparams h = {1e-4, 0.9, 0.999, 1e-8, 1e-2};
    for (int step = 0; step < 5; step++) {
        for (size_t i = 0; i < n; i++)
            g[i] = 1e-3f * frand();
        df_cuda_upload(ctx, dg, g, n * sizeof(float));
        df_adamw_begin_step(&o);
        df_adamw_update(&o, 0, p, g, n, &h);
        double ms;
        RUN1(ms, df_cuda_adamw_update(ctx, dp, dg, dm, dv, n, o.step, h.lr, h.beta1, h.beta2, h.eps,
                                      h.weight_decay));
        float *gp = from_dev(dp, n, DF_DTYPE_F32), *gm = from_dev(dm, n, DF_DTYPE_F32);
        float *gv = from_dev(dv, n, DF_DTYPE_F32);
        size_t d = count_diff(gp, p, n) + count_diff(gm, o.m, n) + count_diff(gv, o.v, n);
        printf("adamw step %ld, %zu params: %zu of p, m, v differ  %.3f ms\n", o.step, n, d, ms);
        CHECK(d == 0);
        free(gp), free(gm), free(gv);
    }
    df_adamw_free(&o);
    df_cuda_free(ctx, dp), df_cuda_free(ctx, dg), df_cuda_free(ctx, dm), df_cuda_free(ctx, dv);
    free(p), free(g);
}

/* ------------------------------------------- context, conversions, errors */

static void test_conversions(void)
{
    // values around fp16's and bf16's edges: ties, subnormals, overflow
    float v[] = {0.0f, -0.0f, 1.0f, 1.0009765625f, 1.00048828125f, 1.00146484375f, 65504.0f,
                 65519.0f, 65520.0f, 1e-7f, 5.9604645e-8f, 2.9802322e-8f, 3.0e-8f, -1e-5f,
                 1.00390625f, 1.01171875f, 3.14159265f, 1e30f, -1e38f, INFINITY, -INFINITY};
    size_t n = sizeof v / sizeof v[0];
    for (int k = 1; k < 3; k++) {
        df_dtype dt = DTYPES[k];
        void *d = NULL;
        df_cuda_malloc(ctx, &d, n * 2);
        CHECK(df_cuda_upload_f32(ctx, d, dt, v, n) == DF_OK);
        float *got = from_dev(d, n, dt);
        for (size_t i = 0; i < n; i++) {
            float want = round_to(v[i], dt);
            CHECK_MSG(memcmp(&got[i], &want, 4) == 0, "%s of %g: %g, want %g", df_compute_dtype_name(dt),
                      v[i], got[i], want);
        }
        free(got);
        df_cuda_free(ctx, d);
    }
    // a random million through each dtype, against the host rounding
    size_t m = 1 << 20;
    float *x = xmalloc(m * sizeof(float));
    for (size_t i = 0; i < m; i++)
        x[i] = ldexpf(frand(), (int)(i % 40) - 30);
    for (int k = 1; k < 3; k++) {
        df_dtype dt = DTYPES[k];
        void *d = NULL;
        df_cuda_malloc(ctx, &d, m * 2);
        CHECK(df_cuda_upload_f32(ctx, d, dt, x, m) == DF_OK);
        float *got = from_dev(d, m, dt);
        size_t bad = 0;
        for (size_t i = 0; i < m; i++) {
            float want = round_to(x[i], dt);
            bad += memcmp(&got[i], &want, 4) != 0;
        }
        printf("conversion fp32 -> %s -> fp32, 2^20 values: %zu differ from the host rounding\n",
               df_compute_dtype_name(dt), bad);
        CHECK(bad == 0);
        free(got);
        df_cuda_free(ctx, d);
    }
    free(x);
}

static void test_arena_and_errors(void)
{
    df_cuda_arena a;
    CHECK(df_cuda_arena_init(ctx, &a, 1 << 20) == DF_OK);
    void *p1, *p2, *p3;
    CHECK(df_cuda_arena_alloc(&a, 100, &p1) == DF_OK);
    CHECK(df_cuda_arena_alloc(&a, 1000, &p2) == DF_OK);
    CHECK((char *)p2 - (char *)p1 == 256);
    size_t mark = a.used;
    CHECK(df_cuda_arena_alloc(&a, 1 << 20, &p3) == DF_ERR_NOMEM && p3 == NULL);
    CHECK(df_cuda_arena_alloc(&a, 4096, &p3) == DF_OK);
    df_cuda_arena_release(&a, mark);
    CHECK(a.used == mark && a.peak >= mark + 4096);
    df_cuda_arena_free(ctx, &a);

    void *huge = NULL;
    CHECK(df_cuda_malloc(ctx, &huge, (size_t)1 << 50) == DF_ERR_NOMEM && huge == NULL);
    CHECK(df_cuda_attention_forward(ctx, DF_DTYPE_F32, NULL, NULL, NULL, NULL, 1, 4, 4, 1, 160,
                                    1.0f, 0) == DF_ERR_UNSUPPORTED);
    CHECK(df_cuda_linear_forward(ctx, (df_dtype)7, NULL, NULL, NULL, NULL, 1, 1, 1) == DF_ERR_ARG);
    CHECK(df_cuda_linear_forward(NULL, DF_DTYPE_F32, NULL, NULL, NULL, NULL, 1, 1, 1) == DF_ERR_ARG);
    // a failing CUDA call (the staging buffer for 2^48 values cannot be
    // allocated; an error that does not poison the context, unlike a fault):
    // recorded with its expression, file and line, and not fatal
    float h[4] = {0};
    void *d = NULL;
    CHECK(df_cuda_malloc(ctx, &d, 16) == DF_OK);
    df_status st = df_cuda_upload_f32(ctx, d, DF_DTYPE_F16, h, (size_t)1 << 48);
    printf("a failing call: %s\n", df_last_error());
    CHECK(st == DF_ERR_CUDA);
    CHECK(strstr(df_last_error(), "cudaMalloc") != NULL);
    CHECK(strstr(df_last_error(), "cuda_context.cu:") != NULL);
    CHECK(df_cuda_sync(ctx) == DF_OK);   /* the context still works */
    CHECK(df_cuda_upload_f32(ctx, d, DF_DTYPE_F16, h, 4) == DF_OK);
    df_cuda_free(ctx, d);
}

/* DF_CUDA_TEST=regex runs only the cases whose "<group> <dtype>" matches
 * (groups: conversions, linear, conv2d, attention, norm, elementwise,
 * <op>_backward, other_backward, ddim, lora, adamw, errors; e.g.
 * "^attention fp16", "conv2d.*bf16"): to rerun a subset on a GPU, or one
 * under compute-sanitizer. */
static regex_t only;
static int have_only;
static df_dtype cur_dt = DF_DTYPE_F32;

static int want(const char *group)
{
    char key[96];
    snprintf(key, sizeof key, "%s %s", group, df_compute_dtype_name(cur_dt));
    return !have_only || regexec(&only, key, 0, NULL, 0) == 0;
}

int main(void)
{
    int ngpu = df_cuda_device_count();
    if (ngpu == 0) {
        printf("skipped: no GPU (%s)\n", df_last_error());
        return 77;
    }
    if (df_cuda_init(0, &ctx) != DF_OK) {
        fprintf(stderr, "test_cuda_ops: %s\n", df_last_error());
        return 1;
    }
    printf("GPU 0 of %d: %s\n", ngpu, df_cuda_device_name(ctx));
    const char *re = getenv("DF_CUDA_TEST");
    if (re && *re) {
        if (regcomp(&only, re, REG_EXTENDED | REG_NOSUB) != 0) {
            fprintf(stderr, "test_cuda_ops: DF_CUDA_TEST: bad regex '%s'\n", re);
            return 2;
        }
        have_only = 1;
        printf("only the cases matching '%s'\n", re);
    }
    df_dtype dt;
    CHECK(df_compute_dtype_parse("bf16", &dt) == DF_OK && dt == DF_DTYPE_BF16);
    if (want("conversions"))
        test_conversions();
    for (int k = 0; k < 3; k++) {
        dt = cur_dt = DTYPES[k];
        if (want("linear")) {
            test_linear(dt, 4096, 320, 320, 1);   // a 64x64 latent's attention projections
            test_linear(dt, 77, 1024, 320, 0);     // cross-attention k/v from the text states
            test_linear(dt, 37, 19, 23, 1);        // odd sizes
        }
        if (want("conv2d")) {
            test_conv2d(dt, 1, 320, 64, 64, 320, (df_conv2d_geom){3, 1, 1, 1, 1, 1});
            test_conv2d(dt, 1, 128, 64, 64, 128, (df_conv2d_geom){3, 2, 0, 0, 1, 1});  // VAE down
            test_conv2d(dt, 2, 640, 32, 32, 320, (df_conv2d_geom){1, 1, 0, 0, 0, 0});  // shortcut
            test_conv2d(dt, 1, 4, 64, 64, 320, (df_conv2d_geom){3, 1, 1, 1, 1, 1});    // conv_in
        }
        if (want("attention")) {
            test_attention(dt, 1, 4096, 4096, 5, 64, 0, 128);   // SD 2.1 self-attention, 512 px
            test_attention(dt, 1, 4096, 4096, 8, 40, 0, 128);   // SD 1.x heads of 40
            test_attention(dt, 2, 4096, 77, 5, 64, 0, 4096);    // cross-attention
            test_attention(dt, 2, 77, 77, 16, 64, 1, 77);       // CLIP ViT-H, causal
            test_attention(dt, 1, 100, 333, 2, 128, 0, 100);    // head size 128, odd lengths
            test_attention(dt, 1, 50, 50, 3, 72, 1, 50);        // odd head size, causal
        }
        if (want("norm")) {
            test_groupnorm(dt, 1, 320, 4096, 32, 0);
            test_groupnorm(dt, 2, 640, 256, 32, 1);
            test_layernorm(dt, 4096, 320);
            test_layernorm(dt, 77, 1024);
        }
        if (want("elementwise")) {
            test_elementwise(dt);
            test_softmax(dt, 5 * 64, 4096);
            test_softmax(dt, 7, 77);
            test_small_ops(dt);
        }
        if (want("linear_backward"))
            test_linear_backward(dt, 1024, 320, 640);
        if (want("conv2d_backward")) {
            test_conv2d_backward(dt, 1, 64, 32, 32, 64, (df_conv2d_geom){3, 1, 1, 1, 1, 1});
            test_conv2d_backward(dt, 2, 32, 32, 32, 48, (df_conv2d_geom){3, 2, 0, 0, 1, 1});
        }
        if (want("attention_backward")) {
            test_attention_backward(dt, 1, 1024, 1024, 5, 64, 0);   // self-attention, 256 px
            test_attention_backward(dt, 2, 1024, 77, 5, 64, 0);     // cross-attention
            test_attention_backward(dt, 2, 77, 77, 16, 64, 1);      // CLIP, causal
            test_attention_backward(dt, 1, 45, 70, 3, 72, 0);       // odd sizes
            test_attention_backward(dt, 1, 70, 70, 2, 128, 1);      // head size 128, causal
        }
        if (want("other_backward")) {
            test_upsample_backward(dt, 2, 320, 32, 32, 64, 64);   // the UNet's 2x upsamplers
            test_upsample_backward(dt, 1, 16, 17, 13, 34, 29);    // odd ratio
            test_upsample_backward(dt, 1, 16, 9, 10, 5, 4);       // fewer outputs than inputs
            test_norm_backward(dt, 1, 2, 320, 1024, 32);
            test_norm_backward(dt, 0, 1024, 320, 0, 0);
            test_act_backward(dt);
        }
    }
    cur_dt = DF_DTYPE_F32;
    if (want("ddim")) {
        test_ddim("epsilon", 0);
        test_ddim("v_prediction", 1);
    }
    if (want("lora")) {
        test_lora_merge(320, 4, 320, 0.75f);
        test_lora_merge(1280, 64, 2880, 1.0f);
    }
    if (want("adamw"))
        test_adamw();
    if (want("errors"))
        test_arena_and_errors();
    df_cuda_free_ctx(ctx);
    if (have_only)
        regfree(&only);
    UNIT_END();
}
