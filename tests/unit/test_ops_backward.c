/* test_ops_backward.c - the backward ops of lib/ops/ops_backward.h.
 *
 * 1. Each reference backward (ops_backward_ref.c) against central finite
 *    differences of the forward reference (ops_ref.c): for a random R the
 *    loss L = sum(out * R) has dL/dout = R, so the reference backward run
 *    with dout = R must give dL/dx, which is compared with
 *    (L(x + h) - L(x - h)) / 2h on every element of small tensors or a random
 *    sample of larger ones, relative to max |gradient|.
 * 2. Each fast backward (ops_backward.c) against its reference on random
 *    inputs with odd sizes, with 1, 2 and 3 threads, with its gradient
 *    buffers prefilled with PREFILL (subtracted before comparing, so that an
 *    op that overwrote instead of accumulating fails), and with some
 *    gradients NULL; error relative to max(1, max |ref|).
 * 3. The fast attention and convolution backward run twice give
 *    bit-identical results.
 * Prints the max error per case. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_backward.h"
#include "unit.h"

static uint64_t rng_state = 0x243F6A8885A308D3ull;

/* 64 random bits from a xorshift*; fixed seed, so failures repeat. */
static uint64_t rand_u64(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [-1,1). */
static float frand(void)
{
    return (float)((rand_u64() >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

static float *alloc_floats(size_t n)
{
    float *p = malloc(n * sizeof(float) + 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float *rand_buf(size_t n, float scale)
{
    float *p = alloc_floats(n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * frand();
    return p;
}

static float *filled(size_t n, float v)
{
    float *p = alloc_floats(n);
    for (size_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* ------------------------------------------------ 1. finite differences */

/* A forward reference as a function of its inputs: fwd fills out (nout)
 * from whichever of x, w, b, k, v and the sizes the op takes. */
typedef struct fd_op fd_op;
struct fd_op {
    void (*fwd)(const fd_op *op);
    float *out, *R;
    size_t nout;
    float *x, *w, *b, *k, *v;
    int B, C, H, W, OC, N, G, Tq, Tk, NH, HS, causal, OH, OW;
    float eps, scale;
    df_conv2d_geom g;
};

static double loss(const fd_op *op)
{
    op->fwd(op);
    double L = 0.0;
    for (size_t i = 0; i < op->nout; i++)
        L += (double)op->out[i] * op->R[i];
    return L;
}

/* dL/dparam by central differences with step h at every element of param
 * (n of them) when n <= 64, else at 64 random ones, against grad. */
static void fd_check(const char *what, const fd_op *op, float *param, const float *grad, size_t n,
                     float h, double tol)
{
    double err = 0.0, gmax = max_abs(grad, n);
    size_t count = n <= 64 ? n : 64;
    for (size_t s = 0; s < count; s++) {
        size_t i = n <= 64 ? s : (size_t)(rand_u64() % n);
        float x0 = param[i], xp = x0 + h, xm = x0 - h;
        param[i] = xp;
        double lp = loss(op);
        param[i] = xm;
        double lm = loss(op);
        param[i] = x0;
        double fd = (lp - lm) / ((double)xp - (double)xm);
        err = fmax(err, fabs(fd - grad[i]));
    }
    double rel = err / fmax(gmax, 1e-30);
    printf("fd %-56s n=%-5zu max|g| %-8.3g err %.3g rel %.3g\n", what, count, gmax, err, rel);
    CHECK_MSG(rel <= tol && gmax > 0, "%s: finite differences rel err %g > tol %g (max|g| %g)",
              what, rel, tol, gmax);
}

/* Sets up out and R (nout) for op, runs nothing. */
static void fd_setup(fd_op *op, size_t nout)
{
    op->nout = nout;
    op->out = alloc_floats(nout);
    op->R = rand_buf(nout, 1);
}

static void fd_free(fd_op *op)
{
    free(op->out), free(op->R), free(op->x), free(op->w), free(op->b), free(op->k), free(op->v);
}

static void fwd_linear(const fd_op *op)
{
    df_linear_forward_ref(op->out, op->x, op->w, op->b, op->N, op->C, op->OC);
}

static void fd_linear(int N, int C, int OC)
{
    fd_op op = {.fwd = fwd_linear, .N = N, .C = C, .OC = OC};
    op.x = rand_buf((size_t)N * C, 1), op.w = rand_buf((size_t)OC * C, 1), op.b = rand_buf(OC, 1);
    fd_setup(&op, (size_t)N * OC);
    float *dx = calloc((size_t)N * C, sizeof(float)), *dw = calloc((size_t)OC * C, sizeof(float));
    float *db = calloc(OC, sizeof(float));
    df_linear_backward_ref(dx, dw, db, op.R, op.x, op.w, N, C, OC);
    char name[96];
    snprintf(name, sizeof name, "linear N=%d C=%d OC=%d: dinp", N, C, OC);
    fd_check(name, &op, op.x, dx, (size_t)N * C, 0.1f, 1e-3);
    fd_check("  ... dweight", &op, op.w, dw, (size_t)OC * C, 0.1f, 1e-3);
    fd_check("  ... dbias", &op, op.b, db, OC, 0.1f, 1e-3);
    fd_free(&op), free(dx), free(dw), free(db);
}

static void fwd_conv(const fd_op *op)
{
    df_conv2d_forward_ref(op->out, op->x, op->w, op->b, op->B, op->C, op->H, op->W, op->OC, &op->g);
}

static void fd_conv(int B, int C, int H, int W, int OC, df_conv2d_geom g)
{
    fd_op op = {.fwd = fwd_conv, .B = B, .C = C, .H = H, .W = W, .OC = OC, .g = g};
    int OH, OW;
    df_conv2d_out_size(&g, H, W, &OH, &OW);
    size_t nx = (size_t)B * C * H * W, nw = (size_t)OC * C * g.K * g.K;
    op.x = rand_buf(nx, 1), op.w = rand_buf(nw, 1), op.b = rand_buf(OC, 1);
    fd_setup(&op, (size_t)B * OC * OH * OW);
    float *dx = calloc(nx, sizeof(float)), *dw = calloc(nw, sizeof(float));
    float *db = calloc(OC, sizeof(float));
    df_conv2d_backward_ref(dx, dw, db, op.R, op.x, op.w, B, C, H, W, OC, &g);
    char name[96];
    snprintf(name, sizeof name, "conv B=%d C=%d %dx%d OC=%d K=%d s=%d pad=%d,%d,%d,%d: dinp", B, C,
             H, W, OC, g.K, g.stride, g.pad_t, g.pad_l, g.pad_b, g.pad_r);
    fd_check(name, &op, op.x, dx, nx, 0.1f, 1e-3);
    fd_check("  ... dweight", &op, op.w, dw, nw, 0.1f, 1e-3);
    fd_check("  ... dbias", &op, op.b, db, OC, 0.1f, 1e-3);
    // in these geometries every input pixel is under some window, so none
    // may be left without a gradient (where the sampled differences could
    // agree with a missing one by chance: both 0)
    size_t zero = 0;
    for (size_t i = 0; i < nx; i++)
        zero += dx[i] == 0.0f;
    CHECK_MSG(zero == 0, "conv: %zu of %zu input gradients are 0", zero, nx);
    fd_free(&op), free(dx), free(dw), free(db);
}

static void fwd_groupnorm(const fd_op *op)
{
    df_groupnorm_forward_ref(op->out, op->x, op->w, op->b, op->B, op->C, op->H, op->G, op->eps);
}

static void fd_groupnorm(int B, int C, int HW, int G)
{
    fd_op op = {.fwd = fwd_groupnorm, .B = B, .C = C, .H = HW, .G = G, .eps = 1e-5f};
    size_t n = (size_t)B * C * HW;
    op.x = rand_buf(n, 2), op.w = rand_buf(C, 1), op.b = rand_buf(C, 1);
    fd_setup(&op, n);
    float *dx = calloc(n, sizeof(float)), *dg = calloc(C, sizeof(float));
    float *db = calloc(C, sizeof(float));
    df_groupnorm_backward_ref(dx, dg, db, op.R, op.x, op.w, B, C, HW, G, op.eps);
    char name[96];
    snprintf(name, sizeof name, "groupnorm B=%d C=%d HW=%d G=%d: dinp", B, C, HW, G);
    fd_check(name, &op, op.x, dx, n, 1e-2f, 1e-2);
    fd_check("  ... dgamma", &op, op.w, dg, C, 0.1f, 1e-3);
    fd_check("  ... dbeta", &op, op.b, db, C, 0.1f, 1e-3);
    fd_free(&op), free(dx), free(dg), free(db);
}

static void fwd_layernorm(const fd_op *op)
{
    df_layernorm_forward_ref(op->out, op->x, op->w, op->b, op->N, op->C, op->eps);
}

static void fd_layernorm(int N, int C)
{
    fd_op op = {.fwd = fwd_layernorm, .N = N, .C = C, .eps = 1e-5f};
    size_t n = (size_t)N * C;
    op.x = rand_buf(n, 2), op.w = rand_buf(C, 1), op.b = rand_buf(C, 1);
    fd_setup(&op, n);
    float *dx = calloc(n, sizeof(float)), *dg = calloc(C, sizeof(float));
    float *db = calloc(C, sizeof(float));
    df_layernorm_backward_ref(dx, dg, db, op.R, op.x, op.w, N, C, op.eps);
    char name[96];
    snprintf(name, sizeof name, "layernorm N=%d C=%d: dinp", N, C);
    fd_check(name, &op, op.x, dx, n, 1e-2f, 1e-2);
    fd_check("  ... dgamma", &op, op.w, dg, C, 0.1f, 1e-3);
    fd_check("  ... dbeta", &op, op.b, db, C, 0.1f, 1e-3);
    fd_free(&op), free(dx), free(dg), free(db);
}

/* quick_gelu has no forward in ops.h (clip.c has its own): x sigmoid(1.702 x). */
static void quick_gelu_forward(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)(inp[i] / (1.0 + exp(-1.702 * inp[i])));
}

static void fwd_silu(const fd_op *op)
{
    df_silu_forward_ref(op->out, op->x, op->nout);
}

static void fwd_gelu(const fd_op *op)
{
    df_gelu_forward_ref(op->out, op->x, op->nout);
}

static void fwd_quick_gelu(const fd_op *op)
{
    quick_gelu_forward(op->out, op->x, op->nout);
}

static void fwd_geglu(const fd_op *op)
{
    df_geglu_forward_ref(op->out, op->x, op->N, op->C);
}

static void fd_elementwise(size_t n)
{
    const char *names[3] = {"silu", "gelu", "quick_gelu"};
    void (*fwds[3])(const fd_op *) = {fwd_silu, fwd_gelu, fwd_quick_gelu};
    void (*bwds[3])(float *, const float *, const float *, size_t) = {
        df_silu_backward_ref, df_gelu_backward_ref, df_quick_gelu_backward};
    for (int f = 0; f < 3; f++) {
        fd_op op = {.fwd = fwds[f]};
        op.x = rand_buf(n, 5);
        fd_setup(&op, n);
        float *dx = calloc(n, sizeof(float));
        bwds[f](dx, op.R, op.x, n);
        char name[96];
        snprintf(name, sizeof name, "%s n=%zu x in [-5,5)", names[f], n);
        fd_check(name, &op, op.x, dx, n, 1e-2f, 1e-3);
        fd_free(&op), free(dx);
    }
    fd_op op = {.fwd = fwd_geglu, .N = 5, .C = 9};
    op.x = rand_buf(5 * 2 * 9, 4);
    fd_setup(&op, 5 * 9);
    float *dx = calloc(5 * 2 * 9, sizeof(float));
    df_geglu_backward_ref(dx, op.R, op.x, 5, 9);
    fd_check("geglu N=5 C=9", &op, op.x, dx, 5 * 2 * 9, 1e-2f, 1e-3);
    fd_free(&op), free(dx);
}

static void fwd_attention(const fd_op *op)
{
    df_attention_forward_ref(op->out, op->x, op->k, op->v, op->B, op->Tq, op->Tk, op->NH, op->HS,
                             op->scale, op->causal);
}

static void fd_attention(int B, int Tq, int Tk, int NH, int HS, int causal)
{
    int C = NH * HS;
    fd_op op = {.fwd = fwd_attention, .B = B, .Tq = Tq, .Tk = Tk, .NH = NH, .HS = HS,
                .causal = causal, .scale = 1.0f / sqrtf((float)HS)};
    size_t nq = (size_t)B * Tq * C, nk = (size_t)B * Tk * C;
    op.x = rand_buf(nq, 2), op.k = rand_buf(nk, 2), op.v = rand_buf(nk, 1);
    fd_setup(&op, nq);
    op.fwd(&op);   // out: the forward's output, as the backward takes it
    float *out = alloc_floats(nq);
    memcpy(out, op.out, sizeof(float) * nq);
    float *dq = calloc(nq, sizeof(float)), *dk = calloc(nk, sizeof(float));
    float *dv = calloc(nk, sizeof(float));
    df_attention_backward_ref(dq, dk, dv, op.R, op.x, op.k, op.v, out, B, Tq, Tk, NH, HS,
                              op.scale, causal);
    char name[96];
    snprintf(name, sizeof name, "attention B=%d Tq=%d Tk=%d NH=%d HS=%d causal=%d: dq", B, Tq, Tk,
             NH, HS, causal);
    fd_check(name, &op, op.x, dq, nq, 1e-2f, 1e-2);
    fd_check("  ... dk", &op, op.k, dk, nk, 1e-2f, 1e-2);
    fd_check("  ... dv", &op, op.v, dv, nk, 1e-2f, 1e-2);
    fd_free(&op), free(out), free(dq), free(dk), free(dv);
}

static void fwd_upsample(const fd_op *op)
{
    df_upsample_nearest_forward(op->out, op->x, op->B, op->C, op->H, op->W, op->OH, op->OW);
}

static void fd_upsample(int B, int C, int H, int W, int OH, int OW)
{
    fd_op op = {.fwd = fwd_upsample, .B = B, .C = C, .H = H, .W = W, .OH = OH, .OW = OW};
    size_t nx = (size_t)B * C * H * W;
    op.x = rand_buf(nx, 1);
    fd_setup(&op, (size_t)B * C * OH * OW);
    float *dx = calloc(nx, sizeof(float));
    df_upsample_nearest_backward(dx, op.R, B, C, H, W, OH, OW);
    char name[96];
    snprintf(name, sizeof name, "upsample B=%d C=%d %dx%d -> %dx%d", B, C, H, W, OH, OW);
    fd_check(name, &op, op.x, dx, nx, 0.1f, 1e-4);
    fd_free(&op), free(dx);
}

static void test_finite_differences(void)
{
    df_conv2d_geom k3 = {3, 1, 1, 1, 1, 1}, k1 = {1, 1, 0, 0, 0, 0};
    df_conv2d_geom s2p = {3, 2, 1, 1, 1, 1}, s2 = {3, 2, 0, 0, 1, 1};
    fd_linear(5, 7, 4);
    fd_linear(13, 19, 11);
    fd_conv(2, 3, 7, 6, 4, k3);
    fd_conv(2, 5, 5, 4, 3, k1);
    fd_conv(1, 3, 7, 6, 4, s2p);
    fd_conv(1, 3, 8, 7, 4, s2p);
    fd_conv(1, 3, 7, 6, 4, s2);
    fd_conv(2, 3, 8, 9, 2, s2);
    fd_groupnorm(2, 6, 10, 3);
    fd_groupnorm(1, 4, 25, 1);
    fd_layernorm(4, 13);
    fd_elementwise(64);
    fd_attention(2, 5, 7, 2, 3, 0);
    fd_attention(1, 9, 4, 2, 5, 0);
    fd_attention(2, 7, 7, 2, 3, 1);
    fd_attention(1, 7, 5, 1, 4, 1);   // causal, Tq > Tk: the last queries see every key
    fd_attention(1, 4, 9, 2, 3, 1);   // causal, Tq < Tk: keys past Tq are seen by no query
    fd_upsample(2, 2, 3, 4, 6, 8);
    fd_upsample(1, 2, 5, 4, 9, 7);
    fd_upsample(1, 1, 6, 5, 4, 3);    // "upsampling" to fewer pixels drops some
}

/* ------------------------------------------------ 2. fast against reference */

/* Thread counts each fast version runs with (3: uneven shares). */
static const int thread_counts[] = {1, 2, 3};
enum { NTC = 3 };
static const float PREFILL = 0.375f;

/* Error of fast (which started at PREFILL) against ref (which started at 0),
 * relative to max(1, max|ref|); fast is left holding the difference. */
static double acc_err(float *fast, const float *ref, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fast[i] -= PREFILL;
    return unit_max_abs_diff(fast, ref, n) / fmax(1.0, max_abs(ref, n));
}

static void report(const char *what, double rel, double tol)
{
    printf("%-64s max rel err %.3g (threads 1-3)\n", what, rel);
    CHECK_MSG(rel <= tol, "%s: rel err %g > tol %g", what, rel, tol);
}

static void refill(float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = PREFILL;
}

static void test_linear(int N, int C, int OC)
{
    size_t nx = (size_t)N * C, nw = (size_t)OC * C;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 0.5f), *dy = rand_buf((size_t)N * OC, 1);
    float *rx = calloc(nx, sizeof(float)), *rw = calloc(nw, sizeof(float));
    float *rb = calloc(OC, sizeof(float));
    float *fx = alloc_floats(nx), *fw = alloc_floats(nw), *fb = alloc_floats(OC);
    df_linear_backward_ref(rx, rw, rb, dy, x, w, N, C, OC);
    double ex = 0, ew = 0, eb = 0, ex_only = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(fx, nx), refill(fw, nw), refill(fb, OC);
        df_linear_backward(fx, fw, fb, dy, x, w, N, C, OC);
        ex = fmax(ex, acc_err(fx, rx, nx));
        ew = fmax(ew, acc_err(fw, rw, nw));
        eb = fmax(eb, acc_err(fb, rb, OC));
        refill(fx, nx);   // frozen weight and no bias: inp not needed
        df_linear_backward(fx, NULL, NULL, dy, NULL, w, N, C, OC);
        ex_only = fmax(ex_only, acc_err(fx, rx, nx));
    }
    char name[96];
    snprintf(name, sizeof name, "linear N=%d C=%d OC=%d: dinp", N, C, OC);
    report(name, ex, 1e-5);
    report("  ... dweight", ew, 1e-5);
    report("  ... dbias", eb, 1e-5);
    report("  ... dinp alone (dweight, dbias, inp NULL)", ex_only, 1e-5);
    free(x), free(w), free(dy), free(rx), free(rw), free(rb), free(fx), free(fw), free(fb);
}

static void test_conv(int B, int C, int H, int W, int OC, df_conv2d_geom g, double tol)
{
    int OH, OW;
    df_conv2d_out_size(&g, H, W, &OH, &OW);
    size_t nx = (size_t)B * C * H * W, nw = (size_t)OC * C * g.K * g.K;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 0.3f), *dy = rand_buf((size_t)B * OC * OH * OW, 1);
    float *rx = calloc(nx, sizeof(float)), *rw = calloc(nw, sizeof(float));
    float *rb = calloc(OC, sizeof(float));
    float *fx = alloc_floats(nx), *fw = alloc_floats(nw), *fb = alloc_floats(OC);
    df_conv2d_backward_ref(rx, rw, rb, dy, x, w, B, C, H, W, OC, &g);
    double ex = 0, ew = 0, eb = 0, ex_only = 0, ew_only = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(fx, nx), refill(fw, nw), refill(fb, OC);
        df_conv2d_backward(fx, fw, fb, dy, x, w, B, C, H, W, OC, &g);
        ex = fmax(ex, acc_err(fx, rx, nx));
        ew = fmax(ew, acc_err(fw, rw, nw));
        eb = fmax(eb, acc_err(fb, rb, OC));
        refill(fx, nx);   // frozen conv: inp not needed
        df_conv2d_backward(fx, NULL, NULL, dy, NULL, w, B, C, H, W, OC, &g);
        ex_only = fmax(ex_only, acc_err(fx, rx, nx));
        refill(fw, nw);   // first layer: no dinp, so no weight needed
        df_conv2d_backward(NULL, fw, NULL, dy, x, NULL, B, C, H, W, OC, &g);
        ew_only = fmax(ew_only, acc_err(fw, rw, nw));
    }
    char name[96];
    snprintf(name, sizeof name, "conv B=%d C=%d %dx%d OC=%d K=%d s=%d pad=%d,%d,%d,%d: dinp", B, C,
             H, W, OC, g.K, g.stride, g.pad_t, g.pad_l, g.pad_b, g.pad_r);
    report(name, ex, tol);
    report("  ... dweight", ew, 1e-5);
    report("  ... dbias", eb, 1e-5);
    report("  ... dinp alone", ex_only, tol);
    report("  ... dweight alone", ew_only, 1e-5);
    free(x), free(w), free(dy), free(rx), free(rw), free(rb), free(fx), free(fw), free(fb);
}

/* A 3x3 convolution big enough for df_conv2d_forward's Winograd paths,
 * which the stride-1 input gradient goes through: forced to F(4x4, 3x3),
 * F(2x2, 3x3), off, then the automatic choice. */
static void test_conv_winograd(void)
{
    df_conv2d_geom k3 = {3, 1, 1, 1, 1, 1};
    const int modes[] = {4, 2, 0, -1};
    for (int m = 0; m < 4; m++) {
        df_ops_set_winograd(modes[m]);
        printf("-- winograd mode %d\n", modes[m]);
        test_conv(1, 32, 40, 40, 36, k3, modes[m] == 0 ? 1e-5 : 1e-4);
    }
    df_ops_set_winograd(-1);
}

static void test_groupnorm(int B, int C, int HW, int G, float offset)
{
    size_t n = (size_t)B * C * HW;
    float *x = rand_buf(n, 2), *ga = rand_buf(C, 1), *dy = rand_buf(n, 1);
    for (size_t i = 0; i < n; i++)
        x[i] += offset;   // a large mean: the statistics must not lose it
    float *rx = calloc(n, sizeof(float)), *rg = calloc(C, sizeof(float));
    float *rb = calloc(C, sizeof(float));
    float *fx = alloc_floats(n), *fg = alloc_floats(C), *fb = alloc_floats(C);
    df_groupnorm_backward_ref(rx, rg, rb, dy, x, ga, B, C, HW, G, 1e-5f);
    double ex = 0, eg = 0, eb = 0, ex_only = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(fx, n), refill(fg, C), refill(fb, C);
        df_groupnorm_backward(fx, fg, fb, dy, x, ga, B, C, HW, G, 1e-5f);
        ex = fmax(ex, acc_err(fx, rx, n));
        eg = fmax(eg, acc_err(fg, rg, C));
        eb = fmax(eb, acc_err(fb, rb, C));
        refill(fx, n);
        df_groupnorm_backward(fx, NULL, NULL, dy, x, ga, B, C, HW, G, 1e-5f);
        ex_only = fmax(ex_only, acc_err(fx, rx, n));
    }
    char name[96];
    snprintf(name, sizeof name, "groupnorm B=%d C=%d HW=%d G=%d offset=%g: dinp", B, C, HW, G,
             offset);
    report(name, ex, 1e-5);
    report("  ... dgamma", eg, 1e-5);
    report("  ... dbeta", eb, 1e-5);
    report("  ... dinp alone", ex_only, 1e-5);
    free(x), free(ga), free(dy), free(rx), free(rg), free(rb), free(fx), free(fg), free(fb);
}

static void test_layernorm(int N, int C, float offset)
{
    size_t n = (size_t)N * C;
    float *x = rand_buf(n, 2), *ga = rand_buf(C, 1), *dy = rand_buf(n, 1);
    for (size_t i = 0; i < n; i++)
        x[i] += offset;
    float *rx = calloc(n, sizeof(float)), *rg = calloc(C, sizeof(float));
    float *rb = calloc(C, sizeof(float));
    float *fx = alloc_floats(n), *fg = alloc_floats(C), *fb = alloc_floats(C);
    df_layernorm_backward_ref(rx, rg, rb, dy, x, ga, N, C, 1e-5f);
    double ex = 0, eg = 0, eb = 0, eg_only = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(fx, n), refill(fg, C), refill(fb, C);
        df_layernorm_backward(fx, fg, fb, dy, x, ga, N, C, 1e-5f);
        ex = fmax(ex, acc_err(fx, rx, n));
        eg = fmax(eg, acc_err(fg, rg, C));
        eb = fmax(eb, acc_err(fb, rb, C));
        refill(fg, C);
        df_layernorm_backward(NULL, fg, NULL, dy, x, ga, N, C, 1e-5f);
        eg_only = fmax(eg_only, acc_err(fg, rg, C));
    }
    char name[96];
    snprintf(name, sizeof name, "layernorm N=%d C=%d offset=%g: dinp", N, C, offset);
    report(name, ex, 1e-5);
    report("  ... dgamma", eg, 1e-5);
    report("  ... dbeta", eb, 1e-5);
    report("  ... dgamma alone", eg_only, 1e-5);
    free(x), free(ga), free(dy), free(rx), free(rg), free(rb), free(fx), free(fg), free(fb);
}

static void test_elementwise(size_t n)
{
    const char *names[2] = {"silu", "gelu"};
    void (*refs[2])(float *, const float *, const float *, size_t) = {df_silu_backward_ref,
                                                                      df_gelu_backward_ref};
    void (*fasts[2])(float *, const float *, const float *, size_t) = {df_silu_backward,
                                                                       df_gelu_backward};
    float *x = rand_buf(n, 8), *dy = rand_buf(n, 1);
    float *r = alloc_floats(n), *f = alloc_floats(n);
    for (int op = 0; op < 2; op++) {
        memset(r, 0, sizeof(float) * n);
        refs[op](r, dy, x, n);
        double e = 0;
        for (int t = 0; t < NTC; t++) {
            df_ops_set_threads(thread_counts[t]);
            refill(f, n);
            fasts[op](f, dy, x, n);
            e = fmax(e, acc_err(f, r, n));
        }
        char name[96];
        snprintf(name, sizeof name, "%s n=%zu", names[op], n);
        report(name, e, 1e-5);
    }
    free(x), free(dy), free(r), free(f);
}

static void test_geglu(int N, int C)
{
    size_t n = (size_t)N * 2 * C;
    float *x = rand_buf(n, 4), *dy = rand_buf((size_t)N * C, 1);
    float *r = calloc(n, sizeof(float)), *f = alloc_floats(n);
    df_geglu_backward_ref(r, dy, x, N, C);
    double e = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(f, n);
        df_geglu_backward(f, dy, x, N, C);
        e = fmax(e, acc_err(f, r, n));
    }
    char name[96];
    snprintf(name, sizeof name, "geglu N=%d C=%d", N, C);
    report(name, e, 1e-5);
    free(x), free(dy), free(r), free(f);
}

static void test_attention(int B, int Tq, int Tk, int NH, int HS, int causal)
{
    int C = NH * HS;
    size_t nq = (size_t)B * Tq * C, nk = (size_t)B * Tk * C;
    float *q = rand_buf(nq, 2), *k = rand_buf(nk, 2), *v = rand_buf(nk, 1), *dy = rand_buf(nq, 1);
    float *out = alloc_floats(nq), scale = 1.0f / sqrtf((float)HS);
    df_attention_forward(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
    float *rq = calloc(nq, sizeof(float)), *rk = calloc(nk, sizeof(float));
    float *rv = calloc(nk, sizeof(float));
    float *fq = alloc_floats(nq), *fk = alloc_floats(nk), *fv = alloc_floats(nk);
    df_attention_backward_ref(rq, rk, rv, dy, q, k, v, out, B, Tq, Tk, NH, HS, scale, causal);
    double eq = 0, ek = 0, ev = 0, eq_only = 0, ev_only = 0;
    for (int t = 0; t < NTC; t++) {
        df_ops_set_threads(thread_counts[t]);
        refill(fq, nq), refill(fk, nk), refill(fv, nk);
        df_attention_backward(fq, fk, fv, dy, q, k, v, out, B, Tq, Tk, NH, HS, scale, causal);
        eq = fmax(eq, acc_err(fq, rq, nq));
        ek = fmax(ek, acc_err(fk, rk, nk));
        ev = fmax(ev, acc_err(fv, rv, nk));
        refill(fq, nq);   // dq alone (cross-attention keys from a frozen text encoder)
        df_attention_backward(fq, NULL, NULL, dy, q, k, v, out, B, Tq, Tk, NH, HS, scale, causal);
        eq_only = fmax(eq_only, acc_err(fq, rq, nq));
        refill(fv, nk);   // dv alone: no dP, dS needed
        df_attention_backward(NULL, NULL, fv, dy, q, k, v, out, B, Tq, Tk, NH, HS, scale, causal);
        ev_only = fmax(ev_only, acc_err(fv, rv, nk));
    }
    char name[96];
    snprintf(name, sizeof name, "attention B=%d Tq=%d Tk=%d NH=%d HS=%d causal=%d: dq", B, Tq, Tk,
             NH, HS, causal);
    report(name, eq, 1e-5);
    report("  ... dk", ek, 1e-5);
    report("  ... dv", ev, 1e-5);
    report("  ... dq alone", eq_only, 1e-5);
    report("  ... dv alone", ev_only, 1e-5);
    free(q), free(k), free(v), free(dy), free(out), free(rq), free(rk), free(rv);
    free(fq), free(fk), free(fv);
}

static void test_fast(void)
{
    test_linear(1, 5, 3);
    test_linear(37, 19, 23);
    test_linear(300, 96, 200);
    test_linear(4000, 16, 300);   // enough for the bias sums to be split

    df_conv2d_geom k3 = {3, 1, 1, 1, 1, 1}, k1 = {1, 1, 0, 0, 0, 0};
    df_conv2d_geom s2p = {3, 2, 1, 1, 1, 1}, s2 = {3, 2, 0, 0, 1, 1};
    df_conv2d_geom band = {3, 1, 0, 1, 1, 1};   // the upsampler's row bands: no top padding
    df_conv2d_geom k5 = {5, 1, 2, 2, 2, 2}, k2s2 = {2, 2, 0, 0, 0, 0};
    df_conv2d_geom k1p1 = {1, 1, 1, 1, 1, 1};   // padding past K-1: not a flipped convolution
    test_conv(2, 5, 13, 11, 7, k3, 1e-5);
    test_conv(2, 19, 13, 11, 12, k1, 1e-5);
    test_conv(2, 8, 13, 11, 6, s2p, 1e-5);
    test_conv(2, 8, 13, 11, 6, s2, 1e-5);
    test_conv(1, 40, 13, 11, 24, s2p, 1e-5);
    test_conv(2, 40, 26, 22, 32, s2p, 1e-5);   // enough for the GEMM path to be split
    test_conv(2, 6, 13, 11, 5, band, 1e-5);
    test_conv(1, 7, 13, 11, 9, k5, 1e-5);
    test_conv(1, 5, 12, 10, 6, k2s2, 1e-5);
    test_conv(1, 6, 13, 11, 4, k1p1, 1e-5);
    test_conv_winograd();

    test_groupnorm(2, 12, 37, 4, 0);
    test_groupnorm(1, 32, 33, 32, 3);
    test_groupnorm(2, 40, 49, 8, 100);
    test_groupnorm(1, 64, 4096, 32, 0);
    test_layernorm(1, 1, 0);
    test_layernorm(37, 19, 0);
    test_layernorm(300, 1024, 50);

    test_elementwise(1);
    test_elementwise(13);
    test_elementwise(300001);
    test_geglu(1, 1);
    test_geglu(7, 37);
    test_geglu(300, 640);

    test_attention(1, 1, 1, 1, 1, 0);
    test_attention(2, 70, 77, 3, 7, 0);
    test_attention(2, 70, 77, 3, 7, 1);
    test_attention(1, 77, 77, 2, 16, 1);     // CLIP's causal self-attention
    test_attention(1, 80, 50, 2, 8, 1);      // causal with Tq > Tk
    test_attention(2, 129, 77, 3, 20, 0);    // cross-attention over 77 text tokens
    test_attention(1, 200, 77, 1, 16, 0);    // one head, fewer than the threads: queries split
    test_attention(1, 150, 150, 1, 24, 1);
}

/* ------------------------------------------------------- 3. determinism */

static void test_determinism(void)
{
    df_ops_set_threads(3);
    // attention: (batch, head) pairs over threads, and one head split over them
    int shapes[2][5] = {{2, 100, 77, 3, 16}, {1, 200, 90, 1, 24}};
    for (int s = 0; s < 2; s++) {
        int B = shapes[s][0], Tq = shapes[s][1], Tk = shapes[s][2], NH = shapes[s][3];
        int HS = shapes[s][4], C = NH * HS;
        size_t nq = (size_t)B * Tq * C, nk = (size_t)B * Tk * C;
        float *q = rand_buf(nq, 2), *k = rand_buf(nk, 2), *v = rand_buf(nk, 1);
        float *dy = rand_buf(nq, 1), *out = alloc_floats(nq);
        df_attention_forward(out, q, k, v, B, Tq, Tk, NH, HS, 0.25f, s);
        float *g[2][3];
        for (int run = 0; run < 2; run++) {
            g[run][0] = filled(nq, PREFILL), g[run][1] = filled(nk, PREFILL);
            g[run][2] = filled(nk, PREFILL);
            df_attention_backward(g[run][0], g[run][1], g[run][2], dy, q, k, v, out, B, Tq, Tk,
                                  NH, HS, 0.25f, s);
        }
        int same = !memcmp(g[0][0], g[1][0], sizeof(float) * nq) &&
                   !memcmp(g[0][1], g[1][1], sizeof(float) * nk) &&
                   !memcmp(g[0][2], g[1][2], sizeof(float) * nk);
        printf("determinism: attention B=%d Tq=%d Tk=%d NH=%d HS=%d twice: %s\n", B, Tq, Tk, NH,
               HS, same ? "identical" : "DIFFERENT");
        CHECK_MSG(same, "attention backward not deterministic (shape %d)", s);
        for (int run = 0; run < 2; run++)
            free(g[run][0]), free(g[run][1]), free(g[run][2]);
        free(q), free(k), free(v), free(dy), free(out);
    }
    // linear: OpenBLAS's own threads
    {
        int N = 300, C = 96, OC = 200;
        float *x = rand_buf((size_t)N * C, 1), *w = rand_buf((size_t)OC * C, 0.5f);
        float *dy = rand_buf((size_t)N * OC, 1), *g[2][3];
        for (int run = 0; run < 2; run++) {
            g[run][0] = filled((size_t)N * C, PREFILL), g[run][1] = filled((size_t)OC * C, PREFILL);
            g[run][2] = filled(OC, PREFILL);
            df_linear_backward(g[run][0], g[run][1], g[run][2], dy, x, w, N, C, OC);
        }
        int same = !memcmp(g[0][0], g[1][0], sizeof(float) * N * C) &&
                   !memcmp(g[0][1], g[1][1], sizeof(float) * OC * C) &&
                   !memcmp(g[0][2], g[1][2], sizeof(float) * OC);
        printf("determinism: linear N=%d C=%d OC=%d twice: %s\n", N, C, OC,
               same ? "identical" : "DIFFERENT");
        CHECK_MSG(same, "linear backward not deterministic");
        for (int run = 0; run < 2; run++)
            free(g[run][0]), free(g[run][1]), free(g[run][2]);
        free(x), free(w), free(dy);
    }
    // conv: the flipped-kernel forward (automatic Winograd choice) and the GEMM paths
    df_conv2d_geom geoms[2] = {{3, 1, 1, 1, 1, 1}, {3, 2, 1, 1, 1, 1}};
    for (int s = 0; s < 2; s++) {
        int B = 2, C = 32, H = 24, W = 20, OC = 40, OH, OW;
        df_conv2d_out_size(&geoms[s], H, W, &OH, &OW);
        size_t nx = (size_t)B * C * H * W, nw = (size_t)OC * C * 9;
        float *x = rand_buf(nx, 1), *w = rand_buf(nw, 0.3f);
        float *dy = rand_buf((size_t)B * OC * OH * OW, 1);
        float *g[2][3];
        for (int run = 0; run < 2; run++) {
            g[run][0] = filled(nx, PREFILL), g[run][1] = filled(nw, PREFILL);
            g[run][2] = filled(OC, PREFILL);
            df_conv2d_backward(g[run][0], g[run][1], g[run][2], dy, x, w, B, C, H, W, OC,
                               &geoms[s]);
        }
        int same = !memcmp(g[0][0], g[1][0], sizeof(float) * nx) &&
                   !memcmp(g[0][1], g[1][1], sizeof(float) * nw) &&
                   !memcmp(g[0][2], g[1][2], sizeof(float) * OC);
        printf("determinism: conv B=%d C=%d %dx%d OC=%d stride %d twice: %s\n", B, C, H, W, OC,
               geoms[s].stride, same ? "identical" : "DIFFERENT");
        CHECK_MSG(same, "conv backward not deterministic (stride %d)", geoms[s].stride);
        for (int run = 0; run < 2; run++)
            free(g[run][0]), free(g[run][1]), free(g[run][2]);
        free(x), free(w), free(dy);
    }
}

int main(void)
{
    int threads = df_ops_threads();
    printf("== 1. reference backward against finite differences of the forward\n");
    test_finite_differences();
    printf("== 2. fast backward against reference (gradients prefilled with %g)\n", PREFILL);
    test_fast();
    printf("== 3. determinism\n");
    test_determinism();
    df_ops_set_threads(threads);
    fflush(stdout);   // the summary line (stderr) after the records
    UNIT_END();
}
