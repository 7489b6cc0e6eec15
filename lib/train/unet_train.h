/* unet_train.h - the UNet's forward and backward for LoRA training.
 *
 * The base weights are frozen: the backward passes gradients through every
 * layer (to the LoRA parameters of the attention projections and to the
 * text states that feed the cross-attention) and computes no weight
 * gradient of its own. The LoRA runs beside its frozen linear, unmerged,
 * as peft computes it (lib/train/lora_linear.h).
 *
 * The forward keeps what the backward reads, per unit (conv_in, each
 * resnet, each transformer, each down/up-sampler, the output head). With
 * gradient checkpointing only the units' inputs are kept and each resnet or
 * transformer recomputes its activations just before its backward: the same
 * ops on the same inputs, so the gradients are bit-for-bit those of the run
 * without it (tests/unit/test_unet_train.c), at about one more forward.
 *
 * Tested against diffusers + peft gradients by tests/check_fixtures/
 * check_train.c (refs/train_lora_*) and by tests/unit/test_unet_train.c
 * (finite differences, checkpointing on and off). */
#ifndef DF_UNET_TRAIN_H
#define DF_UNET_TRAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "lora_params.h"
#include "status.h"
#include "unet.h"

typedef struct df_unet_train df_unet_train;

/* A training graph over u with the UNet parameters of lora (may be NULL:
 * no LoRA, gradients reach only the text states). Every UNet parameter of
 * the set must sit on an attention projection (to_q, to_k, to_v, to_out.0
 * of attn1 or attn2): anything else is DF_ERR_UNSUPPORTED naming it. */
df_status df_unet_train_create(df_unet *u, df_lora_set *lora, bool checkpointing,
                               df_unet_train **out);
void df_unet_train_free(df_unet_train *t);

/* As df_unet_forward, keeping activations for one backward. sample,
 * timesteps and encoder_hidden_states must stay valid until the backward. */
df_status df_unet_train_forward(df_unet_train *t, const float *sample, const float *timesteps,
                                const float *encoder_hidden_states, int B, int h, int w, int T,
                                float *out);

/* dout (B,out_channels,h,w) = dLoss/dout of the last forward: accumulates
 * the LoRA gradients (p->gA, p->gB) and, when d_ehs is not NULL, dLoss/d
 * encoder_hidden_states into d_ehs (B,T,cross_attention_dim). Frees the
 * kept activations. */
df_status df_unet_train_backward(df_unet_train *t, const float *dout, float *d_ehs);

/* Largest number of bytes of activations held at once so far. */
size_t df_unet_train_peak_bytes(const df_unet_train *t);

#endif
