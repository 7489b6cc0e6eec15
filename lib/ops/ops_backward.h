/* ops_backward.h - backward passes of the op set in ops.h, for training
 * (LoRA): given dout, the gradient of a scalar loss with respect to an op's
 * output, they give the gradients with respect to its inputs and weights.
 *
 * As in ops.h, every op comes as a plain reference, `df_<op>_backward_ref`
 * (lib/ops/ops_backward_ref.c, loops with double sums, written for reading), and
 * the version the models call, `df_<op>_backward` (lib/ops/ops_backward.c: BLAS,
 * threads), tested against it on random inputs; the references are tested
 * against central finite differences of the forward references
 * (tests/unit/test_ops_backward.c).
 *
 * Conventions (llm.c's):
 * - Every backward ACCUMULATES into its gradient buffers with +=; the caller
 *   zeroes them (once per step, so that gradients of shared inputs add up).
 * - Any gradient pointer may be NULL: that gradient is not wanted (a frozen
 *   weight) and its work is skipped.
 * - Layouts and argument meanings are those of the forward op in ops.h
 *   (row-major, PyTorch layouts). Gradient buffers must not alias inputs.
 * - The fast versions are deterministic: the same inputs and thread count
 *   (df_ops_set_threads) give bit-identical results from run to run; every
 *   output element is summed by one thread in a fixed order.
 * - GEMMs go through OpenBLAS's cblas_sgemm. OpenBLAS threads itself with
 *   one process-wide thread count: an op sets it to df_ops_threads() for
 *   GEMMs made from the calling thread, to 1 for GEMMs made inside its own
 *   worker threads, and puts the previous value back when it returns. So
 *   these ops must not run concurrently with other OpenBLAS users (nothing
 *   else in diffyface calls OpenBLAS). */
#ifndef DF_OPS_BACKWARD_H
#define DF_OPS_BACKWARD_H

#include <stddef.h>

#include "ops.h"

/* linear: out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC)
 * dinp (N,C) += dout @ weight; dweight (OC,C) += dout^T @ inp;
 * dbias (OC) += sum over n of dout. inp may be NULL when dweight is NULL,
 * weight when dinp is NULL. */
void df_linear_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int N, int C, int OC);
void df_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int C, int OC);

/* conv2d with the geometry of df_conv2d_forward (any K, stride, asymmetric
 * padding): dout (B,OC,OH,OW); dinp (B,C,H,W), dweight (OC,C,K,K), dbias (OC).
 * inp may be NULL when dweight is NULL, weight when dinp is NULL.
 * The fast dinp of a stride-1 convolution with padding at most K-1 on every
 * side is itself a convolution (of dout with the flipped, transposed kernel,
 * padded K-1-pad) and runs through df_conv2d_forward (Winograd or its GEMM);
 * other geometries (the stride-2 downsamplers) take a GEMM and col2im. */
void df_conv2d_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int B, int C, int H, int W,
                            int OC, const df_conv2d_geom *g);
void df_conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int B, int C, int H, int W, int OC,
                        const df_conv2d_geom *g);

/* groupnorm, inp (B,C,HW), G groups, gamma (C) (not NULL: it scales dinp);
 * the group statistics are recomputed from inp. dinp (B,C,HW),
 * dgamma (C), dbeta (C). */
void df_groupnorm_backward_ref(float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *gamma, int B, int C, int HW, int G,
                               float eps);
void df_groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                           const float *inp, const float *gamma, int B, int C, int HW, int G,
                           float eps);

/* layernorm over C, inp (N,C), gamma (C) not NULL. dinp (N,C), dgamma (C), dbeta (C). */
void df_layernorm_backward_ref(float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *gamma, int N, int C, float eps);
void df_layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                           const float *inp, const float *gamma, int N, int C, float eps);

/* Elementwise, n values: dinp += dout * f'(inp). gelu is the exact erf form. */
void df_silu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n);
void df_silu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void df_gelu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n);
void df_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* CLIP's quick_gelu, x * sigmoid(1.702 x) (one version: it is checked
 * against finite differences directly). */
void df_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* geglu: inp (N,2C) = [h | gate], out (N,C) = h * gelu(gate); dout (N,C), dinp (N,2C). */
void df_geglu_backward_ref(float *dinp, const float *dout, const float *inp, int N, int C);
void df_geglu_backward(float *dinp, const float *dout, const float *inp, int N, int C);

/* Attention as df_attention_forward: q (B,Tq,NH*HS), k and v (B,Tk,NH*HS),
 * out and dout (B,Tq,NH*HS), where out is the forward's output (it gives
 * D_i = sum over d of dout_i * out_i, the softmax's correction term, without
 * a second pass over the keys). dq, dk, dv (shaped as q, k, v) +=.
 * causal: query i sees keys 0..i, as in the forward.
 * The fast version recomputes the scores per block of 64 queries (two
 * 64 x Tk blocks of scratch per thread), never a Tq x Tk matrix. */
void df_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v, const float *out,
                               int B, int Tq, int Tk, int NH, int HS, float scale, int causal);
void df_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, int B, int Tq,
                           int Tk, int NH, int HS, float scale, int causal);

/* Nearest upsampling (src = floor(dst*H/OH)) as df_upsample_nearest_forward:
 * dinp (B,C,H,W) += the sum of dout (B,C,OH,OW) over the pixels each input
 * pixel was copied to. One version (memory-bound, a small part of any
 * backward pass). */
void df_upsample_nearest_backward(float *dinp, const float *dout, int B, int C, int H, int W,
                                  int OH, int OW);

#endif
