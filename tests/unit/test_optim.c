/* test_optim.c - lib/train/optim against the fixtures' training references
 * (refs/train_lora_*.safetensors, fixtures README B8): the stored gradients
 * fed through df_adamw over the whole LoRA set must give torch 1.13's AdamW
 * moments and parameters after one and two steps (bit-exact is expected;
 * asserted within 2e-6 abs for params, 1e-7 of the largest for moments); gradient
 * clipping at max_norm 0.02 gives the stored clip_coef and parameters; the
 * LR schedules give diffusers' numbers at chosen steps. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "lora_params.h"
#include "optim.h"
#include "safetensors.h"
#include "unit.h"
#include "weights.h"

static char fx[2048];

static const char *fxpath(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx, rel);
    return buf[k];
}

static const char *const UNET_T[] = {"to_q", "to_k", "to_v", "to_out.0"};
static const char *const TE_T[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
static const df_adamw_hparams H = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                   .weight_decay = 1e-2};

/* Every LoRA tensor "<prefix><diffusers key>" of f into dst (a params-sized
 * block laid out as s->params). */
static int load_block(const df_safetensors *f, const char *prefix, const df_lora_set *s,
                      float *dst)
{
    int bad = 0;
    for (size_t i = 0; i < s->n; i++)
        for (int which = 0; which < 2; which++) {
            const df_lora_param *p = &s->p[i];
            char key[1100], name[1200];
            df_lora_key(key, sizeof key, p, which, DF_LORA_FMT_DIFFUSERS);
            snprintf(name, sizeof name, "%s%s", prefix, key);
            int64_t shape[2] = {which ? p->out : s->rank, which ? s->rank : p->in};
            const df_st_tensor *t = df_st_find(f, name);
            float *d = dst + ((which ? p->B : p->A) - s->params);
            if (!t || df_st_check_shape(t, 2, shape) != DF_OK || df_st_to_f32(t, d) != DF_OK) {
                fprintf(stderr, "cannot load %s\n", name);
                bad++;
            }
        }
    return bad;
}

static float scalar(const df_safetensors *f, const char *name)
{
    const df_st_tensor *t = df_st_find(f, name);
    float v = NAN;
    CHECK_MSG(t && t->numel == 1 && df_st_to_f32(t, &v) == DF_OK, "no scalar %s", name);
    return v;
}

typedef struct {
    double max_abs;
    size_t n_diff;
} cmp_result;

static cmp_result compare(const float *a, const float *b, size_t n)
{
    cmp_result r = {0, 0};
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > r.max_abs || d != d)
            r.max_abs = d != d ? INFINITY : d;
        r.n_diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    }
    return r;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

/* Compare x with "<prefix>" tensors of f; tol absolute, or when negative
 * -tol times the largest |reference|. */
static void expect(const char *what, const df_safetensors *f, const char *prefix,
                   const df_lora_set *s, const float *x, double tol)
{
    float *ref = malloc(s->nfloats * sizeof *ref);
    CHECK(load_block(f, prefix, s, ref) == 0);
    cmp_result r = compare(x, ref, s->nfloats);
    if (tol < 0)
        tol = -tol * max_abs(ref, s->nfloats);
    fprintf(stderr, "  %-40s max |diff| %.3g (%zu of %zu floats not bit-identical; max |ref| %.3g)\n",
            what, r.max_abs, r.n_diff, s->nfloats, max_abs(ref, s->nfloats));
    CHECK_MSG(r.max_abs <= tol, "%s: max |diff| %g > %g", what, r.max_abs, tol);
    free(ref);
}

/* Run `steps` AdamW steps from init with the file's stored gradients. The
 * second step updates the UNet and the text encoder as two groups (the
 * same hyper-parameters), which must not change anything. */
static void run_file(const df_lora_set *s, const char *file, const char *init_file, int steps,
                     bool moments)
{
    fprintf(stderr, "%s:\n", file);
    df_safetensors *f, *fi;
    if (df_st_open(fxpath(file), &f) != DF_OK || df_st_open(fxpath(init_file), &fi) != DF_OK) {
        CHECK_MSG(0, "%s", df_last_error());
        return;
    }
    float *p = malloc(s->nfloats * sizeof *p), *g = malloc(s->nfloats * sizeof *g);
    CHECK(load_block(fi, "init/", s, p) == 0);
    df_adamw o;
    CHECK(df_adamw_init(&o, s->nfloats) == DF_OK);
    for (int k = 1; k <= steps; k++) {
        char prefix[64], what[96];
        snprintf(prefix, sizeof prefix, "step%d/grad/", k);
        CHECK(load_block(f, prefix, s, g) == 0);
        df_adamw_begin_step(&o);
        CHECK(o.step == k);
        if (k == 1) {
            df_adamw_update(&o, 0, p, g, s->nfloats, &H);
        } else {
            size_t nu = s->n_unet_floats;
            df_adamw_update(&o, 0, p, g, nu, &H);
            df_adamw_update(&o, nu, p + nu, g + nu, s->nfloats - nu, &H);
        }
        if (k == 1 && moments) {
            expect("step1 exp_avg", f, "step1/exp_avg/", s, o.m, -1e-7);
            expect("step1 exp_avg_sq", f, "step1/exp_avg_sq/", s, o.v, -1e-7);
        }
        snprintf(prefix, sizeof prefix, "step%d/param/", k);
        snprintf(what, sizeof what, "step%d params", k);
        expect(what, f, prefix, s, p, 2e-6);
    }
    df_adamw_free(&o);
    free(p);
    free(g);
    df_st_close(f);
    df_st_close(fi);
}

/* clip_grad_norm_(params, 0.02) then AdamW: step 1 from the stored
 * gradients (those of train_lora_nonzeroB); for step 2 the file has no
 * gradients, so only the coefficient is checked, from the stored norm. */
static void run_clip(const df_lora_set *s)
{
    fprintf(stderr, "refs/train_lora_nonzeroB_clip.safetensors:\n");
    df_safetensors *f, *fg;
    if (df_st_open(fxpath("refs/train_lora_nonzeroB_clip.safetensors"), &f) != DF_OK ||
        df_st_open(fxpath("refs/train_lora_nonzeroB.safetensors"), &fg) != DF_OK) {
        CHECK_MSG(0, "%s", df_last_error());
        return;
    }
    float *p = malloc(s->nfloats * sizeof *p), *g = malloc(s->nfloats * sizeof *g);
    CHECK(load_block(fg, "init/", s, p) == 0);
    CHECK(load_block(fg, "step1/grad/", s, g) == 0);
    df_adamw o;
    CHECK(df_adamw_init(&o, s->nfloats) == DF_OK);
    double coef;
    double norm = df_grad_clip(g, s->nfloats, 0.02, &coef);
    float ref_norm = scalar(f, "step1/grad_global_norm"), ref_coef = scalar(f, "step1/clip_coef");
    fprintf(stderr, "  step1 norm %.9g (ref %.9g), coef %.9g (ref %.9g)\n", norm, ref_norm, coef,
            ref_coef);
    CHECK_NEAR(norm, ref_norm, 1e-6 * ref_norm);
    CHECK_NEAR(coef, ref_coef, 2e-7 * ref_coef);
    CHECK(coef < 1);
    df_adamw_begin_step(&o);
    df_adamw_update(&o, 0, p, g, s->nfloats, &H);
    expect("step1 params (clipped)", f, "step1/param/", s, p, 2e-6);

    float n2 = scalar(f, "step2/grad_global_norm"), ref2 = scalar(f, "step2/clip_coef");
    float one = n2;   /* a one-element gradient with that norm */
    double norm2 = df_grad_clip(&one, 1, 0.02, &coef);
    fprintf(stderr, "  step2 coef from the stored norm %.9g: %.9g (ref %.9g)\n", norm2, coef, ref2);
    CHECK(norm2 == n2);
    CHECK_NEAR(coef, ref2, 2e-7 * ref2);
    df_adamw_free(&o);
    free(p);
    free(g);
    df_st_close(f);
    df_st_close(fg);
}

/* The global norm of train_lora_nonzeroB's stored gradients, as logged. */
static void check_norms(const df_lora_set *s)
{
    df_safetensors *f;
    if (df_st_open(fxpath("refs/train_lora_nonzeroB.safetensors"), &f) != DF_OK) {
        CHECK_MSG(0, "%s", df_last_error());
        return;
    }
    float *g = malloc(s->nfloats * sizeof *g);
    for (int k = 1; k <= 2; k++) {
        char prefix[64], name[64];
        snprintf(prefix, sizeof prefix, "step%d/grad/", k);
        snprintf(name, sizeof name, "step%d/grad_global_norm", k);
        CHECK(load_block(f, prefix, s, g) == 0);
        float *copy = malloc(s->nfloats * sizeof *copy);
        memcpy(copy, g, s->nfloats * sizeof *g);
        double coef;
        double norm = df_grad_clip(g, s->nfloats, 0, &coef);
        CHECK_NEAR(norm, scalar(f, name), 1e-6 * norm);
        CHECK(coef == 1 && memcmp(copy, g, s->nfloats * sizeof *g) == 0);  /* no clip */
        norm = df_grad_clip(g, s->nfloats, 10.0, &coef);                   /* above the norm */
        CHECK(coef == 1 && memcmp(copy, g, s->nfloats * sizeof *g) == 0);
        free(copy);
    }
    free(g);
    df_st_close(f);
}

static void check_schedules(void)
{
    const double e = 1e-12;
    CHECK(df_lr_schedule_valid("linear") && df_lr_schedule_valid("cosine") &&
          df_lr_schedule_valid("constant") && df_lr_schedule_valid("constant_with_warmup"));
    CHECK(!df_lr_schedule_valid("polynomial") && !df_lr_schedule_valid("") &&
          !df_lr_schedule_valid(NULL));
    CHECK(df_lr_multiplier("nope", 0, 0, 10) == -1);
    /* get_constant_schedule: warmup is ignored. */
    CHECK(df_lr_multiplier("constant", 0, 10, 100) == 1);
    CHECK(df_lr_multiplier("constant", 99, 10, 100) == 1);
    /* get_constant_schedule_with_warmup(10): step/10, then 1. */
    CHECK_NEAR(df_lr_multiplier("constant_with_warmup", 0, 10, 100), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("constant_with_warmup", 3, 10, 100), 0.3, e);
    CHECK_NEAR(df_lr_multiplier("constant_with_warmup", 10, 10, 100), 1.0, e);
    CHECK_NEAR(df_lr_multiplier("constant_with_warmup", 500, 10, 100), 1.0, e);
    /* get_linear_schedule_with_warmup(10, 110): (110 - s) / 100 after warmup. */
    CHECK_NEAR(df_lr_multiplier("linear", 0, 10, 110), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("linear", 5, 10, 110), 0.5, e);
    CHECK_NEAR(df_lr_multiplier("linear", 10, 10, 110), 1.0, e);
    CHECK_NEAR(df_lr_multiplier("linear", 60, 10, 110), 0.5, e);
    CHECK_NEAR(df_lr_multiplier("linear", 109, 10, 110), 0.01, e);
    CHECK_NEAR(df_lr_multiplier("linear", 110, 10, 110), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("linear", 200, 10, 110), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("linear", 0, 0, 100), 1.0, e);
    CHECK_NEAR(df_lr_multiplier("linear", 25, 0, 100), 0.75, e);
    /* get_cosine_schedule_with_warmup(10, 110, 0.5):
     * 0.5 * (1 + cos(pi * (s - 10) / 100)). */
    CHECK_NEAR(df_lr_multiplier("cosine", 5, 10, 110), 0.5, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 10, 10, 110), 1.0, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 35, 10, 110), 0.8535533905932737, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 60, 10, 110), 0.5, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 85, 10, 110), 0.14644660940672627, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 110, 10, 110), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("cosine", 1, 0, 1000), 0.9999975326009292, e);
    /* Past the end diffusers' cosine rises again (cos is periodic); only
     * negative values are cut to 0. */
    CHECK_NEAR(df_lr_multiplier("cosine", 160, 10, 110), 0.5, e);
    /* Degenerate sizes divide by max(1, .). */
    CHECK_NEAR(df_lr_multiplier("linear", 0, 0, 0), 0.0, e);
    CHECK_NEAR(df_lr_multiplier("constant_with_warmup", 0, 1, 10), 0.0, e);
}

/* Hand-checked first step on two elements: m = 0.1 g, v = 0.001 g^2, so
 * the step is about -lr * sign(g); decay multiplies by 1 - lr*wd first. */
static void check_by_hand(void)
{
    df_adamw o;
    CHECK(df_adamw_init(&o, 3) == DF_OK);
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -0.25f};
    df_adamw_begin_step(&o);
    df_adamw_update(&o, 1, p, g, 2, &H);   /* moments at offset 1 */
    CHECK(o.m[0] == 0 && o.v[0] == 0);
    CHECK_NEAR(o.m[1], 0.05, 1e-8);
    CHECK_NEAR(o.v[2], 0.001 * 0.0625, 1e-10);
    CHECK_NEAR(p[0], 1.0 * (1 - 1e-6) - 1e-4, 1e-7);
    CHECK_NEAR(p[1], -2.0 * (1 - 1e-6) + 1e-4, 1e-7);
    df_adamw_free(&o);
    CHECK(o.m == NULL && o.n == 0);
    CHECK(df_adamw_init(&o, 0) == DF_OK);
    df_adamw_free(&o);
}

int main(void)
{
    const char *env = getenv("DF_FIXTURES");
    snprintf(fx, sizeof fx, "%s", env ? env : "../shared/fixtures");
    if (access(fxpath("refs/train_lora_nonzeroB.safetensors"), R_OK) != 0) {
        fprintf(stderr, "fixtures not found at %s (set DF_FIXTURES)\n", fx);
        return 1;
    }
    check_by_hand();
    check_schedules();

    df_weights *unet, *te;
    CHECK(df_weights_open_dir(fxpath("pipeline/unet"), NULL, &unet) == DF_OK);
    CHECK(df_weights_open_dir(fxpath("pipeline/text_encoder"), NULL, &te) == DF_OK);
    df_lora_set s;
    df_status st = df_lora_set_create(&s, unet, UNET_T, 4, te, TE_T, 4, 4, 4.0f);
    CHECK_MSG(st == DF_OK, "%s", df_last_error());
    if (st == DF_OK) {
        run_file(&s, "refs/train_lora_nonzeroB.safetensors",
                 "refs/train_lora_nonzeroB.safetensors", 2, true);
        run_file(&s, "refs/train_lora_nonzeroB_minsnr5.safetensors",
                 "refs/train_lora_nonzeroB.safetensors", 2, false);
        run_file(&s, "refs/train_lora_peftinit_gaussian.safetensors",
                 "refs/train_lora_peftinit_gaussian.safetensors", 2, false);
        run_file(&s, "refs/train_lora_peftinit_kaiming.safetensors",
                 "refs/train_lora_peftinit_kaiming.safetensors", 1, false);
        run_clip(&s);
        check_norms(&s);
        df_lora_set_free(&s);
    }
    df_weights_free(unet);
    df_weights_free(te);
    UNIT_END();
}
