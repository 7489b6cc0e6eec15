/* test_unet_train.c - the training graphs of lib/train/unet_train.c,
 * lib/train/clip_train.c and lib/train/lora_linear.c on the fixture model:
 * - the training forwards compute what the inference forwards compute;
 * - gradient checkpointing gives bit-identical gradients;
 * - the LoRA gradients and the text-state gradient match central finite
 *   differences of the forward (L = sum(out * R), R random), along random
 *   directions. The latent is 20x12 (not a multiple of 8: the up-samplers
 *   take odd targets): at 8x8 the fixture UNet's deepest GroupNorms see
 *   2 values per group (32 groups of 64 channels at 1x1), which makes the
 *   function nearly a step function and finite differences meaningless;
 * - the LoRA linear equals the plain linear with the merged weight
 *   W + (alpha/r) B A, and its backward matches finite differences.
 * The fixtures (DF_FIXTURES, default ../shared/fixtures) hold the model;
 * without them the test says so and fails. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"
#include "clip_train.h"
#include "lora_linear.h"
#include "lora_params.h"
#include "ops.h"
#include "unet.h"
#include "unet_train.h"
#include "unit.h"

static uint64_t rs = 0x1234567887654321ull;
static float frand(void)
{
    rs ^= rs >> 12, rs ^= rs << 25, rs ^= rs >> 27;
    return (float)(((rs * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

static float *rnd(size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * frand();
    return p;
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static const char *fixtures(void)
{
    const char *d = getenv("DF_FIXTURES");
    return d ? d : "../shared/fixtures";
}

/* ---- the LoRA linear alone ---- */

static void test_lora_linear(void)
{
    const int N = 7, C = 13, OC = 11, r = 3;
    const float s = 0.75f;
    float *x = rnd((size_t)N * C, 1), *W = rnd((size_t)OC * C, 0.5f), *b = rnd(OC, 0.1f);
    float *A = rnd((size_t)r * C, 0.5f), *B = rnd((size_t)OC * r, 0.5f);
    float *gA = calloc((size_t)r * C, 4), *gB = calloc((size_t)OC * r, 4);
    df_lora_param p = {.module = "m", .in = C, .out = OC, .A = A, .B = B, .gA = gA, .gB = gB};
    float *y = malloc((size_t)N * OC * 4), *ym = malloc((size_t)N * OC * 4);
    float *Wm = malloc((size_t)OC * C * 4);
    CHECK(df_lora_linear_forward(y, x, W, b, &p, r, s, N, C, OC) == 0);
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) {
            double acc = W[o * C + c];
            for (int k = 0; k < r; k++)
                acc += s * (double)B[o * r + k] * A[k * C + c];
            Wm[o * C + c] = (float)acc;
        }
    df_linear_forward_ref(ym, x, Wm, b, N, C, OC);
    double e = unit_max_abs_diff(y, ym, (size_t)N * OC);
    printf("lora linear forward vs merged weight: max abs err %.3g\n", e);
    CHECK(e < 1e-5);
    // backward against central differences of L = sum(y * R)
    float *R = rnd((size_t)N * OC, 1), *dx = calloc((size_t)N * C, 4);
    CHECK(df_lora_linear_backward(dx, R, x, W, &p, r, s, N, C, OC) == 0);
    struct { float *v, *g; size_t n; const char *name; } vs[] = {
        {A, gA, (size_t)r * C, "A"}, {B, gB, (size_t)OC * r, "B"}, {x, dx, (size_t)N * C, "x"}};
    for (int k = 0; k < 3; k++) {
        double worst = 0, gmax = 0;
        for (size_t i = 0; i < vs[k].n; i++) {
            float keep = vs[k].v[i], eps = 1e-2f;
            vs[k].v[i] = keep + eps;
            df_lora_linear_forward(y, x, W, b, &p, r, s, N, C, OC);
            double lp = dot(y, R, (size_t)N * OC);
            vs[k].v[i] = keep - eps;
            df_lora_linear_forward(y, x, W, b, &p, r, s, N, C, OC);
            double lm = dot(y, R, (size_t)N * OC);
            vs[k].v[i] = keep;
            double fd = (lp - lm) / (2 * eps);
            worst = fmax(worst, fabs(fd - vs[k].g[i]));
            gmax = fmax(gmax, fabs(fd));
        }
        printf("lora linear d%s vs finite differences: max abs err %.3g (max |grad| %.3g)\n",
               vs[k].name, worst, gmax);
        CHECK(worst <= 2e-3 * fmax(1, gmax));
    }
    free(x), free(W), free(b), free(A), free(B), free(gA), free(gB), free(y), free(ym);
    free(Wm), free(R), free(dx);
}

/* ---- the UNet ---- */

typedef struct {
    df_unet *u;
    df_lora_set set;
    float *sample, *t, *ehs, *R;
    int B, h, w, T, D, OC;
} unet_case;

static float loss_of(unet_case *c, df_unet_train *tr, float *out)
{
    size_t n = (size_t)c->B * c->OC * c->h * c->w;
    df_status s = df_unet_train_forward(tr, c->sample, c->t, c->ehs, c->B, c->h, c->w, c->T, out);
    CHECK(s == DF_OK);
    return (float)dot(out, c->R, n);
}

static void grads(unet_case *c, bool ckpt, float *g, float *dehs)
{
    size_t n = (size_t)c->B * c->OC * c->h * c->w;
    df_unet_train *tr;
    CHECK(df_unet_train_create(c->u, &c->set, ckpt, &tr) == DF_OK);
    float *out = malloc(n * 4);
    loss_of(c, tr, out);
    df_lora_set_zero_grad(&c->set);
    memset(dehs, 0, (size_t)c->B * c->T * c->D * 4);
    CHECK(df_unet_train_backward(tr, c->R, dehs) == DF_OK);
    memcpy(g, c->set.grads, c->set.nfloats * 4);
    printf("unet training graph, checkpointing %s: peak activations %.2f MB\n",
           ckpt ? "on " : "off", df_unet_train_peak_bytes(tr) / 1e6);
    df_unet_train_free(tr);
    free(out);
}

static void test_unet(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/pipeline/unet", fixtures());
    unet_case c = {.B = 2, .h = 20, .w = 12, .T = 5};
    if (df_unet_load(dir, NULL, &c.u) != DF_OK) {
        fprintf(stderr, "cannot load the fixture UNet %s: %s\n", dir, df_last_error());
        CHECK(0);
        return;
    }
    static const char *const targets[] = {"to_q", "to_k", "to_v", "to_out.0"};
    CHECK(df_lora_set_create(&c.set, df_unet_weights(c.u), targets, 4, NULL, NULL, 0, 2, 3.0f) ==
          DF_OK);
    for (size_t i = 0; i < c.set.nfloats; i++)
        c.set.params[i] = 0.1f * frand();
    c.D = df_unet_cross_attention_dim(c.u);
    c.OC = df_unet_out_channels(c.u);
    size_t nin = (size_t)c.B * df_unet_in_channels(c.u) * c.h * c.w;
    size_t nout = (size_t)c.B * c.OC * c.h * c.w, ne = (size_t)c.B * c.T * c.D;
    c.sample = rnd(nin, 1), c.ehs = rnd(ne, 1), c.R = rnd(nout, 1);
    float ts[2] = {913, 72};
    c.t = ts;
    // the training forward is the inference forward (with the LoRA merged)
    float *o1 = malloc(nout * 4), *o2 = malloc(nout * 4);
    df_unet_train *tr;
    CHECK(df_unet_train_create(c.u, NULL, false, &tr) == DF_OK);
    CHECK(df_unet_train_forward(tr, c.sample, c.t, c.ehs, c.B, c.h, c.w, c.T, o1) == DF_OK);
    CHECK(df_unet_forward(c.u, c.sample, c.t, c.ehs, c.B, c.h, c.w, c.T, o2) == DF_OK);
    double e = unit_max_abs_diff(o1, o2, nout);
    printf("unet training forward vs inference forward (%dx%d, no LoRA): max abs err %.3g\n", c.h,
           c.w, e);
    CHECK(e <= 1e-5);
    df_unet_train_free(tr);
    // checkpointing: the same gradients, bit for bit
    float *g1 = malloc(c.set.nfloats * 4), *g2 = malloc(c.set.nfloats * 4);
    float *d1 = malloc(ne * 4), *d2 = malloc(ne * 4);
    grads(&c, false, g1, d1);
    grads(&c, true, g2, d2);
    CHECK(memcmp(g1, g2, c.set.nfloats * 4) == 0);
    CHECK(memcmp(d1, d2, ne * 4) == 0);
    printf("gradient checkpointing: LoRA and text-state gradients %s\n",
           memcmp(g1, g2, c.set.nfloats * 4) || memcmp(d1, d2, ne * 4) ? "DIFFER" : "identical");
    // directional finite differences: along random directions u of the
    // parameters (or text states), (L(x + h u) - L(x - h u)) / 2h against
    // g . u, Richardson-extrapolated over h and h/2 so that the softmaxes'
    // curvature cancels to O(h^4)
    CHECK(df_unet_train_create(c.u, &c.set, false, &tr) == DF_OK);
    for (int which = 0; which < 2; which++) {
        float *x = which ? c.ehs : c.set.params, *g = which ? d1 : g1;
        size_t n = which ? ne : c.set.nfloats;
        float *keep = malloc(n * 4), *u = rnd(n, 1);
        memcpy(keep, x, n * 4);
        double worst = 0, scale = 0;
        for (int dir = 0; dir < 3; dir++) {
            for (size_t i = 0; i < n; i++)
                u[i] = frand();
            double fd[2], h = 1e-2;
            for (int k = 0; k < 2; k++, h /= 2) {
                for (size_t i = 0; i < n; i++)
                    x[i] = keep[i] + (float)h * u[i];
                double lp = loss_of(&c, tr, o1);
                for (size_t i = 0; i < n; i++)
                    x[i] = keep[i] - (float)h * u[i];
                double lm = loss_of(&c, tr, o1);
                fd[k] = (lp - lm) / (2 * h);
            }
            memcpy(x, keep, n * 4);
            double rich = (4 * fd[1] - fd[0]) / 3, an = dot(g, u, n);
            printf("  %s direction %d: finite differences %.6g, backward %.6g\n",
                   which ? "text states" : "LoRA params", dir, rich, an);
            worst = fmax(worst, fabs(rich - an));
            scale = fmax(scale, fabs(an));
        }
        printf("unet %s: directional derivatives, max abs err %.3g of %.3g\n",
               which ? "text-state gradient" : "LoRA gradients", worst, scale);
        CHECK(worst <= 2e-3 * scale);
        free(keep);
        free(u);
    }
    df_unet_train_free(tr);
    df_lora_set_free(&c.set);
    df_unet_free(c.u);
    free(o1), free(o2), free(g1), free(g2), free(d1), free(d2);
    free(c.sample), free(c.ehs), free(c.R);
}

/* ---- the text encoder ---- */

static void test_clip(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/pipeline/text_encoder", fixtures());
    df_clip *te;
    if (df_clip_load(dir, NULL, &te) != DF_OK) {
        fprintf(stderr, "cannot load the fixture text encoder: %s\n", df_last_error());
        CHECK(0);
        return;
    }
    static const char *const targets[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    df_lora_set set;
    CHECK(df_lora_set_create(&set, NULL, NULL, 0, df_clip_weights(te), targets, 4, 2, 2.0f) ==
          DF_OK);
    for (size_t i = 0; i < set.nfloats; i++)
        set.params[i] = 0.3f * frand();
    const int B = 2, T = 9, C = df_clip_get_config(te)->hidden_size;
    int32_t ids[18];
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)((frand() * 0.5f + 0.5f) * 1000);
    size_t n = (size_t)B * T * C;
    float *h1 = malloc(n * 4), *h2 = malloc(n * 4), *R = rnd(n, 1);
    df_clip_train *tr;
    CHECK(df_clip_train_create(te, NULL, &tr) == DF_OK);
    CHECK(df_clip_train_forward(tr, ids, B, T, h1) == DF_OK);
    CHECK(df_clip_forward(te, ids, B, T, h2, NULL, NULL) == DF_OK);
    double e = unit_max_abs_diff(h1, h2, n);
    printf("text encoder training forward vs inference forward: max abs err %.3g\n", e);
    CHECK(e <= 1e-6);
    df_clip_train_free(tr);
    CHECK(df_clip_train_create(te, &set, &tr) == DF_OK);
    CHECK(df_clip_train_forward(tr, ids, B, T, h1) == DF_OK);
    df_lora_set_zero_grad(&set);
    CHECK(df_clip_train_backward(tr, R) == DF_OK);
    float *g = malloc(set.nfloats * 4);
    memcpy(g, set.grads, set.nfloats * 4);
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < set.nfloats; i++)
        gmax = fmax(gmax, fabs(g[i]));
    for (int k = 0; k < 40; k++) {
        size_t i = (size_t)((frand() * 0.5f + 0.5f) * (set.nfloats - 1));
        float keep = set.params[i], eps = 2e-2f;
        set.params[i] = keep + eps;
        df_clip_train_forward(tr, ids, B, T, h1);
        double lp = dot(h1, R, n);
        set.params[i] = keep - eps;
        df_clip_train_forward(tr, ids, B, T, h1);
        double lm = dot(h1, R, n);
        set.params[i] = keep;
        worst = fmax(worst, fabs((lp - lm) / (2 * eps) - g[i]));
    }
    printf("text encoder LoRA gradients vs finite differences (40 params): max abs err %.3g of "
           "max |grad| %.3g\n", worst, gmax);
    CHECK(worst <= 1e-2 * gmax);
    df_clip_train_free(tr);
    df_lora_set_free(&set);
    df_clip_free(te);
    free(h1), free(h2), free(R), free(g);
}

int main(void)
{
    test_lora_linear();
    test_unet();
    test_clip();
    UNIT_END();
}
