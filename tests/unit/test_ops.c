/* test_ops.c - every optimized op in lib/ops/ops.c against its reference in
 * lib/ops/ops_ref.c on random inputs (fixed seed), odd sizes included, with a
 * per-op tolerance; prints the max error per case. A few references are also
 * checked against values worked out by hand (identity conv, one-key
 * attention, known GELU/SiLU values, a timestep embedding computed in numpy
 * float32), so that a reference bug does not hide behind agreement. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_internal.h"
#include "unit.h"

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

static float *rand_buf(size_t n, float scale)
{
    float *p = malloc(n * sizeof(float) + 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = scale * frand();
    return p;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* Compare fast against reference: error relative to max(1, max|ref|). */
static void compare(const char *what, const float *fast, const float *ref, size_t n, double tol)
{
    double err = unit_max_abs_diff(fast, ref, n);
    double rel = err / fmax(1.0, max_abs(ref, n));
    printf("%-52s n=%-9zu max abs err %.3g rel %.3g\n", what, n, err, rel);
    CHECK_MSG(rel <= tol, "%s: rel err %g > tol %g", what, rel, tol);
}

static void test_linear(int N, int C, int OC, int with_bias)
{
    float *x = rand_buf((size_t)N * C, 1), *w = rand_buf((size_t)OC * C, 0.5f);
    float *b = with_bias ? rand_buf(OC, 1) : NULL;
    float *y1 = malloc(sizeof(float) * N * OC), *y2 = malloc(sizeof(float) * N * OC);
    df_linear_forward_ref(y1, x, w, b, N, C, OC);
    df_linear_forward(y2, x, w, b, N, C, OC);
    char name[96];
    snprintf(name, sizeof name, "linear N=%d C=%d OC=%d bias=%d", N, C, OC, with_bias);
    compare(name, y2, y1, (size_t)N * OC, 1e-5);
    free(x), free(w), free(b), free(y1), free(y2);
}

static void test_conv(int B, int C, int H, int W, int OC, df_conv2d_geom g, int with_bias)
{
    int OH, OW;
    df_conv2d_out_size(&g, H, W, &OH, &OW);
    size_t no = (size_t)B * OC * OH * OW;
    float *x = rand_buf((size_t)B * C * H * W, 1), *w = rand_buf((size_t)OC * C * g.K * g.K, 0.3f);
    float *b = with_bias ? rand_buf(OC, 1) : NULL;
    float *y1 = malloc(sizeof(float) * no), *y2 = malloc(sizeof(float) * no);
    df_conv2d_forward_ref(y1, x, w, b, B, C, H, W, OC, &g);
    df_conv2d_forward(y2, x, w, b, B, C, H, W, OC, &g);
    char name[96];
    snprintf(name, sizeof name, "conv B=%d C=%d %dx%d OC=%d K=%d s=%d pad=%d,%d,%d,%d", B, C, H,
             W, OC, g.K, g.stride, g.pad_t, g.pad_l, g.pad_b, g.pad_r);
    compare(name, y2, y1, no, 1e-5);
    free(x), free(w), free(b), free(y1), free(y2);
}

/* 3x3 convolutions on the Winograd path forced on with each tile size (odd
 * and even sizes, tile rows cut by the image edges, more than 16 tiles to a
 * row so that the AVX-512 transforms take full and partial groups), then
 * forced off, so that every path stays checked whatever the automatic
 * choice takes. */
static void test_winograd(void)
{
    df_conv2d_geom k3 = {3, 1, 1, 1, 1, 1};
    const int modes[] = {2, 4, 0};
    for (int mi = 0; mi < 3; mi++) {
        int mode = modes[mi];
        df_ops_set_winograd(mode);
        printf("-- winograd %s\n", mode == 2 ? "F(2x2, 3x3)" : mode == 4 ? "F(4x4, 3x3)" : "off");
        test_conv(1, 1, 1, 1, 1, k3, 1);
        test_conv(1, 3, 2, 3, 4, k3, 0);
        test_conv(2, 13, 9, 11, 10, k3, 1);
        test_conv(1, 32, 33, 31, 40, k3, 1);
        test_conv(2, 20, 40, 66, 12, k3, 1);
        test_conv(1, 64, 32, 35, 64, k3, 1);
        // bands of rows as the upsampler cuts them: no padding at the top
        // or the bottom (or both), odd and even heights
        for (int pt = 0; pt <= 1; pt++)
            for (int pb = 0; pb <= 1; pb++) {
                df_conv2d_geom band = {3, 1, pt, 1, pb, 1};
                test_conv(1, 21, 9, 34, 18, band, 1);
                test_conv(2, 8, 4, 5, 3, band, 0);
            }
    }
    for (int mode = 2; mode <= 4; mode += 2) {
        df_ops_set_winograd(mode);
        df_ops_winograd_set_chunks(64 << 10, 1);   // chunks of 1-3 tile rows
        test_conv(2, 24, 21, 37, 16, k3, 1);
        test_conv(1, 16, 70, 67, 24, k3, 1);
        df_ops_winograd_set_chunks(0, 0);
    }
    df_ops_set_winograd(-1);
    test_conv(2, 32, 32, 32, 32, k3, 1);   // the automatic choice
}

static void test_groupnorm(int B, int C, int HW, int G, float offset)
{
    size_t n = (size_t)B * C * HW;
    float *x = rand_buf(n, 2), *ga = rand_buf(C, 1), *be = rand_buf(C, 1);
    for (size_t i = 0; i < n; i++)
        x[i] += offset;   // a large mean tests that the variance is not E[x^2]-E[x]^2 in float
    float *y1 = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    df_groupnorm_forward_ref(y1, x, ga, be, B, C, HW, G, 1e-5f);
    df_groupnorm_forward(y2, x, ga, be, B, C, HW, G, 1e-5f);
    char name[96];
    snprintf(name, sizeof name, "groupnorm B=%d C=%d HW=%d G=%d offset=%g", B, C, HW, G, offset);
    compare(name, y2, y1, n, 1e-5);
    // in place
    memcpy(y2, x, sizeof(float) * n);
    df_groupnorm_forward(y2, y2, ga, be, B, C, HW, G, 1e-5f);
    compare("  ... in place", y2, y1, n, 1e-5);
    free(x), free(ga), free(be), free(y1), free(y2);
}

static void test_layernorm(int N, int C, float offset)
{
    size_t n = (size_t)N * C;
    float *x = rand_buf(n, 2), *ga = rand_buf(C, 1), *be = rand_buf(C, 1);
    for (size_t i = 0; i < n; i++)
        x[i] += offset;
    float *y1 = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    df_layernorm_forward_ref(y1, x, ga, be, N, C, 1e-5f);
    df_layernorm_forward(y2, x, ga, be, N, C, 1e-5f);
    char name[96];
    snprintf(name, sizeof name, "layernorm N=%d C=%d offset=%g", N, C, offset);
    compare(name, y2, y1, n, 1e-5);
    memcpy(y2, x, sizeof(float) * n);
    df_layernorm_forward(y2, y2, ga, be, N, C, 1e-5f);
    compare("  ... in place", y2, y1, n, 1e-5);
    free(x), free(ga), free(be), free(y1), free(y2);
}

static void test_elementwise(size_t n)
{
    float *x = rand_buf(n, 8), *y1 = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    char name[96];
    df_silu_forward_ref(y1, x, n);
    df_silu_forward(y2, x, n);
    snprintf(name, sizeof name, "silu n=%zu", n);
    compare(name, y2, y1, n, 1e-6);
    df_gelu_forward_ref(y1, x, n);
    df_gelu_forward(y2, x, n);
    snprintf(name, sizeof name, "gelu n=%zu", n);
    compare(name, y2, y1, n, 1e-6);
    free(x), free(y1), free(y2);
}

static void test_geglu(int N, int C)
{
    float *x = rand_buf((size_t)N * 2 * C, 4);
    float *y1 = malloc(sizeof(float) * N * C), *y2 = malloc(sizeof(float) * N * C);
    df_geglu_forward_ref(y1, x, N, C);
    df_geglu_forward(y2, x, N, C);
    char name[96];
    snprintf(name, sizeof name, "geglu N=%d C=%d", N, C);
    compare(name, y2, y1, (size_t)N * C, 1e-6);
    free(x), free(y1), free(y2);
}

static void test_softmax(int N, int C)
{
    size_t n = (size_t)N * C;
    float *x = rand_buf(n, 30), *y1 = malloc(sizeof(float) * n), *y2 = malloc(sizeof(float) * n);
    df_softmax_forward_ref(y1, x, N, C);
    df_softmax_forward(y2, x, N, C);
    char name[96];
    snprintf(name, sizeof name, "softmax N=%d C=%d", N, C);
    compare(name, y2, y1, n, 1e-6);
    memcpy(y2, x, sizeof(float) * n);
    df_softmax_forward(y2, y2, N, C);
    compare("  ... in place", y2, y1, n, 1e-6);
    free(x), free(y1), free(y2);
}

static void test_attention(int B, int Tq, int Tk, int NH, int HS, int causal)
{
    int C = NH * HS;
    float *q = rand_buf((size_t)B * Tq * C, 2), *k = rand_buf((size_t)B * Tk * C, 2);
    float *v = rand_buf((size_t)B * Tk * C, 1);
    size_t no = (size_t)B * Tq * C;
    float *y1 = malloc(sizeof(float) * no), *y2 = malloc(sizeof(float) * no);
    float scale = 1.0f / sqrtf((float)HS);
    df_attention_forward_ref(y1, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
    df_attention_forward(y2, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
    char name[96];
    snprintf(name, sizeof name, "attention B=%d Tq=%d Tk=%d NH=%d HS=%d causal=%d", B, Tq, Tk,
             NH, HS, causal);
    compare(name, y2, y1, no, 1e-5);
    free(q), free(k), free(v), free(y1), free(y2);
}

/* A NaN in one key makes every query's output NaN, as in the reference
 * (softmax over a NaN score): the fast exp must not turn it into a weight
 * of 0 the way it does for scores far below the max. */
static void test_attention_nan(int HS)
{
    int T = 80;
    float *q = rand_buf((size_t)T * HS, 2), *k = rand_buf((size_t)T * HS, 2);
    float *v = rand_buf((size_t)T * HS, 1), *y = malloc(sizeof(float) * T * HS);
    k[5 * HS + 3] = NAN;
    df_attention_forward(y, q, k, v, 1, T, T, 1, HS, 0.125f, 0);
    int nan_rows = 0;
    for (int t = 0; t < T; t++)
        nan_rows += isnan(y[(size_t)t * HS]) != 0;
    CHECK_MSG(nan_rows == T, "attention HS=%d: %d of %d rows NaN after a NaN key", HS, nan_rows, T);
    free(q), free(k), free(v), free(y);
}

/* References against values worked out by hand. */
static void test_ref_values(void)
{
    // GELU (erf form) and SiLU at known points
    float x[4] = {-1.0f, 0.0f, 1.0f, 3.0f}, y[4];
    df_gelu_forward_ref(y, x, 4);
    CHECK_NEAR(y[0], -0.15865525393145707, 1e-7);
    CHECK_NEAR(y[2], 0.8413447460685429, 1e-7);
    CHECK_NEAR(y[3], 2.9959502175208727, 1e-6);
    df_silu_forward_ref(y, x, 4);
    CHECK_NEAR(y[2], 0.7310585786300049, 1e-7);
    CHECK_NEAR(y[0], -0.2689414213699951, 1e-7);

    // 3x3 conv with a centre-tap kernel and pad 1 is the identity plus bias
    float img[2 * 5 * 7], w[2 * 2 * 9] = {0}, b[2] = {0.5f, -1.0f}, out[2 * 5 * 7];
    for (int i = 0; i < 70; i++)
        img[i] = (float)i;
    w[0 * 18 + 0 * 9 + 4] = 1.0f;   // out 0 <- in 0
    w[1 * 18 + 1 * 9 + 4] = 2.0f;   // out 1 <- 2 * in 1
    df_conv2d_geom g = {3, 1, 1, 1, 1, 1};
    df_conv2d_forward_ref(out, img, w, b, 1, 2, 5, 7, 2, &g);
    CHECK_NEAR(out[13], 13.5, 0);
    CHECK_NEAR(out[35 + 20], 2.0 * 55 - 1.0, 0);
    // stride 2, pad right/bottom only (the VAE downsampler): 5x7 -> 2x3
    df_conv2d_geom g2 = {3, 2, 0, 0, 1, 1};
    int OH, OW;
    df_conv2d_out_size(&g2, 5, 7, &OH, &OW);
    CHECK(OH == 2 && OW == 3);
    df_conv2d_forward_ref(out, img, w, NULL, 1, 2, 5, 7, 2, &g2);
    CHECK_NEAR(out[1 * 3 + 2], img[(2 * 1 + 1) * 7 + 2 * 2 + 1], 0);

    // attention over a single key returns that key's value
    float q[2] = {0.3f, -2.0f}, k[2] = {1.0f, 4.0f}, v[2] = {7.0f, -3.0f}, o[2];
    df_attention_forward_ref(o, q, k, v, 1, 1, 1, 1, 2, 0.7f, 0);
    CHECK_NEAR(o[0], 7.0, 1e-6);
    CHECK_NEAR(o[1], -3.0, 1e-6);
    // causal: the first query sees only key 0 even when two keys exist
    float k2[4] = {1, 0, 0, 1}, v2[4] = {1, 2, 3, 4}, q2[4] = {0, 5, 0, 5}, o2[4];
    df_attention_forward_ref(o2, q2, k2, v2, 1, 2, 2, 1, 2, 1.0f, 1);
    CHECK_NEAR(o2[0], 1.0, 1e-6);
    CHECK_NEAR(o2[1], 2.0, 1e-6);
    double p1 = 1.0 / (1.0 + exp(-5.0));   // second query: softmax([0,5])
    CHECK_NEAR(o2[2], (1 - p1) * 1 + p1 * 3, 1e-6);

    // timestep embedding, dim 8, t=999, flip, shift 0: freqs 10000^(-i/4) =
    // 1, 0.1, 0.01, 0.001, so the arguments are 999, 99.9, 9.99, 0.999 (the
    // first exact in float32, the last within float rounding)
    float t = 999.0f, e[8];
    df_timestep_embedding(e, &t, 1, 8, 1, 0.0f, 10000.0f);
    CHECK_NEAR(e[0], cos(999.0), 2e-4);
    CHECK_NEAR(e[3], cos(0.999), 1e-6);
    CHECK_NEAR(e[4], sin(999.0), 2e-4);
    CHECK_NEAR(e[7], sin(0.999), 1e-6);

    // nearest upsample 2x3 -> 4x6 repeats each pixel 2x2
    float u[6] = {1, 2, 3, 4, 5, 6}, U[24];
    df_upsample_nearest_forward(U, u, 1, 1, 2, 3, 4, 6);
    CHECK(U[0] == 1 && U[1] == 1 && U[2] == 2 && U[6] == 1 && U[12] == 4 && U[23] == 6);
}

/* The single-version helpers (threaded in ops.c) against plain loops:
 * exact, they do one rounding each. */
static void test_helpers(int B, int C, int HW)
{
    size_t n = (size_t)B * C * HW;
    float *a = rand_buf(n, 3), *b = rand_buf(n, 3), *bias = rand_buf((size_t)B * C, 1);
    float *y = calloc(n, sizeof(float)), *r = calloc(n, sizeof(float));
    char name[96];
    snprintf(name, sizeof name, "helpers B=%d C=%d HW=%d: add", B, C, HW);
    for (size_t i = 0; i < n; i++)
        r[i] = a[i] + b[i];
    df_add_forward(y, a, b, n);
    compare(name, y, r, n, 0);
    for (size_t i = 0; i < n; i++)
        r[i] = 0.7f * a[i];
    df_scale_forward(y, a, 0.7f, n);
    compare("  ... scale", y, r, n, 0);
    for (size_t i = 0; i < n; i++)
        r[i] = 0.7f * a[i] + -1.3f * b[i];
    memcpy(y, a, sizeof(float) * n);
    df_axpby_forward(y, y, 0.7f, b, -1.3f, n);   // in place
    compare("  ... axpby in place", y, r, n, 0);
    for (size_t i = 0; i < n; i++)
        r[i] = a[i] + bias[i / HW];
    df_add_channel_bias(y, a, bias, B, C, HW);
    compare("  ... channel bias", y, r, n, 0);
    for (int bb = 0; bb < B; bb++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++)
                r[((size_t)bb * HW + i) * C + c] = a[((size_t)bb * C + c) * HW + i];
    df_nchw_to_nhwc(y, a, B, C, HW);
    compare("  ... nchw to nhwc", y, r, n, 0);
    df_nhwc_to_nchw(b, y, B, C, HW);
    compare("  ... and back", b, a, n, 0);
    free(a), free(b), free(bias), free(y), free(r);
}

static void run_all(void)
{

    test_linear(1, 1, 1, 1);
    test_linear(1, 37, 5, 0);
    test_linear(77, 64, 96, 1);
    test_linear(33, 129, 257, 1);
    test_linear(2, 320, 1280, 1);

    df_conv2d_geom k3 = {3, 1, 1, 1, 1, 1}, k1 = {1, 1, 0, 0, 0, 0};
    df_conv2d_geom s2 = {3, 2, 0, 0, 1, 1}, s2p = {3, 2, 1, 1, 1, 1};
    test_conv(1, 1, 1, 1, 1, k3, 1);
    test_conv(1, 3, 7, 5, 4, k3, 1);
    test_conv(2, 13, 9, 11, 10, k3, 0);
    test_conv(2, 17, 8, 8, 24, k1, 1);
    test_conv(1, 5, 9, 7, 6, s2, 1);
    test_conv(2, 6, 8, 10, 5, s2, 1);
    test_conv(1, 5, 9, 7, 6, s2p, 1);
    test_conv(1, 32, 33, 31, 40, k3, 1);
    test_conv(1, 4, 64, 64, 8, k3, 1);

    test_groupnorm(1, 1, 1, 1, 0);
    test_groupnorm(2, 12, 9, 4, 0);
    test_groupnorm(1, 32, 33, 32, 3);
    test_groupnorm(2, 96, 49, 32, 100);
    test_groupnorm(1, 64, 4096, 32, 0);

    test_layernorm(1, 1, 0);
    test_layernorm(3, 37, 0);
    test_layernorm(77, 1024, 50);

    test_elementwise(1);
    test_elementwise(13);
    test_elementwise(100003);
    test_geglu(1, 1);
    test_geglu(7, 37);
    test_geglu(65, 640);

    test_softmax(1, 1);
    test_softmax(5, 17);
    test_softmax(33, 1000);

    test_attention(1, 1, 1, 1, 1, 0);
    test_attention_nan(64);
    test_attention_nan(40);
    test_attention(1, 5, 5, 1, 8, 1);
    test_attention(2, 77, 77, 4, 16, 1);
    test_attention(2, 37, 77, 3, 20, 0);      // cross-attention, Tq != Tk
    test_attention(1, 77, 37, 2, 8, 1);       // causal with Tq > Tk
    test_attention(2, 100, 13, 5, 64, 0);
    test_attention(1, 33, 1500, 2, 40, 0);    // long Tk
    test_attention(1, 257, 257, 2, 24, 0);
    // big enough to be split across threads
    test_linear(300, 96, 200, 1);
    test_conv(1, 32, 24, 24, 48, k3, 1);
    test_conv(1, 48, 25, 23, 70, s2, 1);
    test_winograd();
    test_attention(1, 300, 300, 2, 64, 0);
    test_attention(2, 300, 77, 2, 64, 0);
    test_attention(1, 200, 200, 1, 64, 1);
    test_attention(1, 100, 150, 1, 512, 0);   // the VAE mid-block's one wide head
    // the AVX-512 path's blocks: 64 queries x 64 keys, partial ones on both
    // sides (65, 129, 77 = 64 + 13), head sizes 64 and not (8, 40), causal
    // or not; K and V past 1 MiB per head (Tk 2100 at HS 64, 3300 at 40)
    // make work items of 3 query blocks, 200 = 3 x 64 + 8 queries
    test_attention(1, 65, 65, 2, 8, 1);
    test_attention(1, 129, 129, 2, 64, 1);
    test_attention(1, 77, 77, 3, 64, 1);      // CLIP's causal self-attention
    test_attention(2, 129, 77, 3, 64, 0);     // cross-attention over 77 text tokens
    test_attention(1, 150, 77, 2, 40, 0);
    test_attention(1, 200, 2100, 1, 64, 0);
    test_attention(1, 200, 2100, 1, 64, 1);
    test_attention(1, 130, 3300, 1, 40, 0);
    test_helpers(1, 1, 1);
    test_helpers(1, 3, 5);
    test_helpers(2, 37, 9001);
}

int main(void)
{
    test_ref_values();
    // each setting: AVX-512 kernels (where the CPU has them), the AVX2
    // GEMM kernel (where it has AVX2 and FMA) and portable C; 1, 2 and 3
    // threads, so uneven shares get exercised
    int simd = df_ops_simd();
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int settings[][2] = {{1, 1}, {1, 2}, {1, 3}, {2, 1}, {2, 3}, {0, 2}};
    for (int s = 0; s < 6; s++) {
        if ((settings[s][0] == 1 && simd != 1) || (settings[s][0] == 2 && !avx2))
            continue;
        df_ops_set_simd(settings[s][0]);
        df_ops_set_threads(settings[s][1]);
        printf("== simd %d, %d threads\n", settings[s][0], settings[s][1]);
        run_all();
    }
    df_ops_set_simd(simd);
    UNIT_END();
}
