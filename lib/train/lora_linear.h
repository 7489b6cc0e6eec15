/* lora_linear.h - a frozen linear layer with a trainable LoRA beside it, as
 * peft's lora.Linear computes it:
 *     y = x W^T + b + s * ((x A^T) B^T)        s = alpha / rank
 * A = lora_A (r,C), B = lora_B (OC,r) come from a df_lora_param
 * (lib/train/lora_params.h) of a set of rank r; with p NULL the layer is the plain linear. The
 * backward gives the input gradient through both paths and accumulates the
 * LoRA gradients into p->gA, p->gB; W and b get none (they are frozen).
 * Used by the training graphs of the UNet (lib/train/unet_train.c) and the text
 * encoder (lib/train/clip_train.c); tested in tests/unit/test_unet_train.c
 * against the merged weight W + s B A and finite differences. */
#ifndef DF_LORA_LINEAR_H
#define DF_LORA_LINEAR_H

#include "lora_params.h"

/* Both return 0, or -1 when scratch memory for the rank-r path (N*(OC+r)
 * floats) cannot be had; nothing is accumulated then. */

/* y (N,OC) = x (N,C) W^T + b + s * (x A^T) B^T. */
int df_lora_linear_forward(float *y, const float *x, const float *W, const float *b,
                            const df_lora_param *p, int r, float s, int N, int C, int OC);

/* dx (N,C) += dy W + s (dy B) A  (dx may be NULL: no input gradient wanted);
 * p->gB += s dy^T (x A^T); p->gA += s (dy B)^T x. */
int df_lora_linear_backward(float *dx, const float *dy, const float *x, const float *W,
                             df_lora_param *p, int r, float s, int N, int C, int OC);

#endif
