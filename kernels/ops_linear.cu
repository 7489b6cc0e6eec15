/* ops_linear.cu - linear layers on cuBLAS: df_cuda_linear_forward and
 * df_cuda_linear_backward, whose references are df_linear_forward_ref
 * (lib/ops/ops_ref.c) and df_linear_backward_ref (lib/ops/ops_backward_ref.c).
 * Tested by tests/unit/test_cuda_ops.c on SD shapes (4096 x 320 x 320 and
 * the cross-attention projections 77 x 1024 x 320).
 *
 * Row-major (N,C) @ (OC,C)^T is, in cuBLAS's column-major terms,
 * out^T (OC,N) = W^T' (OC,C) * inp^T (C,N): W's row-major storage is a
 * column-major (C,OC) matrix used transposed. Storage in the op's dtype,
 * compute in fp32 (CUBLAS_COMPUTE_32F: tensor cores for fp16/bf16 with fp32
 * accumulation, plain fp32 FMA for fp32 as the context sets no TF32). */
#include "cuda_internal.h"

/* out (N,OC) = bias (OC) in every row, so that the GEMM adds onto it
 * (beta = 1) instead of a second pass adding the bias. */
template <typename T>
__global__ void fill_rows_kernel(T *out, const T *bias, size_t N, int OC)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N * OC;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % OC];
}

/* dbias (OC) += sum over n of dout (N,OC); one thread per column, rows in
 * order, so the sum is deterministic. */
template <typename T>
__global__ void column_sum_kernel(T *dbias, const T *dout, int N, int OC)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC)
        return;
    float acc = 0.0f;
    for (int n = 0; n < N; n++)
        acc += df_ld(dout[(size_t)n * OC + o]);
    dbias[o] = df_st<T>(df_ld(dbias[o]) + acc);
}

template <typename T>
static df_status bias_rows(df_cuda_ctx *c, void *out, const void *bias, int N, int OC)
{
    size_t n = (size_t)N * OC;
    fill_rows_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)bias,
                                                                    (size_t)N, OC);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status bias_grad(df_cuda_ctx *c, void *dbias, const void *dout, int N, int OC)
{
    column_sum_kernel<<<(OC + 255) / 256, 256, 0, c->stream>>>((T *)dbias, (const T *)dout, N, OC);
    DF_CU_LAUNCHED();
    return DF_OK;
}

static df_status gemm(df_cuda_ctx *c, df_dtype dt, cublasOperation_t ta, cublasOperation_t tb,
                      int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                      float beta, void *C, int ldc)
{
    const float alpha = 1.0f;
    cudaDataType_t t = df_cuda_blas_type(dt);
    DF_CUBLAS(cublasGemmEx(c->cublas, ta, tb, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, C, t,
                           ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return DF_OK;
}

extern "C" df_status df_cuda_linear_forward(df_cuda_ctx *c, df_dtype dt, void *out, const void *inp,
                                            const void *weight, const void *bias, int N, int C,
                                            int OC)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_linear_forward");
    if (N <= 0 || C <= 0 || OC <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_linear_forward: bad shape N=%d C=%d OC=%d", N, C, OC);
    if (bias) {
        df_status st = DF_DISPATCH(dt, bias_rows, c, out, bias, N, OC);
        if (st != DF_OK)
            return st;
    }
    return gemm(c, dt, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, inp, C, bias ? 1.0f : 0.0f,
                out, OC);
}

extern "C" df_status df_cuda_linear_backward(df_cuda_ctx *c, df_dtype dt, void *dinp,
                                             void *dweight, void *dbias, const void *dout,
                                             const void *inp, const void *weight, int N, int C,
                                             int OC)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_linear_backward");
    if (N <= 0 || C <= 0 || OC <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_linear_backward: bad shape N=%d C=%d OC=%d", N, C, OC);
    df_status st = DF_OK;
    // dinp (N,C) += dout (N,OC) @ weight (OC,C): column-major dinp^T = W^T * dout^T
    if (dinp)
        st = gemm(c, dt, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC, 1.0f, dinp, C);
    // dweight (OC,C) += dout^T (OC,N) @ inp (N,C): column-major dW^T = inp^T * dout
    if (st == DF_OK && dweight)
        st = gemm(c, dt, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C);
    if (st == DF_OK && dbias)
        st = DF_DISPATCH(dt, bias_grad, c, dbias, dout, N, OC);
    return st;
}
