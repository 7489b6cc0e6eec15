/* ops.c - the optimized versions of the op set in ops.h, the ones the models
 * call. Each is tested against its reference in ops_ref.c on random inputs,
 * odd sizes included, by tests/unit/test_ops.c (AVX-512 and portable paths,
 * 2 and 3 threads); the models through them by tests/check-fixtures.
 *
 * Why our own GEMM rather than OpenBLAS: measured on this machine (Intel with
 * AVX-512, AMX), Debian's OpenBLAS 0.3.21 does not recognise the CPU and runs
 * its SSE3 "Prescott" kernels when OPENBLAS_CORETYPE is unset (~20 GFLOP/s a
 * core), ~70 with OPENBLAS_CORETYPE=Haswell and ~125 with SkylakeX; which one
 * a run gets depends on an environment variable we must not touch. The
 * AVX-512 micro-kernel below reaches ~135-155 GFLOP/s a core in cache and
 * does not depend on it (tools/bench-ops.c compares both). Without AVX-512 a
 * portable C kernel runs the same blocked loops.
 *
 * Structure: one blocked GEMM, C (M,N) = init + A (M,K) @ B (K,N), whose B
 * operand is packed block by block from one of three sources: a row-major
 * matrix, a transposed one (linear's weight), or an image read as its im2col
 * matrix (convolution), so that no im2col buffer is ever allocated. Work
 * is cut into panels of columns of C (and chunks of rows when there are few
 * panels) that threads take in turn from a shared counter; each packs its
 * own blocks. Attention is flash-style: per (batch, head, block of queries) it
 * walks the keys in blocks, with an online softmax, on the same micro-kernel
 * (with AVX-512, on transposed score tiles: keys by queries).
 * Threads are plain pthreads started per call (a few tens of microseconds,
 * small next to the ops that use them), so nothing spins between ops.
 * If a scratch allocation fails an op falls back to its reference. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <immintrin.h>

#include "ops.h"
#include "ops_internal.h"

/* ---------------------------------------------------------------- threads */

/* 0 means "not set yet": df_ops_threads() then uses the online CPU count. */
static int n_threads;
/* -1: not probed yet; 0: portable C kernels; 1: AVX-512; 2: AVX2 with FMA
 * (the GEMM micro-kernel; the other ops run their portable versions). */
static int simd_level = -1;
/* -1: Winograd for 3x3 convolutions where it pays, with the tile size that
 * pays best; 0: never; 2 or 4: F(2x2, 3x3) or F(4x4, 3x3) wherever it applies. */
static int winograd_mode = -1;

void df_ops_set_threads(int n)
{
    n_threads = n > 0 ? (n > 256 ? 256 : n) : 0;
}

int df_ops_threads(void)
{
    if (n_threads > 0)
        return n_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (n > 256 ? 256 : (int)n) : 1;
}

void df_ops_set_simd(int level)
{
    simd_level = level;
}

void df_ops_set_winograd(int mode)
{
    winograd_mode = mode < 0 ? -1 : mode == 0 ? 0 : mode == 4 ? 4 : 2;
}

int df_ops_simd(void)
{
    if (simd_level < 0) {
        __builtin_cpu_init();
        simd_level = __builtin_cpu_supports("avx512f")                                    ? 1
                     : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 2
                                                                                        : 0;
    }
    return simd_level;
}

typedef df_task_fn task_fn;
typedef struct { task_fn fn; void *ctx; int tid, nt; } task_arg;

static void *task_main(void *p)
{
    task_arg *a = p;
    a->fn(a->ctx, a->tid, a->nt);
    return NULL;
}

/* Run fn(ctx, tid, nt) for tid 0..nt-1, tid 0 on the calling thread. A thread
 * that cannot be started has its share run here, so the work always gets done. */
static void run_parallel(task_fn fn, void *ctx, int nt)
{
    if (nt <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_t th[256];
    task_arg args[256];
    int started[256] = {0};
    for (int t = 1; t < nt; t++) {
        args[t] = (task_arg){fn, ctx, t, nt};
        started[t] = pthread_create(&th[t], NULL, task_main, &args[t]) == 0;
    }
    fn(ctx, 0, nt);
    for (int t = 1; t < nt; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else
            fn(ctx, t, nt);
    }
}

/* Threads worth using for `work` units (roughly flops or values touched):
 * below ~1M units a thread start costs more than it saves. */
static int threads_for(double work)
{
    int nt = df_ops_threads();
    int by_work = (int)(work / 1e6) + 1;
    return nt < by_work ? nt : by_work;
}

void df_ops_run_parallel(df_task_fn fn, void *ctx, int nt)
{
    run_parallel(fn, ctx, nt);
}

int df_ops_threads_for(double work)
{
    return threads_for(work);
}

/* Share [lo,hi) of n items for thread tid of nt, in multiples of `align`. */
void df_ops_split_range(int n, int align, int tid, int nt, int *lo, int *hi)
{
    int units = (n + align - 1) / align;
    int per = units / nt, extra = units % nt;
    int u0 = tid * per + (tid < extra ? tid : extra);
    int u1 = u0 + per + (tid < extra);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

/* ------------------------------------------------------------ micro-kernel */

/* C (mr, w) += A (mr, kb) @ B (kb, w) (add 1), or C = init + A @ B (add 0),
 * mr <= 6, w <= 64, where init (r, j) = ri[r] + ci[j] (either NULL for 0:
 * a bias starts in the accumulators rather than in a pass over C first).
 * A's element (r,k) is A[r*ars + k*aks] (row-major: ars = lda, aks = 1;
 * stored transposed: ars = 1, aks = lda); B rows are ldb apart, C rows ldc apart.
 * Portable version. */
static void ukernel_c(int mr, int w, int kb, const float *A, size_t ars, size_t aks,
                      const float *B, size_t ldb, float *C, size_t ldc, int add,
                      const float *ri, const float *ci)
{
    for (int r = 0; r < mr; r++) {
        float acc[64];
        for (int j = 0; j < w; j++)
            acc[j] = add ? 0.0f : (ci ? ci[j] : 0.0f) + (ri ? ri[r] : 0.0f);
        for (int k = 0; k < kb; k++) {
            float a = A[r * ars + k * aks];
            const float *b = B + k * ldb;
            for (int j = 0; j < w; j++)
                acc[j] += a * b[j];
        }
        for (int j = 0; j < w; j++)
            C[r * ldc + j] = add ? C[r * ldc + j] + acc[j] : acc[j];
    }
}

/* The AVX-512 kernel for a compile-time MR x (16*NV) tile, the last vector
 * masked to the tile's width: 6 rows x 4 vectors = 24 accumulators in zmm
 * registers; per k, NV loads of B and MR broadcasts of A feed MR*NV FMAs. */
__attribute__((target("avx512f"), always_inline)) static inline void
ukernel_tile(const int MR, const int NV, __mmask16 last, int kb, const float *A, size_t ars,
             size_t aks, const float *B, size_t ldb, float *C, size_t ldc, int add,
             const float *ri, const float *ci)
{
    __m512 acc[6][4], cv[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        cv[v] = add || !ci ? _mm512_setzero_ps()
                           : _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, ci + 16 * v);
    // C is read only after the k loop: ask for its lines now, so that an L2
    // or memory miss overlaps the FMAs instead of stalling the epilogue
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (add)
                _mm_prefetch((const char *)(C + r * ldc + 16 * v), _MM_HINT_T0);
            acc[r][v] = add || !ri ? cv[v] : _mm512_add_ps(cv[v], _mm512_set1_ps(ri[r]));
        }
    for (int k = 0; k < kb; k++) {
        __m512 b[4];
        const float *bk = B + k * ldb, *ak = A + k * aks;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, bk + 16 * v)
                               : _mm512_loadu_ps(bk + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(ak[r * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        float *c = C + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 m = v == NV - 1 ? last : 0xFFFF;
            __m512 y = acc[r][v];
            if (add)
                y = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + 16 * v), y);
            _mm512_mask_storeu_ps(c + 16 * v, m, y);
        }
    }
}

/* The tile for mr rows and nv vectors, with A's strides ARS, AKS. */
#define TILE_CASE(MR, ARS, AKS)                                                             \
    case MR:                                                                                \
        switch (nv) {                                                                       \
        case 1: ukernel_tile(MR, 1, last, kb, A, ARS, AKS, B, ldb, C, ldc, add, ri, ci); break; \
        case 2: ukernel_tile(MR, 2, last, kb, A, ARS, AKS, B, ldb, C, ldc, add, ri, ci); break; \
        case 3: ukernel_tile(MR, 3, last, kb, A, ARS, AKS, B, ldb, C, ldc, add, ri, ci); break; \
        default: ukernel_tile(MR, 4, last, kb, A, ARS, AKS, B, ldb, C, ldc, add, ri, ci); break; \
        }                                                                                   \
        break;
#define TILE_SWITCH(ARS, AKS)                                                               \
    switch (mr) {                                                                           \
        TILE_CASE(1, ARS, AKS) TILE_CASE(2, ARS, AKS) TILE_CASE(3, ARS, AKS)                \
        TILE_CASE(4, ARS, AKS) TILE_CASE(5, ARS, AKS)                                       \
    default:                                                                                \
        TILE_CASE(6, ARS, AKS)                                                              \
    }

/* A is row-major (aks == 1: the GEMM's activations and weights) or stored
 * transposed (ars == 1: attention's P^T); either stride as the constant 1
 * lets the compiler step six pointers instead of multiplying in the loop.
 * Nothing else calls it, but any other strides still get the right sum. */
__attribute__((target("avx512f"))) static void
ukernel_avx512(int mr, int w, int kb, const float *A, size_t ars, size_t aks, const float *B,
               size_t ldb, float *C, size_t ldc, int add, const float *ri, const float *ci)
{
    int nv = (w + 15) / 16;
    __mmask16 last = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xFFFF);
    if (aks == 1)
        TILE_SWITCH(ars, 1)
    else if (ars == 1)
        TILE_SWITCH(1, aks)
    else
        ukernel_c(mr, w, kb, A, ars, aks, B, ldb, C, ldc, add, ri, ci);
}

/* The AVX2 kernel for a compile-time MR x (8*NV) tile, NV <= 2, the last
 * vector masked to the tile's width: 6 rows x 2 vectors = 12 accumulators
 * in ymm registers, plus 2 of B and 1 broadcast of A (all 16 in use). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
ukernel_tile8(const int MR, const int NV, __m256i last, int kb, const float *A, size_t ars,
              size_t aks, const float *B, size_t ldb, float *C, size_t ldc, int add,
              const float *ri, const float *ci)
{
    const __m256i all = _mm256_set1_epi32(-1);
    __m256 acc[6][2], cv[2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++)
        cv[v] = add || !ci ? _mm256_setzero_ps()
                           : _mm256_maskload_ps(ci + 8 * v, v == NV - 1 ? last : all);
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[r][v] = add || !ri ? cv[v] : _mm256_add_ps(cv[v], _mm256_set1_ps(ri[r]));
    for (int k = 0; k < kb; k++) {
        __m256 b[2];
        const float *bk = B + k * ldb, *ak = A + k * aks;
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            b[v] = v == NV - 1 ? _mm256_maskload_ps(bk + 8 * v, last) : _mm256_loadu_ps(bk + 8 * v);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 a = _mm256_broadcast_ss(ak + r * ars);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        float *c = C + r * ldc;
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            __m256i m = v == NV - 1 ? last : all;
            __m256 y = acc[r][v];
            if (add)
                y = _mm256_add_ps(_mm256_maskload_ps(c + 8 * v, m), y);
            _mm256_maskstore_ps(c + 8 * v, m, y);
        }
    }
}

#define TILE8_CASE(MR, ARS, AKS)                                                            \
    case MR:                                                                                \
        if (nv == 1)                                                                        \
            ukernel_tile8(MR, 1, last, kb, A, ARS, AKS, Bj, ldb, Cj, ldc, add, ri, cj);     \
        else                                                                                \
            ukernel_tile8(MR, 2, last, kb, A, ARS, AKS, Bj, ldb, Cj, ldc, add, ri, cj);     \
        break;
#define TILE8_SWITCH(ARS, AKS)                                                              \
    switch (mr) {                                                                           \
        TILE8_CASE(1, ARS, AKS) TILE8_CASE(2, ARS, AKS) TILE8_CASE(3, ARS, AKS)             \
        TILE8_CASE(4, ARS, AKS) TILE8_CASE(5, ARS, AKS)                                     \
    default:                                                                                \
        TILE8_CASE(6, ARS, AKS)                                                             \
    }

/* AVX2 has half AVX-512's registers: the strip of up to 64 columns goes
 * through in 16-column tiles (A's few values stay in L1 across them). */
__attribute__((target("avx2,fma"))) static void
ukernel_avx2(int mr, int w, int kb, const float *A, size_t ars, size_t aks, const float *B,
             size_t ldb, float *C, size_t ldc, int add, const float *ri, const float *ci)
{
    if (aks != 1 && ars != 1) {
        ukernel_c(mr, w, kb, A, ars, aks, B, ldb, C, ldc, add, ri, ci);
        return;
    }
    for (int j0 = 0; j0 < w; j0 += 16) {
        int wj = w - j0 < 16 ? w - j0 : 16, nv = (wj + 7) / 8, tail = wj - 8 * (nv - 1);
        __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const float *Bj = B + j0, *cj = ci ? ci + j0 : NULL;
        float *Cj = C + j0;
        if (aks == 1)
            TILE8_SWITCH(ars, 1)
        else
            TILE8_SWITCH(1, aks)
    }
}

/* add 1: C += A @ B; add 0: C = init + A @ B (C is not read), init (r, j) =
 * ri[r] + ci[j], either NULL for 0. */
static void ukernel(int mr, int w, int kb, const float *A, size_t ars, size_t aks,
                    const float *B, size_t ldb, float *C, size_t ldc, int add, const float *ri,
                    const float *ci)
{
    switch (df_ops_simd()) {
    case 1: ukernel_avx512(mr, w, kb, A, ars, aks, B, ldb, C, ldc, add, ri, ci); break;
    case 2: ukernel_avx2(mr, w, kb, A, ars, aks, B, ldb, C, ldc, add, ri, ci); break;
    default: ukernel_c(mr, w, kb, A, ars, aks, B, ldb, C, ldc, add, ri, ci); break;
    }
}

/* C (M,N) += A (M,K) @ B (K,N) (add 1) or C = A @ B (add 0), in place
 * (attention's small in-cache products): 64-column strips of B, 6 rows of
 * A at a time. A's (i,k) is A[i*ars + k*aks]: row-major (ars = lda, aks = 1)
 * or stored transposed (ars = 1, aks = lda: P read from P^T); B and C are
 * row-major. */
static void gemm_block(int M, int N, int K, const float *A, size_t ars, size_t aks,
                       const float *B, size_t ldb, float *C, size_t ldc, int add)
{
    for (int j = 0; j < N; j += 64) {
        int w = N - j < 64 ? N - j : 64;
        for (int i = 0; i < M; i += 6) {
            int mr = M - i < 6 ? M - i : 6;
            ukernel(mr, w, K, A + i * ars, ars, aks, B + j, ldb, C + i * ldc + j, ldc, add, NULL,
                    NULL);
        }
    }
}

/* ------------------------------------------------------------------- GEMM */

/* Blocking: each thread packs a K x NB column panel of B once, as 64-column
 * strips of KB x 64 per k-block (32 KiB each: a strip stays in L1 while the
 * 6-row panels of A pass over it); then, for MB rows of C at a time (an
 * MB x NB block that stays in L2 across the whole K loop, so C never goes
 * back to memory between k-blocks), runs the micro-kernel over every k-block,
 * strip and row panel. A is read in place: packing it into contiguous panels
 * measured no faster here (the kernel prefetches its C tile instead, which
 * was where the stalls were). */
enum { KB = DF_GEMM_KB, NB = 512, MB = 240 };

typedef enum { B_ROWS, B_TRANS, B_IM2COL, B_PACKED } bsrc_kind;

/* Where B comes from: B_ROWS: B[k][n] = p[k*ld + n]; B_TRANS: B[k][n] = p[n*ld + k];
 * B_IM2COL: B[(c,kh,kw)][(b,oh,ow)] = image b of p (B,C,H,W) at (oh*s-pad_t+kh, ow*s-pad_l+kw);
 * B_PACKED: p already in the packed layout (df_ops_gemm_packed_index), ld = N
 * rounded up to whole strips of 64: nothing to pack. */
typedef struct {
    bsrc_kind kind;
    const float *p;
    size_t ld;
    int C, H, W, OH, OW;             // im2col only: images of (C,H,W), one after another
    const df_conv2d_geom *g;
} bsrc;

/* d[i] = (src ? src[i] : 0) + v for i < n: the packing and C-init copies.
 * Runs are short (at most a few hundred floats), where memcpy's string
 * instructions spend more on starting than on copying. */
__attribute__((target("avx512f"))) static void copy_add_avx512(float *d, const float *src,
                                                               float v, int n)
{
    __m512 vv = _mm512_set1_ps(v);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = src ? _mm512_maskz_loadu_ps(k, src + i) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(d + i, k, _mm512_add_ps(x, vv));
    }
}

static void copy_add(float *d, const float *src, float v, int n)
{
    if (df_ops_simd() == 1)
        copy_add_avx512(d, src, v, n);
    else
        for (int i = 0; i < n; i++)
            d[i] = (src ? src[i] : 0.0f) + v;
}

/* Write n floats from src (zeros when src is NULL) at logical columns
 * j..j+n of a strip-packed row: column x lands at (x/64)*strip + x%64. */
static inline void put_run(float *dst, size_t strip, int j, const float *src, int n)
{
    while (n > 0) {
        int m = 64 - j % 64 < n ? 64 - j % 64 : n;
        copy_add(dst + (size_t)(j / 64) * strip + j % 64, src, 0.0f, m);
        src = src ? src + m : NULL;
        j += m, n -= m;
    }
}

/* One im2col row, strip-packed into dst: the values of tap (c,kh,kw) at
 * outputs n0..n0+nb. Runs along output rows: padding rows are zeros; for
 * stride 1 the rest is zeros at the edges and one straight copy between. */
static void pack_im2col_row(float *dst, size_t strip, const bsrc *s, int k, int n0, int nb)
{
    const df_conv2d_geom *g = s->g;
    int K = g->K, c = k / (K * K), kh = k / K % K, kw = k % K, st = g->stride, W = s->W;
    int OHW = s->OH * s->OW, b = n0 / OHW, oh = n0 % OHW / s->OW, ow = n0 % s->OW;
    for (int j = 0; j < nb;) {
        int run = s->OW - ow < nb - j ? s->OW - ow : nb - j;   // rest of this output row
        int ih = oh * st - g->pad_t + kh;
        const float *img = s->p + ((size_t)b * s->C + c) * s->H * W;
        const float *src = img + (size_t)ih * W;
        if (ih < 0 || ih >= s->H) {
            put_run(dst, strip, j, NULL, run);
        } else if (st == 1) {
            // iw = ow + e - pad_l + kw: valid for e in [e0, e1)
            int base = ow - g->pad_l + kw;
            int e0 = base < 0 ? -base : 0, e1 = W - base < run ? W - base : run;
            e0 = e0 > run ? run : e0;
            e1 = e1 < e0 ? e0 : e1;
            put_run(dst, strip, j, NULL, e0);
            put_run(dst, strip, j + e0, src + base + e0, e1 - e0);
            put_run(dst, strip, j + e1, NULL, run - e1);
        } else {
            for (int e = 0; e < run; e++) {
                int iw = (ow + e) * st - g->pad_l + kw, x = j + e;
                dst[(size_t)(x / 64) * strip + x % 64] = iw >= 0 && iw < W ? src[iw] : 0.0f;
            }
        }
        j += run, ow = 0, oh++;
        if (oh == s->OH)
            oh = 0, b++;
    }
}

/* r[i] (lane l: element (i, l)) <- its transpose (lane l: element (l, i)),
 * 16x16: pairs, then pairs of pairs within 128-bit lanes, then the lanes. */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // u[4g + c]: column c of rows 4g..4g+3 in each 128-bit lane q, at columns 4q + c
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

/* The B_TRANS packing of pack_b by 16x16 blocks: 16 source rows (columns of
 * B) read 16 floats at a time, transposed in registers, stored as 16 rows
 * of a strip. Scalar, it was ~13% of a linear layer over 1152 tokens. */
__attribute__((target("avx512f"))) static void pack_trans_avx512(float *dst, const bsrc *s,
                                                                 int k0, int kb, int n0, int nb)
{
    size_t strip = (size_t)kb * 64;
    for (int j = 0; j < nb; j += 16) {
        int nj = nb - j < 16 ? nb - j : 16;
        float *d = dst + (size_t)(j / 64) * strip + j % 64;
        const float *src = s->p + (size_t)(n0 + j) * s->ld + k0;
        // the next 16 rows' pieces, ahead: the weights come from memory
        // (each is read once a step), and a few hundred bytes of each of
        // 16 rows are too short a run for the hardware to prefetch
        for (int i = 0; i < 16 && j + 16 + i < nb; i++)
            for (int k = 0; k < kb; k += 16)
                _mm_prefetch((const char *)(src + (size_t)(16 + i) * s->ld + k), _MM_HINT_T0);
        for (int k = 0; k < kb; k += 16) {
            int nk = kb - k < 16 ? kb - k : 16;
            __mmask16 km = (__mmask16)((1u << nk) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < nj ? _mm512_maskz_loadu_ps(km, src + (size_t)i * s->ld + k)
                              : _mm512_setzero_ps();
            transpose16(r);
            __mmask16 jm = (__mmask16)((1u << nj) - 1);
            for (int i = 0; i < nk; i++)
                _mm512_mask_storeu_ps(d + (size_t)(k + i) * 64, jm, r[i]);
        }
    }
}

/* Pack B[k0..k0+kb, n0..n0+nb] into 64-column strips of kb x 64. */
static void pack_b(float *dst, const bsrc *s, int k0, int kb, int n0, int nb)
{
    size_t strip = (size_t)kb * 64;
    if (s->kind == B_TRANS && df_ops_simd() == 1) {
        pack_trans_avx512(dst, s, k0, kb, n0, nb);
        return;
    }
    if (s->kind == B_TRANS) {
        // B[k][n] = p[n][k]: walk the source rows (contiguous in k) and
        // scatter down a strip column, which stays in L1
        for (int j = 0; j < nb; j++) {
            const float *src = s->p + (size_t)(n0 + j) * s->ld + k0;
            float *d = dst + (size_t)(j / 64) * strip + j % 64;
            for (int k = 0; k < kb; k++)
                d[(size_t)k * 64] = src[k];
        }
        return;
    }
    for (int k = 0; k < kb; k++) {
        float *d = dst + (size_t)k * 64;
        if (s->kind == B_IM2COL)
            pack_im2col_row(d, strip, s, k0 + k, n0, nb);
        else
            put_run(d, strip, 0, s->p + (size_t)(k0 + k) * s->ld + n0, nb);
    }
}

typedef struct {
    int M, N, K;
    const float *A;
    size_t lda;
    bsrc b;
    float *C;
    size_t ldc;
    const float *row_init, *col_init;   // C starts as row_init[m] + col_init[n] (NULL: 0)
    // work items: P column panels of cw columns (cw a multiple of 64, the
    // last panel narrower) times R row chunks of rc rows, panel-major;
    // threads take the next item from `next` (see gemm_task)
    int cw, P, rc, R;
    int next;
    int failed;        // a thread could not get its pack buffer
} gemm_job;

/* C[m0..m1, n..n+nb] += A[m0..m1, :] @ B[:, n..n+nb], B packed by k-blocks
 * of kb x nbp (nb rounded up to whole strips). */
static void gemm_panel(const gemm_job *j, const float *bpack, int m0, int m1, int n, int nb,
                       int nbp)
{
    // the first k-block stores its products, its accumulators started at
    // the initial C (bias) rather than adding to a C filled first; only an
    // empty product (K = 0) fills C
    for (int m = m0; m < m1; m += MB) {
        int mb = m1 - m < MB ? m1 - m : MB;
        for (int i = 0; j->K == 0 && i < mb; i++) {
            float *c = j->C + (size_t)(m + i) * j->ldc + n;
            float r = j->row_init ? j->row_init[m + i] : 0.0f;
            copy_add(c, j->col_init ? j->col_init + n : NULL, r, nb);
        }
        for (int k = 0; k < j->K; k += KB) {
            int kb = j->K - k < KB ? j->K - k : KB;
            // this k-block's strips
            const float *bk = j->b.kind == B_PACKED ? j->b.p + (size_t)k * j->b.ld + (size_t)n * kb
                                                    : bpack + (size_t)k * nbp;
            for (int s = 0; s < nb; s += 64) {
                int w = nb - s < 64 ? nb - s : 64;
                const float *bs = bk + (size_t)(s / 64) * kb * 64;
                const float *ci = j->col_init ? j->col_init + n + s : NULL;
                for (int i = 0; i < mb; i += 6)
                    ukernel(mb - i < 6 ? mb - i : 6, w, kb, j->A + (size_t)(m + i) * j->lda + k,
                            j->lda, 1, bs, 64, j->C + (size_t)(m + i) * j->ldc + n + s, j->ldc,
                            k > 0, j->row_init ? j->row_init + m + i : NULL, ci);
            }
        }
    }
}

/* Items are taken in order from a shared counter rather than split evenly
 * up front: on a machine shared with other jobs one thread is often
 * descheduled for a while, and a fixed share would leave the op waiting
 * for it while the other thread idles. A thread packs a panel of B only
 * when its next item lies in another panel than the one it holds. */
static void gemm_task(void *ctx, int tid, int nt)
{
    gemm_job *j = ctx;
    float *bpack = NULL;
    int have = -1;   // the panel now in bpack
    for (;;) {
        int it = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (it >= j->P * j->R)
            break;
        int p = it / j->R, r = it % j->R;
        int n = p * j->cw, nb = j->N - n < j->cw ? j->N - n : j->cw, nbp = (nb + 63) / 64 * 64;
        int m0 = r * j->rc, m1 = m0 + j->rc < j->M ? m0 + j->rc : j->M;
        if (m0 >= m1)
            continue;
        if (j->b.kind == B_PACKED) {
            gemm_panel(j, NULL, m0, m1, n, nb, nbp);
            continue;
        }
        if (!bpack) {
            // K x cw, with each k-block's strips padded to whole strips of 64
            bpack = malloc(sizeof(float) * (size_t)j->K * j->cw);
            if (!bpack) {
                __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
                return;
            }
        }
        if (p != have) {
            for (int k = 0; k < j->K; k += KB)
                pack_b(bpack + (size_t)k * nbp, &j->b, k, j->K - k < KB ? j->K - k : KB, n, nb);
            have = p;
        }
        gemm_panel(j, bpack, m0, m1, n, nb, nbp);
    }
    free(bpack);
}

/* How long the slowest of nt equally fast threads runs on the items of a
 * cut into column panels of cw and row chunks of rc, taken in order from the
 * counter (each by the thread with the least work so far), in row x strip
 * units: a part strip costs about a whole one in the kernel. */
static long items_makespan(int M, int N, int cw, int rc, int nt)
{
    long load[256] = {0}, most = 0;
    for (int n = 0; n < N; n += cw)
        for (int m = 0; m < M; m += rc) {
            int w = N - n < cw ? N - n : cw, h = M - m < rc ? M - m : rc, t = 0;
            for (int i = 1; i < nt; i++)
                t = load[i] < load[t] ? i : t;
            load[t] += (long)h * ((w + 63) / 64);
            most = load[t] > most ? load[t] : most;
        }
    return most;
}

/* Evens out a cut whose items do not share out over nt threads (3 panels
 * for 2 threads at UNet level 2, a thin last panel at level 1): tries more
 * panels and more row chunks. Near-ties (within 2%) go to the given cut,
 * then to fewer panels and chunks: each extra panel re-reads all of A (the
 * weights, tens of MB at level 2) and each extra row chunk repacks B. */
static void balance_items(int M, int N, int nt, int *cw, int *rc)
{
    int strips = (N + 63) / 64, P0 = (N + *cw - 1) / *cw, R0 = (M + *rc - 1) / *rc;
    long given = items_makespan(M, N, *cw, *rc, nt), best = given;
    // pass 0 finds the shortest makespan, pass 1 takes the first cut near it
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && given * 50 <= best * 51)
            return;
        for (int P = P0; P <= P0 + nt && P <= strips; P++)
            for (int R = R0; R <= R0 * nt; R++) {
                int c = 64 * ((strips + P - 1) / P), r = ((M + R - 1) / R + 5) / 6 * 6;
                if ((c < 128 && c < N) || r < 48)
                    continue;
                long t = items_makespan(M, N, c, r, nt);
                if (pass == 0 && t < best)
                    best = t;
                if (pass == 1 && t * 50 <= best * 51) {
                    *cw = c, *rc = r;
                    return;
                }
            }
    }
}

/* C (M,N) = init + A (M,K) @ B (K,N) with B from `b`, where init is
 * row_init[m] + col_init[n] (either may be NULL for 0); returns 0, or -1
 * when scratch memory could not be had (callers then run the reference).
 * Work items: column panels of at most NB columns, of even widths. When
 * that gives too few panels to keep nt threads busy to the end: with many
 * more rows than columns (linear layers over many tokens) the rows are cut
 * into chunks (each thread then packs the panels it meets, a small matrix
 * next to the product); otherwise the panels are made narrower (down to 128
 * columns), which costs only re-reads of A, not repacking of B (im2col). */
static int gemm(int M, int N, int K, const float *A, size_t lda, const bsrc *b, float *C,
                size_t ldc, const float *row_init, const float *col_init)
{
    int nt = threads_for(2.0 * M * N * K / 8);
    int P = (N + NB - 1) / NB, R = 1;
    if (P < 3 * nt && M >= 4 * N) {
        R = 4 * nt;
    } else if (P < 3 * nt) {
        int want = N / 128 < 4 * nt ? N / 128 : 4 * nt;
        P = P > want ? P : want;
        R = P >= 2 * nt ? 1 : (4 * nt + P - 1) / P;
    }
    int strips = (N + 63) / 64, cw = 64 * ((strips + P - 1) / P);
    int rc = ((M + R - 1) / R + 5) / 6 * 6;
    balance_items(M, N, nt, &cw, &rc);
    P = (N + cw - 1) / cw;
    R = (M + rc - 1) / rc;
    gemm_job j = {M, N, K, A, lda, *b, C, ldc, row_init, col_init, cw, P, rc, R, 0, 0};
    run_parallel(gemm_task, &j, nt < P * R ? nt : P * R);
    return j.failed ? -1 : 0;
}

int df_ops_gemm_packed(int M, int N, int K, const float *A, size_t lda, const float *Bp, float *C,
                       size_t ldc)
{
    bsrc b = {.kind = B_PACKED, .p = Bp, .ld = (size_t)(N + 63) / 64 * 64};
    return gemm(M, N, K, A, lda, &b, C, ldc, NULL, NULL);
}

/* ----------------------------------------------------------------- linear */

/* Few rows (text encoder, cross-attention keys and values: N = 2 x 77):
 * packing the weight would cost about as much as the product, so compute
 * out^T (OC,N) = weight (OC,C) @ inp^T (C,N) instead, packing only inp, and
 * transpose the small result. Returns -1 without scratch memory. */
static int linear_few_rows(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC)
{
    float *t = malloc(sizeof(float) * OC * N);
    if (!t)
        return -1;
    bsrc b = {.kind = B_TRANS, .p = inp, .ld = (size_t)C};
    if (gemm(OC, N, C, weight, (size_t)C, &b, t, (size_t)N, bias, NULL) != 0) {
        free(t);
        return -1;
    }
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            out[(size_t)n * OC + o] = t[(size_t)o * N + n];
    free(t);
    return 0;
}

void df_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC)
{
    // out (N,OC) = inp (N,C) @ weight(OC,C)^T: B[k][n] = weight[n][k]
    if (N <= 0 || OC <= 0)
        return;
    if (N < 256 && OC >= 4 * N) {
        if (linear_few_rows(out, inp, weight, bias, N, C, OC) != 0)
            df_linear_forward_ref(out, inp, weight, bias, N, C, OC);
        return;
    }
    bsrc b = {.kind = B_TRANS, .p = weight, .ld = (size_t)C};
    if (gemm(N, OC, C, inp, (size_t)C, &b, out, (size_t)OC, NULL, bias) != 0)
        df_linear_forward_ref(out, inp, weight, bias, N, C, OC);
}

/* ----------------------------------------------------------------- conv2d */

/* Small images (UNet levels 3-4: 24x24 and 12x12 at 768 px) give GEMMs of
 * a few hundred columns, too few to share out over threads and strips:
 * all B images' im2col columns go into one GEMM instead, into (OC, B*OHW),
 * then out (B, OC, OHW) is gathered from it. Returns -1 without scratch. */
static int conv_batched(float *out, const float *inp, const float *weight, const float *bias,
                        int B, int C, int H, int W, int OC, const df_conv2d_geom *g, int OH,
                        int OW)
{
    size_t OHW = (size_t)OH * OW, N = (size_t)B * OHW, CKK = (size_t)C * g->K * g->K;
    float *t = malloc(sizeof(float) * OC * N);
    bsrc src = {.kind = B_IM2COL, .p = inp, .C = C, .H = H, .W = W, .OH = OH, .OW = OW, .g = g};
    if (!t || gemm(OC, (int)N, (int)CKK, weight, CKK, &src, t, N, bias, NULL) != 0) {
        free(t);
        return -1;
    }
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OC; o++)
            memcpy(out + ((size_t)b * OC + o) * OHW, t + (size_t)o * N + (size_t)b * OHW,
                   sizeof(float) * OHW);
    free(t);
    return 0;
}

void df_conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int B, int C, int H, int W, int OC, const df_conv2d_geom *g)
{
    // per image: out (OC, OH*OW) = weight (OC, C*K*K) @ im2col(inp) (C*K*K, OH*OW)
    int OH, OW, K = g->K;
    df_conv2d_out_size(g, H, W, &OH, &OW);
    if (B <= 0 || OC <= 0 || OH <= 0 || OW <= 0)
        return;
    // most 3x3 convolutions: Winograd, 2.25x (F(2x2, 3x3)) or 4x (F(4x4, 3x3))
    // fewer flops (ops_winograd.c); top and bottom padding may be 0 for the
    // upsampler's bands of rows
    int wino_fits = K == 3 && g->stride == 1 && g->pad_l == 1 && g->pad_r == 1 &&
                    (unsigned)g->pad_t <= 1 && (unsigned)g->pad_b <= 1;
    int tile = winograd_mode < 0 ? df_conv2d_winograd_pays(C, OH, OW, OC) : winograd_mode;
    if (wino_fits && tile &&
        df_conv2d_winograd(out, inp, weight, bias, B, C, H, W, OC, g->pad_t, g->pad_b, tile) == 0)
        return;
    size_t OHW = (size_t)OH * OW, CKK = (size_t)C * K * K;
    int plain = K == 1 && g->stride == 1 && !g->pad_t && !g->pad_l && !g->pad_b && !g->pad_r;
    if (!plain && B > 1 && OHW < 4096 && conv_batched(out, inp, weight, bias, B, C, H, W, OC, g,
                                                      OH, OW) == 0)
        return;
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * C * H * W;
        float *y = out + (size_t)b * OC * OHW;
        // a 1x1 stride-1 conv is a GEMM on the image itself: no packing
        bsrc src = plain ? (bsrc){.kind = B_ROWS, .p = x, .ld = OHW}
                         : (bsrc){.kind = B_IM2COL, .p = x, .C = C, .H = H, .W = W, .OH = OH,
                                  .OW = OW, .g = g};
        if (gemm(OC, (int)OHW, (int)CKK, weight, CKK, &src, y, OHW, bias, NULL) != 0) {
            df_conv2d_forward_ref(out, inp, weight, bias, B, C, H, W, OC, g);
            return;
        }
    }
}

/* ------------------------------------------------------ vector exp (AVX-512) */

/* exp(x) for 16 floats: x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor series
 * to r^7 (truncation error < 6e-9 relative, under float rounding), times 2^n.
 * Inputs below -104 give 0 and above 88.7 give +inf, as expf. */
__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.8f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* y[j] = exp(x[j] - m) for j < n; returns the sum of the y[j]. */
__attribute__((target("avx512f"))) static float exp_shift_sum_avx512(float *y, const float *x,
                                                                     float m, int n)
{
    __m512 vm = _mm512_set1_ps(m), s = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
        _mm512_storeu_ps(y + j, e);
        s = _mm512_add_ps(s, e);
    }
    if (j < n) {
        __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm));
        _mm512_mask_storeu_ps(y + j, k, e);
        s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
    }
    return _mm512_reduce_add_ps(s);
}

static float exp_shift_sum(float *y, const float *x, float m, int n)
{
    if (df_ops_simd() == 1)
        return exp_shift_sum_avx512(y, x, m, n);
    float s = 0.0f;
    for (int j = 0; j < n; j++)
        s += (y[j] = expf(x[j] - m));
    return s;
}

/* The largest of x[0..n), -inf for n = 0. */
__attribute__((target("avx512f"))) static float row_max_avx512(const float *x, int n)
{
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16)
        mx = _mm512_max_ps(mx, _mm512_loadu_ps(x + j));
    if (j < n) {
        __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, x + j));
    }
    return _mm512_reduce_max_ps(mx);
}

static float row_max(const float *x, int n)
{
    if (df_ops_simd() == 1)
        return row_max_avx512(x, n);
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* -------------------------------------------------------------- attention */

/* The portable path (df_ops_simd() == 0; AVX-512 takes the transposed one
 * below), on row-major score tiles. Query rows and keys per attention tile.
 * Every block of AQ queries streams all of its head's K^T and V (2.4 MB each
 * at 768 px level 0, more than L2 holds), so larger query blocks halve that
 * traffic: 192 measured ~15-20% faster than 96 on SD shapes (score tile
 * 96 KiB, output tile 48 KiB at HS 64). */
enum { AQ = 192, AK = 128 };

typedef struct {
    float *out;
    const float *q, *k, *v;
    int B, Tq, Tk, NH, HS, causal;
    float scale;
    int next;      // the next work item (see attn_task)
    int failed;
    int qs;        // blocks of TQ queries per work item (transposed path)
} attn_job;

/* Per-thread scratch: K^T of one head in key tiles (see attn_task), the score tile (AQ, AK), the
 * output accumulators (AQ, HS) and the running row max and sum. */
typedef struct { float *kt, *s, *o, *m, *l; } attn_scratch;

/* Fold one key tile [j0, j0+nk) into the running softmax of query rows
 * i0..i0+nq of head (b,h). */
static void attn_tile(const attn_job *J, attn_scratch *w, int b, int h, int i0, int nq, int j0,
                      int nk)
{
    int C = J->NH * J->HS, HS = J->HS;
    const float *qb = J->q + ((size_t)b * J->Tq + i0) * C + (size_t)h * HS;
    const float *vb = J->v + ((size_t)b * J->Tk + j0) * C + (size_t)h * HS;
    // s (nq, nk) = q (nq, HS) @ kt tile of keys j0.. (HS, AK), kt holding scale * k
    gemm_block(nq, nk, HS, qb, (size_t)C, 1, w->kt + (size_t)(j0 / AK) * HS * AK, AK, w->s, AK,
               0);
    for (int r = 0; r < nq; r++) {
        float *s = w->s + (size_t)r * AK;
        int i = i0 + r;
        int valid = J->causal ? (i + 1 < J->Tk ? i + 1 : J->Tk) - j0 : nk;
        valid = valid < 0 ? 0 : valid > nk ? nk : valid;
        float mx = row_max(s, valid);
        for (int j = valid; j < nk; j++)
            s[j] = 0.0f;   // masked keys weigh nothing
        if (valid == 0)
            continue;
        // once the running max has settled (most tiles), nothing to rescale
        if (mx > w->m[r]) {
            float corr = expf(w->m[r] - mx);   // 0 on the first tile (m = -inf)
            float *o = w->o + (size_t)r * HS;
            for (int d = 0; d < HS; d++)
                o[d] *= corr;
            w->l[r] *= corr;
            w->m[r] = mx;
        }
        w->l[r] += exp_shift_sum(s, s, w->m[r], valid);
    }
    // o (nq, HS) += p (nq, nk) @ v (nk, HS)
    gemm_block(nq, HS, nk, w->s, AK, 1, vb, (size_t)C, w->o, (size_t)HS, 1);
}

/* Queries i0..i0+nq of head (b,h), over all visible keys. */
static void attn_rows(const attn_job *J, attn_scratch *w, int b, int h, int i0, int nq)
{
    int C = J->NH * J->HS, HS = J->HS;
    for (int r = 0; r < nq; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(w->o, 0, sizeof(float) * nq * HS);
    int kend = J->causal ? (i0 + nq < J->Tk ? i0 + nq : J->Tk) : J->Tk;
    for (int j0 = 0; j0 < kend; j0 += AK)
        attn_tile(J, w, b, h, i0, nq, j0, kend - j0 < AK ? kend - j0 : AK);
    for (int r = 0; r < nq; r++) {
        float *y = J->out + ((size_t)b * J->Tq + i0 + r) * C + (size_t)h * HS;
        float inv = 1.0f / w->l[r];
        for (int d = 0; d < HS; d++)
            y[d] = w->o[(size_t)r * HS + d] * inv;
    }
}

/* A thread's next work item: head bh = b * NH + h and block qb of its nqb
 * blocks of queries; 0 when none is left. Items are head-major and come
 * from a shared counter, so that a descheduled thread holds nobody up (as
 * gemm_task), and a thread meets a new head (repacks its keys) rarely. */
static int attn_next(attn_job *J, int nqb, int *bh, int *qb)
{
    int it = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
    if (it >= J->B * J->NH * nqb)
        return 0;
    *bh = it / nqb, *qb = it % nqb;
    return 1;
}

static void attn_task(void *ctx, int tid, int nt)
{
    attn_job *J = ctx;
    int C = J->NH * J->HS, HS = J->HS, nqb = (J->Tq + AQ - 1) / AQ;
    size_t ktiles = (size_t)(J->Tk + AK - 1) / AK;
    attn_scratch w = {malloc(sizeof(float) * HS * AK * ktiles), malloc(sizeof(float) * AQ * AK),
                      malloc(sizeof(float) * AQ * HS), malloc(sizeof(float) * AQ),
                      malloc(sizeof(float) * AQ)};
    if (!w.kt || !w.s || !w.o || !w.m || !w.l) {
        __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    // a thread repacks K^T only when it moves to another head
    int cur_bh = -1;
    for (int bh, qb; attn_next(J, nqb, &bh, &qb);) {
        int b = bh / J->NH, h = bh % J->NH;
        if (bh != cur_bh) {
            // this head's keys transposed, in tiles of AK keys: tile t holds
            // (d, j) at t*HS*AK + d*AK + j%AK, so a tile's rows sit 512 B apart
            // (rows Tk floats apart would all fall into the same cache sets).
            // The scale is applied here, once per key rather than per score
            // (exact for SD's head sizes, where it is a power of 2).
            const float *kb = J->k + (size_t)b * J->Tk * C + (size_t)h * HS;
            for (int j = 0; j < J->Tk; j++) {
                float *dst = w.kt + (size_t)(j / AK) * HS * AK + j % AK;
                for (int d = 0; d < HS; d++)
                    dst[(size_t)d * AK] = J->scale * kb[(size_t)j * C + d];
            }
            cur_bh = bh;
        }
        int i0 = qb * AQ;
        attn_rows(J, &w, b, h, i0, J->Tq - i0 < AQ ? J->Tq - i0 : AQ);
    }
done:
    free(w.kt), free(w.s), free(w.o), free(w.m), free(w.l);
}

/* ------------------------------------------ attention, transposed (AVX-512) */

/* The AVX-512 path works on transposed score tiles. Per (batch, head, block
 * of TQ queries) and block of TK keys:
 *   S^T (nk, TQ) = K (nk, HS) @ Q^T (HS, TQ)   Q^T packed per block, times
 *                                              the scale (exact for SD's 1/8)
 *   P^T = 2^(S^T log2(e) - m)                  online softmax, see below
 *   O (TQ, HS) += P (TQ, nk) @ V (nk, HS)      P read from P^T in place
 * A row of S^T is one key's scores against 16 queries per zmm, so the block
 * max, the rescaling, the exponentials and the row sums are all vertical,
 * with no horizontal reductions; and the 16 KiB tiles (Q^T, S^T, O at HS 64)
 * stay in L1 instead of a 96 KiB score tile making its passes through L2.
 * Both products run on the 6 x 64 micro-kernel. K and V of a head are
 * packed contiguously once per head and thread (rows NH*HS floats apart in
 * place make strided streams for the prefetcher).
 * Where a head's K and V outgrow half of L2 (Tk 9216: 4.7 MB), every block
 * of queries streams them from L3; so a work item is then QS blocks of TQ
 * queries that take each key block in turn while it is in cache, a third of
 * the traffic: measured ~15% faster on 2 threads at Tk 9216, and ~5% slower
 * for Tk 77, hence only there. TQ 64 x TK 64 measured as fast as 96 or 128
 * queries and 32 to 128 keys, and keeps the tiles in L1. */
enum { TQ = 64, TK = 64, QS = 3 };

/* Per-thread scratch: K and V of one head (Tk, HS) each; per block of an
 * item Q^T (HS, TQ), the output accumulators O (TQ, HS), the running max
 * (log2 units) and sum per query; the score tile S^T (TK, TQ), and a rescale
 * factor per query. */
typedef struct { float *kp, *vp, *qt, *st, *o, *m, *l, *corr; } attn_t_scratch;

/* 2^x for 16 floats: x = n + f, n = round(x), |f| <= 1/2; 2^f by a degree-6
 * polynomial (a minimax fit for relative error on [-1/2, 1/2] made for this
 * code: 1.9e-9 in exact arithmetic, under 8e-8 evaluated in float, i.e.
 * float rounding), then scalef multiplies by 2^n. x <= -126, and -inf
 * (masked keys), give exactly 0, so no denormal reaches the products. */
__attribute__((target("avx512f"))) static inline __m512 exp2_16(__m512 x)
{
    // not (x <= -126): NaN stays live and comes out NaN, as the reference has it
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLE_UQ);
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.534581243e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339993090e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489072e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264625e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471825e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(live, p, n);
}

/* One key block of the online softmax, 16 queries per vector: st (nk, TQ)
 * holds the scaled scores S^T; m (running max times log2(e)) and l (running
 * sum) are per query. st becomes P^T = 2^(s log2(e) - m) with m now covering
 * this block, and corr[r] the factor query r's earlier sum and output take
 * (exactly 1 where its max did not move, 0 on the first block). Working in
 * base 2 with the same rounded m for every term keeps softmax's invariance
 * to the shift exact. Returns whether any corr[r] is not 1. */
__attribute__((target("avx512f"))) static int softmax_block_t(float *st, int nk, float *m,
                                                              float *l, float *corr)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    __mmask16 moved = 0;
    for (int v = 0; v < TQ; v += 16) {
        __m512 bmax = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < nk; j++)
            bmax = _mm512_max_ps(bmax, _mm512_load_ps(st + (size_t)j * TQ + v));
        __m512 mold = _mm512_load_ps(m + v);
        __m512 mnew = _mm512_max_ps(mold, _mm512_mul_ps(bmax, log2e));
        moved |= _mm512_cmp_ps_mask(mnew, mold, _CMP_GT_OQ);
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < nk; j++) {
            float *s = st + (size_t)j * TQ + v;
            __m512 p = exp2_16(_mm512_fmsub_ps(_mm512_load_ps(s), log2e, mnew));
            _mm512_store_ps(s, p);
            sum = _mm512_add_ps(sum, p);
        }
        __m512 c = exp2_16(_mm512_sub_ps(mold, mnew));
        _mm512_store_ps(l + v, _mm512_fmadd_ps(_mm512_load_ps(l + v), c, sum));
        _mm512_store_ps(m + v, mnew);
        _mm512_store_ps(corr + v, c);
    }
    return moved != 0;
}

/* Causal: query i0+r sees keys up to i0+r, so in st (nk, TQ) of keys j0..
 * key j0+j is hidden (-inf, weight 0) from queries r < j0+j-i0. */
static void mask_causal_t(float *st, int nk, int i0, int j0)
{
    for (int j = 0; j < nk; j++) {
        int hide = j0 + j - i0;
        for (int r = 0; r < (hide < TQ ? hide : TQ); r++)
            st[(size_t)j * TQ + r] = -INFINITY;
    }
}

/* Q^T for one block: qt (HS, TQ) = scale * q (nq, HS) transposed, q's rows
 * ldq apart; query lanes past nq get zeros (finite scores nobody reads).
 * By 16 x 16 blocks in registers (transpose16): done one float at a time,
 * the transpose cost a quarter of a cross-attention block (Tk 77). */
__attribute__((target("avx512f"))) static void pack_qt(float *qt, const float *q, size_t ldq,
                                                       int nq, int HS, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    for (int r0 = 0; r0 < TQ; r0 += 16)
        for (int d0 = 0; d0 < HS; d0 += 16) {
            int nd = HS - d0 < 16 ? HS - d0 : 16;
            __mmask16 dm = (__mmask16)((1u << nd) - 1);
            __m512 x[16];
            for (int i = 0; i < 16; i++) {
                const float *row = q + (size_t)(r0 + i) * ldq + d0;
                x[i] = r0 + i < nq ? _mm512_mul_ps(s, _mm512_maskz_loadu_ps(dm, row))
                                   : _mm512_setzero_ps();
            }
            transpose16(x);   // x[d]: dimension d0 + d of the 16 queries
            for (int d = 0; d < nd; d++)
                _mm512_store_ps(qt + (size_t)(d0 + d) * TQ + r0, x[d]);
        }
}

/* o (nq, HS) rows times a per-row factor f[r] (the rescaling of the
 * accumulators, or 1/l at the end), into y, rows ldy apart (y may be o). */
__attribute__((target("avx512f"))) static void scale_rows(float *y, size_t ldy, const float *o,
                                                          const float *f, int nq, int HS)
{
    for (int r = 0; r < nq; r++) {
        __m512 fr = _mm512_set1_ps(f[r]);
        for (int d = 0; d < HS; d += 16) {
            __mmask16 k = HS - d >= 16 ? 0xFFFF : (__mmask16)((1u << (HS - d)) - 1);
            __m512 x = _mm512_maskz_loadu_ps(k, o + (size_t)r * HS + d);
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + d, k, _mm512_mul_ps(x, fr));
        }
    }
}

/* Fold keys j0..j0+nk into sub-tile s of the block: its nq queries from i0. */
static void attn_t_tile(const attn_job *J, attn_t_scratch *w, int s, int i0, int nq, int j0,
                        int nk)
{
    int HS = J->HS;
    float *qt = w->qt + (size_t)s * HS * TQ, *o = w->o + (size_t)s * TQ * HS;
    float *m = w->m + (size_t)s * TQ, *l = w->l + (size_t)s * TQ;
    // st (nk, TQ) = k (nk, HS) @ qt (HS, TQ)
    gemm_block(nk, TQ, HS, w->kp + (size_t)j0 * HS, HS, 1, qt, TQ, w->st, TQ, 0);
    if (J->causal && j0 + nk - 1 > i0)
        mask_causal_t(w->st, nk, i0, j0);
    if (softmax_block_t(w->st, nk, m, l, w->corr) && j0 > 0)
        scale_rows(o, (size_t)HS, o, w->corr, nq, HS);
    // o (nq, HS) += p (nq, nk) @ v (nk, HS)
    gemm_block(nq, HS, nk, w->st, 1, TQ, w->vp + (size_t)j0 * HS, HS, o, HS, 1);
}

/* Queries i0..i0+nq (nq <= qs*TQ) of head (b,h) against all the keys they
 * see: per key block, each sub-tile of TQ queries in turn, so that the key
 * block is fetched once for all of them. */
static void attn_t_rows(const attn_job *J, attn_t_scratch *w, int b, int h, int i0, int nq)
{
    int C = J->NH * J->HS, HS = J->HS, nsub = (nq + TQ - 1) / TQ;
    for (int s = 0; s < nsub; s++) {
        int is = i0 + s * TQ, ns = nq - s * TQ < TQ ? nq - s * TQ : TQ;
        pack_qt(w->qt + (size_t)s * HS * TQ, J->q + ((size_t)b * J->Tq + is) * C + (size_t)h * HS,
                (size_t)C, ns, HS, J->scale);
    }
    for (int r = 0; r < nsub * TQ; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(w->o, 0, sizeof(float) * nsub * TQ * HS);
    // causal: a sub-tile's last query sees keys up to is+ns-1; key 0 is
    // always seen, so after the first block every running max is finite
    int kend = J->causal ? (i0 + nq < J->Tk ? i0 + nq : J->Tk) : J->Tk;
    for (int j0 = 0; j0 < kend; j0 += TK)
        for (int s = 0; s < nsub; s++) {
            int is = i0 + s * TQ, ns = nq - s * TQ < TQ ? nq - s * TQ : TQ;
            int ke = J->causal ? (is + ns < J->Tk ? is + ns : J->Tk) : J->Tk;
            if (j0 < ke)
                attn_t_tile(J, w, s, is, ns, j0, ke - j0 < TK ? ke - j0 : TK);
        }
    // out rows = o rows / l
    for (int s = 0; s < nsub; s++) {
        int is = i0 + s * TQ, ns = nq - s * TQ < TQ ? nq - s * TQ : TQ;
        for (int r = 0; r < ns; r++)
            w->corr[r] = 1.0f / w->l[s * TQ + r];
        scale_rows(J->out + ((size_t)b * J->Tq + is) * C + (size_t)h * HS, (size_t)C,
                   w->o + (size_t)s * TQ * HS, w->corr, ns, HS);
    }
}

/* 64-byte aligned floats (whole vectors of the tiles load aligned). */
static float *alloc_floats(size_t n)
{
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

static void attn_t_task(void *ctx, int tid, int nt)
{
    attn_job *J = ctx;
    int C = J->NH * J->HS, HS = J->HS, QB = J->qs * TQ, nqb = (J->Tq + QB - 1) / QB;
    attn_t_scratch w = {alloc_floats((size_t)J->Tk * HS), alloc_floats((size_t)J->Tk * HS),
                        alloc_floats((size_t)HS * QB),   alloc_floats((size_t)TK * TQ),
                        alloc_floats((size_t)QB * HS),   alloc_floats(QB),
                        alloc_floats(QB),                alloc_floats(TQ)};
    if (!w.kp || !w.vp || !w.qt || !w.st || !w.o || !w.m || !w.l || !w.corr) {
        __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    // a thread repacks K and V only when it moves to another head
    int cur_bh = -1;
    for (int bh, qb; attn_next(J, nqb, &bh, &qb);) {
        int b = bh / J->NH, h = bh % J->NH;
        if (bh != cur_bh) {
            size_t at = (size_t)b * J->Tk * C + (size_t)h * HS;
            for (int j = 0; j < J->Tk; j++) {
                memcpy(w.kp + (size_t)j * HS, J->k + at + (size_t)j * C, sizeof(float) * HS);
                memcpy(w.vp + (size_t)j * HS, J->v + at + (size_t)j * C, sizeof(float) * HS);
            }
            cur_bh = bh;
        }
        int i0 = qb * QB;
        attn_t_rows(J, &w, b, h, i0, J->Tq - i0 < QB ? J->Tq - i0 : QB);
    }
done:
    free(w.kp), free(w.vp), free(w.qt), free(w.st), free(w.o), free(w.m), free(w.l), free(w.corr);
}

void df_attention_forward(float *out, const float *q, const float *k, const float *v,
                          int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0 || HS <= 0)
        return;
    // K and V of a head beyond half of L2 (2 MiB a core here): blocks of QS x TQ queries
    int big = 2.0 * Tk * HS * sizeof(float) > 1 << 20, simd = df_ops_simd() == 1;
    attn_job J = {out, q, k, v, B, Tq, Tk, NH, HS, causal, scale, 0, 0, big ? QS : 1};
    int nt = threads_for(4.0 * B * NH * Tq * Tk * HS / 8);
    int qb = simd ? J.qs * TQ : AQ, items = B * NH * ((Tq + qb - 1) / qb);
    run_parallel(simd ? attn_t_task : attn_task, &J, nt < items ? nt : items);
    if (J.failed)
        df_attention_forward_ref(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
}

/* ------------------------------------------------- normalizations, softmax */

typedef struct {
    float *out;
    const float *inp, *gamma, *beta;
    int B, C, HW, G, N;
    float eps;
} norm_job;

/* Mean and biased variance of n contiguous floats: two passes, 8 double
 * partial sums each (fast and as exact as the reference's needs). */
static void mean_var(const float *x, size_t n, float *mean, float *rstd, float eps)
{
    double s[8] = {0}, ss[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++)
            s[u] += x[i + u];
    for (; i < n; i++)
        s[0] += x[i];
    double m = (s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7]) / (double)n;
    for (i = 0; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++)
            ss[u] += (x[i + u] - m) * (x[i + u] - m);
    for (; i < n; i++)
        ss[0] += (x[i] - m) * (x[i] - m);
    double var = (ss[0] + ss[1] + ss[2] + ss[3] + ss[4] + ss[5] + ss[6] + ss[7]) / (double)n;
    *mean = (float)m;
    *rstd = (float)(1.0 / sqrt(var + eps));
}

static void groupnorm_task(void *ctx, int tid, int nt)
{
    norm_job *J = ctx;
    int CG = J->C / J->G, lo, hi;
    df_ops_split_range(J->B * J->G, 1, tid, nt, &lo, &hi);
    for (int bg = lo; bg < hi; bg++) {
        int g = bg % J->G;
        size_t off = (size_t)bg * CG * J->HW;   // (b, g) groups are contiguous in (B,C,HW)
        float mean, rstd;
        mean_var(J->inp + off, (size_t)CG * J->HW, &mean, &rstd, J->eps);
        for (int c = 0; c < CG; c++) {
            int ch = g * CG + c;
            // (x - mean) first: folding mean into the shift loses digits when |mean| >> std
            float sc = rstd * J->gamma[ch], sh = J->beta[ch];
            const float *x = J->inp + off + (size_t)c * J->HW;
            float *y = J->out + off + (size_t)c * J->HW;
            for (int i = 0; i < J->HW; i++)
                y[i] = (x[i] - mean) * sc + sh;
        }
    }
}

void df_groupnorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int B, int C, int HW, int G, float eps)
{
    norm_job J = {out, inp, gamma, beta, B, C, HW, G, 0, eps};
    int nt = threads_for(4.0 * B * C * HW);
    run_parallel(groupnorm_task, &J, nt < B * G ? nt : B * G);
}

static void layernorm_task(void *ctx, int tid, int nt)
{
    norm_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->N, 1, tid, nt, &lo, &hi);
    for (int n = lo; n < hi; n++) {
        const float *x = J->inp + (size_t)n * J->C;
        float *y = J->out + (size_t)n * J->C;
        float mean, rstd;
        mean_var(x, (size_t)J->C, &mean, &rstd, J->eps);
        for (int c = 0; c < J->C; c++)
            y[c] = (x[c] - mean) * rstd * J->gamma[c] + J->beta[c];
    }
}

void df_layernorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int N, int C, float eps)
{
    norm_job J = {out, inp, gamma, beta, 0, C, 0, 0, N, eps};
    int nt = threads_for(4.0 * N * C);
    run_parallel(layernorm_task, &J, nt < N ? nt : N);
}

static void softmax_task(void *ctx, int tid, int nt)
{
    norm_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->N, 1, tid, nt, &lo, &hi);
    for (int n = lo; n < hi; n++) {
        const float *x = J->inp + (size_t)n * J->C;
        float *y = J->out + (size_t)n * J->C;
        float mx = -INFINITY;
        for (int c = 0; c < J->C; c++)
            mx = x[c] > mx ? x[c] : mx;
        float inv = 1.0f / exp_shift_sum(y, x, mx, J->C);
        for (int c = 0; c < J->C; c++)
            y[c] *= inv;
    }
}

void df_softmax_forward(float *out, const float *inp, int N, int C)
{
    norm_job J = {out, inp, NULL, NULL, 0, C, 0, 0, N, 0};
    int nt = threads_for(8.0 * N * C);
    run_parallel(softmax_task, &J, nt < N ? nt : N);
}

/* ------------------------------------------------------------ elementwise */

typedef struct {
    float *out;
    const float *inp;
    size_t n;
    int op;      // 0 silu, 1 gelu, 2 geglu (n = rows, C = width)
    int C;
} elt_job;

static inline float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

/* gelu(x) = x/2 (1 + erf(x/sqrt 2)) for 16 floats. erf by Abramowitz and
 * Stegun 7.1.26 (absolute error < 1.5e-7, which is all GELU needs: the erf
 * term is added to 1), with its e^{-z^2} from exp16. */
__attribute__((target("avx512f"))) static inline __m512 gelu16(__m512 x)
{
    __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752440f));
    __m512 az = _mm512_abs_ps(z);
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                             _mm512_fmadd_ps(az, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
    __m512 erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));   // erf(|z|)
    // 1 + erf(z): 1 + erf(|z|) for z >= 0, 1 - erf(|z|) otherwise
    __mmask16 neg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 s = _mm512_mask_sub_ps(_mm512_add_ps(one, erf_abs), neg, one, erf_abs);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), s);
}

/* silu(x) = x / (1 + e^-x) for 16 floats. */
__attribute__((target("avx512f"))) static inline __m512 silu16(__m512 x)
{
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* out[i] = op(inp[i]) for i < n (op 0 silu, 1 gelu), or, for op 2,
 * out[i] = h[i] * gelu(gate[i]). Masked tail. */
__attribute__((target("avx512f"))) static void elt_avx512(float *out, const float *inp,
                                                          const float *gate, size_t n, int op)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(k, inp + i), y;
        if (op == 0)
            y = silu16(x);
        else if (op == 1)
            y = gelu16(x);
        else
            y = _mm512_mul_ps(x, gelu16(_mm512_maskz_loadu_ps(k, gate + i)));
        _mm512_mask_storeu_ps(out + i, k, y);
    }
}

static void elt_task(void *ctx, int tid, int nt)
{
    elt_job *J = ctx;
    // shares in multiples of 4096 values (any rows for geglu), so that
    // threads never write the same cache line
    size_t align = J->op == 2 ? 1 : 4096;
    size_t chunk = ((J->n + nt - 1) / nt + align - 1) / align * align;
    size_t a = chunk * tid < J->n ? chunk * tid : J->n;
    size_t e = a + chunk < J->n ? a + chunk : J->n;
    int simd = df_ops_simd() == 1;
    if (J->op != 2 && simd)
        elt_avx512(J->out + a, J->inp + a, NULL, e - a, J->op);
    else if (J->op == 0)
        for (size_t i = a; i < e; i++)
            J->out[i] = J->inp[i] / (1.0f + expf(-J->inp[i]));
    else if (J->op == 1)
        for (size_t i = a; i < e; i++)
            J->out[i] = gelu1(J->inp[i]);
    else
        for (size_t r = a; r < e; r++) {
            const float *h = J->inp + r * 2 * J->C, *gate = h + J->C;
            float *y = J->out + r * J->C;
            if (simd) {
                elt_avx512(y, h, gate, (size_t)J->C, 2);
                continue;
            }
            for (int c = 0; c < J->C; c++)
                y[c] = h[c] * gelu1(gate[c]);
        }
}

static void elementwise(float *out, const float *inp, size_t n, int op, int C)
{
    elt_job J = {out, inp, n, op, C};
    int nt = threads_for(20.0 * (op == 2 ? (double)n * C : (double)n));
    if (op == 2 && (size_t)nt > n)
        nt = (int)n;
    run_parallel(elt_task, &J, nt);
}

void df_silu_forward(float *out, const float *inp, size_t n)
{
    elementwise(out, inp, n, 0, 0);
}

void df_gelu_forward(float *out, const float *inp, size_t n)
{
    elementwise(out, inp, n, 1, 0);
}

void df_geglu_forward(float *out, const float *inp, int N, int C)
{
    if (N > 0)
        elementwise(out, inp, (size_t)N, 2, C);
}

/* ----------------------------------------- elementwise helpers, transposes */

/* One pass over n values, split among threads: a + b, s * a, sa a + sb b, or
 * a + bias per (b,c) row of HW values. These are memory-bound: threads help
 * only because each core has its own bandwidth to the caches. */
typedef struct {
    float *out;
    const float *a, *b;
    float sa, sb;
    size_t n;
    int op, HW;   // 0 add, 1 scale, 2 axpby, 3 channel bias (b holds one value per HW row)
} vec_job;

static void vec_task(void *ctx, int tid, int nt)
{
    vec_job *J = ctx;
    // shares in whole HW rows for the channel bias, else in 4096 values
    size_t align = J->op == 3 ? (size_t)J->HW : 4096;
    size_t chunk = ((J->n + nt - 1) / nt + align - 1) / align * align;
    size_t lo = chunk * tid < J->n ? chunk * tid : J->n;
    size_t hi = lo + chunk < J->n ? lo + chunk : J->n;
    float *y = J->out;
    const float *a = J->a, *b = J->b;
    if (J->op == 0)
        for (size_t i = lo; i < hi; i++)
            y[i] = a[i] + b[i];
    else if (J->op == 1)
        for (size_t i = lo; i < hi; i++)
            y[i] = J->sa * a[i];
    else if (J->op == 2)
        for (size_t i = lo; i < hi; i++)
            y[i] = J->sa * a[i] + J->sb * b[i];
    else
        for (size_t r = lo / J->HW; r < hi / J->HW; r++)
            for (size_t i = r * J->HW; i < (r + 1) * J->HW; i++)
                y[i] = a[i] + b[r];
}

static void vec_run(vec_job *J)
{
    int nt = threads_for(2.0 * (double)J->n);
    run_parallel(vec_task, J, nt);
}

void df_add_forward(float *out, const float *a, const float *b, size_t n)
{
    vec_job J = {out, a, b, 0, 0, n, 0, 0};
    vec_run(&J);
}

void df_scale_forward(float *out, const float *a, float s, size_t n)
{
    vec_job J = {out, a, NULL, s, 0, n, 1, 0};
    vec_run(&J);
}

void df_axpby_forward(float *out, const float *a, float sa, const float *b, float sb, size_t n)
{
    vec_job J = {out, a, b, sa, sb, n, 2, 0};
    vec_run(&J);
}

void df_add_channel_bias(float *out, const float *inp, const float *bias, int B, int C, int HW)
{
    // inp (B,C,HW), bias (B,C), out (B,C,HW)
    if (B <= 0 || C <= 0 || HW <= 0)
        return;
    vec_job J = {out, inp, bias, 0, 0, (size_t)B * C * HW, 3, HW};
    vec_run(&J);
}

/* (B, R, S) -> (B, S, R) in 32 x 32 tiles, so that both the reads and the
 * writes touch whole cache lines; threads split the R rows. */
typedef struct { float *out; const float *inp; int B, R, S; } tr_job;

static void tr_task(void *ctx, int tid, int nt)
{
    tr_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->R, 32, tid, nt, &lo, &hi);
    for (int b = 0; b < J->B; b++) {
        const float *x = J->inp + (size_t)b * J->R * J->S;
        float *y = J->out + (size_t)b * J->R * J->S;
        for (int r0 = lo; r0 < hi; r0 += 32)
            for (int s0 = 0; s0 < J->S; s0 += 32) {
                int r1 = r0 + 32 < hi ? r0 + 32 : hi, s1 = s0 + 32 < J->S ? s0 + 32 : J->S;
                for (int s = s0; s < s1; s++)
                    for (int r = r0; r < r1; r++)
                        y[(size_t)s * J->R + r] = x[(size_t)r * J->S + s];
            }
    }
}

static void transpose(float *out, const float *inp, int B, int R, int S)
{
    if (B <= 0 || R <= 0 || S <= 0)
        return;
    tr_job J = {out, inp, B, R, S};
    int nt = threads_for(4.0 * B * R * S);
    run_parallel(tr_task, &J, nt);
}

void df_nchw_to_nhwc(float *out, const float *inp, int B, int C, int HW)
{
    transpose(out, inp, B, C, HW);   // inp (B,C,HW) -> out (B,HW,C)
}

void df_nhwc_to_nchw(float *out, const float *inp, int B, int C, int HW)
{
    transpose(out, inp, B, HW, C);   // inp (B,HW,C) -> out (B,C,HW)
}
