/* scheduler.h - the diffusion samplers of diffusers 0.27.2, numerically as
 * diffusers computes them: DDIM, DDPM, PNDM (PLMS, skip_prk_steps), Euler,
 * Euler ancestral, LMS, DPM-Solver++ (2M, with or without Karras sigmas; also
 * the SDE variant) and UniPC (bh1/bh2), for epsilon, v_prediction and sample
 * prediction.
 *
 * Built like `Cls.from_config(scheduler_config.json, ...)`: every key the
 * class knows is read from the config, absent keys take that class's own
 * default (so timestep_spacing is "leading" for DDIM/DDPM/PNDM but
 * "linspace" for the others when the SD 2.1 file is used), unknown keys are
 * ignored. Arithmetic follows diffusers' dtypes: per-element math and the
 * torch scalars in float32, the numpy parts (timesteps, sigma interpolation,
 * Karras sigmas) in double, cast where diffusers casts.
 *
 * Use: create, set_timesteps(n), then for i = 0 .. count-1 in order:
 *   in = scale_model_input(i, x); eps = model(in, timestep(i)); x = step(i, eps, x).
 * The initial latents are noise * init_noise_sigma. Multistep samplers keep
 * state between steps, so steps must be taken in order; set_timesteps resets.
 * Tested by tests/unit/test_scheduler.c and the fixture checker
 * (tests/check_fixtures/check_scheduler.c on refs/schedulers/). */
#ifndef DF_SCHEDULER_H
#define DF_SCHEDULER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct df_scheduler df_scheduler;

typedef enum { DF_PRED_EPSILON, DF_PRED_V, DF_PRED_SAMPLE } df_pred_type;

/* Draws n standard normal floats into out (the tensor diffusers' step() draws
 * with randn_tensor). lib/base/rng's df_rng_noise_fn fits; a checker can replay
 * stored noise instead. */
typedef df_status (*df_noise_fn)(void *ctx, float *out, size_t n);

/* name: NULL to use the config's "_class_name"; a diffusers class name
 * ("EulerDiscreteScheduler": every setting from the config); or a short name
 * that also forces what users mean by it, as diffusers' from_config(config,
 * **overrides) would: "ddim", "ddpm", "pndm" (skip_prk_steps), "euler",
 * "euler_ancestral" ("euler_a"), "lms", "dpmpp_2m" (dpmsolver++, order 2, no
 * Karras), "dpmpp_2m_karras", "dpmpp_2m_sde", "dpmpp_2m_sde_karras", "unipc".
 * prediction_type: NULL for the config's, or "epsilon", "v_prediction",
 * "sample". config may be NULL (all class defaults). Unknown names, bad
 * values and unsupported options (thresholding, PRK steps, ...) fail with a
 * message naming the key. */
df_status df_scheduler_create(const char *name, const json_t *config,
                              const char *prediction_type, df_scheduler **out);
void df_scheduler_free(df_scheduler *s);

/* df_scheduler_create from a diffusers model folder's
 * scheduler/scheduler_config.json (the pipeline's default scheduler when
 * name is NULL). */
df_status df_scheduler_load(const char *model_dir, const char *name, const char *prediction_type,
                            df_scheduler **out);

/* Read a scheduler_config.json. Unlike a strict JSON parser this accepts the
 * bare NaN / Infinity / -Infinity that Python's json writes (diffusers saves
 * "lambda_min_clipped": -Infinity); they become null, i.e. the default. */
df_status df_scheduler_load_config(const char *path, json_t **out);
/* The same for JSON text held in memory (e.g. a config quoted in a note). */
df_status df_scheduler_parse_config(const char *text, json_t **out);

/* The short names above, NULL-terminated (for usage messages). */
const char *const *df_scheduler_names(void);
const char *df_scheduler_class_name(const df_scheduler *s);   /* "DDIMScheduler" */
/* The short name above that builds this scheduler ("ddim", "euler_ancestral",
 * "dpmpp_2m_karras"): the one name records and PNG text use, whether the
 * scheduler came from the model's config, a class name or a short alias. */
const char *df_scheduler_short_name(const df_scheduler *s);
df_pred_type df_scheduler_prediction(const df_scheduler *s);

/* Build the schedule for num_inference_steps (1 .. num_train_timesteps) and
 * reset the multistep state. */
df_status df_scheduler_set_timesteps(df_scheduler *s, int num_inference_steps);

/* Number of model evaluations (= timesteps); PNDM with skip_prk_steps has
 * one more than num_inference_steps (a repeated timestep). */
int df_scheduler_count(const df_scheduler *s);
/* Timestep i as the UNet gets it: diffusers' value as float. */
float df_scheduler_timestep(const df_scheduler *s, int i);
/* true when diffusers' timesteps are int64 (DDIM, DDPM, PNDM, DPM, UniPC);
 * then df_scheduler_timestep_int gives them exactly. */
bool df_scheduler_timesteps_are_int(const df_scheduler *s);
int64_t df_scheduler_timestep_int(const df_scheduler *s, int i);
/* The sigma schedule (count+1 floats, the last the final sigma) for the
 * sigma-based samplers (Euler, Euler a, LMS, DPM, UniPC); NULL otherwise. */
const float *df_scheduler_sigmas(const df_scheduler *s, size_t *n);
float df_scheduler_init_noise_sigma(const df_scheduler *s);

/* The training schedule (num_train_timesteps floats each). */
int df_scheduler_num_train_timesteps(const df_scheduler *s);
const float *df_scheduler_betas(const df_scheduler *s);
const float *df_scheduler_alphas_cumprod(const df_scheduler *s);

/* scale_model_input for step i: x / sqrt(sigma^2+1) for Euler, Euler a and
 * LMS, a copy otherwise. out may equal x. */
df_status df_scheduler_scale_model_input(df_scheduler *s, int i, const float *x, float *out,
                                         size_t n);

/* step i (must be the next one: 0, 1, ... after set_timesteps): from the
 * model output at timestep(i) and the current sample, the next sample into
 * out (may equal sample). n = all elements of the batch. noise_fn is called
 * exactly when diffusers' step draws noise (DDPM for t > 0, Euler and
 * Euler a every step, DPM++ SDE every step); it may be NULL for samplers that
 * never draw, otherwise a draw without one is DF_ERR_ARG. */
df_status df_scheduler_step(df_scheduler *s, int i, const float *model_out, const float *sample,
                            float *out, size_t n, df_noise_fn noise_fn, void *noise_ctx);

/* The x0 estimate of the last step for the samplers whose step() returns
 * pred_original_sample (DDIM, DDPM, Euler, Euler a, LMS); NULL otherwise. */
const float *df_scheduler_pred_original(const df_scheduler *s);

/* Start the run at step `begin` instead of 0, as diffusers'
 * set_begin_index(t_start) for img2img and inpainting: the steps taken are
 * begin, begin+1, ... and the multistep state starts empty there (PNDM's
 * counter, UniPC's corrector and LMS's derivatives count from begin, as the
 * diffusers classes do). Call after set_timesteps, before the first step;
 * 0 <= begin < count. */
df_status df_scheduler_set_begin_index(df_scheduler *s, int begin);

/* The pipeline's scheduler.add_noise(x0, noise, timestep(index)) at step
 * `index` of the inference schedule (index == count allowed for none of
 * them; 0 <= index < count), elementwise over n values:
 *   DDIM, DDPM, PNDM: sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise
 *   Euler, Euler a, LMS: x0 + noise * sigma[index]
 *   DPM-Solver++, UniPC: alpha * x0 + sigma_t * noise with
 *                        alpha = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha.
 * (diffusers' sigma-based classes pick sigma by step index once a begin
 * index is set, which is what the img2img and inpainting pipelines do.) */
df_status df_scheduler_add_noise_at(const df_scheduler *s, int index, const float *x0,
                                    const float *noise, size_t n, float *out);

/* Training forward process from alphas_cumprod (float32 as diffusers'
 * DDPMScheduler): per batch item b with timestep t[b] and per_item elements,
 *   add_noise:    out = sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise
 *   get_velocity: out = sqrt(acp[t]) * noise - sqrt(1 - acp[t]) * x0
 * DF_ERR_RANGE for a timestep outside [0, num_train_timesteps). */
df_status df_scheduler_add_noise(const df_scheduler *s, const float *x0, const float *noise,
                                 const int64_t *t, int batch, size_t per_item, float *out);
df_status df_scheduler_get_velocity(const df_scheduler *s, const float *x0, const float *noise,
                                    const int64_t *t, int batch, size_t per_item, float *out);

#endif
