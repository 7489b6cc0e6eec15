/* ops_cuda.h - the CUDA op layer (the .cu files in kernels/, built into libdf by
 * `make CUDA=1`): a device context, device buffers, and the op set of ops.h
 * and ops_backward.h (plus the scheduler step, LoRA merge and AdamW) on
 * device memory.
 *
 * Plain C: tools and tests include it in any build. Without CUDA
 * (DF_CUDA undefined) every function here exists and fails with
 * DF_ERR_UNSUPPORTED "built without CUDA" (lib/ops/ops_cuda_stub.c), so a
 * caller needs no #ifdef to offer --device cuda.
 *
 * Each CUDA op's reference is the CPU op of the same name: df_cuda_X_forward
 * is tested against df_X_forward_ref on random inputs of SD 2.1's shapes
 * (tests/unit/test_cuda_ops.c, which exits 77, "skipped: no GPU", where no
 * GPU is present). The kernel file mirrors the CPU file: kernels/ops_*.cu
 * beside lib/ops/ops*.c, kernels/optim.cu beside lib/train/optim.c, and so
 * on (README, "GPU").
 *
 * Conventions:
 * - Every tensor pointer is device memory, row-major, in the PyTorch layouts
 *   of ops.h; the caller owns every buffer.
 * - An op's tensors all have the op's df_dtype (activations, weights, biases
 *   and norm parameters alike); arithmetic is fp32 whatever the storage
 *   (fp32 accumulation, fp32 attention scores as SD 2.1's upcast_attention
 *   requires). LoRA merge factors, AdamW parameters, gradients and moments,
 *   timesteps and scheduler coefficients are always fp32.
 * - Ops are queued on the context's stream and return as soon as they are
 *   queued: DF_OK means the launch was accepted. A fault inside a kernel
 *   surfaces at the next synchronizing call (df_cuda_sync, a download).
 * - Every CUDA, cuBLAS and cuDNN call is checked: a failure returns
 *   DF_ERR_CUDA with "<expression> at <file>:<line>: <error string>"
 *   recorded by df_fail. Nothing here exits or aborts.
 * - fp32 is the reference mode: cuBLAS without TF32, cuDNN restricted to
 *   FMA math and to the algorithms that do not transform the data (no FFT
 *   or Winograd), so that results can match the CPU within the tests' 1e-5.
 * - None of this has run on a GPU yet (README, "GPU"): it compiles, and the
 *   tests say what it must do. */
#ifndef DF_OPS_CUDA_H
#define DF_OPS_CUDA_H

#include <stddef.h>

#include "ops.h"
#include "safetensors.h"
#include "status.h"

/* Storage dtypes are safetensors.h's df_dtype; the ops take DF_DTYPE_F32,
 * DF_DTYPE_F16 and DF_DTYPE_BF16 (df_dtype_size gives their bytes). The
 * names --dtype spells them with ("fp32", "fp16", "bf16"): */
const char *df_compute_dtype_name(df_dtype dt);
/* Parse --dtype's value; DF_ERR_ARG naming it otherwise. */
df_status df_compute_dtype_parse(const char *s, df_dtype *dt);

/* ---- context ---- */

typedef struct df_cuda_ctx df_cuda_ctx;

/* Number of usable GPUs; 0 when there is no driver or no device (not an
 * error: tests skip then; df_last_error() says why, e.g. a driver older
 * than the CUDA runtime). Always 0 without CUDA. */
int df_cuda_device_count(void);
/* Select GPU `gpu` (cudaSetDevice: it becomes the calling thread's
 * device; another thread using the context must select it too) and create
 * its stream, cuBLAS and cuDNN handles. A context is used by one thread at
 * a time: its handles and scratch buffers are not locked. */
df_status df_cuda_init(int gpu, df_cuda_ctx **ctx);
void df_cuda_free_ctx(df_cuda_ctx *ctx);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)" */
const char *df_cuda_device_name(const df_cuda_ctx *ctx);
/* The context's cudaStream_t, for code that launches its own kernels. */
void *df_cuda_stream(df_cuda_ctx *ctx);
/* Wait for every queued op; reports an asynchronous kernel fault. */
df_status df_cuda_sync(df_cuda_ctx *ctx);

/* ---- buffers ---- */

df_status df_cuda_malloc(df_cuda_ctx *ctx, void **dptr, size_t bytes);
void df_cuda_free(df_cuda_ctx *ctx, void *dptr);   /* NULL is fine */
df_status df_cuda_memzero(df_cuda_ctx *ctx, void *dptr, size_t bytes);
/* Byte copies host <-> device, ordered on the stream; download waits. */
df_status df_cuda_upload(df_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);
df_status df_cuda_download(df_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);
/* n fp32 host values into a device tensor of dtype dt (rounded to nearest
 * even), and back; these stage through a scratch buffer of the context. */
df_status df_cuda_upload_f32(df_cuda_ctx *ctx, void *dst, df_dtype dt, const float *src, size_t n);
df_status df_cuda_download_f32(df_cuda_ctx *ctx, float *dst, const void *src, df_dtype dt,
                               size_t n);
/* Device-side conversion of n values; dst and src must not overlap unless
 * both dtypes are the same. */
df_status df_cuda_convert(df_cuda_ctx *ctx, void *dst, df_dtype dst_dt, const void *src,
                          df_dtype src_dt, size_t n);

/* An arena: one device block, bump-allocated in 256-byte aligned pieces and
 * released all at once (llm.c's "one allocation for activations"). */
typedef struct {
    char *base;
    size_t size, used, peak;
} df_cuda_arena;
df_status df_cuda_arena_init(df_cuda_ctx *ctx, df_cuda_arena *a, size_t bytes);
/* DF_ERR_NOMEM naming the sizes when the block is full. */
df_status df_cuda_arena_alloc(df_cuda_arena *a, size_t bytes, void **dptr);
/* Everything allocated after `mark` (a former a->used) is released. */
void df_cuda_arena_release(df_cuda_arena *a, size_t mark);
void df_cuda_arena_free(df_cuda_ctx *ctx, df_cuda_arena *a);

/* ---- forward ops (ops.h); kernels/ops_<name>.cu ----
 * out may alias inp where ops.h allows it, except for concat. */

/* cuBLAS GEMM, fp32 compute. out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias. */
df_status df_cuda_linear_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                 const void *weight, const void *bias, int N, int C, int OC);
/* cuDNN convolution (asymmetric padding by an explicit padded copy). */
df_status df_cuda_conv2d_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                 const void *weight, const void *bias, int B, int C, int H, int W,
                                 int OC, const df_conv2d_geom *g);
/* Group norm; silu != 0 applies SiLU to the result (the resnets' norm+act).
 * out may alias inp. */
df_status df_cuda_groupnorm_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                    const void *gamma, const void *beta, int B, int C, int HW,
                                    int G, float eps, int silu);
df_status df_cuda_layernorm_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                    const void *gamma, const void *beta, int N, int C, float eps);
df_status df_cuda_silu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                               size_t n);
df_status df_cuda_gelu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                               size_t n);
/* CLIP's quick_gelu, x sigmoid(1.702 x) (SD 1.x's text encoder). */
df_status df_cuda_quick_gelu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                     size_t n);
df_status df_cuda_geglu_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp, int N,
                                int C);
df_status df_cuda_softmax_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                  int N, int C);
/* Flash-style attention: keys in tiles with an online softmax, fp32 scores,
 * never a Tq x Tk matrix. HS up to 128. */
df_status df_cuda_attention_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *q,
                                    const void *k, const void *v, int B, int Tq, int Tk, int NH,
                                    int HS, float scale, int causal);
df_status df_cuda_upsample_nearest_forward(df_cuda_ctx *ctx, df_dtype dt, void *out,
                                           const void *inp, int B, int C, int H, int W, int OH,
                                           int OW);
/* t (B) fp32, out (B,dim) in dt. */
df_status df_cuda_timestep_embedding(df_cuda_ctx *ctx, df_dtype dt, void *out, const float *t,
                                     int B, int dim, int flip_sin_to_cos, float freq_shift,
                                     float max_period);
df_status df_cuda_add_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a,
                              const void *b, size_t n);
df_status df_cuda_scale_forward(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a, float s,
                                size_t n);
df_status df_cuda_add_channel_bias(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *inp,
                                   const void *bias, int B, int C, int HW);
df_status df_cuda_concat_channels(df_cuda_ctx *ctx, df_dtype dt, void *out, const void *a, int Ca,
                                  const void *b, int Cb, int B, int HW);

/* ---- backward ops (ops_backward.h); beside their forward in kernels/ops_<name>.cu ----
 * As on the CPU: they accumulate (+=) into gradients, any gradient pointer
 * may be NULL. Gradients have the op's dtype. */

df_status df_cuda_linear_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dweight,
                                  void *dbias, const void *dout, const void *inp,
                                  const void *weight, int N, int C, int OC);
df_status df_cuda_conv2d_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dweight,
                                  void *dbias, const void *dout, const void *inp,
                                  const void *weight, int B, int C, int H, int W, int OC,
                                  const df_conv2d_geom *g);
/* Flash-style as the forward: P recomputed from the scores and each
 * query's log-sum-exp (kept in the context's workspace), no Tq x Tk matrix;
 * out is the forward's output (for D_i = dout_i . out_i). HS up to 128. */
df_status df_cuda_attention_backward(df_cuda_ctx *ctx, df_dtype dt, void *dq, void *dk, void *dv,
                                     const void *dout, const void *q, const void *k,
                                     const void *v, const void *out, int B, int Tq, int Tk,
                                     int NH, int HS, float scale, int causal);
df_status df_cuda_silu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                const void *inp, size_t n);
df_status df_cuda_gelu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                const void *inp, size_t n);
df_status df_cuda_quick_gelu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                      const void *inp, size_t n);
df_status df_cuda_geglu_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, const void *dout,
                                 const void *inp, int N, int C);
df_status df_cuda_upsample_nearest_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp,
                                            const void *dout, int B, int C, int H, int W, int OH,
                                            int OW);
df_status df_cuda_layernorm_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dgamma,
                                     void *dbeta, const void *dout, const void *inp,
                                     const void *gamma, int N, int C, float eps);
df_status df_cuda_groupnorm_backward(df_cuda_ctx *ctx, df_dtype dt, void *dinp, void *dgamma,
                                     void *dbeta, const void *dout, const void *inp,
                                     const void *gamma, int B, int C, int HW, int G, float eps);

/* ---- schedulers, LoRA, optimizer ---- */

/* One deterministic DDIM step (eta 0, no clipping) on n fp32 values, as
 * lib/models/scheduler_ddim.c: pred 0 epsilon, 1 v_prediction, 2 sample
 * (df_pred_type's values); a_t = alphas_cumprod[t], a_prev that of the
 * previous timestep (or the final one). x0 (may be NULL) gets the
 * predicted original sample. out may alias x. */
df_status df_cuda_ddim_step(df_cuda_ctx *ctx, float *out, float *x0, const float *model_out,
                            const float *x, float a_t, float a_prev, int pred, size_t n);
/* w (OC,IN) fp32 += f * up (OC,R) @ down (R,IN), by cuBLAS (fp32 GEMM). */
df_status df_cuda_lora_merge(df_cuda_ctx *ctx, float *w, const float *up, const float *down,
                             int OC, int R, int IN, float f);
/* AdamW as df_adamw_update in lib/train/optim.c (the same float operations,
 * so bit-identical to the CPU): p, g, m, v are n fp32 values; step is the
 * count after df_adamw_begin_step (1 on the first step); the scalars are
 * df_adamw_hparams' (passed one by one: lib/ops sits below lib/train). */
df_status df_cuda_adamw_update(df_cuda_ctx *ctx, float *p, const float *g, float *m, float *v,
                               size_t n, long step, double lr, double beta1, double beta2,
                               double eps, double weight_decay);

#endif
