/* lora.cu - merging a LoRA pair into a weight on the GPU,
 * df_cuda_lora_merge: w (OC,IN) += f * up (OC,R) @ down (R,IN), whose
 * reference is merge() in lib/models/lora.c (sums in double). Tested by
 * tests/unit/test_cuda_ops.c on SD's shapes (320 x 320 at rank 4 and 64,
 * 1280 x 2880 conv weights).
 *
 * One fp32 cuBLAS GEMM with beta 1 (no TF32: the context's math mode).
 * Column-major view: w^T (IN,OC) += f * down^T (IN,R) * up^T (R,OC), where
 * the row-major down and up are exactly those column-major matrices. */
#include "cuda_internal.h"

extern "C" df_status df_cuda_lora_merge(df_cuda_ctx *c, float *w, const float *up,
                                        const float *down, int OC, int R, int IN, float f)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_lora_merge");
    if (OC <= 0 || R <= 0 || IN <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_lora_merge: bad shape OC=%d R=%d IN=%d", OC, R, IN);
    const float one = 1.0f;
    DF_CUBLAS(cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, IN, OC, R, &f, down, IN, up, R, &one,
                          w, IN));
    return DF_OK;
}
