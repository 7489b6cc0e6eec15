/* cuda_context.cu - the CUDA context (device, stream, cuBLAS and cuDNN
 * handles, scratch buffers), device buffers and arenas, dtype conversion,
 * and the error recording behind the DF_CU check macros.
 *
 * No CPU counterpart: tested by tests/unit/test_cuda_ops.c (conversions
 * against a C rounding reference, a failing call's recorded message, the
 * arena's bookkeeping), which is skipped where there is no GPU. */
#include <stdio.h>
#include <string.h>

#include "cuda_internal.h"

df_status df_cuda_fail_rt(cudaError_t e, const char *expr, const char *file, int line)
{
    return df_fail(DF_ERR_CUDA, "%s at %s:%d: %s (%s)", expr, file, line, cudaGetErrorString(e),
                   cudaGetErrorName(e));
}

df_status df_cuda_fail_blas(cublasStatus_t e, const char *expr, const char *file, int line)
{
    return df_fail(DF_ERR_CUDA, "%s at %s:%d: %s (%s)", expr, file, line,
                   cublasGetStatusString(e), cublasGetStatusName(e));
}

df_status df_cuda_fail_dnn(cudnnStatus_t e, const char *expr, const char *file, int line)
{
    return df_fail(DF_ERR_CUDA, "%s at %s:%d: %s", expr, file, line, cudnnGetErrorString(e));
}

df_status df_cuda_check_ctx(const df_cuda_ctx *ctx, df_dtype dt, const char *op)
{
    if (!ctx)
        return df_fail(DF_ERR_ARG, "%s: no CUDA context (df_cuda_init first)", op);
    if (dt != DF_DTYPE_F32 && dt != DF_DTYPE_F16 && dt != DF_DTYPE_BF16)
        return df_fail(DF_ERR_ARG, "%s: unknown dtype %d", op, (int)dt);
    return DF_OK;
}

cudaDataType_t df_cuda_blas_type(df_dtype dt)
{
    return dt == DF_DTYPE_F16 ? CUDA_R_16F : dt == DF_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

cudnnDataType_t df_cuda_dnn_type(df_dtype dt)
{
    return dt == DF_DTYPE_F16 ? CUDNN_DATA_HALF
         : dt == DF_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

df_status df_cuda_scratch(df_cuda_ctx *ctx, void **buf, size_t *size, size_t bytes)
{
    if (*size >= bytes)
        return DF_OK;
    /* Queued ops may still use the old block. */
    DF_CU(cudaStreamSynchronize(ctx->stream));
    DF_CU(cudaFree(*buf));
    *buf = NULL;
    *size = 0;
    DF_CU(cudaMalloc(buf, bytes));
    *size = bytes;
    return DF_OK;
}

int df_cuda_device_count(void)
{
    int n = 0;
    /* No driver, no device or a driver older than the runtime all mean
     * "no GPU here"; which one is recorded (df_last_error) for the message,
     * and cleared in the runtime so that it is not reported later. */
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        df_fail(DF_ERR_CUDA, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e),
                cudaGetErrorName(e));
        return 0;
    }
    if (n == 0)
        df_fail(DF_ERR_CUDA, "no CUDA device");
    return n;
}

extern "C" df_status df_cuda_init(int gpu, df_cuda_ctx **out)
{
    *out = NULL;
    int n = df_cuda_device_count();
    if (n == 0)
        return df_fail(DF_ERR_CUDA, "no CUDA device (no GPU or no driver)");
    if (gpu < 0 || gpu >= n)
        return df_fail(DF_ERR_ARG, "GPU %d does not exist (%d found)", gpu, n);
    df_cuda_ctx *c = (df_cuda_ctx *)calloc(1, sizeof *c);
    if (!c)
        return df_fail(DF_ERR_NOMEM, "CUDA context: out of memory");
    c->device = gpu;
    df_status st = DF_OK;
    cudaDeviceProp p;
    DF_CU_TO(st, fail, cudaSetDevice(gpu));
    DF_CU_TO(st, fail, cudaGetDeviceProperties(&p, gpu));
    snprintf(c->name, sizeof c->name, "%s (sm_%d%d, %zu MiB)", p.name, p.major, p.minor,
             p.totalGlobalMem >> 20);
    DF_CU_TO(st, fail, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    DF_CUBLAS_TO(st, fail, cublasCreate(&c->cublas));
    DF_CUBLAS_TO(st, fail, cublasSetStream(c->cublas, c->stream));
    /* No TF32 for fp32 GEMMs (the reference mode); fp16/bf16 GEMMs use
     * tensor cores through cublasGemmEx's compute type regardless. */
    DF_CUBLAS_TO(st, fail, cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH));
    DF_CUDNN_TO(st, fail, cudnnCreate(&c->cudnn));
    DF_CUDNN_TO(st, fail, cudnnSetStream(c->cudnn, c->stream));
    *out = c;
    return DF_OK;
fail:
    df_cuda_free_ctx(c);
    return st;
}

extern "C" void df_cuda_free_ctx(df_cuda_ctx *c)
{
    if (!c)
        return;
    if (c->stream)
        (void)cudaStreamSynchronize(c->stream);
    (void)cudaFree(c->workspace);
    (void)cudaFree(c->pad);
    (void)cudaFree(c->stage);
    if (c->cudnn)
        (void)cudnnDestroy(c->cudnn);
    if (c->cublas)
        (void)cublasDestroy(c->cublas);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" const char *df_cuda_device_name(const df_cuda_ctx *c) { return c ? c->name : "none"; }

extern "C" void *df_cuda_stream(df_cuda_ctx *c) { return c ? (void *)c->stream : NULL; }

extern "C" df_status df_cuda_sync(df_cuda_ctx *c)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_sync");
    DF_CU(cudaStreamSynchronize(c->stream));
    DF_CU(cudaGetLastError());
    return DF_OK;
}

extern "C" df_status df_cuda_malloc(df_cuda_ctx *c, void **dptr, size_t bytes)
{
    *dptr = NULL;
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_malloc");
    cudaError_t e = cudaMalloc(dptr, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return df_fail(DF_ERR_NOMEM, "cudaMalloc of %zu bytes: out of GPU memory", bytes);
    }
    DF_CU(e);
    return DF_OK;
}

extern "C" void df_cuda_free(df_cuda_ctx *c, void *dptr)
{
    (void)c;
    if (dptr)
        (void)cudaFree(dptr);
}

extern "C" df_status df_cuda_memzero(df_cuda_ctx *c, void *dptr, size_t bytes)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_memzero");
    DF_CU(cudaMemsetAsync(dptr, 0, bytes, c->stream));
    return DF_OK;
}

extern "C" df_status df_cuda_upload(df_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_upload");
    /* Pageable host memory: the copy has left src when the call returns. */
    DF_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    DF_CU(cudaStreamSynchronize(c->stream));
    return DF_OK;
}

extern "C" df_status df_cuda_download(df_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_download");
    DF_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    DF_CU(cudaStreamSynchronize(c->stream));
    return DF_OK;
}

template <typename D, typename S>
__global__ void convert_kernel(D *dst, const S *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = df_st<D>(df_ld(src[i]));
}

template <typename D>
static df_status convert_from(df_cuda_ctx *c, void *dstv, const void *src, df_dtype sdt, size_t n)
{
    D *dst = (D *)dstv;
    unsigned nb = df_cuda_blocks(n, 256);
    if (sdt == DF_DTYPE_F16)
        convert_kernel<<<nb, 256, 0, c->stream>>>(dst, (const __half *)src, n);
    else if (sdt == DF_DTYPE_BF16)
        convert_kernel<<<nb, 256, 0, c->stream>>>(dst, (const __nv_bfloat16 *)src, n);
    else
        convert_kernel<<<nb, 256, 0, c->stream>>>(dst, (const float *)src, n);
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_convert(df_cuda_ctx *c, void *dst, df_dtype ddt, const void *src,
                                     df_dtype sdt, size_t n)
{
    DF_CUDA_ENTER(c, ddt, "df_cuda_convert");
    DF_CUDA_ENTER(c, sdt, "df_cuda_convert");
    if (n == 0)
        return DF_OK;
    if (ddt == sdt) {
        DF_CU(cudaMemcpyAsync(dst, src, n * df_dtype_size(ddt), cudaMemcpyDeviceToDevice,
                              c->stream));
        return DF_OK;
    }
    return DF_DISPATCH(ddt, convert_from, c, dst, src, sdt, n);
}

extern "C" df_status df_cuda_upload_f32(df_cuda_ctx *c, void *dst, df_dtype dt, const float *src,
                                        size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_upload_f32");
    if (dt == DF_DTYPE_F32)
        return df_cuda_upload(c, dst, src, n * sizeof(float));
    df_status st = df_cuda_scratch(c, &c->stage, &c->stage_size, n * sizeof(float));
    if (st == DF_OK)
        st = df_cuda_upload(c, c->stage, src, n * sizeof(float));
    if (st == DF_OK)
        st = df_cuda_convert(c, dst, dt, c->stage, DF_DTYPE_F32, n);
    return st;
}

extern "C" df_status df_cuda_download_f32(df_cuda_ctx *c, float *dst, const void *src, df_dtype dt,
                                          size_t n)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_download_f32");
    if (dt == DF_DTYPE_F32)
        return df_cuda_download(c, dst, src, n * sizeof(float));
    df_status st = df_cuda_scratch(c, &c->stage, &c->stage_size, n * sizeof(float));
    if (st == DF_OK)
        st = df_cuda_convert(c, c->stage, DF_DTYPE_F32, src, dt, n);
    if (st == DF_OK)
        st = df_cuda_download(c, dst, c->stage, n * sizeof(float));
    return st;
}

extern "C" df_status df_cuda_arena_init(df_cuda_ctx *c, df_cuda_arena *a, size_t bytes)
{
    memset(a, 0, sizeof *a);
    void *p;
    df_status st = df_cuda_malloc(c, &p, bytes);
    if (st != DF_OK)
        return st;
    a->base = (char *)p;
    a->size = bytes;
    return DF_OK;
}

extern "C" df_status df_cuda_arena_alloc(df_cuda_arena *a, size_t bytes, void **dptr)
{
    *dptr = NULL;
    size_t at = (a->used + 255) & ~(size_t)255;
    if (at < a->used || at > a->size || bytes > a->size - at)
        return df_fail(DF_ERR_NOMEM, "GPU arena full: %zu bytes wanted, %zu of %zu used", bytes,
                       a->used, a->size);
    *dptr = a->base + at;
    a->used = at + bytes;
    if (a->used > a->peak)
        a->peak = a->used;
    return DF_OK;
}

extern "C" void df_cuda_arena_release(df_cuda_arena *a, size_t mark)
{
    if (mark < a->used)
        a->used = mark;
}

extern "C" void df_cuda_arena_free(df_cuda_ctx *c, df_cuda_arena *a)
{
    df_cuda_free(c, a->base);
    memset(a, 0, sizeof *a);
}
