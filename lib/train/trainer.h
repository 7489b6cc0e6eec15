/* trainer.h - df-train's training run: a latent cache and a base model in,
 * a LoRA, checkpoints and per-step metrics out.
 *
 * The loop is diffusers' train_text_to_image_lora.py (with the text encoder
 * as train_dreambooth_lora.py trains it): per epoch a seeded permutation of
 * the cache's entries, batches of batch_size (the last one of an epoch may
 * be shorter), latents drawn from the cached posterior
 * (mean + exp(logvar/2) * randn, times the VAE's scaling factor), noise
 * (plus noise_offset * randn per channel), uniform timesteps, the loss and
 * gradients of lib/train/train_step.h, gradient accumulation, clipping, AdamW
 * with one learning rate for the UNet's parameters and one for the text
 * encoder's, and a learning-rate schedule.
 *
 * Every random draw comes from one torch-compatible generator (lib/base/rng.h)
 * seeded once; its state, the epoch's order and the position in it are in
 * every checkpoint, so a resumed run continues with exactly the draws the
 * uninterrupted run would have made: on the CPU, with the same thread
 * count, the final weights are bit-identical (tests/tools/test-df-train.sh).
 * Tested end to end by tests/tools/test-df-train.sh. */
#ifndef DF_TRAINER_H
#define DF_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "lora_params.h"
#include "status.h"

typedef struct {
    const char *model_dir;
    const char *const *cache_dirs;
    int ncache;
    const char *out_dir;
    long max_steps;                 /* optimizer steps to reach (a resume continues to it) */
    long epochs;                    /* 0: no limit */
    int batch_size, accum;          /* micro-batch, micro-batches per optimizer step */
    int rank;
    float alpha;
    const char *unet_targets;       /* comma-separated module suffixes */
    const char *text_targets;
    bool train_text_encoder;
    double unet_lr, text_lr;
    const char *lr_schedule;        /* constant, constant_with_warmup, linear, cosine */
    long warmup_steps;
    double max_grad_norm;           /* <= 0: no clipping */
    double snr_gamma;               /* <= 0: plain MSE */
    double noise_offset;
    double caption_dropout;         /* probability of training on "" */
    bool random_flip;               /* pick an entry's flipped twin half of the time */
    bool use_mean;                  /* train on the posterior mean, no latent draw */
    const char *init;               /* gaussian, kaiming */
    uint64_t seed;
    df_lora_format format;          /* of the final LoRA */
    bool checkpointing;             /* gradient checkpointing */
    long save_every;                /* 0: only at the end */
    int keep_checkpoints;           /* 0: all */
    bool resume;
} df_train_opts;

/* One line of metrics (the tool prints it as a JSON record). */
typedef struct {
    long step, epoch, max_steps;
    double loss, lr_unet, lr_text, grad_norm, images_per_s, seconds;
    int images;                     /* in this optimizer step */
} df_train_metrics;

typedef struct {
    void *ctx;
    void (*on_start)(void *ctx, long first_step, long max_steps, size_t entries);
    void (*on_step)(void *ctx, const df_train_metrics *m);
    /* after a checkpoint (and the final LoRA) is on disk: its LoRA file */
    void (*on_saved)(void *ctx, long step, const char *lora_path, bool final);
} df_train_hooks;

/* Validate everything that can be checked before any work (model, cache
 * against the model's VAE, captions, rank, output directory, a resume's
 * configuration); then train. The final LoRA is out_dir/
 * pytorch_lora_weights.safetensors in opts->format, with the training
 * metadata in its header. */
df_status df_train_run(const df_train_opts *opts, const df_train_hooks *hooks);

#endif
