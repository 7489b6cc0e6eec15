/* bench-ops.c - times the optimized ops at Stable Diffusion 2.1 sizes and
 * prints GFLOP/s, beside OpenBLAS sgemm on the same GEMM shape (whose speed
 * depends on OPENBLAS_CORETYPE). Built to build/tools/bench-ops; run by
 * tests/bench/bench-ops.sh. Prints figures, asserts nothing.
 * Usage: bench-ops [THREADS [REPEATS]] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ops.h"

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *buf(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench-ops: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

static int reps = 3;

/* Wall time, and GFLOP per CPU-second of all threads: on a shared machine the
 * second figure is the kernel's own speed, less disturbed by other load. */
static void report(const char *what, double flop, double secs, double cpu)
{
    printf("%-58s %8.2f ms %7.1f GFLOP/s %7.1f per CPU-s\n", what, secs * 1e3, flop / secs / 1e9,
           flop / cpu / 1e9);
}

#define TIME(what, flop, stmt) do { stmt; double t0 = clock_s(CLOCK_MONOTONIC); \
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID); \
    for (int r_ = 0; r_ < reps; r_++) { stmt; } \
    report(what, flop, (clock_s(CLOCK_MONOTONIC) - t0) / reps, \
           (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / reps); } while (0)

static void bench_conv(int B, int C, int H, int OC, int K, int stride)
{
    df_conv2d_geom g = {K, stride, K / 2, K / 2, K / 2, K / 2};
    if (stride == 2)
        g = (df_conv2d_geom){K, 2, 0, 0, 1, 1};
    int OH, OW;
    df_conv2d_out_size(&g, H, H, &OH, &OW);
    float *x = buf((size_t)B * C * H * H), *w = buf((size_t)OC * C * K * K), *b = buf(OC);
    float *y = buf((size_t)B * OC * OH * OW);
    double flop = 2.0 * B * OC * OH * OW * C * K * K;
    char name[96];
    snprintf(name, sizeof name, "conv2d B=%d C=%d %dx%d OC=%d K=%d s=%d", B, C, H, H, OC, K, stride);
    TIME(name, flop, df_conv2d_forward(y, x, w, b, B, C, H, H, OC, &g));
    if (K == 3 && stride == 1) {
        // every path of the 3x3 convolution, whichever the automatic choice takes;
        // GFLOP/s count the direct convolution's flops, so they compare as times
        df_ops_set_winograd(0);
        TIME("  im2col GEMM", flop, df_conv2d_forward(y, x, w, b, B, C, H, H, OC, &g));
        df_ops_set_winograd(2);
        TIME("  Winograd F(2x2,3x3)", flop, df_conv2d_forward(y, x, w, b, B, C, H, H, OC, &g));
        df_ops_set_winograd(4);
        TIME("  Winograd F(4x4,3x3)", flop, df_conv2d_forward(y, x, w, b, B, C, H, H, OC, &g));
        df_ops_set_winograd(-1);
    }
    free(x), free(w), free(b), free(y);
}

static void bench_linear(int N, int C, int OC)
{
    float *x = buf((size_t)N * C), *w = buf((size_t)OC * C), *b = buf(OC), *y = buf((size_t)N * OC);
    double flop = 2.0 * N * C * OC;
    char name[96];
    snprintf(name, sizeof name, "linear N=%d C=%d OC=%d", N, C, OC);
    TIME(name, flop, df_linear_forward(y, x, w, b, N, C, OC));
    snprintf(name, sizeof name, "  openblas sgemm same shape (%s)", openblas_get_corename());
    TIME(name, flop, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, x, C,
                                 w, C, 0.0f, y, OC));
    free(x), free(w), free(b), free(y);
}

static void bench_attention(int B, int Tq, int Tk, int NH, int HS)
{
    size_t C = (size_t)NH * HS;
    float *q = buf(B * Tq * C), *k = buf(B * Tk * C), *v = buf(B * Tk * C), *o = buf(B * Tq * C);
    double flop = 4.0 * B * NH * Tq * Tk * HS;
    char name[96];
    snprintf(name, sizeof name, "attention B=%d Tq=%d Tk=%d NH=%d HS=%d", B, Tq, Tk, NH, HS);
    TIME(name, flop, df_attention_forward(o, q, k, v, B, Tq, Tk, NH, HS, 0.125f, 0));
    free(q), free(k), free(v), free(o);
}

static void bench_norms(int B, int C, int HW)
{
    size_t n = (size_t)B * C * HW;
    float *x = buf(n), *y = buf(n), *g = buf(C), *b = buf(C);
    char name[96];
    snprintf(name, sizeof name, "groupnorm B=%d C=%d HW=%d (GB/s as GFLOP/s col: 8 B/val)", B, C, HW);
    TIME(name, 8.0 * n, df_groupnorm_forward(y, x, g, b, B, C, HW, 32, 1e-5f));
    snprintf(name, sizeof name, "silu n=%zu (GB/s)", n);
    TIME(name, 8.0 * n, df_silu_forward(y, y, n));
    snprintf(name, sizeof name, "geglu N=%d C=%d (GB/s)", B * HW, C / 2);
    TIME(name, 6.0 * n, df_geglu_forward(y, x, B * HW, C / 2));
    free(x), free(y), free(g), free(b);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 2;
    reps = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 3;
    if (threads < 1 || reps < 1) {
        fprintf(stderr, "usage: bench-ops [THREADS [REPEATS]]\n");
        return 2;
    }
    df_ops_set_threads(threads);
    openblas_set_num_threads(threads);
    printf("bench-ops: %d threads, simd %d, %d repeats\n", threads, df_ops_simd(), reps);
    bench_conv(2, 320, 64, 320, 3, 1);       // UNet level 1 resnet conv at 512 px
    bench_conv(2, 320, 96, 320, 3, 1);       // the same at 768 px
    bench_conv(2, 640, 48, 640, 3, 1);       // UNet level 2 at 768 px
    bench_conv(2, 1280, 24, 1280, 3, 1);     // UNet level 3 at 768 px
    bench_conv(2, 1280, 8, 1280, 3, 1);      // UNet level 4
    bench_conv(2, 640, 32, 640, 1, 1);       // 1x1 shortcut
    bench_conv(2, 320, 64, 320, 3, 2);       // downsampler
    bench_conv(1, 128, 256, 128, 3, 1);      // VAE decoder, last level at 256 (1/4 of 512 px area)
    bench_linear(8192, 320, 320);            // attention projections, level 1
    bench_linear(8192, 320, 2560);           // GEGLU proj, level 1
    bench_linear(154, 1024, 4096);           // text encoder MLP
    bench_attention(2, 4096, 4096, 5, 64);   // self-attention, level 1 at 512 px
    bench_attention(2, 4096, 77, 5, 64);     // cross-attention
    bench_norms(2, 320, 4096);
    return 0;
}
