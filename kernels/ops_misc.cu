/* ops_misc.cu - the small ops of ops.h: timestep embedding, nearest
 * upsampling (forward and backward), add, scale, per-channel bias and
 * channel concatenation. References: df_timestep_embedding,
 * df_upsample_nearest_forward and df_concat_channels (lib/ops/ops_ref.c),
 * df_upsample_nearest_backward (lib/ops/ops_backward_ref.c), df_add_forward, df_scale_forward
 * and df_add_channel_bias (lib/ops/ops.c, single versions). Tested by
 * tests/unit/test_cuda_ops.c.
 *
 * The timestep embedding rounds each step to float in the CPU's order
 * (__fmul_rn/__fdiv_rn keep nvcc from fusing them). */
#include <math.h>

#include "cuda_internal.h"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)

// t (B), out (B,dim)
template <typename T>
__global__ void timestep_kernel(T *out, const float *t, int B, int dim, int flip, float neg_log,
                                float denom)
{
    int half = dim / 2;
    GRID_STRIDE(idx, (size_t)B * half) {
        int b = (int)(idx / half), i = (int)(idx % half);
        float exponent = __fdiv_rn(__fmul_rn(neg_log, (float)i), denom);
        /* exp, sin and cos in double, rounded once: within an ulp of glibc's
         * float functions the CPU uses (CUDA's expf can be an ulp off, which
         * t up to 999 turns into 6e-5 in the sines). */
        float e = __fmul_rn(t[b], (float)exp((double)exponent));
        float s = (float)sin((double)e), c = (float)cos((double)e);
        T *y = out + (size_t)b * dim;
        y[i] = df_st<T>(flip ? c : s);
        y[half + i] = df_st<T>(flip ? s : c);
        if (i == 0 && dim % 2)
            y[dim - 1] = df_st<T>(0.0f);   /* diffusers pads an odd dim with one zero */
    }
}

// inp (B,C,H,W) -> out (B,C,OH,OW), src = floor(dst*H/OH)
template <typename T>
__global__ void upsample_kernel(T *out, const T *inp, size_t BC, int H, int W, int OH, int OW)
{
    GRID_STRIDE(i, BC * OH * OW) {
        int ow = (int)(i % OW), oh = (int)(i / OW % OH);
        size_t bc = i / ((size_t)OW * OH);
        int ih = (int)((long long)oh * H / OH), iw = (int)((long long)ow * W / OW);
        out[i] = inp[(bc * H + ih) * W + iw];
    }
}

// dinp (B,C,H,W) += the sum of dout (B,C,OH,OW) over the output pixels copied
// from each input pixel: rows oh with floor(oh*H/OH) == ih, i.e. from
// ceil(ih*OH/H) up to ceil((ih+1)*OH/H), likewise columns; gathered per
// input pixel in a fixed order (deterministic, no atomics)
template <typename T>
__global__ void upsample_bwd_kernel(T *dinp, const T *dout, size_t BC, int H, int W, int OH, int OW)
{
    GRID_STRIDE(i, BC * H * W) {
        int iw = (int)(i % W), ih = (int)(i / W % H);
        size_t bc = i / ((size_t)W * H);
        int oh0 = (int)(((long long)ih * OH + H - 1) / H);
        int oh1 = (int)(((long long)(ih + 1) * OH + H - 1) / H);
        int ow0 = (int)(((long long)iw * OW + W - 1) / W);
        int ow1 = (int)(((long long)(iw + 1) * OW + W - 1) / W);
        float acc = 0.0f;
        for (int oh = oh0; oh < oh1; oh++)
            for (int ow = ow0; ow < ow1; ow++)
                acc += df_ld(dout[(bc * OH + oh) * OW + ow]);
        dinp[i] = df_st<T>(df_ld(dinp[i]) + acc);
    }
}

template <typename T>
__global__ void axpby_kernel(T *out, const T *a, float sa, const T *b, float sb, size_t n)
{
    GRID_STRIDE(i, n) {
        float y = sa * df_ld(a[i]);
        out[i] = df_st<T>(b ? y + sb * df_ld(b[i]) : y);
    }
}

// out (B,C,HW) = inp + bias (B,C) (per_batch) or bias (C)
template <typename T>
__global__ void channel_bias_kernel(T *out, const T *inp, const T *bias, size_t B, int C, int HW,
                                   int per_batch)
{
    GRID_STRIDE(i, B * C * HW) {
        size_t bc = i / HW;
        float bv = df_ld(bias[per_batch ? bc : bc % C]);
        out[i] = df_st<T>(df_ld(inp[i]) + bv);
    }
}

// out (B,Ca+Cb,HW) = cat(a, b); out must not alias a or b (unlike the CPU's B == 1 case)
template <typename T>
__global__ void concat_kernel(T *out, const T *a, int Ca, const T *b, int Cb, size_t B, int HW)
{
    int Co = Ca + Cb;
    GRID_STRIDE(i, B * Co * HW) {
        size_t n = i / ((size_t)Co * HW);
        int c = (int)(i / HW % Co), p = (int)(i % HW);
        out[i] = c < Ca ? a[(n * Ca + c) * HW + p] : b[(n * Cb + (c - Ca)) * HW + p];
    }
}

template <typename T>
static df_status timestep(df_cuda_ctx *c, void *out, const float *t, int B, int dim, int flip,
                          float neg_log, float denom)
{
    size_t n = (size_t)B * (dim / 2);
    timestep_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, t, B, dim, flip,
                                                                   neg_log, denom);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status upsample(df_cuda_ctx *c, void *out, const void *inp, size_t BC, int H, int W,
                          int OH, int OW)
{
    upsample_kernel<<<df_cuda_blocks(BC * OH * OW, 256), 256, 0, c->stream>>>(
        (T *)out, (const T *)inp, BC, H, W, OH, OW);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status upsample_bwd(df_cuda_ctx *c, void *dinp, const void *dout, size_t BC, int H, int W,
                              int OH, int OW)
{
    upsample_bwd_kernel<<<df_cuda_blocks(BC * H * W, 256), 256, 0, c->stream>>>(
        (T *)dinp, (const T *)dout, BC, H, W, OH, OW);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status axpby(df_cuda_ctx *c, void *out, const void *a, float sa, const void *b, float sb,
                       size_t n)
{
    axpby_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)a, sa,
                                                                (const T *)b, sb, n);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status channel_bias(df_cuda_ctx *c, void *out, const void *inp, const void *bias, int B,
                              int C, int HW, int per_batch)
{
    size_t n = (size_t)B * C * HW;
    channel_bias_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>(
        (T *)out, (const T *)inp, (const T *)bias, (size_t)B, C, HW, per_batch);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status concat(df_cuda_ctx *c, void *out, const void *a, int Ca, const void *b, int Cb,
                        int B, int HW)
{
    size_t n = (size_t)B * (Ca + Cb) * HW;
    concat_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>(
        (T *)out, (const T *)a, Ca, (const T *)b, Cb, (size_t)B, HW);
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_timestep_embedding(df_cuda_ctx *c, df_dtype dt, void *out,
                                                const float *t, int B, int dim,
                                                int flip_sin_to_cos, float freq_shift,
                                                float max_period)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_timestep_embedding");
    if (B <= 0 || dim < 2)
        return df_fail(DF_ERR_ARG, "df_cuda_timestep_embedding: bad shape B=%d dim=%d", B, dim);
    // the scalars as the CPU forms them (double, rounded to float)
    float neg_log = (float)(-log((double)max_period));
    float denom = (float)((double)(dim / 2) - (double)freq_shift);
    return DF_DISPATCH(dt, timestep, c, out, t, B, dim, flip_sin_to_cos, neg_log, denom);
}

extern "C" df_status df_cuda_upsample_nearest_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                                      const void *inp, int B, int C, int H, int W,
                                                      int OH, int OW)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_upsample_nearest_forward");
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_upsample_nearest_forward: bad shape");
    return DF_DISPATCH(dt, upsample, c, out, inp, (size_t)B * C, H, W, OH, OW);
}

extern "C" df_status df_cuda_upsample_nearest_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                                       const void *dout, int B, int C, int H,
                                                       int W, int OH, int OW)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_upsample_nearest_backward");
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_upsample_nearest_backward: bad shape");
    return DF_DISPATCH(dt, upsample_bwd, c, dinp, dout, (size_t)B * C, H, W, OH, OW);
}

extern "C" df_status df_cuda_add_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *a,
                                         const void *b, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_add_forward");
    return n ? DF_DISPATCH(dt, axpby, c, out, a, 1.0f, b, 1.0f, n) : DF_OK;
}

extern "C" df_status df_cuda_scale_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *a,
                                           float s, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_scale_forward");
    return n ? DF_DISPATCH(dt, axpby, c, out, a, s, (const void *)NULL, 0.0f, n) : DF_OK;
}

df_status df_cuda_channel_bias(df_cuda_ctx *c, df_dtype dt, void *out, const void *inp,
                               const void *bias, int B, int C, int HW, int per_batch)
{
    if (B <= 0 || C <= 0 || HW <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_add_channel_bias: bad shape B=%d C=%d HW=%d", B, C, HW);
    return DF_DISPATCH(dt, channel_bias, c, out, inp, bias, B, C, HW, per_batch);
}

extern "C" df_status df_cuda_add_channel_bias(df_cuda_ctx *c, df_dtype dt, void *out,
                                              const void *inp, const void *bias, int B, int C,
                                              int HW)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_add_channel_bias");
    return df_cuda_channel_bias(c, dt, out, inp, bias, B, C, HW, 1);
}

extern "C" df_status df_cuda_concat_channels(df_cuda_ctx *c, df_dtype dt, void *out, const void *a,
                                             int Ca, const void *b, int Cb, int B, int HW)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_concat_channels");
    if (B <= 0 || Ca < 0 || Cb < 0 || HW <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_concat_channels: bad shape");
    if (out == a || out == b)
        return df_fail(DF_ERR_ARG, "df_cuda_concat_channels: out must not alias an input");
    return DF_DISPATCH(dt, concat, c, out, a, Ca, b, Cb, B, HW);
}
