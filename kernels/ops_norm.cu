/* ops_norm.cu - group norm (with an optional fused SiLU) and layer norm,
 * forward and backward: df_cuda_groupnorm_forward / _backward and
 * df_cuda_layernorm_forward / _backward, whose references are
 * df_groupnorm_forward_ref, df_layernorm_forward_ref (lib/ops/ops_ref.c;
 * groupnorm + silu is df_silu_forward_ref after it) and the _backward_ref
 * pairs (lib/ops/ops_backward_ref.c). Tested by tests/unit/test_cuda_ops.c
 * (32 groups of 320 channels on 64x64, layer norm over 320 and 1024).
 *
 * Statistics are two-pass (mean, then the mean of squared deviations) in
 * fp32 as the CPU's fast path; the references sum in double. Every
 * reduction has a fixed order, so results are deterministic. */
#include <math.h>

#include "cuda_internal.h"

#define GN_THREADS 512
#define LN_ROWS 4   /* rows per 128-thread block: one warp each */

__device__ __forceinline__ float silu1(float x) { return x / (1.0f + expf(-x)); }

/* Mean and rstd of n values at x (a block's reduction, every thread gets them). */
template <typename T>
__device__ void block_stats(const T *x, size_t n, float eps, float *sh, float *mean, float *rstd)
{
    float s = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x)
        s += df_ld(x[i]);
    float m = df_block_sum(s, sh) / (float)n;
    float ss = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        float d = df_ld(x[i]) - m;
        ss = fmaf(d, d, ss);
    }
    float var = df_block_sum(ss, sh) / (float)n;
    *mean = m;
    *rstd = 1.0f / sqrtf(var + eps);
}

// inp (B,C,HW); block (g, b) normalizes group g of image b: CG*HW contiguous values
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
groupnorm_kernel(T *out, const T *inp, const T *gamma, const T *beta, int C, int HW, int G,
                 float eps, int silu)
{
    __shared__ float sh[32];
    int g = blockIdx.x, b = blockIdx.y, CG = C / G;
    size_t off = ((size_t)b * C + (size_t)g * CG) * HW, n = (size_t)CG * HW;
    float mean, rstd;
    block_stats(inp + off, n, eps, sh, &mean, &rstd);
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        int ch = g * CG + (int)(i / HW);
        float y = (df_ld(inp[off + i]) - mean) * rstd * df_ld(gamma[ch]) + df_ld(beta[ch]);
        out[off + i] = df_st<T>(silu ? silu1(y) : y);
    }
}

// inp (N,C): one warp per row
template <typename T>
__global__ void layernorm_kernel(T *out, const T *inp, const T *gamma, const T *beta, int N, int C,
                                 float eps)
{
    int lane = threadIdx.x & 31, row = blockIdx.x * LN_ROWS + (threadIdx.x >> 5);
    if (row >= N)
        return;
    const T *x = inp + (size_t)row * C;
    T *y = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += df_ld(x[c]);
    float mean = df_warp_sum(s) / (float)C, ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = df_ld(x[c]) - mean;
        ss = fmaf(d, d, ss);
    }
    float rstd = 1.0f / sqrtf(df_warp_sum(ss) / (float)C + eps);
    for (int c = lane; c < C; c += 32)
        y[c] = df_st<T>((df_ld(x[c]) - mean) * rstd * df_ld(gamma[c]) + df_ld(beta[c]));
}

template <typename T>
static df_status groupnorm(df_cuda_ctx *c, void *out, const void *inp, const void *gamma,
                           const void *beta, int B, int C, int HW, int G, float eps, int silu)
{
    groupnorm_kernel<<<dim3((unsigned)G, (unsigned)B), GN_THREADS, 0, c->stream>>>(
        (T *)out, (const T *)inp, (const T *)gamma, (const T *)beta, C, HW, G, eps, silu);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status layernorm(df_cuda_ctx *c, void *out, const void *inp, const void *gamma,
                           const void *beta, int N, int C, float eps)
{
    layernorm_kernel<<<(unsigned)((N + LN_ROWS - 1) / LN_ROWS), LN_ROWS * 32, 0, c->stream>>>(
        (T *)out, (const T *)inp, (const T *)gamma, (const T *)beta, N, C, eps);
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_groupnorm_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                               const void *inp, const void *gamma,
                                               const void *beta, int B, int C, int HW, int G,
                                               float eps, int silu)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_groupnorm_forward");
    if (B <= 0 || C <= 0 || HW <= 0 || G <= 0 || C % G || B > 65535)
        return df_fail(DF_ERR_ARG, "df_cuda_groupnorm_forward: bad shape B=%d C=%d G=%d", B, C, G);
    return DF_DISPATCH(dt, groupnorm, c, out, inp, gamma, beta, B, C, HW, G, eps, silu);
}

extern "C" df_status df_cuda_layernorm_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                               const void *inp, const void *gamma,
                                               const void *beta, int N, int C, float eps)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_layernorm_forward");
    if (N <= 0 || C <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_layernorm_forward: bad shape N=%d C=%d", N, C);
    return DF_DISPATCH(dt, layernorm, c, out, inp, gamma, beta, N, C, eps);
}

/* ---- backward ----
 * With xhat = (x - mean) * rstd and dxhat = dout * gamma, over each
 * normalized set of n values:
 *   dinp += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 * and per channel dgamma += sum dout * xhat, dbeta += sum dout. The first
 * kernel does dinp and saves (mean, rstd) per set; the second sums the
 * parameter gradients per channel from them. */

// block (g, b): dinp of one group; stats (B*G, 2) = mean, rstd
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
groupnorm_bwd_kernel(T *dinp, float *stats, const T *dout, const T *inp, const T *gamma, int C,
                     int HW, int G, float eps)
{
    __shared__ float sh[32];
    int g = blockIdx.x, b = blockIdx.y, CG = C / G;
    size_t off = ((size_t)b * C + (size_t)g * CG) * HW, n = (size_t)CG * HW;
    float mean, rstd;
    block_stats(inp + off, n, eps, sh, &mean, &rstd);
    if (threadIdx.x == 0) {
        stats[((size_t)b * G + g) * 2] = mean;
        stats[((size_t)b * G + g) * 2 + 1] = rstd;
    }
    if (!dinp)
        return;
    float s1 = 0.0f, s2 = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        int ch = g * CG + (int)(i / HW);
        float xh = (df_ld(inp[off + i]) - mean) * rstd, dxh = df_ld(dout[off + i]) * df_ld(gamma[ch]);
        s1 += dxh;
        s2 = fmaf(dxh, xh, s2);
    }
    float m1 = df_block_sum(s1, sh) / (float)n, m2 = df_block_sum(s2, sh) / (float)n;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        int ch = g * CG + (int)(i / HW);
        float xh = (df_ld(inp[off + i]) - mean) * rstd, dxh = df_ld(dout[off + i]) * df_ld(gamma[ch]);
        dinp[off + i] = df_st<T>(df_ld(dinp[off + i]) + rstd * (dxh - m1 - xh * m2));
    }
}

// block ch: dgamma[ch], dbeta[ch] over every image and pixel
template <typename T>
__global__ void groupnorm_param_kernel(T *dgamma, T *dbeta, const float *stats, const T *dout,
                                       const T *inp, int B, int C, int HW, int G)
{
    __shared__ float sh[32];
    int ch = blockIdx.x, g = ch / (C / G);
    float sg = 0.0f, sb = 0.0f;
    for (int b = 0; b < B; b++) {
        float mean = stats[((size_t)b * G + g) * 2], rstd = stats[((size_t)b * G + g) * 2 + 1];
        size_t off = ((size_t)b * C + ch) * HW;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) {
            float d = df_ld(dout[off + i]);
            sg = fmaf(d, (df_ld(inp[off + i]) - mean) * rstd, sg);
            sb += d;
        }
    }
    sg = df_block_sum(sg, sh);
    sb = df_block_sum(sb, sh);
    if (threadIdx.x == 0) {
        if (dgamma)
            dgamma[ch] = df_st<T>(df_ld(dgamma[ch]) + sg);
        if (dbeta)
            dbeta[ch] = df_st<T>(df_ld(dbeta[ch]) + sb);
    }
}

template <typename T>
static df_status groupnorm_bwd(df_cuda_ctx *c, void *dinp, void *dgamma, void *dbeta,
                               const void *dout, const void *inp, const void *gamma, int B, int C,
                               int HW, int G, float eps)
{
    float *stats = (float *)c->workspace;
    groupnorm_bwd_kernel<<<dim3((unsigned)G, (unsigned)B), GN_THREADS, 0, c->stream>>>(
        (T *)dinp, stats, (const T *)dout, (const T *)inp, (const T *)gamma, C, HW, G, eps);
    DF_CU_LAUNCHED();
    if (dgamma || dbeta) {
        groupnorm_param_kernel<<<(unsigned)C, 256, 0, c->stream>>>(
            (T *)dgamma, (T *)dbeta, stats, (const T *)dout, (const T *)inp, B, C, HW, G);
        DF_CU_LAUNCHED();
    }
    return DF_OK;
}

extern "C" df_status df_cuda_groupnorm_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                                void *dgamma, void *dbeta, const void *dout,
                                                const void *inp, const void *gamma, int B, int C,
                                                int HW, int G, float eps)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_groupnorm_backward");
    if (B <= 0 || C <= 0 || HW <= 0 || G <= 0 || C % G || B > 65535)
        return df_fail(DF_ERR_ARG, "df_cuda_groupnorm_backward: bad shape B=%d C=%d G=%d", B, C, G);
    df_status st = df_cuda_scratch(c, &c->workspace, &c->workspace_size,
                                   (size_t)B * G * 2 * sizeof(float));
    if (st != DF_OK)
        return st;
    return DF_DISPATCH(dt, groupnorm_bwd, c, dinp, dgamma, dbeta, dout, inp, gamma, B, C, HW, G,
                       eps);
}

// one warp per row: dinp and the row's (mean, rstd)
template <typename T>
__global__ void layernorm_bwd_kernel(T *dinp, float *stats, const T *dout, const T *inp,
                                     const T *gamma, int N, int C, float eps)
{
    int lane = threadIdx.x & 31, row = blockIdx.x * LN_ROWS + (threadIdx.x >> 5);
    if (row >= N)
        return;
    const T *x = inp + (size_t)row * C, *dy = dout + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += df_ld(x[c]);
    float mean = df_warp_sum(s) / (float)C, ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = df_ld(x[c]) - mean;
        ss = fmaf(d, d, ss);
    }
    float rstd = 1.0f / sqrtf(df_warp_sum(ss) / (float)C + eps);
    if (lane == 0) {
        stats[(size_t)row * 2] = mean;
        stats[(size_t)row * 2 + 1] = rstd;
    }
    if (!dinp)
        return;
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float xh = (df_ld(x[c]) - mean) * rstd, dxh = df_ld(dy[c]) * df_ld(gamma[c]);
        s1 += dxh;
        s2 = fmaf(dxh, xh, s2);
    }
    float m1 = df_warp_sum(s1) / (float)C, m2 = df_warp_sum(s2) / (float)C;
    T *dx = dinp + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        float xh = (df_ld(x[c]) - mean) * rstd, dxh = df_ld(dy[c]) * df_ld(gamma[c]);
        dx[c] = df_st<T>(df_ld(dx[c]) + rstd * (dxh - m1 - xh * m2));
    }
}

// one thread per column, rows in order (deterministic, coalesced across threads)
template <typename T>
__global__ void layernorm_param_kernel(T *dgamma, T *dbeta, const float *stats, const T *dout,
                                       const T *inp, int N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float sg = 0.0f, sb = 0.0f;
    for (int n = 0; n < N; n++) {
        float d = df_ld(dout[(size_t)n * C + c]);
        sg = fmaf(d, (df_ld(inp[(size_t)n * C + c]) - stats[2 * n]) * stats[2 * n + 1], sg);
        sb += d;
    }
    if (dgamma)
        dgamma[c] = df_st<T>(df_ld(dgamma[c]) + sg);
    if (dbeta)
        dbeta[c] = df_st<T>(df_ld(dbeta[c]) + sb);
}

template <typename T>
static df_status layernorm_bwd(df_cuda_ctx *c, void *dinp, void *dgamma, void *dbeta,
                               const void *dout, const void *inp, const void *gamma, int N, int C,
                               float eps)
{
    float *stats = (float *)c->workspace;
    layernorm_bwd_kernel<<<(unsigned)((N + LN_ROWS - 1) / LN_ROWS), LN_ROWS * 32, 0, c->stream>>>(
        (T *)dinp, stats, (const T *)dout, (const T *)inp, (const T *)gamma, N, C, eps);
    DF_CU_LAUNCHED();
    if (dgamma || dbeta) {
        layernorm_param_kernel<<<(unsigned)((C + 127) / 128), 128, 0, c->stream>>>(
            (T *)dgamma, (T *)dbeta, stats, (const T *)dout, (const T *)inp, N, C);
        DF_CU_LAUNCHED();
    }
    return DF_OK;
}

extern "C" df_status df_cuda_layernorm_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                                void *dgamma, void *dbeta, const void *dout,
                                                const void *inp, const void *gamma, int N, int C,
                                                float eps)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_layernorm_backward");
    if (N <= 0 || C <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_layernorm_backward: bad shape N=%d C=%d", N, C);
    df_status st = df_cuda_scratch(c, &c->workspace, &c->workspace_size,
                                   (size_t)N * 2 * sizeof(float));
    if (st != DF_OK)
        return st;
    return DF_DISPATCH(dt, layernorm_bwd, c, dinp, dgamma, dbeta, dout, inp, gamma, N, C, eps);
}
