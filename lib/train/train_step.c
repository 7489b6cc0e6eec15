/* train_step.c - see train_step.h. The loss is accumulated in double and
 * rounded to float (torch's float reduction differs in the last bits at
 * most); its gradient is formed elementwise in float as torch's
 * mse_loss_backward does: 2 * (pred - target) * (grad / numel). */
#include "train_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* diffusers' compute_snr: (sqrt(acp[t]) / sqrt(1 - acp[t]))^2 in float. */
static float snr_of(const df_scheduler *s, int64_t t)
{
    float acp = df_scheduler_alphas_cumprod(s)[t];
    float a = sqrtf(acp), sg = sqrtf(1.0f - acp), r = a / sg;
    return r * r;
}

static df_status check_batch(const df_train_model *m, const df_train_batch *b)
{
    int nt = df_scheduler_num_train_timesteps(m->sched);
    if (b->B < 1 || b->C < 1 || b->h < 1 || b->w < 1 || b->T < 1)
        return df_fail(DF_ERR_ARG, "train step: bad batch shape");
    for (int i = 0; i < b->B; i++)
        if (b->timesteps[i] < 0 || b->timesteps[i] >= nt)
            return df_fail(DF_ERR_RANGE, "train step: timestep %lld outside [0, %d)",
                           (long long)b->timesteps[i], nt);
    if (m->text ? !b->ids : !b->ehs)
        return df_fail(DF_ERR_ARG, "train step: the batch needs %s",
                       m->text ? "token ids" : "text embeddings");
    return DF_OK;
}

df_status df_train_step(const df_train_model *m, const df_train_batch *b, float loss_scale,
                        float *loss, df_train_trace *trace)
{
    df_status st = check_batch(m, b);
    if (st)
        return st;
    const int B = b->B;
    const size_t per = (size_t)b->C * b->h * b->w, n = (size_t)B * per;
    const size_t ne = (size_t)B * b->T * b->D;
    float *noisy = malloc(n * sizeof *noisy), *target = malloc(n * sizeof *target),
          *pred = malloc(n * sizeof *pred), *dpred = malloc(n * sizeof *dpred),
          *tf = malloc((size_t)B * sizeof *tf), *wts = malloc((size_t)B * sizeof *wts);
    float *ehs = m->text ? malloc(ne * sizeof *ehs) : NULL;
    float *dehs = m->text ? calloc(ne, sizeof *dehs) : NULL;
    if (!noisy || !target || !pred || !dpred || !tf || !wts || (m->text && (!ehs || !dehs))) {
        st = df_fail(DF_ERR_NOMEM, "train step: out of memory");
        goto out;
    }
    const float *states = b->ehs;
    if (m->text) {
        if ((st = df_clip_train_forward(m->text, b->ids, B, b->T, ehs)))
            goto out;
        states = ehs;
    }
    if ((st = df_scheduler_add_noise(m->sched, b->latents, b->noise, b->timesteps, B, per,
                                     noisy)))
        goto out;
    if (df_scheduler_prediction(m->sched) == DF_PRED_V)
        st = df_scheduler_get_velocity(m->sched, b->latents, b->noise, b->timesteps, B, per,
                                       target);
    else if (df_scheduler_prediction(m->sched) == DF_PRED_EPSILON)
        memcpy(target, b->noise, n * sizeof *target);
    else
        st = df_fail(DF_ERR_UNSUPPORTED, "train step: prediction type \"sample\" not supported");
    if (st)
        goto out;
    for (int i = 0; i < B; i++)
        tf[i] = (float)b->timesteps[i];
    if ((st = df_unet_train_forward(m->unet, noisy, tf, states, B, b->h, b->w, b->T, pred)))
        goto out;
    // per-item loss weights: 1, or min-SNR's min(snr, gamma) / (snr + 1) (v) or / snr (eps)
    for (int i = 0; i < B; i++) {
        wts[i] = 1.0f;
        if (m->snr_gamma > 0) {
            float snr = snr_of(m->sched, b->timesteps[i]);
            float mn = snr < (float)m->snr_gamma ? snr : (float)m->snr_gamma;
            wts[i] = df_scheduler_prediction(m->sched) == DF_PRED_V ? mn / (snr + 1.0f) : mn / snr;
            if (trace && trace->snr)
                trace->snr[i] = snr;
        }
        if (trace && trace->weights)
            trace->weights[i] = wts[i];
    }
    double total = 0;
    for (int i = 0; i < B; i++) {
        double sq = 0;
        const float *p = pred + i * per, *q = target + i * per;
        for (size_t j = 0; j < per; j++) {
            double d = (double)p[j] - (double)q[j];
            sq += d * d;
        }
        total += m->snr_gamma > 0 ? (double)(float)(sq / per) * wts[i] : sq;
    }
    *loss = m->snr_gamma > 0 ? (float)(total / B) : (float)(total / n);
    // dLoss/dpred: 2 (pred - target) * w_b / numel, times the accumulation scale
    for (int i = 0; i < B; i++) {
        float g = m->snr_gamma > 0 ? wts[i] * (loss_scale / (float)B) / (float)per
                                   : loss_scale / (float)n;
        for (size_t j = 0; j < per; j++) {
            size_t k = i * per + j;
            dpred[k] = 2.0f * (pred[k] - target[k]) * g;
        }
    }
    if ((st = df_unet_train_backward(m->unet, dpred, dehs)))
        goto out;
    if (m->text && (st = df_clip_train_backward(m->text, dehs)))
        goto out;
    if (trace) {
        if (trace->noisy)
            memcpy(trace->noisy, noisy, n * sizeof *noisy);
        if (trace->target)
            memcpy(trace->target, target, n * sizeof *target);
        if (trace->pred)
            memcpy(trace->pred, pred, n * sizeof *pred);
        if (trace->ehs)
            memcpy(trace->ehs, states, ne * sizeof *states);
    }
out:
    free(noisy);
    free(target);
    free(pred);
    free(dpred);
    free(tf);
    free(wts);
    free(ehs);
    free(dehs);
    return st;
}
