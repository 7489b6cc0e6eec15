/* optim.cu - fused AdamW, df_cuda_adamw_update, whose reference is
 * df_adamw_update in lib/train/optim.c (torch 1.13's single-tensor AdamW).
 * Tested by tests/unit/test_cuda_ops.c: parameters and moments equal to the
 * CPU's bit for bit over several steps.
 *
 * One kernel reads p, g, m, v once and writes p, m, v. The scalars are
 * formed on the host as the CPU forms them; per element the CPU's float
 * operations are repeated one by one: the two fmaf it uses on purpose, and
 * explicitly rounded multiplies, divides, adds and square root elsewhere,
 * which nvcc does not contract (the CPU file is compiled without
 * contraction too: GCC's -std=c11). Parameters, gradients and moments are
 * always fp32, whatever --dtype the model runs in. */
#include <math.h>

#include "cuda_internal.h"

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float decay,
                             float b1, float c1, float b2, float c2, float bc2_sqrt, float eps,
                             float neg_step)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float pi = __fmul_rn(p[i], decay);
        float mi = fmaf(gi, c1, __fmul_rn(m[i], b1));
        float vi = fmaf(__fmul_rn(c2, gi), gi, __fmul_rn(v[i], b2));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

extern "C" df_status df_cuda_adamw_update(df_cuda_ctx *c, float *p, const float *g, float *m,
                                          float *v, size_t n, long step, double lr, double beta1,
                                          double beta2, double eps, double weight_decay)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_adamw_update");
    if (step < 1)
        return df_fail(DF_ERR_ARG, "df_cuda_adamw_update: step %ld (df_adamw_begin_step first)",
                       step);
    if (n == 0)
        return DF_OK;
    double k = (double)step;
    double bc1 = 1.0 - pow(beta1, k), bc2 = 1.0 - pow(beta2, k);
    adamw_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>(
        p, g, m, v, n, (float)(1.0 - lr * weight_decay), (float)beta1, (float)(1.0 - beta1),
        (float)beta2, (float)(1.0 - beta2), (float)sqrt(bc2), (float)eps, (float)(-(lr / bc1)));
    DF_CU_LAUNCHED();
    return DF_OK;
}
