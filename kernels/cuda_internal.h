/* cuda_internal.h - what the kernels/ files (.cu) share and C code never sees:
 * the context's layout, the check macros, storage-type helpers and the
 * dtype dispatch. Included by .cu files only (C++). */
#ifndef DF_CUDA_INTERNAL_H
#define DF_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "ops_cuda.h"
#include "status.h"
}

/* A convolution's chosen cuDNN algorithm, kept per shape so that cuDNN's
 * heuristics run once per shape rather than on every call (kernels/ops_conv2d.cu). */
#define DF_CUDA_CONV_KEY 11
#define DF_CUDA_CONV_PLANS 128
typedef struct {
    int key[DF_CUDA_CONV_KEY];   /* pass, dtype, B, C, H, W, OC, K, stride, pad h, pad w */
    int algo, math;
    size_t workspace;
} df_cuda_conv_plan;

struct df_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudnnHandle_t cudnn;
    /* Grows on demand and lives as long as the context: cuDNN's workspace,
     * the padded input of an asymmetric convolution, the host staging of
     * df_cuda_upload_f32. */
    void *workspace;
    size_t workspace_size;
    void *pad;
    size_t pad_size;
    void *stage;
    size_t stage_size;
    char name[320];
    df_cuda_conv_plan conv_plans[DF_CUDA_CONV_PLANS];
    int n_conv_plans;   /* stored so far; past the end, the oldest is replaced */
};

/* The check macros: each evaluates one CUDA, cuBLAS or cuDNN call and, when
 * it fails, records "<expr> at <file>:<line>: <library's error string>" with
 * df_fail and returns DF_ERR_CUDA from the enclosing function (which must
 * return df_status). The _TO variants store the status in a variable and
 * jump to a label instead, for functions that release resources on error. */
df_status df_cuda_fail_rt(cudaError_t e, const char *expr, const char *file, int line);
df_status df_cuda_fail_blas(cublasStatus_t e, const char *expr, const char *file, int line);
df_status df_cuda_fail_dnn(cudnnStatus_t e, const char *expr, const char *file, int line);

#define DF_CU(expr) do { cudaError_t df_e_ = (expr); \
    if (df_e_ != cudaSuccess) return df_cuda_fail_rt(df_e_, #expr, __FILE__, __LINE__); } while (0)
#define DF_CUBLAS(expr) do { cublasStatus_t df_e_ = (expr); \
    if (df_e_ != CUBLAS_STATUS_SUCCESS) return df_cuda_fail_blas(df_e_, #expr, __FILE__, __LINE__); } while (0)
#define DF_CUDNN(expr) do { cudnnStatus_t df_e_ = (expr); \
    if (df_e_ != CUDNN_STATUS_SUCCESS) return df_cuda_fail_dnn(df_e_, #expr, __FILE__, __LINE__); } while (0)

#define DF_CU_TO(st, label, expr) do { cudaError_t df_e_ = (expr); if (df_e_ != cudaSuccess) { \
    st = df_cuda_fail_rt(df_e_, #expr, __FILE__, __LINE__); goto label; } } while (0)
#define DF_CUBLAS_TO(st, label, expr) do { cublasStatus_t df_e_ = (expr); \
    if (df_e_ != CUBLAS_STATUS_SUCCESS) { st = df_cuda_fail_blas(df_e_, #expr, __FILE__, __LINE__); \
    goto label; } } while (0)
#define DF_CUDNN_TO(st, label, expr) do { cudnnStatus_t df_e_ = (expr); \
    if (df_e_ != CUDNN_STATUS_SUCCESS) { st = df_cuda_fail_dnn(df_e_, #expr, __FILE__, __LINE__); \
    goto label; } } while (0)

/* After a kernel launch: a bad configuration is reported here, a fault
 * inside the kernel at the next synchronizing call. */
#define DF_CU_LAUNCHED() DF_CU(cudaGetLastError())

/* Argument checks shared by the ops (programmer errors, still no abort). */
df_status df_cuda_check_ctx(const df_cuda_ctx *ctx, df_dtype dt, const char *op);
#define DF_CUDA_ENTER(ctx, dt, op) do { df_status df_s_ = df_cuda_check_ctx(ctx, dt, op); \
    if (df_s_ != DF_OK) return df_s_; } while (0)

/* Grow one of the context's scratch buffers to at least `bytes`. */
df_status df_cuda_scratch(df_cuda_ctx *ctx, void **buf, size_t *size, size_t bytes);

/* Storage types: load to fp32, store from fp32 (round to nearest even). */
__device__ __forceinline__ float df_ld(float x) { return x; }
__device__ __forceinline__ float df_ld(__half x) { return __half2float(x); }
__device__ __forceinline__ float df_ld(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T df_st(float x);
template <> __device__ __forceinline__ float df_st<float>(float x) { return x; }
template <> __device__ __forceinline__ __half df_st<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 df_st<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* Call `fn<T>(args...)` with T the storage type of dt. */
#define DF_DISPATCH(dt, fn, ...) \
    ((dt) == DF_DTYPE_F16 ? fn<__half>(__VA_ARGS__) : \
     (dt) == DF_DTYPE_BF16 ? fn<__nv_bfloat16>(__VA_ARGS__) : fn<float>(__VA_ARGS__))

/* out (B,C,HW) = inp + bias, bias (B,C) when per_batch, else (C) (a
 * convolution's bias). kernels/ops_misc.cu. */
df_status df_cuda_channel_bias(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                               const void *bias, int B, int C, int HW, int per_batch);

/* cuBLAS and cuDNN names of a dtype. */
cudaDataType_t df_cuda_blas_type(df_dtype dt);
cudnnDataType_t df_cuda_dnn_type(df_dtype dt);

/* Grid size for n elements at `threads` per block, capped so that kernels
 * with grid-stride loops never ask for more blocks than the device takes. */
static inline unsigned df_cuda_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b == 0 ? 1 : b > 65535u * 16 ? 65535u * 16 : b);
}

/* Warp sum and max in fp32 (all 32 lanes take part). */
__device__ __forceinline__ float df_warp_sum(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float df_warp_max(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* Block sum of one value per thread (blockDim.x a multiple of 32, at most
 * 1024); every thread gets the result. `sh` holds 32 floats. */
__device__ __forceinline__ float df_block_sum(float x, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = df_warp_sum(x);
    __syncthreads();   /* sh may still be read from a previous call */
    if (lane == 0)
        sh[warp] = x;
    __syncthreads();
    x = lane < nw ? sh[lane] : 0.0f;
    return df_warp_sum(x);
}

#endif
