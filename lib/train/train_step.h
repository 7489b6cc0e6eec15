/* train_step.h - one LoRA training step's loss and gradients, as diffusers'
 * train_text_to_image_lora.py (+ the text encoder as train_dreambooth_lora.py)
 * computes them:
 *     noisy  = add_noise(latents, noise, t)            (scheduler's alphas_cumprod)
 *     ehs    = text_encoder(ids)                       (or cached embeddings)
 *     target = get_velocity(latents, noise, t)         (v-prediction; noise for epsilon)
 *     pred   = unet(noisy, t, ehs)
 *     loss   = mean((pred - target)^2)                 (min-SNR: mean_b(w_b * mean_chw))
 * then the backward through the UNet and, when trained, the text encoder,
 * accumulating into the LoRA set's gradients (scaled by loss_scale, the
 * 1/accumulation factor). The optimizer step is the caller's (lib/train/optim.h).
 * Checked against refs/train_lora_* by tests/check_fixtures/check_train.c. */
#ifndef DF_TRAIN_STEP_H
#define DF_TRAIN_STEP_H

#include <stdbool.h>
#include <stdint.h>

#include "clip_train.h"
#include "scheduler.h"
#include "status.h"
#include "unet_train.h"

typedef struct {
    df_unet_train *unet;          /* required */
    df_clip_train *text;          /* NULL: ehs come with the batch (text encoder not trained) */
    const df_scheduler *sched;    /* the training schedule (alphas_cumprod, prediction type) */
    double snr_gamma;             /* > 0: min-SNR weighting */
} df_train_model;

typedef struct {
    int B, C, h, w, T, D;         /* latents (B,C,h,w); text (B,T) ids or (B,T,D) states */
    const float *latents;         /* already scaled by the VAE's scaling factor */
    const float *noise;           /* (B,C,h,w) */
    const int64_t *timesteps;     /* (B) */
    const int32_t *ids;           /* (B,T) when the text encoder runs */
    const float *ehs;             /* (B,T,D) when it does not */
} df_train_batch;

/* Optional views of the step's tensors, for checking (any may be NULL). */
typedef struct {
    float *noisy, *target, *pred;  /* (B,C,h,w) */
    float *ehs;                    /* (B,T,D) */
    float *snr, *weights;          /* (B): min-SNR's snr and loss weights */
} df_train_trace;

/* Forward, loss and backward of one (micro-)batch; *loss gets the loss
 * (before loss_scale). */
df_status df_train_step(const df_train_model *m, const df_train_batch *b, float loss_scale,
                        float *loss, df_train_trace *trace);

#endif
