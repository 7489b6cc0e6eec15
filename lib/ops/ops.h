/* ops.h - the op set Stable Diffusion 2.1 needs, on F32 arrays.
 *
 * Every op comes as a plain reference, `df_<op>_forward_ref`, written for
 * reading (loops, one letter per dimension), and the version the models call,
 * `df_<op>_forward`, which is optimized (BLAS sgemm, threads, cache tiling)
 * and tested against the reference on random inputs, odd sizes included
 * (tests/unit/test_ops.c). Ops that training needs get `_backward` pairs that
 * accumulate into gradients with +=.
 *
 * Conventions: row-major, PyTorch layouts (images NCHW, token sequences
 * (B,T,C)); the caller owns every buffer; out may alias inp only where an op
 * says so; no op keeps state between calls. Weights follow PyTorch shapes:
 * linear (OC,C), conv (OC,C,K,K). bias may be NULL. */
#ifndef DF_OPS_H
#define DF_OPS_H

#include <stddef.h>

/* Threads used by the optimized ops (default: online CPUs). */
void df_ops_set_threads(int n);
int df_ops_threads(void);
/* SIMD level of the optimized ops: 1 AVX-512 kernels (the default where the
 * CPU has them), 2 AVX2 with FMA (the default on CPUs without AVX-512: the
 * GEMM micro-kernel behind linears, convolutions and attention; the other
 * ops run portable C), 0 portable C. Setting it is for tests and benchmarks. */
void df_ops_set_simd(int level);
int df_ops_simd(void);
/* 3x3 stride-1 convolutions (padded 1 left and right, 0 or 1 top and bottom)
 * by Winograd's minimal filtering: -1 where it pays (the default: F(4x4, 3x3)
 * for outputs from 40x40 up, F(2x2, 3x3) from 12x12 up, both with 32
 * channels or more, see lib/ops/ops_winograd.c), 0 never (the im2col GEMM),
 * 2 or 4: F(2x2, 3x3) or F(4x4, 3x3) wherever it applies (1 is taken as 2).
 * Setting it is for tests and benchmarks. */
void df_ops_set_winograd(int mode);
/* The Winograd convolution keeps its scratch block (up to a few hundred MB)
 * for the next call; this frees it (a pipeline calls it when a model is done). */
void df_ops_release_scratch(void);

/* out (N,OC) = inp (N,C) @ weight(OC,C)^T + bias(OC) */
void df_linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC);
void df_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC);

/* inp (B,C,H,W), weight (OC,C,K,K), out (B,OC,OH,OW) with
 * OH = (H + pad_t + pad_b - K) / stride + 1, OW likewise with pad_l, pad_r.
 * Asymmetric padding serves the VAE's downsampler (pad right/bottom only). */
typedef struct { int K, stride, pad_t, pad_l, pad_b, pad_r; } df_conv2d_geom;
void df_conv2d_out_size(const df_conv2d_geom *g, int H, int W, int *OH, int *OW);
void df_conv2d_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int B, int C, int H, int W, int OC, const df_conv2d_geom *g);
void df_conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int B, int C, int H, int W, int OC, const df_conv2d_geom *g);

/* inp (B,C,HW), G groups of C/G channels, per-channel affine; out may alias inp. */
void df_groupnorm_forward_ref(float *out, const float *inp, const float *gamma, const float *beta,
                              int B, int C, int HW, int G, float eps);
void df_groupnorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int B, int C, int HW, int G, float eps);

/* inp (N,C) normalized over C; out may alias inp. */
void df_layernorm_forward_ref(float *out, const float *inp, const float *gamma, const float *beta,
                              int N, int C, float eps);
void df_layernorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int N, int C, float eps);

/* Elementwise, n values; out may alias inp. gelu is the exact erf form. */
void df_silu_forward_ref(float *out, const float *inp, size_t n);
void df_silu_forward(float *out, const float *inp, size_t n);
void df_gelu_forward_ref(float *out, const float *inp, size_t n);
void df_gelu_forward(float *out, const float *inp, size_t n);

/* inp (N,2C) = [h | gate], out (N,C) = h * gelu(gate) (diffusers GEGLU). */
void df_geglu_forward_ref(float *out, const float *inp, int N, int C);
void df_geglu_forward(float *out, const float *inp, int N, int C);

/* Row softmax over C, inp (N,C); out may alias inp. */
void df_softmax_forward_ref(float *out, const float *inp, int N, int C);
void df_softmax_forward(float *out, const float *inp, int N, int C);

/* Multi-head attention. q (B,Tq,NH*HS), k and v (B,Tk,NH*HS), out (B,Tq,NH*HS):
 * out = softmax(scale * q k^T [+ causal mask]) v per head, scores in F32.
 * causal: query i sees keys 0..i (CLIP's text encoder).
 * The optimized version tiles over keys with an online softmax, so it never
 * holds a Tq x Tk matrix (9216 x 9216 per head at 768 px). */
void df_attention_forward_ref(float *out, const float *q, const float *k, const float *v,
                              int B, int Tq, int Tk, int NH, int HS, float scale, int causal);
void df_attention_forward(float *out, const float *q, const float *k, const float *v,
                          int B, int Tq, int Tk, int NH, int HS, float scale, int causal);

/* Nearest upsampling inp (B,C,H,W) -> out (B,C,OH,OW), src = floor(dst*H/OH)
 * as PyTorch's F.interpolate(mode="nearest", size=...). */
void df_upsample_nearest_forward(float *out, const float *inp, int B, int C, int H, int W,
                                 int OH, int OW);

/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
 * half = dim/2, freq_i = exp(-ln(max_period) * i / (half - freq_shift)),
 * emb = [sin(t f), cos(t f)], swapped to [cos, sin] when flip_sin_to_cos.
 * t (B), out (B,dim). Computed in F32 like torch. */
void df_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                           float freq_shift, float max_period);

/* Small elementwise helpers; out may alias an input. */
void df_add_forward(float *out, const float *a, const float *b, size_t n);       /* a + b */
void df_scale_forward(float *out, const float *a, float s, size_t n);            /* s * a */
void df_axpby_forward(float *out, const float *a, float sa, const float *b, float sb, size_t n);
/* out (B,C,HW) = inp + bias(B,C) broadcast over HW (time embedding into a resnet). */
void df_add_channel_bias(float *out, const float *inp, const float *bias, int B, int C, int HW);
/* out (B,Ca+Cb,HW) = cat([a (B,Ca,HW), b (B,Cb,HW)], dim=1); out must not
 * alias b, nor a unless B == 1. */
void df_concat_channels(float *out, const float *a, int Ca, const float *b, int Cb, int B, int HW);
/* (B,C,HW) <-> (B,HW,C); out must not alias inp. */
void df_nchw_to_nhwc(float *out, const float *inp, int B, int C, int HW);
void df_nhwc_to_nchw(float *out, const float *inp, int B, int C, int HW);

#endif
