/* ops_activation.cu - SiLU, GELU (exact erf form), GEGLU, row softmax and
 * CLIP's quick_gelu: df_cuda_{silu,gelu,geglu,softmax}_forward and
 * df_cuda_{silu,gelu,geglu}_backward, whose references are the
 * df_<op>_forward_ref of lib/ops/ops_ref.c and the df_<op>_backward_ref of
 * lib/ops/ops_backward_ref.c; df_cuda_quick_gelu_forward (reference:
 * quick_gelu in lib/models/clip.c) and _backward (df_quick_gelu_backward,
 * lib/ops/ops_backward.c). Tested by tests/unit/test_cuda_ops.c.
 *
 * Memory-bound elementwise kernels with grid-stride loops; math in fp32
 * with the accurate expf/erff (no fast math: the fp32 tests ask 1e-5). */
#include <math.h>

#include "cuda_internal.h"

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float silu1(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}
/* d/dx x sigmoid(x) = s (1 + x (1 - s)) */
__device__ __forceinline__ float silu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}
/* d/dx gelu = Phi(x) + x phi(x) */
__device__ __forceinline__ float gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) +
           x * expf(-0.5f * x * x) * 0.39894228040143267794f;
}

/* CLIP's quick_gelu, x sigmoid(1.702 x), and its derivative
 * s + 1.702 x s (1 - s), s = sigmoid(1.702 x), in the CPU's form. */
__device__ __forceinline__ float quick_gelu1(float x)
{
    return x * (1.0f / (1.0f + expf(-1.702f * x)));
}
__device__ __forceinline__ float quick_gelu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-1.702f * x));
    return s + 1.702f * x * s * (1.0f - s);
}

enum { ACT_SILU, ACT_GELU, ACT_QUICK_GELU };

__device__ __forceinline__ float act1(int act, float x)
{
    return act == ACT_SILU ? silu1(x) : act == ACT_GELU ? gelu1(x) : quick_gelu1(x);
}
__device__ __forceinline__ float act_grad(int act, float x)
{
    return act == ACT_SILU ? silu_grad(x) : act == ACT_GELU ? gelu_grad(x) : quick_gelu_grad(x);
}

template <typename T>
__global__ void act_kernel(T *out, const T *inp, size_t n, int act)
{
    GRID_STRIDE(i, n) {
        float x = df_ld(inp[i]);
        out[i] = df_st<T>(act1(act, x));
    }
}

template <typename T>
__global__ void act_bwd_kernel(T *dinp, const T *dout, const T *inp, size_t n, int act)
{
    GRID_STRIDE(i, n) {
        float x = df_ld(inp[i]), g = act_grad(act, x);
        dinp[i] = df_st<T>(df_ld(dinp[i]) + df_ld(dout[i]) * g);
    }
}

// inp (N,2C) = [h | gate], out (N,C)
template <typename T>
__global__ void geglu_kernel(T *out, const T *inp, size_t N, int C)
{
    GRID_STRIDE(i, N * C) {
        size_t n = i / C, c = i % C;
        const T *row = inp + n * 2 * C;
        out[i] = df_st<T>(df_ld(row[c]) * gelu1(df_ld(row[C + c])));
    }
}

template <typename T>
__global__ void geglu_bwd_kernel(T *dinp, const T *dout, const T *inp, size_t N, int C)
{
    GRID_STRIDE(i, N * C) {
        size_t n = i / C, c = i % C;
        const T *row = inp + n * 2 * C;
        T *drow = dinp + n * 2 * C;
        float dy = df_ld(dout[i]), h = df_ld(row[c]), g = df_ld(row[C + c]);
        drow[c] = df_st<T>(df_ld(drow[c]) + dy * gelu1(g));
        drow[C + c] = df_st<T>(df_ld(drow[C + c]) + dy * h * gelu_grad(g));
    }
}

// inp (N,C): one warp per row; the row max is subtracted so exp never overflows
template <typename T>
__global__ void softmax_kernel(T *out, const T *inp, int N, int C)
{
    int lane = threadIdx.x & 31, row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N)
        return;
    const T *x = inp + (size_t)row * C;
    T *y = out + (size_t)row * C;
    float m = -INFINITY;
    for (int c = lane; c < C; c += 32)
        m = fmaxf(m, df_ld(x[c]));
    m = df_warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += expf(df_ld(x[c]) - m);
    float inv = 1.0f / df_warp_sum(s);
    for (int c = lane; c < C; c += 32)
        y[c] = df_st<T>(expf(df_ld(x[c]) - m) * inv);
}

template <typename T>
static df_status act(df_cuda_ctx *c, void *out, const void *inp, size_t n, int a)
{
    act_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)inp, n, a);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status act_bwd(df_cuda_ctx *c, void *dinp, const void *dout, const void *inp, size_t n,
                         int a)
{
    act_bwd_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)dinp, (const T *)dout,
                                                                  (const T *)inp, n, a);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status geglu(df_cuda_ctx *c, void *out, const void *inp, int N, int C)
{
    size_t n = (size_t)N * C;
    geglu_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)inp,
                                                                (size_t)N, C);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status geglu_bwd(df_cuda_ctx *c, void *dinp, const void *dout, const void *inp, int N,
                           int C)
{
    size_t n = (size_t)N * C;
    geglu_bwd_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>(
        (T *)dinp, (const T *)dout, (const T *)inp, (size_t)N, C);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status softmax(df_cuda_ctx *c, void *out, const void *inp, int N, int C)
{
    softmax_kernel<<<(unsigned)((N + 3) / 4), 128, 0, c->stream>>>((T *)out, (const T *)inp, N, C);
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_silu_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *inp,
                                          size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_silu_forward");
    return n ? DF_DISPATCH(dt, act, c, out, inp, n, (int)ACT_SILU) : DF_OK;
}

extern "C" df_status df_cuda_gelu_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *inp,
                                          size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_gelu_forward");
    return n ? DF_DISPATCH(dt, act, c, out, inp, n, (int)ACT_GELU) : DF_OK;
}

extern "C" df_status df_cuda_quick_gelu_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                                const void *inp, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_quick_gelu_forward");
    return n ? DF_DISPATCH(dt, act, c, out, inp, n, (int)ACT_QUICK_GELU) : DF_OK;
}

extern "C" df_status df_cuda_geglu_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *inp,
                                           int N, int C)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_geglu_forward");
    if (N <= 0 || C <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_geglu_forward: bad shape N=%d C=%d", N, C);
    return DF_DISPATCH(dt, geglu, c, out, inp, N, C);
}

extern "C" df_status df_cuda_softmax_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                             const void *inp, int N, int C)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_softmax_forward");
    if (N <= 0 || C <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_softmax_forward: bad shape N=%d C=%d", N, C);
    return DF_DISPATCH(dt, softmax, c, out, inp, N, C);
}

extern "C" df_status df_cuda_silu_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                           const void *dout, const void *inp, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_silu_backward");
    return n ? DF_DISPATCH(dt, act_bwd, c, dinp, dout, inp, n, (int)ACT_SILU) : DF_OK;
}

extern "C" df_status df_cuda_gelu_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                           const void *dout, const void *inp, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_gelu_backward");
    return n ? DF_DISPATCH(dt, act_bwd, c, dinp, dout, inp, n, (int)ACT_GELU) : DF_OK;
}

extern "C" df_status df_cuda_quick_gelu_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                                 const void *dout, const void *inp, size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_quick_gelu_backward");
    return n ? DF_DISPATCH(dt, act_bwd, c, dinp, dout, inp, n, (int)ACT_QUICK_GELU) : DF_OK;
}

extern "C" df_status df_cuda_geglu_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                            const void *dout, const void *inp, int N, int C)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_geglu_backward");
    if (N <= 0 || C <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_geglu_backward: bad shape N=%d C=%d", N, C);
    return DF_DISPATCH(dt, geglu_bwd, c, dinp, dout, inp, N, C);
}
