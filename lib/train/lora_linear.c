/* lora_linear.c - forward and backward of a frozen linear plus LoRA (see
 * lora_linear.h). The rank-r path is two thin GEMMs through the ops of
 * lib/ops/ops.h and lib/ops/ops_backward.h, in peft's order of operations: the
 * LoRA term is computed whole, then scaled and added (result + t * s). */
#include "lora_linear.h"

#include <stdlib.h>

#include "ops.h"
#include "ops_backward.h"


int df_lora_linear_forward(float *y, const float *x, const float *W, const float *b,
                            const df_lora_param *p, int r, float s, int N, int C, int OC)
{
    df_linear_forward(y, x, W, b, N, C, OC);
    if (!p)
        return 0;
    float *h = malloc((size_t)N * r * sizeof *h), *t = malloc((size_t)N * OC * sizeof *t);
    if (!h || !t) {
        free(h);
        free(t);
        return -1;
    }
    df_linear_forward(h, x, p->A, NULL, N, C, r);     // h (N,r) = x A^T
    df_linear_forward(t, h, p->B, NULL, N, r, OC);    // t (N,OC) = h B^T
    for (size_t i = 0; i < (size_t)N * OC; i++)
        y[i] += t[i] * s;
    free(h);
    free(t);
    return 0;
}

int df_lora_linear_backward(float *dx, const float *dy, const float *x, const float *W,
                             df_lora_param *p, int r, float s, int N, int C, int OC)
{
    size_t n = (size_t)N * OC;
    // dt = s * dy (d(t*s)/dt); s == 1 is the common case and needs no copy
    const float *dt = dy;
    float *dts = NULL, *h = NULL, *dh = NULL;
    if (p) {
        h = malloc((size_t)N * r * sizeof *h);
        dh = malloc((size_t)N * r * sizeof *dh);
        if (s != 1.0f && (dts = malloc(n * sizeof *dts)))
            for (size_t i = 0; i < n; i++)
                dts[i] = dy[i] * s;
        if (!h || !dh || (s != 1.0f && !dts)) {
            free(h);
            free(dh);
            free(dts);
            return -1;
        }
        if (dts)
            dt = dts;
    }
    if (dx)
        df_linear_backward(dx, NULL, NULL, dy, x, W, N, C, OC);
    if (!p)
        return 0;
    df_linear_forward(h, x, p->A, NULL, N, C, r);     // recompute h = x A^T
    for (size_t i = 0; i < (size_t)N * r; i++)
        dh[i] = 0.0f;
    // t = h B^T: gB += dt^T h, dh = dt B
    df_linear_backward(dh, p->gB, NULL, dt, h, p->B, N, r, OC);
    // h = x A^T: gA += dh^T x, dx += dh A
    df_linear_backward(dx, p->gA, NULL, dh, x, p->A, N, C, r);
    free(h);
    free(dh);
    free(dts);
    return 0;
}
