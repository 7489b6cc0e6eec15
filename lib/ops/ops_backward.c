/* ops_backward.c - the fast versions of the backward ops in ops_backward.h,
 * the ones training calls. Each is tested against its reference in
 * ops_backward_ref.c on random inputs, odd sizes included, with 1, 2 and 3
 * threads, and for bit-identical repeated runs, by
 * tests/unit/test_ops_backward.c.
 *
 * Structure: products of matrices go through OpenBLAS's cblas_sgemm with
 * beta = 1, so that they add into the gradients in place; the input gradient
 * of a stride-1 convolution goes through df_conv2d_forward (it is a
 * convolution too); the rest are passes on our own threads
 * (df_ops_run_parallel). Attention is flash-style: per (batch, head) and
 * block of 64 queries it recomputes the block's scores against all keys, so
 * it never holds more than 64 x Tk of them.
 *
 * Determinism: work is cut so that every output element has one owner
 * thread, which sums in a fixed order (and OpenBLAS splits a product only
 * over its rows and columns, never over the summed dimension); sums that
 * several threads contribute to (the norms' weight gradients, attention's
 * key and value gradients when queries are split) are kept apart per
 * thread and added in a fixed order after the threads join.
 * If a scratch allocation fails an op falls back to its reference. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops_backward.h"
#include "ops_internal.h"

/* OpenBLAS's thread count is process-wide: products made from the calling
 * thread get df_ops_threads() of them, those made inside our workers one
 * each (workers x OpenBLAS threads would oversubscribe the cores). Sets the
 * count and returns the previous one, to be put back. */
static int blas_threads(int n)
{
    int prev = openblas_get_num_threads();
    if (n != prev)
        openblas_set_num_threads(n);
    return prev;
}

static int imin(int a, int b)
{
    return a < b ? a : b;
}

/* ------------------------------------------------------------ bias sums */

/* dbias[o] += the sum over r < R and i < L of dout[(r*OC + o)*L + i]:
 * linear's bias (R = N rows, L = 1) or conv's (R = B images, L = OH*OW).
 * Threads own runs of 64 channels. */
typedef struct {
    float *dbias;
    const float *dout;
    int R, OC;
    size_t L;
} bias_job;

static void bias_task(void *ctx, int tid, int nt)
{
    bias_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->OC, 64, tid, nt, &lo, &hi);
    for (int o0 = lo; o0 < hi; o0 += 64) {
        int o1 = imin(o0 + 64, hi);
        double acc[64] = {0};
        for (int r = 0; r < J->R; r++)
            for (int o = o0; o < o1; o++) {
                const float *y = J->dout + ((size_t)r * J->OC + o) * J->L;
                double s = 0.0;
                for (size_t i = 0; i < J->L; i++)
                    s += y[i];
                acc[o - o0] += s;
            }
        for (int o = o0; o < o1; o++)
            J->dbias[o] += (float)acc[o - o0];
    }
}

static void bias_grad(float *dbias, const float *dout, int R, int OC, size_t L)
{
    bias_job J = {dbias, dout, R, OC, L};
    int nt = df_ops_threads_for((double)R * OC * L);
    df_ops_run_parallel(bias_task, &J, imin(nt, (OC + 63) / 64));
}

/* ----------------------------------------------------------------- linear */

void df_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int C, int OC)
{
    // dinp (N,C) += dout (N,OC) @ weight (OC,C); dweight (OC,C) += dout^T @ inp (N,C)
    if (N <= 0 || OC <= 0)
        return;
    int prev = blas_threads(df_ops_threads());
    if (dinp && C > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight,
                    C, 1.0f, dinp, C);
    if (dweight && C > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C,
                    1.0f, dweight, C);
    blas_threads(prev);
    if (dbias)
        bias_grad(dbias, dout, N, OC, 1);
}

/* ----------------------------------------------------------------- conv2d */

/* The input gradient of a stride-1 convolution padded at most K-1 on every
 * side is a convolution too: dout (B,OC,OH,OW) with the kernel flipped in
 * both spatial directions and transposed to (C,OC,K,K), padded K-1-pad,
 * gives (B,C,H,W). df_conv2d_forward computes it (Winograd for 3x3 padded
 * 1, its GEMM otherwise, a plain GEMM for 1x1) into scratch, which is then
 * added to dinp. Returns -1 without scratch memory. */
static int conv_dinp_by_forward(float *dinp, const float *dout, const float *weight, int B, int C,
                                int H, int W, int OC, const df_conv2d_geom *g, int OH, int OW)
{
    int K = g->K;
    size_t KK = (size_t)K * K, n = (size_t)B * C * H * W;
    float *wt = malloc(sizeof(float) * OC * C * KK), *t = malloc(sizeof(float) * n);
    if (!wt || !t) {
        free(wt), free(t);
        return -1;
    }
    // wt (C,OC,K,K): wt[c][o][kh][kw] = weight[o][c][K-1-kh][K-1-kw]
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) {
            const float *w = weight + ((size_t)o * C + c) * KK;
            float *u = wt + ((size_t)c * OC + o) * KK;
            for (size_t i = 0; i < KK; i++)
                u[i] = w[KK - 1 - i];
        }
    df_conv2d_geom gt = {K, 1, K - 1 - g->pad_t, K - 1 - g->pad_l, K - 1 - g->pad_b,
                         K - 1 - g->pad_r};
    df_conv2d_forward(t, dout, wt, NULL, B, OC, OH, OW, C, &gt);
    df_add_forward(dinp, dinp, t, n);
    free(wt), free(t);
    return 0;
}

/* The other geometries (stride 2) by GEMMs over im2col matrices, in chunks
 * of cc input channels: for dinp, cols (cc*K*K, OH*OW) = weight's columns
 * of those channels, transposed, @ dout, scattered back by col2im; for
 * dweight, dweight's columns of those channels += dout @ im2col(inp)^T.
 * Threads own ranges of input channels (dinp planes, dweight columns), and
 * go over the images in order. */
typedef struct {
    float *dinp, *dweight;
    const float *dout, *inp, *weight;
    int B, C, H, W, OC, OH, OW, cc;
    const df_conv2d_geom *g;
    float *scratch;   // per thread cc*K*K*OH*OW floats
} conv_job;

/* cols (nc*K*K, OH*OW): row (c, kh, kw) holds, for every output pixel, the
 * pixel of channel c0+c of x (C,H,W) under tap (kh, kw), 0 in the padding. */
static void im2col(float *cols, const float *x, int c0, int nc, const conv_job *J)
{
    const df_conv2d_geom *g = J->g;
    int K = g->K, s = g->stride, H = J->H, W = J->W, OW = J->OW;
    size_t OHW = (size_t)J->OH * OW;
    for (int c = 0; c < nc; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                const float *xc = x + (size_t)(c0 + c) * H * W;
                float *row = cols + (((size_t)c * K + kh) * K + kw) * OHW;
                for (int oh = 0; oh < J->OH; oh++) {
                    int ih = oh * s - g->pad_t + kh;
                    float *r = row + (size_t)oh * OW;
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * s - g->pad_l + kw;
                        r[ow] = ih >= 0 && ih < H && iw >= 0 && iw < W ? xc[(size_t)ih * W + iw]
                                                                       : 0.0f;
                    }
                }
            }
}

/* The transpose of im2col: dx (C,H,W) of channels c0.. += each value of cols
 * at the pixel it would have been read from. */
static void col2im(float *dx, const float *cols, int c0, int nc, const conv_job *J)
{
    const df_conv2d_geom *g = J->g;
    int K = g->K, s = g->stride, H = J->H, W = J->W, OW = J->OW;
    size_t OHW = (size_t)J->OH * OW;
    for (int c = 0; c < nc; c++)
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++) {
                float *dc = dx + (size_t)(c0 + c) * H * W;
                const float *row = cols + (((size_t)c * K + kh) * K + kw) * OHW;
                for (int oh = 0; oh < J->OH; oh++) {
                    int ih = oh * s - g->pad_t + kh;
                    if (ih < 0 || ih >= H)
                        continue;
                    const float *r = row + (size_t)oh * OW;
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * s - g->pad_l + kw;
                        if (iw >= 0 && iw < W)
                            dc[(size_t)ih * W + iw] += r[ow];
                    }
                }
            }
}

static void conv_dinp_task(void *ctx, int tid, int nt)
{
    conv_job *J = ctx;
    int KK = J->g->K * J->g->K, lo, hi;
    size_t OHW = (size_t)J->OH * J->OW, CKK = (size_t)J->C * KK;
    float *cols = J->scratch + (size_t)tid * J->cc * KK * OHW;
    df_ops_split_range(J->C, 1, tid, nt, &lo, &hi);
    for (int b = 0; b < J->B; b++) {
        const float *dy = J->dout + (size_t)b * J->OC * OHW;
        float *dx = J->dinp + (size_t)b * J->C * J->H * J->W;
        for (int c0 = lo; c0 < hi; c0 += J->cc) {
            int nc = imin(J->cc, hi - c0);
            // cols (nc*KK, OHW) = weight[:, c0*KK..]^T (nc*KK, OC) @ dy (OC, OHW)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc * KK, (int)OHW, J->OC, 1.0f,
                        J->weight + (size_t)c0 * KK, (int)CKK, dy, (int)OHW, 0.0f, cols,
                        (int)OHW);
            col2im(dx, cols, c0, nc, J);
        }
    }
}

static void conv_dweight_task(void *ctx, int tid, int nt)
{
    conv_job *J = ctx;
    const df_conv2d_geom *g = J->g;
    int KK = g->K * g->K, lo, hi;
    int plain = g->K == 1 && g->stride == 1 && !g->pad_t && !g->pad_l && !g->pad_b && !g->pad_r;
    size_t OHW = (size_t)J->OH * J->OW, CKK = (size_t)J->C * KK;
    float *cols = J->scratch + (size_t)tid * J->cc * KK * OHW;
    df_ops_split_range(J->C, 1, tid, nt, &lo, &hi);
    for (int b = 0; b < J->B; b++) {
        const float *dy = J->dout + (size_t)b * J->OC * OHW;
        const float *x = J->inp + (size_t)b * J->C * J->H * J->W;
        for (int c0 = lo; c0 < hi; c0 += J->cc) {
            int nc = imin(J->cc, hi - c0);
            // a 1x1 stride-1 convolution's im2col matrix is the image itself
            const float *src = x + (size_t)c0 * OHW;
            if (!plain) {
                im2col(cols, x, c0, nc, J);
                src = cols;
            }
            // dweight[:, c0*KK..] (OC, nc*KK) += dy (OC, OHW) @ src^T (OHW, nc*KK)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, J->OC, nc * KK, (int)OHW, 1.0f,
                        dy, (int)OHW, src, (int)OHW, 1.0f, J->dweight + (size_t)c0 * KK,
                        (int)CKK);
        }
    }
}

/* Runs one of the two tasks above; returns -1 without scratch memory. */
static int conv_gemm(df_task_fn task, float *dinp, float *dweight, const float *dout,
                     const float *inp, const float *weight, int B, int C, int H, int W, int OC,
                     const df_conv2d_geom *g, int OH, int OW)
{
    size_t KK = (size_t)g->K * g->K, OHW = (size_t)OH * OW;
    int nt = imin(df_ops_threads_for(2.0 * B * OC * C * KK * OHW), C);
    // channels per GEMM: the thread's share, in chunks of about 1M floats of im2col
    int cc = (C + nt - 1) / nt;
    size_t fit = ((size_t)1 << 20) / (KK * OHW);
    if ((size_t)cc > fit)
        cc = fit > 0 ? (int)fit : 1;
    conv_job J = {dinp, dweight, dout, inp, weight, B, C, H, W, OC, OH, OW, cc, g, NULL};
    J.scratch = malloc(sizeof(float) * nt * cc * KK * OHW);
    if (!J.scratch)
        return -1;
    int prev = blas_threads(1);
    df_ops_run_parallel(task, &J, nt);
    blas_threads(prev);
    free(J.scratch);
    return 0;
}

void df_conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int B, int C, int H, int W, int OC,
                        const df_conv2d_geom *g)
{
    int OH, OW, K = g->K;
    df_conv2d_out_size(g, H, W, &OH, &OW);
    if (B <= 0 || C <= 0 || OC <= 0 || OH <= 0 || OW <= 0)
        return;
    if (dbias)
        bias_grad(dbias, dout, B, OC, (size_t)OH * OW);
    if (dinp) {
        int flip = g->stride == 1 && g->pad_t < K && g->pad_l < K && g->pad_b < K && g->pad_r < K;
        if ((!flip || conv_dinp_by_forward(dinp, dout, weight, B, C, H, W, OC, g, OH, OW) != 0) &&
            conv_gemm(conv_dinp_task, dinp, NULL, dout, NULL, weight, B, C, H, W, OC, g, OH,
                      OW) != 0)
            df_conv2d_backward_ref(dinp, NULL, NULL, dout, NULL, weight, B, C, H, W, OC, g);
    }
    if (dweight && conv_gemm(conv_dweight_task, NULL, dweight, dout, inp, NULL, B, C, H, W, OC,
                             g, OH, OW) != 0)
        df_conv2d_backward_ref(NULL, dweight, NULL, dout, inp, NULL, B, C, H, W, OC, g);
}

/* ------------------------------------------------------ groupnorm, layernorm */

/* Mean and 1/sqrt(var + eps) of n contiguous floats, two passes with 8
 * double partial sums each, as the forward computes them. */
static void mean_rstd(const float *x, size_t n, float eps, float *mean, float *rstd)
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

/* With xhat = (x - mean) * rstd and dxhat = dout * gamma,
 *     dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
 *     dgamma += sum of dout * xhat, dbeta += sum of dout (per channel).
 * groupnorm: threads own (b, g) groups; each keeps its channels' two sums
 * in sums (B*C, 2), which are added over b in order afterwards.
 * layernorm: threads own rows for dx, keeping each row's mean and rstd in
 * stats (N, 2); then threads own channels for dgamma and dbeta. */
typedef struct {
    float *dinp, *dgamma, *dbeta;
    const float *dout, *inp, *gamma;
    int B, C, HW, G, N;
    float eps;
    double *sums;   // groupnorm (B*C, 2): sum of dout, sum of dout * xhat
    float *stats;   // layernorm (N, 2): mean, rstd
} normb_job;

static void groupnorm_task(void *ctx, int tid, int nt)
{
    normb_job *J = ctx;
    int CG = J->C / J->G, HW = J->HW, lo, hi;
    df_ops_split_range(J->B * J->G, 1, tid, nt, &lo, &hi);
    for (int bg = lo; bg < hi; bg++) {
        size_t off = (size_t)bg * CG * HW;   // (b, g) groups are contiguous in (B,C,HW)
        const float *gamma = J->gamma + (bg % J->G) * CG;
        double *sums = J->sums + (size_t)bg * CG * 2;
        float mean, rstd;
        mean_rstd(J->inp + off, (size_t)CG * HW, J->eps, &mean, &rstd);
        double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
        for (int c = 0; c < CG; c++) {
            const float *x = J->inp + off + (size_t)c * HW, *dy = J->dout + off + (size_t)c * HW;
            double s1 = 0.0, s2 = 0.0;
            for (int i = 0; i < HW; i++) {
                s1 += dy[i];
                s2 += dy[i] * ((x[i] - mean) * rstd);
            }
            sums[2 * c] = s1;
            sums[2 * c + 1] = s2;
            sum_dxhat += gamma[c] * s1;
            sum_dxhat_xhat += gamma[c] * s2;
        }
        if (!J->dinp)
            continue;
        float a = (float)(sum_dxhat / ((double)CG * HW));
        float k = (float)(sum_dxhat_xhat / ((double)CG * HW));
        for (int c = 0; c < CG; c++) {
            const float *x = J->inp + off + (size_t)c * HW, *dy = J->dout + off + (size_t)c * HW;
            float *dx = J->dinp + off + (size_t)c * HW;
            for (int i = 0; i < HW; i++)
                dx[i] += rstd * (dy[i] * gamma[c] - a - (x[i] - mean) * rstd * k);
        }
    }
}

void df_groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                           const float *inp, const float *gamma, int B, int C, int HW, int G,
                           float eps)
{
    if (B <= 0 || C <= 0 || HW <= 0 || (!dinp && !dgamma && !dbeta))
        return;
    normb_job J = {dinp, dgamma, dbeta, dout, inp, gamma, B, C, HW, G, 0, eps, NULL, NULL};
    J.sums = malloc(sizeof(double) * 2 * B * C);
    if (!J.sums) {
        df_groupnorm_backward_ref(dinp, dgamma, dbeta, dout, inp, gamma, B, C, HW, G, eps);
        return;
    }
    int nt = df_ops_threads_for(8.0 * B * C * HW);
    df_ops_run_parallel(groupnorm_task, &J, imin(nt, B * G));
    for (int c = 0; c < C; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int b = 0; b < B; b++) {
            s1 += J.sums[((size_t)b * C + c) * 2];
            s2 += J.sums[((size_t)b * C + c) * 2 + 1];
        }
        if (dbeta)
            dbeta[c] += (float)s1;
        if (dgamma)
            dgamma[c] += (float)s2;
    }
    free(J.sums);
}

static void layernorm_rows_task(void *ctx, int tid, int nt)
{
    normb_job *J = ctx;
    int C = J->C, lo, hi;
    df_ops_split_range(J->N, 1, tid, nt, &lo, &hi);
    for (int n = lo; n < hi; n++) {
        const float *x = J->inp + (size_t)n * C, *dy = J->dout + (size_t)n * C;
        float mean, rstd;
        mean_rstd(x, (size_t)C, J->eps, &mean, &rstd);
        J->stats[2 * n] = mean;
        J->stats[2 * n + 1] = rstd;
        if (!J->dinp)
            continue;
        double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
        for (int c = 0; c < C; c++) {
            float dxhat = dy[c] * J->gamma[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * ((x[c] - mean) * rstd);
        }
        float a = (float)(sum_dxhat / C), k = (float)(sum_dxhat_xhat / C);
        float *dx = J->dinp + (size_t)n * C;
        for (int c = 0; c < C; c++)
            dx[c] += rstd * (dy[c] * J->gamma[c] - a - (x[c] - mean) * rstd * k);
    }
}

static void layernorm_cols_task(void *ctx, int tid, int nt)
{
    normb_job *J = ctx;
    int C = J->C, lo, hi;
    df_ops_split_range(C, 64, tid, nt, &lo, &hi);
    for (int c0 = lo; c0 < hi; c0 += 64) {
        int c1 = imin(c0 + 64, hi);
        double sg[64] = {0}, sb[64] = {0};
        for (int n = 0; n < J->N; n++) {
            const float *x = J->inp + (size_t)n * C, *dy = J->dout + (size_t)n * C;
            float mean = J->stats[2 * n], rstd = J->stats[2 * n + 1];
            for (int c = c0; c < c1; c++) {
                sg[c - c0] += dy[c] * ((x[c] - mean) * rstd);
                sb[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            if (J->dgamma)
                J->dgamma[c] += (float)sg[c - c0];
            if (J->dbeta)
                J->dbeta[c] += (float)sb[c - c0];
        }
    }
}

void df_layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                           const float *inp, const float *gamma, int N, int C, float eps)
{
    if (N <= 0 || C <= 0 || (!dinp && !dgamma && !dbeta))
        return;
    normb_job J = {dinp, dgamma, dbeta, dout, inp, gamma, 0, C, 0, 0, N, eps, NULL, NULL};
    J.stats = malloc(sizeof(float) * 2 * N);
    if (!J.stats) {
        df_layernorm_backward_ref(dinp, dgamma, dbeta, dout, inp, gamma, N, C, eps);
        return;
    }
    int nt = df_ops_threads_for(8.0 * N * C);
    df_ops_run_parallel(layernorm_rows_task, &J, imin(nt, N));
    if (dgamma || dbeta)
        df_ops_run_parallel(layernorm_cols_task, &J, imin(nt, (C + 63) / 64));
    free(J.stats);
}

/* ------------------------------------------------------------ elementwise */

enum { ELT_SILU, ELT_GELU, ELT_QUICK_GELU, ELT_GEGLU };

typedef struct {
    float *dinp;
    const float *dout, *inp;
    size_t n;   // values, or rows for geglu
    int op, C;
} eltb_job;

static inline float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* d/dx of x/2 (1 + erf(x/sqrt 2)): Phi(x) + x phi(x). */
static inline float gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) +
           x * expf(-0.5f * x * x) * 0.39894228040143267794f;
}

static void eltb_task(void *ctx, int tid, int nt)
{
    eltb_job *J = ctx;
    // shares in multiples of 4096 values (any rows for geglu), so that
    // threads never write the same cache line
    size_t align = J->op == ELT_GEGLU ? 1 : 4096;
    size_t chunk = ((J->n + nt - 1) / nt + align - 1) / align * align;
    size_t a = chunk * tid < J->n ? chunk * tid : J->n;
    size_t e = a + chunk < J->n ? a + chunk : J->n;
    const float *x = J->inp, *dy = J->dout;
    float *dx = J->dinp;
    if (J->op == ELT_SILU)
        for (size_t i = a; i < e; i++) {
            float s = sigmoidf(x[i]);
            dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
        }
    else if (J->op == ELT_GELU)
        for (size_t i = a; i < e; i++)
            dx[i] += dy[i] * gelu_grad(x[i]);
    else if (J->op == ELT_QUICK_GELU)
        for (size_t i = a; i < e; i++) {
            float s = sigmoidf(1.702f * x[i]);
            dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
        }
    else
        for (size_t r = a; r < e; r++) {
            const float *h = x + r * 2 * J->C, *gate = h + J->C, *d = dy + r * J->C;
            float *dh = dx + r * 2 * J->C, *dgate = dh + J->C;
            for (int c = 0; c < J->C; c++) {
                float g = gate[c];
                dh[c] += d[c] * (0.5f * g * (1.0f + erff(g * 0.70710678118654752440f)));
                dgate[c] += d[c] * h[c] * gelu_grad(g);
            }
        }
}

static void elementwise_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                 int op, int C)
{
    eltb_job J = {dinp, dout, inp, n, op, C};
    int nt = df_ops_threads_for(30.0 * (op == ELT_GEGLU ? (double)n * C : (double)n));
    if (op == ELT_GEGLU && (size_t)nt > n)
        nt = (int)n;
    if (n > 0)
        df_ops_run_parallel(eltb_task, &J, nt);
}

void df_silu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    elementwise_backward(dinp, dout, inp, n, ELT_SILU, 0);
}

void df_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    elementwise_backward(dinp, dout, inp, n, ELT_GELU, 0);
}

void df_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    elementwise_backward(dinp, dout, inp, n, ELT_QUICK_GELU, 0);
}

void df_geglu_backward(float *dinp, const float *dout, const float *inp, int N, int C)
{
    if (N > 0 && C > 0)
        elementwise_backward(dinp, dout, inp, (size_t)N, ELT_GEGLU, C);
}

/* -------------------------------------------------------------- attention */

/* Per (batch, head) and block of QB queries, with P = softmax(scale q k^T)
 * recomputed for the block against all visible keys:
 *     dP = dout v^T,  dS = P * (dP - D) with D_i = dout_i . out_i,
 *     dq += scale dS k,  dk += scale dS^T q,  dv += P^T dout.
 * Work items are (batch, head) pairs, each owning its slices of dq, dk and
 * dv. When there are fewer pairs than threads, each pair's query blocks are
 * split into nsplit ranges; range 0 adds into dk and dv, the others into
 * zeroed partial buffers (Tk, HS) that are added in range order after the
 * threads join. */
enum { QB = 64 };

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out;
    int B, Tq, Tk, NH, HS, causal, nsplit;
    float scale;
    float *scratch;   // per thread 2 * QB * Tk floats: P and dP (then dS)
    float *part;      // per (range 1.., b*NH + h): dk then dv partials, Tk * HS each
} attb_job;

/* Queries i0..i0+nq-1 of head (b, h); dk and dv of the head at dkh, dvh
 * (either NULL) with row stride ld. */
static void attb_block(const attb_job *J, float *P, float *dS, int b, int h, int i0, int nq,
                       float *dkh, float *dvh, int ld)
{
    int C = J->NH * J->HS, HS = J->HS, Tk = J->Tk;
    int nk = J->causal ? imin(i0 + nq, Tk) : Tk;   // keys any query of the block sees
    size_t qo = ((size_t)b * J->Tq + i0) * C + (size_t)h * HS;
    size_t ko = (size_t)b * Tk * C + (size_t)h * HS;
    const float *qb = J->q + qo, *dyb = J->dout + qo, *ob = J->out + qo;
    const float *kb = J->k + ko, *vb = J->v + ko;
    // P (nq, nk) = softmax of the scores, 0 for the keys a causal row does not see
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, J->scale, qb, C, kb, C, 0.0f,
                P, nk);
    for (int r = 0; r < nq; r++) {
        float *p = P + (size_t)r * nk;
        int vis = J->causal ? imin(i0 + r + 1, Tk) : nk;
        float mx = -INFINITY;
        for (int j = 0; j < vis; j++)
            mx = p[j] > mx ? p[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < vis; j++) {
            p[j] = expf(p[j] - mx);
            sum += p[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < vis; j++)
            p[j] *= inv;
        for (int j = vis; j < nk; j++)
            p[j] = 0.0f;
    }
    if (J->dq || dkh) {
        // dS (nq, nk) = P * (dout v^T - D)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, 1.0f, dyb, C, vb, C,
                    0.0f, dS, nk);
        for (int r = 0; r < nq; r++) {
            double D = 0.0;
            for (int d = 0; d < HS; d++)
                D += (double)dyb[(size_t)r * C + d] * ob[(size_t)r * C + d];
            const float *p = P + (size_t)r * nk;
            float *ds = dS + (size_t)r * nk;
            for (int j = 0; j < nk; j++)
                ds[j] = p[j] * (ds[j] - (float)D);
        }
        if (J->dq)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nk, J->scale, dS, nk,
                        kb, C, 1.0f, J->dq + qo, C);
        if (dkh)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, HS, nq, J->scale, dS, nk, qb,
                        C, 1.0f, dkh, ld);
    }
    if (dvh)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, HS, nq, 1.0f, P, nk, dyb, C, 1.0f,
                    dvh, ld);
}

static void attb_task(void *ctx, int tid, int nt)
{
    attb_job *J = ctx;
    int C = J->NH * J->HS, BH = J->B * J->NH, nqb = (J->Tq + QB - 1) / QB;
    size_t head = (size_t)J->Tk * J->HS;
    float *P = J->scratch + (size_t)tid * 2 * QB * J->Tk, *dS = P + (size_t)QB * J->Tk;
    for (int it = tid; it < BH * J->nsplit; it += nt) {
        int bh = it / J->nsplit, s = it % J->nsplit, b = bh / J->NH, h = bh % J->NH;
        float *dkh = NULL, *dvh = NULL;
        int ld = C;
        if (s == 0) {
            size_t ko = (size_t)b * J->Tk * C + (size_t)h * J->HS;
            dkh = J->dk ? J->dk + ko : NULL;
            dvh = J->dv ? J->dv + ko : NULL;
        } else {
            float *pp = J->part + ((size_t)(s - 1) * BH + bh) * 2 * head;
            dkh = J->dk ? pp : NULL;
            dvh = J->dv ? pp + head : NULL;
            ld = J->HS;
        }
        for (int qb = s * nqb / J->nsplit; qb < (s + 1) * nqb / J->nsplit; qb++)
            attb_block(J, P, dS, b, h, qb * QB, imin(QB, J->Tq - qb * QB), dkh, dvh, ld);
    }
}

void df_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, int B, int Tq,
                           int Tk, int NH, int HS, float scale, int causal)
{
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0 || HS <= 0 || (!dq && !dk && !dv))
        return;
    int BH = B * NH, nqb = (Tq + QB - 1) / QB, C = NH * HS;
    int nt = df_ops_threads_for(10.0 * BH * Tq * Tk * HS);
    int nsplit = BH >= nt ? 1 : imin(nqb, (nt + BH - 1) / BH);
    nt = imin(nt, BH * nsplit);
    attb_job J = {dq, dk, dv, dout, q, k, v, out, B, Tq, Tk, NH, HS, causal, nsplit, scale,
                  NULL, NULL};
    size_t head = (size_t)Tk * HS;
    J.scratch = malloc(sizeof(float) * nt * 2 * QB * Tk);
    if (nsplit > 1 && (dk || dv))
        J.part = calloc((size_t)(nsplit - 1) * BH * 2 * head, sizeof(float));
    if (!J.scratch || (nsplit > 1 && (dk || dv) && !J.part)) {
        free(J.scratch), free(J.part);
        df_attention_backward_ref(dq, dk, dv, dout, q, k, v, out, B, Tq, Tk, NH, HS, scale,
                                  causal);
        return;
    }
    int prev = blas_threads(1);
    df_ops_run_parallel(attb_task, &J, nt);
    blas_threads(prev);
    // the query ranges' partial dk, dv, in range order
    for (int s = 1; s < nsplit && J.part; s++)
        for (int bh = 0; bh < BH; bh++) {
            const float *pp = J.part + ((size_t)(s - 1) * BH + bh) * 2 * head;
            size_t ko = (size_t)(bh / NH) * Tk * C + (size_t)(bh % NH) * HS;
            for (int j = 0; j < Tk; j++)
                for (int d = 0; d < HS; d++) {
                    if (dk)
                        dk[ko + (size_t)j * C + d] += pp[(size_t)j * HS + d];
                    if (dv)
                        dv[ko + (size_t)j * C + d] += pp[head + (size_t)j * HS + d];
                }
        }
    free(J.scratch), free(J.part);
}
