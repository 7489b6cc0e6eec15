/* ops_conv2d.cu - 2-D convolutions on cuDNN: df_cuda_conv2d_forward and
 * df_cuda_conv2d_backward, whose references are df_conv2d_forward_ref
 * (lib/ops/ops_ref.c) and df_conv2d_backward_ref (lib/ops/ops_backward_ref.c).
 * Tested by tests/unit/test_cuda_ops.c (320 -> 320 3x3 on 64x64, the VAE's
 * stride-2 downsampler with its right/bottom-only padding, a 1x1 shortcut).
 *
 * cuDNN pads symmetrically; the VAE's downsampler pads right and bottom
 * only, so an asymmetric geometry first copies the input into a padded
 * scratch image (the context's `pad` buffer) and convolves that unpadded.
 *
 * The algorithm comes from cuDNN's heuristics (cudnnGet...Algorithm_v7,
 * the legacy API cuDNN 9 keeps): the first choice within the workspace cap
 * that does not transform the data (no FFT or Winograd: they change the
 * rounding enough to miss the CPU by more than 1e-5 in fp32 and the stated
 * tolerances in fp16/bf16) and, in fp32 (the reference mode), uses FMA math
 * rather than TF32. The backward passes take deterministic algorithms only
 * (some of cuDNN's add with atomics, in a varying order), so that a training
 * step gives the same gradients every time, as on the CPU; ALGO_1 of each,
 * deterministic, is the fallback. The choice is kept per shape and pass in
 * the context (df_cuda_conv_plan), so the heuristics run once per shape. */
#include <string.h>

#include "cuda_internal.h"

/* Workspace cap: SD's largest convolutions want far less; an algorithm
 * asking for more is skipped rather than failing on a small GPU. */
#define WORKSPACE_CAP ((size_t)1 << 30)

/* The descriptors of one convolution, and its key in the plan cache. */
struct conv_desc {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int key[DF_CUDA_CONV_KEY];
};

enum { PASS_FWD, PASS_BWD_DATA, PASS_BWD_FILTER };

/* The cached plan of this convolution and pass, or NULL. */
static const df_cuda_conv_plan *plan_find(const df_cuda_ctx *c, const conv_desc *d, int pass)
{
    int n = c->n_conv_plans < DF_CUDA_CONV_PLANS ? c->n_conv_plans : DF_CUDA_CONV_PLANS;
    for (int i = 0; i < n; i++) {
        const df_cuda_conv_plan *p = &c->conv_plans[i];
        if (p->key[0] == pass &&
            memcmp(p->key + 1, d->key + 1, sizeof p->key - sizeof p->key[0]) == 0)
            return p;
    }
    return NULL;
}

static void plan_store(df_cuda_ctx *c, const conv_desc *d, int pass, int algo, int math, size_t ws)
{
    df_cuda_conv_plan *p = &c->conv_plans[c->n_conv_plans++ % DF_CUDA_CONV_PLANS];
    if (c->n_conv_plans >= 2 * DF_CUDA_CONV_PLANS)   /* keeps the count from overflowing */
        c->n_conv_plans -= DF_CUDA_CONV_PLANS;
    memcpy(p->key, d->key, sizeof p->key);
    p->key[0] = pass;
    p->algo = algo;
    p->math = math;
    p->workspace = ws;
}

static void conv_desc_free(conv_desc *d)
{
    if (d->x)
        (void)cudnnDestroyTensorDescriptor(d->x);
    if (d->y)
        (void)cudnnDestroyTensorDescriptor(d->y);
    if (d->w)
        (void)cudnnDestroyFilterDescriptor(d->w);
    if (d->conv)
        (void)cudnnDestroyConvolutionDescriptor(d->conv);
}

/* x (B,C,Hx,Wx) convolved with symmetric padding (ph, pw) into y (B,OC,OH,OW). */
static df_status conv_desc_init(conv_desc *d, df_dtype dt, int B, int C, int Hx, int Wx, int OC,
                                int K, int stride, int ph, int pw, int OH, int OW)
{
    *d = conv_desc();
    const int key[DF_CUDA_CONV_KEY] = {0, (int)dt, B, C, Hx, Wx, OC, K, stride, ph, pw};
    memcpy(d->key, key, sizeof key);
    cudnnDataType_t t = df_cuda_dnn_type(dt);
    DF_CUDNN(cudnnCreateTensorDescriptor(&d->x));
    DF_CUDNN(cudnnCreateTensorDescriptor(&d->y));
    DF_CUDNN(cudnnCreateFilterDescriptor(&d->w));
    DF_CUDNN(cudnnCreateConvolutionDescriptor(&d->conv));
    DF_CUDNN(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, t, B, C, Hx, Wx));
    DF_CUDNN(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, t, B, OC, OH, OW));
    DF_CUDNN(cudnnSetFilter4dDescriptor(d->w, t, CUDNN_TENSOR_NCHW, OC, C, K, K));
    DF_CUDNN(cudnnSetConvolution2dDescriptor(d->conv, ph, pw, stride, stride, 1, 1,
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DF_CUDNN(cudnnSetConvolutionMathType(
        d->conv, dt == DF_DTYPE_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION));
    int n, c, h, w;
    DF_CUDNN(cudnnGetConvolution2dForwardOutputDim(d->conv, d->x, d->w, &n, &c, &h, &w));
    if (n != B || c != OC || h != OH || w != OW)
        return df_fail(DF_ERR_SHAPE, "cuDNN convolution output (%d,%d,%d,%d) is not (%d,%d,%d,%d)",
                       n, c, h, w, B, OC, OH, OW);
    return DF_OK;
}

/* Whether a heuristic's choice is acceptable: it fits the cap, does not
 * transform the data (FFT and Winograd round differently, in fp16 and bf16
 * far more than the tests' tolerances; the tensor-core implicit GEMMs are
 * cuDNN's fast fp16 path on Ampere and Hopper anyway) and, in fp32, uses
 * FMA math (no TF32). */
static bool acceptable(df_dtype dt, cudnnStatus_t status, size_t memory, cudnnMathType_t math,
                       bool transforms)
{
    if (status != CUDNN_STATUS_SUCCESS || memory > WORKSPACE_CAP || transforms)
        return false;
    return dt != DF_DTYPE_F32 || math == CUDNN_FMA_MATH;
}

static df_status pick_fwd(df_cuda_ctx *c, df_dtype dt, const conv_desc *d,
                          cudnnConvolutionFwdAlgo_t *algo, size_t *ws)
{
    const df_cuda_conv_plan *p = plan_find(c, d, PASS_FWD);
    if (p) {
        *algo = (cudnnConvolutionFwdAlgo_t)p->algo;
        *ws = p->workspace;
        DF_CUDNN(cudnnSetConvolutionMathType(d->conv, (cudnnMathType_t)p->math));
        return DF_OK;
    }
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    /* When no choice is acceptable the plain implicit GEMM (FMA math, set by
     * conv_desc_init for fp32) always works. */
    *algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    DF_CUDNN(cudnnGetConvolutionForwardAlgorithm_v7(c->cudnn, d->x, d->w, d->conv, d->y,
                                                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
    for (int i = 0; i < n; i++) {
        cudnnConvolutionFwdAlgo_t a = perf[i].algo;
        bool tr = a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
                  a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
                  a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
        if (acceptable(dt, perf[i].status, perf[i].memory, perf[i].mathType, tr)) {
            *algo = a;
            DF_CUDNN(cudnnSetConvolutionMathType(d->conv, perf[i].mathType));
            break;
        }
    }
    DF_CUDNN(cudnnGetConvolutionForwardWorkspaceSize(c->cudnn, d->x, d->w, d->conv, d->y, *algo,
                                                     ws));
    cudnnMathType_t math;
    DF_CUDNN(cudnnGetConvolutionMathType(d->conv, &math));
    plan_store(c, d, PASS_FWD, (int)*algo, (int)math, *ws);
    return DF_OK;
}

/* xp (B,C,Hp,Wp) = x (B,C,H,W) placed at (pt, pl), zeros around. */
template <typename T>
__global__ void pad_kernel(T *xp, const T *x, size_t BC, int H, int W, int Hp, int Wp, int pt,
                           int pl)
{
    size_t n = BC * Hp * Wp;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int wp = (int)(i % Wp), hp = (int)(i / Wp % Hp);
        size_t bc = i / ((size_t)Wp * Hp);
        int h = hp - pt, w = wp - pl;
        xp[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(bc * H + h) * W + w] : df_st<T>(0.0f);
    }
}

/* dx (B,C,H,W) += the interior of dxp (B,C,Hp,Wp) at (pt, pl). */
template <typename T>
__global__ void unpad_add_kernel(T *dx, const T *dxp, size_t BC, int H, int W, int Hp, int Wp,
                                 int pt, int pl)
{
    size_t n = BC * H * W;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int w = (int)(i % W), h = (int)(i / W % H);
        size_t bc = i / ((size_t)W * H);
        dx[i] = df_st<T>(df_ld(dx[i]) + df_ld(dxp[(bc * Hp + h + pt) * Wp + w + pl]));
    }
}

template <typename T>
static df_status pad_input(df_cuda_ctx *c, void *xp, const void *x, size_t BC, int H, int W,
                           int Hp, int Wp, int pt, int pl)
{
    pad_kernel<<<df_cuda_blocks(BC * Hp * Wp, 256), 256, 0, c->stream>>>(
        (T *)xp, (const T *)x, BC, H, W, Hp, Wp, pt, pl);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status unpad_add(df_cuda_ctx *c, void *dx, const void *dxp, size_t BC, int H, int W,
                           int Hp, int Wp, int pt, int pl)
{
    unpad_add_kernel<<<df_cuda_blocks(BC * H * W, 256), 256, 0, c->stream>>>(
        (T *)dx, (const T *)dxp, BC, H, W, Hp, Wp, pt, pl);
    DF_CU_LAUNCHED();
    return DF_OK;
}

static df_status check_geom(const char *op, int B, int C, int H, int W, int OC,
                            const df_conv2d_geom *g, int *OH, int *OW)
{
    if (!g || B <= 0 || C <= 0 || H <= 0 || W <= 0 || OC <= 0 || g->K <= 0 || g->stride <= 0 ||
        g->pad_t < 0 || g->pad_b < 0 || g->pad_l < 0 || g->pad_r < 0)
        return df_fail(DF_ERR_ARG, "%s: bad shape or geometry", op);
    df_conv2d_out_size(g, H, W, OH, OW);
    if (*OH <= 0 || *OW <= 0)
        return df_fail(DF_ERR_ARG, "%s: kernel larger than the padded input", op);
    return DF_OK;
}

static bool symmetric(const df_conv2d_geom *g)
{
    return g->pad_t == g->pad_b && g->pad_l == g->pad_r;
}

extern "C" df_status df_cuda_conv2d_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                            const void *inp, const void *weight, const void *bias,
                                            int B, int C, int H, int W, int OC,
                                            const df_conv2d_geom *g)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_conv2d_forward");
    int OH, OW;
    df_status st = check_geom("df_cuda_conv2d_forward", B, C, H, W, OC, g, &OH, &OW);
    if (st != DF_OK)
        return st;
    const void *x = inp;
    int Hx = H, Wx = W, ph = g->pad_t, pw = g->pad_l;
    if (!symmetric(g)) {
        Hx = H + g->pad_t + g->pad_b;
        Wx = W + g->pad_l + g->pad_r;
        size_t bytes = (size_t)B * C * Hx * Wx * df_dtype_size(dt);
        if ((st = df_cuda_scratch(c, &c->pad, &c->pad_size, bytes)) != DF_OK ||
            (st = DF_DISPATCH(dt, pad_input, c, c->pad, inp, (size_t)B * C, H, W, Hx, Wx,
                              g->pad_t, g->pad_l)) != DF_OK)
            return st;
        x = c->pad;
        ph = pw = 0;
    }
    conv_desc d;
    cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    size_t ws = 0;
    const float one = 1.0f, zero = 0.0f;
    if ((st = conv_desc_init(&d, dt, B, C, Hx, Wx, OC, g->K, g->stride, ph, pw, OH, OW)) != DF_OK ||
        (st = pick_fwd(c, dt, &d, &algo, &ws)) != DF_OK ||
        (st = df_cuda_scratch(c, &c->workspace, &c->workspace_size, ws)) != DF_OK)
        goto done;
    DF_CUDNN_TO(st, done, cudnnConvolutionForward(c->cudnn, &one, d.x, x, d.w, weight, d.conv, algo,
                                                  c->workspace, ws, &zero, d.y, out));
    if (bias)
        st = df_cuda_channel_bias(c, dt, out, out, bias, B, OC, OH * OW, 0);
done:
    conv_desc_free(&d);
    return st;
}

static df_status backward_data(df_cuda_ctx *c, df_dtype dt, const conv_desc *d, void *dx,
                               const void *dout, const void *weight)
{
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int n = 0;
    cudnnConvolutionBwdDataAlgo_t algo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    size_t ws = 0;
    const df_cuda_conv_plan *p = plan_find(c, d, PASS_BWD_DATA);
    if (p) {
        algo = (cudnnConvolutionBwdDataAlgo_t)p->algo;
        ws = p->workspace;
        DF_CUDNN(cudnnSetConvolutionMathType(d->conv, (cudnnMathType_t)p->math));
        goto run;
    }
    DF_CUDNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        c->cudnn, d->w, d->y, d->conv, d->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf));
    for (int i = 0; i < n; i++) {
        cudnnConvolutionBwdDataAlgo_t a = perf[i].algo;
        bool tr = a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
                  a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
                  a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
                  a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
        if (acceptable(dt, perf[i].status, perf[i].memory, perf[i].mathType, tr) &&
            perf[i].determinism == CUDNN_DETERMINISTIC) {
            algo = a;
            DF_CUDNN(cudnnSetConvolutionMathType(d->conv, perf[i].mathType));
            break;
        }
    }
    DF_CUDNN(cudnnGetConvolutionBackwardDataWorkspaceSize(c->cudnn, d->w, d->y, d->conv, d->x, algo,
                                                          &ws));
    {
        cudnnMathType_t math;
        DF_CUDNN(cudnnGetConvolutionMathType(d->conv, &math));
        plan_store(c, d, PASS_BWD_DATA, (int)algo, (int)math, ws);
    }
run:
    df_status st = df_cuda_scratch(c, &c->workspace, &c->workspace_size, ws);
    if (st != DF_OK)
        return st;
    const float one = 1.0f;   /* beta 1: accumulate, as every backward does */
    DF_CUDNN(cudnnConvolutionBackwardData(c->cudnn, &one, d->w, weight, d->y, dout, d->conv, algo,
                                          c->workspace, ws, &one, d->x, dx));
    return DF_OK;
}

static df_status backward_filter(df_cuda_ctx *c, df_dtype dt, const conv_desc *d, void *dweight,
                                 const void *dout, const void *x)
{
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = 0;
    cudnnConvolutionBwdFilterAlgo_t algo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
    size_t ws = 0;
    const df_cuda_conv_plan *p = plan_find(c, d, PASS_BWD_FILTER);
    if (p) {
        algo = (cudnnConvolutionBwdFilterAlgo_t)p->algo;
        ws = p->workspace;
        DF_CUDNN(cudnnSetConvolutionMathType(d->conv, (cudnnMathType_t)p->math));
        goto run;
    }
    DF_CUDNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        c->cudnn, d->x, d->y, d->conv, d->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf));
    for (int i = 0; i < n; i++) {
        cudnnConvolutionBwdFilterAlgo_t a = perf[i].algo;
        bool tr = a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
                  a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
                  a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
        if (acceptable(dt, perf[i].status, perf[i].memory, perf[i].mathType, tr) &&
            perf[i].determinism == CUDNN_DETERMINISTIC) {
            algo = a;
            DF_CUDNN(cudnnSetConvolutionMathType(d->conv, perf[i].mathType));
            break;
        }
    }
    DF_CUDNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(c->cudnn, d->x, d->y, d->conv, d->w,
                                                            algo, &ws));
    {
        cudnnMathType_t math;
        DF_CUDNN(cudnnGetConvolutionMathType(d->conv, &math));
        plan_store(c, d, PASS_BWD_FILTER, (int)algo, (int)math, ws);
    }
run:
    df_status st = df_cuda_scratch(c, &c->workspace, &c->workspace_size, ws);
    if (st != DF_OK)
        return st;
    const float one = 1.0f;
    DF_CUDNN(cudnnConvolutionBackwardFilter(c->cudnn, &one, d->x, x, d->y, dout, d->conv, algo,
                                            c->workspace, ws, &one, d->w, dweight));
    return DF_OK;
}

/* dbias (OC) += sum over b and pixels of dout (B,OC,P): one block per
 * channel, a fixed reduction order (deterministic). */
template <typename T>
__global__ void channel_sum_kernel(T *dbias, const T *dout, int B, int OC, int P)
{
    __shared__ float sh[32];
    int o = blockIdx.x;
    float acc = 0.0f;
    for (int b = 0; b < B; b++)
        for (int i = threadIdx.x; i < P; i += blockDim.x)
            acc += df_ld(dout[((size_t)b * OC + o) * P + i]);
    acc = df_block_sum(acc, sh);
    if (threadIdx.x == 0)
        dbias[o] = df_st<T>(df_ld(dbias[o]) + acc);
}

template <typename T>
static df_status bias_grad(df_cuda_ctx *c, void *dbias, const void *dout, int B, int OC, int P)
{
    channel_sum_kernel<<<OC, 256, 0, c->stream>>>((T *)dbias, (const T *)dout, B, OC, P);
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_conv2d_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                             void *dweight, void *dbias, const void *dout,
                                             const void *inp, const void *weight, int B, int C,
                                             int H, int W, int OC, const df_conv2d_geom *g)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_conv2d_backward");
    int OH, OW;
    df_status st = check_geom("df_cuda_conv2d_backward", B, C, H, W, OC, g, &OH, &OW);
    if (st != DF_OK)
        return st;
    bool sym = symmetric(g);
    int Hx = sym ? H : H + g->pad_t + g->pad_b, Wx = sym ? W : W + g->pad_l + g->pad_r;
    size_t padded = (size_t)B * C * Hx * Wx * df_dtype_size(dt);
    conv_desc d;
    if ((st = conv_desc_init(&d, dt, B, C, Hx, Wx, OC, g->K, g->stride, sym ? g->pad_t : 0,
                             sym ? g->pad_l : 0, OH, OW)) != DF_OK)
        goto done;
    if (dweight) {
        const void *x = inp;
        if (!sym) {
            if ((st = df_cuda_scratch(c, &c->pad, &c->pad_size, padded)) != DF_OK ||
                (st = DF_DISPATCH(dt, pad_input, c, c->pad, inp, (size_t)B * C, H, W, Hx, Wx,
                                  g->pad_t, g->pad_l)) != DF_OK)
                goto done;
            x = c->pad;
        }
        if ((st = backward_filter(c, dt, &d, dweight, dout, x)) != DF_OK)
            goto done;
    }
    if (dinp) {
        if (sym) {
            st = backward_data(c, dt, &d, dinp, dout, weight);
        } else {
            // the gradient of the padded image, whose interior is added to dinp
            if ((st = df_cuda_scratch(c, &c->pad, &c->pad_size, padded)) != DF_OK)
                goto done;
            DF_CU_TO(st, done, cudaMemsetAsync(c->pad, 0, padded, c->stream));
            if ((st = backward_data(c, dt, &d, c->pad, dout, weight)) != DF_OK)
                goto done;
            st = DF_DISPATCH(dt, unpad_add, c, dinp, c->pad, (size_t)B * C, H, W, Hx, Wx, g->pad_t,
                             g->pad_l);
        }
    }
    if (st == DF_OK && dbias)
        st = DF_DISPATCH(dt, bias_grad, c, dbias, dout, B, OC, OH * OW);
done:
    conv_desc_free(&d);
    return st;
}
