/* ops_cuda_stub.c - the --dtype names of ops_cuda.h (every build) and, in a
 * build without CUDA, every other ops_cuda.h function: they fail with
 * DF_ERR_UNSUPPORTED "built without CUDA" (df_cuda_device_count says 0), so
 * that tools can offer --device cuda without #ifdefs. With CUDA=1 the
 * kernels/ files define them instead. The dtype names are tested by
 * tests/unit/test_cuda_ops.c (CUDA build) and tests/unit/test_ops_cuda_stub.c
 * (any build). */
#include <string.h>

#include "ops_cuda.h"

const char *df_compute_dtype_name(df_dtype dt)
{
    return dt == DF_DTYPE_F32 ? "fp32" : dt == DF_DTYPE_F16 ? "fp16" : dt == DF_DTYPE_BF16 ? "bf16"
                                                                                          : "?";
}

df_status df_compute_dtype_parse(const char *s, df_dtype *dt)
{
    static const df_dtype all[] = {DF_DTYPE_F32, DF_DTYPE_F16, DF_DTYPE_BF16};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, df_compute_dtype_name(all[i])) == 0) {
            *dt = all[i];
            return DF_OK;
        }
    return df_fail(DF_ERR_ARG, "unknown dtype '%s' (fp32, fp16 or bf16)", s ? s : "(null)");
}

#ifndef DF_CUDA

static df_status no_cuda(const char *fn)
{
    return df_fail(DF_ERR_UNSUPPORTED, "%s: built without CUDA (make CUDA=1)", fn);
}
#define NO_CUDA return no_cuda(__func__)

int df_cuda_device_count(void)
{
    no_cuda(__func__);   /* the reason, for df_last_error() */
    return 0;
}
df_status df_cuda_init(int gpu, df_cuda_ctx **ctx) { *ctx = NULL; NO_CUDA; }
void df_cuda_free_ctx(df_cuda_ctx *ctx) { (void)ctx; }
const char *df_cuda_device_name(const df_cuda_ctx *ctx) { return "none"; }
void *df_cuda_stream(df_cuda_ctx *ctx) { return NULL; }
df_status df_cuda_sync(df_cuda_ctx *ctx) { NO_CUDA; }

df_status df_cuda_malloc(df_cuda_ctx *ctx, void **dptr, size_t bytes) { *dptr = NULL; NO_CUDA; }
void df_cuda_free(df_cuda_ctx *ctx, void *dptr) { (void)dptr; }
df_status df_cuda_memzero(df_cuda_ctx *ctx, void *dptr, size_t bytes) { NO_CUDA; }
df_status df_cuda_upload(df_cuda_ctx *ctx, void *dst, const void *src, size_t bytes) { NO_CUDA; }
df_status df_cuda_download(df_cuda_ctx *ctx, void *dst, const void *src, size_t bytes) { NO_CUDA; }
df_status df_cuda_upload_f32(df_cuda_ctx *ctx, void *dst, df_dtype dt, const float *src, size_t n)
{ NO_CUDA; }
df_status df_cuda_download_f32(df_cuda_ctx *ctx, float *dst, const void *src, df_dtype dt,
                               size_t n)
{ NO_CUDA; }
df_status df_cuda_convert(df_cuda_ctx *ctx, void *dst, df_dtype dst_dt, const void *src,
                          df_dtype src_dt, size_t n)
{ NO_CUDA; }

df_status df_cuda_arena_init(df_cuda_ctx *ctx, df_cuda_arena *a, size_t bytes)
{
    memset(a, 0, sizeof *a);
    NO_CUDA;
}
df_status df_cuda_arena_alloc(df_cuda_arena *a, size_t bytes, void **dptr) { *dptr = NULL; NO_CUDA; }
void df_cuda_arena_release(df_cuda_arena *a, size_t mark) { (void)a; }
void df_cuda_arena_free(df_cuda_ctx *ctx, df_cuda_arena *a) { memset(a, 0, sizeof *a); }

df_status df_cuda_linear_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                 const void *weight, const void *bias, int N, int C, int OC)
{ NO_CUDA; }
df_status df_cuda_conv2d_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                 const void *weight, const void *bias, int B, int C, int H, int W,
                                 int OC, const df_conv2d_geom *g)
{ NO_CUDA; }
df_status df_cuda_groupnorm_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                    const void *gamma, const void *beta, int B, int C, int HW,
                                    int G, float eps, int silu)
{ NO_CUDA; }
df_status df_cuda_layernorm_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                    const void *gamma, const void *beta, int N, int C, float eps)
{ NO_CUDA; }
df_status df_cuda_silu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp, size_t n)
{ NO_CUDA; }
df_status df_cuda_gelu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp, size_t n)
{ NO_CUDA; }
df_status df_cuda_quick_gelu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                     size_t n)
{ NO_CUDA; }
df_status df_cuda_geglu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp, int N,
                                int C)
{ NO_CUDA; }
df_status df_cuda_softmax_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp, int N,
                                  int C)
{ NO_CUDA; }
df_status df_cuda_attention_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *q,
                                    const void *k, const void *v, int B, int Tq, int Tk, int NH,
                                    int HS, float scale, int causal)
{ NO_CUDA; }
df_status df_cuda_upsample_nearest_forward(df_cuda_ctx *ctx, df_dtype dt, void *out,
                                           const void *inp, int B, int C, int H, int W, int OH,
                                           int OW)
{ NO_CUDA; }
df_status df_cuda_timestep_embedding(df_cuda_ctx *ctx, df_dtype dt, void *out, const float *t,
                                     int B, int dim, int flip_sin_to_cos, float freq_shift,
                                     float max_period)
{ NO_CUDA; }
df_status df_cuda_add_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a,
                              const void *b, size_t n)
{ NO_CUDA; }
df_status df_cuda_scale_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a, float s,
                                size_t n)
{ NO_CUDA; }
df_status df_cuda_add_channel_bias(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                   const void *bias, int B, int C, int HW)
{ NO_CUDA; }
df_status df_cuda_concat_channels(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a, int Ca,
                                  const void *b, int Cb, int B, int HW)
{ NO_CUDA; }

df_status df_cuda_linear_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dweight,
                                  void *dbias, const void *dout, const void *inp,
                                  const void *weight, int N, int C, int OC)
{ NO_CUDA; }
df_status df_cuda_conv2d_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dweight,
                                  void *dbias, const void *dout, const void *inp,
                                  const void *weight, int B, int C, int H, int W, int OC,
                                  const df_conv2d_geom *g)
{ NO_CUDA; }
df_status df_cuda_attention_backward(df_cuda_ctx *ctx, df_dtype dt, void *dq, void *dk, void *dv,
                                     const void *dout, const void *q, const void *k,
                                     const void *v, const void *out, int B, int Tq, int Tk,
                                     int NH, int HS, float scale, int causal)
{ NO_CUDA; }
df_status df_cuda_silu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                const void *inp, size_t n)
{ NO_CUDA; }
df_status df_cuda_gelu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                const void *inp, size_t n)
{ NO_CUDA; }
df_status df_cuda_quick_gelu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                      const void *inp, size_t n)
{ NO_CUDA; }
df_status df_cuda_upsample_nearest_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp,
                                            const void *dout, int B, int C, int H, int W, int OH,
                                            int OW)
{ NO_CUDA; }
df_status df_cuda_geglu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                 const void *inp, int N, int C)
{ NO_CUDA; }
df_status df_cuda_layernorm_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dgamma,
                                     void *dbeta, const void *dout, const void *inp,
                                     const void *gamma, int N, int C, float eps)
{ NO_CUDA; }
df_status df_cuda_groupnorm_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dgamma,
                                     void *dbeta, const void *dout, const void *inp,
                                     const void *gamma, int B, int C, int HW, int G, float eps)
{ NO_CUDA; }

df_status df_cuda_ddim_step(df_cuda_ctx *ctx, float *out, float *x0, const float *model_out,
                            const float *x, float a_t, float a_prev, int pred, size_t n)
{ NO_CUDA; }
df_status df_cuda_lora_merge(df_cuda_ctx *ctx, float *w, const float *up, const float *down,
                             int OC, int R, int IN, float f)
{ NO_CUDA; }
df_status df_cuda_adamw_update(df_cuda_ctx *ctx, float *p, const float *g, float *m, float *v,
                               size_t n, long step, double lr, double beta1, double beta2,
                               double eps, double weight_decay)
{ NO_CUDA; }

#endif
