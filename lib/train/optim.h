/* optim.h - AdamW as torch 1.13 computes it, global gradient-norm clipping as
 * torch.nn.utils.clip_grad_norm_, and the learning-rate schedules of
 * diffusers.optimization.get_scheduler, for LoRA training (df-train).
 *
 * AdamW is torch 1.13's default (single-tensor, foreach=False) path:
 *     p *= (float)(1 - lr*wd)
 *     m  = fma(g, (float)(1-b1), m*(float)b1)        add_(g, alpha=1-b1)
 *     v  = fma((float)(1-b2)*g, g, v*(float)b2)      addcmul_(g, g, value=1-b2)
 *     denom = sqrt(v) / (float)sqrt(1 - b2^k) + (float)eps
 *     p += ((float)(-lr/(1 - b1^k)) * m) / denom     addcdiv_(m, denom, value=-step_size)
 * with k the step count (1 on the first step), the scalars computed in double
 * and rounded to float, the per-element math in float. The two fused
 * multiply-adds are what torch's AVX2 kernels do (Vectorized fmadd, and the
 * compiler's contraction of addcmul's self + s*t1*t2); with them every
 * parameter and moment of the fixtures' two AdamW steps (refs/train_lora_*)
 * is reproduced bit for bit. Tested by tests/unit/test_optim.c. */
#ifndef DF_OPTIM_H
#define DF_OPTIM_H

#include <stddef.h>

#include "status.h"

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
} df_adamw_hparams;

typedef struct {
    float *m, *v;      /* first and second moments, n floats each */
    size_t n;
    long step;         /* optimizer steps taken (torch's state["step"]) */
} df_adamw;

/* Zeroed state for n parameters (n may be 0). */
df_status df_adamw_init(df_adamw *o, size_t n);
void df_adamw_free(df_adamw *o);

/* Once per optimizer step, before the updates: o->step++. */
void df_adamw_begin_step(df_adamw *o);

/* Update params p[0..n) with gradients g[0..n); their moments are
 * o->m[off..off+n) and o->v[off..off+n). For parameter groups call once per
 * group with its own hyper-parameters (lr). off + n must be <= o->n. */
void df_adamw_update(df_adamw *o, size_t off, float *p, const float *g, size_t n,
                     const df_adamw_hparams *h);

/* Global L2 norm of g[0..n) (accumulated in double) and, when max_norm > 0,
 * clip_grad_norm_'s scaling: coef = max_norm / (norm + 1e-6) in float
 * (torch: reciprocal(total_norm + 1e-6) * max_norm), clamped to 1, and
 * g *= coef in float. Returns the norm before clipping; *coef (may be NULL)
 * gets the factor used (1 when max_norm <= 0). torch takes the norm of the
 * per-tensor norms in float, so its norm can differ from this one in the last
 * float bit; the factor then differs by about one float ulp (the fixtures'
 * clip_coef is matched exactly). A NaN norm leaves g unchanged (torch would
 * make every gradient NaN): check the returned norm with isfinite(). */
double df_grad_clip(float *g, size_t n, double max_norm, double *coef);

/* Multiplier of the base learning rate for the optimizer step with 0-based
 * index `step` (the step about to be taken), as the LambdaLR schedules of
 * diffusers.optimization.get_scheduler give it before that step:
 *   "constant"               1
 *   "constant_with_warmup"   step/max(1,warmup) during warmup, then 1
 *   "linear"                 warmup, then max(0, (total-step)/max(1,total-warmup))
 *   "cosine"                 warmup, then max(0, 0.5*(1+cos(pi*progress))),
 *                            progress = (step-warmup)/max(1,total-warmup)
 *                            (num_cycles 0.5)
 * With warmup > 0 the first step's multiplier is 0, as in diffusers.
 * Unknown name -> -1. */
double df_lr_multiplier(const char *schedule, long step, long warmup, long total);
/* 1 if df_lr_multiplier knows the schedule name, else 0. */
int df_lr_schedule_valid(const char *schedule);

#endif
