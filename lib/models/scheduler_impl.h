/* scheduler_impl.h - private to lib/models/scheduler*.c: the scheduler object and
 * the per-family step functions. Not part of the library API. */
#ifndef DF_SCHEDULER_IMPL_H
#define DF_SCHEDULER_IMPL_H

#include "scheduler.h"

typedef enum {
    DF_SK_DDIM, DF_SK_DDPM, DF_SK_PNDM, DF_SK_EULER, DF_SK_EULER_A, DF_SK_LMS, DF_SK_DPM,
    DF_SK_UNIPC
} df_sched_kind;

typedef enum { DF_SPACING_LEADING, DF_SPACING_LINSPACE, DF_SPACING_TRAILING } df_sched_spacing;
typedef enum { DF_DPM_PP, DF_DPM_SDE_PP } df_dpm_algo;

#define DF_SCHED_MAX_ORDER 3
#define DF_SCHED_MAX_HIST 4

struct df_scheduler {
    df_sched_kind kind;
    const char *class_name;
    df_pred_type pred;

    /* config (diffusers' names) */
    int num_train;
    df_sched_spacing spacing;
    int steps_offset;
    bool set_alpha_to_one, clip_sample;
    double clip_sample_range;
    bool use_karras;
    double sigma_min, sigma_max;      /* NaN when null (Euler's overrides) */
    int solver_order;
    df_dpm_algo dpm_algo;
    bool dpm_heun;                    /* solver_type "heun" (else midpoint) */
    bool lower_order_final, euler_at_final, final_sigma_zero;
    double lambda_min_clipped;
    bool unipc_bh1;                   /* solver_type "bh1" (else bh2) */
    bool predict_x0;
    int *disable_corrector;
    int n_disable_corrector;

    /* training schedule, float32 as torch holds it */
    float *betas, *acp;
    float final_acp;                  /* DDIM/PNDM: alphas_cumprod "before" step 0 */

    /* inference schedule */
    int steps;                        /* num_inference_steps given */
    int count;                        /* model evaluations */
    double *ts;                       /* timesteps, diffusers' values */
    bool ts_int;
    float *sigmas;                    /* count+1 or NULL */
    float init_noise_sigma;

    /* state between steps */
    int next;                         /* index the next step must have */
    int begin;                        /* first step run (img2img's begin index), 0 by default */
    size_t n;                         /* elements per tensor (0 until the first step) */
    float *x0;                        /* pred_original_sample of the last step */
    bool has_x0;
    float *hist[DF_SCHED_MAX_HIST];   /* model outputs / derivatives, newest last */
    int nhist;
    float *cur_sample;                /* PNDM: sample at the first PLMS step */
    float *last_sample;               /* UniPC: sample before the last predictor */
    float *tmp, *noise;
    int lower_order_nums;
    int this_order;                   /* UniPC: order of the last predictor */
};

/* Per-family set_timesteps and step (scheduler_ddim.c, scheduler_euler.c,
 * scheduler_dpm.c). The caller has checked i, n and allocated the buffers. */
df_status df_sched_alpha_timesteps(df_scheduler *s, int steps);
df_status df_sched_alpha_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                              size_t n, df_noise_fn noise_fn, void *noise_ctx);
df_status df_sched_k_timesteps(df_scheduler *s, int steps);
df_status df_sched_k_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                          size_t n, df_noise_fn noise_fn, void *noise_ctx);
df_status df_sched_dpm_timesteps(df_scheduler *s, int steps);
df_status df_sched_dpm_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                            size_t n, df_noise_fn noise_fn, void *noise_ctx);
df_status df_sched_unipc_step(df_scheduler *s, int i, const float *mo, const float *x, float *out,
                              size_t n);

/* Shared numpy-like pieces (scheduler.c). */
double df_sched_np_round(double x);                                  /* half to even */
void df_sched_np_linspace(double stop, int num, double *out);        /* linspace(0, stop, num) */
int df_sched_np_arange_down(double start, double step, double *out, int cap); /* arange(start, 0, -step) */
double df_sched_np_interp(double x, const float *fp, int n);         /* interp(x, arange(n), fp) */
float df_sched_train_sigma(const df_scheduler *s, int t);            /* ((1-acp)/acp)^0.5, float32 */
void df_sched_karras(const df_scheduler *s, double sigma_min, double sigma_max, int steps,
                     double *out);
float *df_sched_log_sigmas(const df_scheduler *s);                   /* malloc'd, NULL on OOM */
double df_sched_sigma_to_t(const float *log_sigmas, int n, double sigma);
/* Push a model output (copied) into the history ring of length cap. */
void df_sched_push_hist(df_scheduler *s, const float *v, size_t n, int cap);

#endif
