/* ops_internal.h - what lib/ops/ops.c shares with the other files of the op set
 * (lib/ops/ops_winograd.c): its thread runner and its GEMM. Not part of the
 * public API: nothing outside lib/ops/ops*.c includes this. */
#ifndef DF_OPS_INTERNAL_H
#define DF_OPS_INTERNAL_H

#include <stddef.h>

#include "ops.h"

typedef void (*df_task_fn)(void *ctx, int tid, int nt);

/* Run fn(ctx, tid, nt) for tid 0..nt-1 on nt threads (tid 0 on the caller). */
void df_ops_run_parallel(df_task_fn fn, void *ctx, int nt);
/* Threads worth starting for `work` units (roughly flops or values touched). */
int df_ops_threads_for(double work);

/* Share [lo,hi) of n items for thread tid of nt, in multiples of `align`. */
void df_ops_split_range(int n, int align, int tid, int nt, int *lo, int *hi);

/* C (M,N) = A (M,K) @ B (K,N), threaded, A and C row-major with the given
 * leading dimensions and B handed over already in the layout the GEMM packs B into,
 * so that a producer (the Winograd input transform) writes it there
 * directly and nothing is copied: B's element (k, n) lives at
 * Bp[df_ops_gemm_packed_index(K, N, k, n)], an array of
 * K * (N rounded up to a multiple of 64) floats (the padding is never read
 * into C). Within a row k, runs of 64 columns from a multiple of 64 are
 * contiguous. */
enum { DF_GEMM_KB = 128 };   // the GEMM's k-block (ops.c)
static inline size_t df_ops_gemm_packed_index(int K, int N, int k, int n)
{
    // k-blocks of DF_GEMM_KB rows (the last one shorter), each a run of
    // strips of 64 columns, each strip kb x 64 row-major
    size_t np = (size_t)(N + 63) / 64 * 64;
    int k0 = k / DF_GEMM_KB * DF_GEMM_KB, kb = K - k0 < DF_GEMM_KB ? K - k0 : DF_GEMM_KB;
    return (size_t)k0 * np + (size_t)(n / 64) * kb * 64 + (size_t)(k - k0) * 64 + n % 64;
}
int df_ops_gemm_packed(int M, int N, int K, const float *A, size_t lda, const float *Bp, float *C,
                       size_t ldc);

/* Winograd F(m x m, 3x3), m = 2 or 4, for a 3x3, stride 1 convolution padded
 * by 1 left and right and by pad_t, pad_b (0 or 1) top and bottom
 * (lib/ops/ops_winograd.c): the m the automatic choice takes for this output
 * size (0: the direct path), and the convolution itself (0, or -1 when
 * scratch memory could not be had). */
int df_conv2d_winograd_pays(int C, int OH, int OW, int OC);
/* Scratch bytes per chunk of tile rows and the fewest tiles a chunk may
 * have (0: the defaults); for tests. */
void df_ops_winograd_set_chunks(size_t bytes, int min_tiles);
int df_conv2d_winograd(float *out, const float *inp, const float *weight, const float *bias, int B,
                       int C, int H, int W, int OC, int pad_t, int pad_b, int m);

#endif
