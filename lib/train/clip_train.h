/* clip_train.h - the CLIP text encoder's forward and backward for LoRA
 * training (train_dreambooth_lora.py's --train_text_encoder): base weights
 * frozen, LoRA beside q_proj, k_proj, v_proj and out_proj of every layer
 * (lib/train/lora_linear.h), gradients from dLoss/d last_hidden_state back
 * through the final LayerNorm and every layer down to the embeddings
 * (which get none). The forward computes what df_clip_forward computes.
 * Tested against diffusers + peft by tests/check_fixtures/check_train.c. */
#ifndef DF_CLIP_TRAIN_H
#define DF_CLIP_TRAIN_H

#include <stdint.h>

#include "clip.h"
#include "lora_params.h"
#include "status.h"

typedef struct df_clip_train df_clip_train;

/* Every text-encoder parameter of lora (may be NULL) must sit on a
 * self-attention projection, else DF_ERR_UNSUPPORTED naming it. */
df_status df_clip_train_create(df_clip *c, df_lora_set *lora, df_clip_train **out);
void df_clip_train_free(df_clip_train *t);

/* ids (B,T) -> last_hidden (B,T,C), keeping activations for one backward. */
df_status df_clip_train_forward(df_clip_train *t, const int32_t *ids, int B, int T,
                                float *last_hidden);
/* dlast (B,T,C): accumulates the LoRA gradients; frees the activations. */
df_status df_clip_train_backward(df_clip_train *t, const float *dlast);

#endif
