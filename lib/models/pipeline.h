/* pipeline.h - text to image with Stable Diffusion 2.x, as diffusers'
 * StableDiffusionPipeline computes it:
 *
 *   ids = tokenize(prompt), tokenize(negative or "")
 *   pos, neg = text_encoder(ids).last_hidden_state
 *   latents = noise(seed) or the given initial latents; latents *= init_noise_sigma
 *   for each timestep t:  x = scale_model_input(cat([latents]*2), t)
 *                         e_neg, e_pos = unet(x, t, cat([neg, pos]))
 *                         e = e_neg + guidance * (e_pos - e_neg)
 *                         latents = scheduler.step(e, t, latents)
 *   image = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1)
 *   uint8 = round(image * 255)
 *
 * (guidance <= 1 runs the positive branch alone, as diffusers does.)
 * Components are loaded only while they are needed and freed after (text
 * encoder, then UNet, then VAE), so peak memory is the largest component
 * plus its activations, not the sum. LoRAs are merged into each component's
 * weights as it is loaded.
 * With an init image (and a mask) it is diffusers' StableDiffusionImg2Img /
 * StableDiffusionInpaintPipeline instead (lib/models/pipeline_edit.h says
 * how; a 9-channel UNet is an inpainting one).
 * Tested end to end against refs/pipeline_* by tests/check_fixtures/
 * check_pipeline.c and through df-sample by tests/tools/test-df-sample.sh
 * (img2img and inpainting: tests/tools/test-df-sample-edit.sh). */
#ifndef DF_PIPELINE_H
#define DF_PIPELINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lora.h"
#include "status.h"

typedef struct df_pipeline df_pipeline;

/* Open a diffusers folder: model_index.json, tokenizer/, the scheduler and
 * component configs. Weights are not loaded yet. variant: NULL or "fp16". */
df_status df_pipeline_open(const char *model_dir, const char *variant, df_pipeline **out);

/* How to read a model that is not a diffusers folder. */
typedef struct {
    const char *variant;      /* folders: NULL or "fp16" */
    const char *config_dir;   /* single file: a diffusers folder whose configs and
                               * tokenizer replace the built-in SD 2.1 ones; NULL */
    const char *prediction;   /* single file: "v" or "epsilon"; NULL: by the UNet's
                               * sample size (96 -> v, as SD 2.1's 768 yaml) */
} df_pipeline_open_opts;

/* Open `model`: a diffusers folder (as df_pipeline_open), or a single-file
 * checkpoint (the original SD layout, model.diffusion_model.* ...). A
 * pickle .ckpt is refused with the reason. opts may be NULL. */
df_status df_pipeline_open_model(const char *model, const df_pipeline_open_opts *opts,
                                 df_pipeline **out);
void df_pipeline_free(df_pipeline *p);

/* The scheduler_config.json the model runs with by default (for a single
 * file: the built-in or --config one, prediction_type as decided). Owned
 * by p. For naming the scheduler a run used without the model folder. */
const json_t *df_pipeline_scheduler_config(const df_pipeline *p);

/* Notes on how the folder was read, one per line (a component without the
 * requested variant's weights falls back to its full-precision file, as
 * diffusers does), or NULL. For the caller to show as warnings. */
const char *df_pipeline_notes(const df_pipeline *p);

/* Add a LoRA (merged into UNet and text encoder at load). The file is checked
 * now against both components' weight names, so a bad LoRA fails before any
 * sampling; the report says how many tensors matched. */
df_status df_pipeline_add_lora(df_pipeline *p, const char *path, float scale,
                               df_lora_report *rep);

/* Change the scale of the LoRA added as number `index` (0-based, in the
 * order of df_pipeline_add_lora; 0 switches it off). Components it merged
 * into are reloaded at the next generate when the scale changed. */
df_status df_pipeline_set_lora_scale(df_pipeline *p, int index, float scale);
int df_pipeline_lora_count(const df_pipeline *p);
float df_pipeline_lora_scale(const df_pipeline *p, int index);

/* Keep loaded components between generate calls (faster for many prompts,
 * more memory). Default false: load, use, free. */
void df_pipeline_keep_loaded(df_pipeline *p, bool keep);

/* After df_pipeline_generate failed: true when a component could not be
 * loaded (bad config or weights, a LoRA that cannot merge), a problem of the
 * model that every later prompt would meet too; false for the prompt's own
 * failures (bad size, scheduler name, NaN while sampling). */
bool df_pipeline_load_failed(const df_pipeline *p);
/* Channels of the latents: the UNet's in_channels (4 for SD), and 4 for an
 * inpainting UNet (in_channels 9: latents, mask, masked-image latents). */
int df_pipeline_latent_channels(const df_pipeline *p);

/* Default image size: unet sample_size * vae scale. */
void df_pipeline_default_size(const df_pipeline *p, int *width, int *height);
/* The image side must be a multiple of this (the VAE's scale, 8 for SD). */
int df_pipeline_size_multiple(const df_pipeline *p);

typedef struct {
    const char *prompt;
    const char *negative_prompt;   /* NULL or "" -> "" (the CFG unconditional) */
    int width, height;             /* pixels, multiples of df_pipeline_size_multiple */
    int steps;
    float guidance;
    const char *scheduler;         /* NULL: the model's scheduler_config.json */
    uint64_t seed;                 /* torch CPU generator seed for the noise */
    const float *init_latents;     /* (batch,C,h,w) or NULL to draw from seed */
    int batch;                     /* images for this prompt, >= 1 */
    /* img2img and inpainting, as diffusers' StableDiffusionImg2ImgPipeline
     * and StableDiffusionInpaintPipeline; all NULL/0 for text to image. */
    const uint8_t *init_image;     /* (height,width,3) RGB at the output size, or NULL */
    const uint8_t *mask;           /* (height,width), 255 = repaint, 0 = keep; NULL: img2img */
    float strength;                /* 0 < strength <= 1: the share of the schedule run */
} df_pipeline_params;

/* Observers for progress and for checking internals; any may be NULL. */
typedef struct {
    void *ctx;
    void (*on_embeds)(void *ctx, const float *neg, const float *pos, int T, int C);
    /* after step i of n: unet_out is the raw CFG batch ((2 or 1)*batch, C, h, w),
     * latents (batch, C, h, w) after the scheduler step; t the timestep. */
    void (*on_step)(void *ctx, int i, int n, float t, const float *unet_out,
                    const float *latents);
    void (*on_stage)(void *ctx, const char *stage);   /* "text encoder", "unet", "vae" */
    /* before step i of n, with the latents (batch, C, h, w) it will start
     * from, which it may overwrite: a checker feeds each step the reference's
     * latents this way, to judge the UNet apart from the drift of the run. */
    void (*before_step)(void *ctx, int i, int n, float *latents);
    /* polled between stages and before each step: returning true stops the
     * run with DF_ERR_INTERRUPTED (a server's cancel, a client gone). */
    bool (*should_stop)(void *ctx);
} df_pipeline_hooks;

typedef struct {
    int batch, C, h, w;            /* latent shape */
    int width, height;
    float *latents;                /* (batch,C,h,w) final, before the VAE */
    float *image;                  /* (batch,height,width,3) in [0,1] */
    uint8_t *rgb;                  /* (batch,height,width,3) */
    size_t prompt_tokens;          /* untruncated token counts incl. bos/eos */
    size_t negative_tokens;
    int max_tokens;                /* the tokenizer's limit (77) */
    char scheduler[64];            /* diffusers class of the scheduler used */
} df_pipeline_output;

df_status df_pipeline_generate(df_pipeline *p, const df_pipeline_params *params,
                               const df_pipeline_hooks *hooks, df_pipeline_output *out);
void df_pipeline_output_free(df_pipeline_output *out);

#endif
