/* scheduler_ddim.cu - the elementwise part of a deterministic DDIM step,
 * df_cuda_ddim_step, whose reference is ddim_step in
 * lib/models/scheduler_ddim.c (reached through df_scheduler_step with a
 * "ddim" scheduler). Tested by tests/unit/test_cuda_ops.c against
 * df_scheduler_step for epsilon and v_prediction, bit for bit.
 *
 * The scheduler (timesteps, alphas_cumprod) stays on the CPU; the caller
 * passes a_t and a_prev. The coefficients are formed on the host exactly as
 * the CPU does, and each per-element operation is one explicitly rounded
 * float operation (__fmul_rn and friends, which nvcc never fuses), as
 * lib/models/scheduler_ddim.c is compiled with -ffp-contract=off. No
 * clip_sample (SD 2.1's configs have it off). */
#include <math.h>

#include "cuda_internal.h"

__global__ void ddim_kernel(float *out, float *x0o, const float *mo, const float *x, float sa,
                            float sb, float c_x0, float c_dir, int pred, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float m = mo[i], xi = x[i], x0, eps;
        if (pred == 0) {          /* epsilon */
            x0 = __fdiv_rn(__fsub_rn(xi, __fmul_rn(sb, m)), sa);
            eps = m;
        } else if (pred == 1) {   /* v_prediction */
            x0 = __fsub_rn(__fmul_rn(sa, xi), __fmul_rn(sb, m));
            eps = __fadd_rn(__fmul_rn(sa, m), __fmul_rn(sb, xi));
        } else {                  /* sample */
            x0 = m;
            eps = __fdiv_rn(__fsub_rn(xi, __fmul_rn(sa, m)), sb);
        }
        if (x0o)
            x0o[i] = x0;
        out[i] = __fadd_rn(__fmul_rn(c_x0, x0), __fmul_rn(c_dir, eps));
    }
}

extern "C" df_status df_cuda_ddim_step(df_cuda_ctx *c, float *out, float *x0, const float *model_out,
                                       const float *x, float a_t, float a_prev, int pred, size_t n)
{
    DF_CUDA_ENTER(c, DF_DTYPE_F32, "df_cuda_ddim_step");
    if (pred < 0 || pred > 2)
        return df_fail(DF_ERR_ARG, "df_cuda_ddim_step: unknown prediction type %d", pred);
    if (n == 0)
        return DF_OK;
    // the CPU's scalars, in its order (eta = 0)
    float b_t = 1.0f - a_t, sa = sqrtf(a_t), sb = sqrtf(b_t);
    float c_dir = sqrtf(1.0f - a_prev - 0.0f), c_x0 = sqrtf(a_prev);
    ddim_kernel<<<df_cuda_blocks(n, 256), 256, 0, c->stream>>>(out, x0, model_out, x, sa, sb, c_x0,
                                                                c_dir, pred, n);
    DF_CU_LAUNCHED();
    return DF_OK;
}
