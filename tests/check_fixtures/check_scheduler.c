/* check_scheduler.c - checks lib/models/scheduler against refs/schedulers/<name>_<v|eps>.safetensors,
 * the step-by-step traces of diffusers 0.27.2 (MANIFEST call:
 * Cls.from_config(pipe.scheduler.config, prediction_type=...), set_timesteps(S),
 * x = x_T * init_noise_sigma, then per step model_input = scale_model_input(x),
 * model_output = 0.5*model_input + 0.1*fixed_noise, x = step(...)).
 *
 * The scheduler is built from the MANIFEST entry: the class named in "call"
 * and the "Resolved scheduler config" of "notes" when present, otherwise the
 * file name's short name with pipeline/scheduler/scheduler_config.json. The
 * number of steps comes from the stored timesteps (PNDM has one more). The
 * whole trace is replayed from x_T with our own outputs (errors accumulate as
 * in a real run), injecting the stored `noise` where step() draws.
 * Lines: timesteps (exact), sigmas, init_noise_sigma, alphas_cumprod, betas
 * (1e-6 relative), noise_drawn (which steps drew; max_abs = mismatches),
 * x_init, model_input, x_after_step, pred_original_sample (1e-5 x max(1,
 * max|ref|)), and "schedule_from_model_config": the same schedule built the
 * way df-sample builds it (short name + the model's scheduler_config.json). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "safetensors.h"
#include "scheduler.h"

static int fail_line(const cf_ctx *c, const char *tensor, const char *why)
{
    char name[512];
    snprintf(name, sizeof name, "%s:%s", c->file, tensor);
    cf_line("FAIL", name, NAN, NAN, why);
    return 1;
}

static int compare_scaled(const cf_ctx *c, const char *tensor, const float *got, const float *ref,
                          size_t n, double tol)
{
    double max_ref = 0;
    for (size_t i = 0; i < n; i++)
        max_ref = fmax(max_ref, fabs(ref[i]));
    return cf_compare(c->file, tensor, got, ref, n, tol * fmax(1.0, max_ref), 0);
}

/* A tensor as floats (malloc'd; NULL if absent or unreadable), with numel. */
static float *load_f32(const df_safetensors *st, const char *name, size_t *n)
{
    const df_st_tensor *t = df_st_find(st, name);
    if (!t)
        return NULL;
    float *v = malloc((t->numel ? t->numel : 1) * sizeof(float));
    if (v && df_st_to_f32(t, v)) {
        free(v);
        return NULL;
    }
    *n = t->numel;
    return v;
}

/* Short name and prediction from "<name>_<v|eps>.safetensors". */
static void parse_file_name(const char *file, char *name, size_t cap, const char **pred)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    snprintf(name, cap, "%s", base);
    char *dot = strstr(name, ".safetensors");
    if (dot)
        *dot = 0;
    *pred = NULL;
    char *us = strrchr(name, '_');
    if (us && !strcmp(us, "_v"))
        *pred = "v_prediction", *us = 0;
    else if (us && !strcmp(us, "_eps"))
        *pred = "epsilon", *us = 0;
}

/* The class in the MANIFEST call ("DDIMScheduler.from_config(..."). */
static int class_from_call(const cf_ctx *c, char *cls, size_t cap)
{
    const char *call = json_string_value(json_object_get(c->entry, "call"));
    const char *p = call ? strstr(call, ".from_config(") : NULL;
    if (!p)
        return 0;
    const char *b = p;
    while (b > call && (isalnum((unsigned char)b[-1]) || b[-1] == '_'))
        b--;
    if (p - b <= 0 || (size_t)(p - b) >= cap)
        return 0;
    memcpy(cls, b, (size_t)(p - b));
    cls[p - b] = 0;
    return 1;
}

/* The resolved config quoted in the MANIFEST notes, or NULL. */
static json_t *config_from_notes(const cf_ctx *c)
{
    const char *notes = json_string_value(json_object_get(c->entry, "notes"));
    const char *key = "Resolved scheduler config: ";
    const char *p = notes ? strstr(notes, key) : NULL;
    if (!p)
        return NULL;
    p += strlen(key);
    const char *e = strchr(p, '}');   /* the config is flat: no nested objects */
    if (!e)
        return NULL;
    char *txt = strndup(p, (size_t)(e - p + 1));
    json_t *j = NULL;
    if (txt && df_scheduler_parse_config(txt, &j))
        j = NULL;
    free(txt);
    return j;
}

/* Replays stored noise: noise[i] for the step being taken. */
typedef struct {
    const float *noise;       /* [S, per] or NULL */
    size_t per;
    int step;
    int draws;                /* draws during the current step */
} noise_replay;

static df_status replay_noise(void *ctx, float *out, size_t n)
{
    noise_replay *r = ctx;
    r->draws++;
    if (!r->noise)
        return df_fail(DF_ERR_NOTFOUND, "step %d draws noise but the reference has no `noise`",
                       r->step);
    if (n != r->per || r->draws > 1)
        return df_fail(DF_ERR_SHAPE, "step %d draws %zu values (draw %d); the reference stored "
                       "one draw of %zu", r->step, n, r->draws, r->per);
    memcpy(out, r->noise + (size_t)r->step * r->per, n * sizeof(float));
    return DF_OK;
}

typedef struct {
    df_safetensors *st;
    float *ts, *sigmas, *ins, *acp, *betas, *xT, *fixed, *xinit, *mi, *xa, *x0, *noise, *drawn;
    size_t n_ts, n_sig, n_ins, n_acp, n_betas, per, n_fixed, n_xinit, n_mi, n_xa, n_x0, n_noise,
        n_drawn;
} trace;

static void trace_free(trace *t)
{
    float *all[] = {t->ts, t->sigmas, t->ins, t->acp, t->betas, t->xT, t->fixed, t->xinit,
                    t->mi, t->xa, t->x0, t->noise, t->drawn};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        free(all[k]);
    df_st_close(t->st);
}

static int trace_load(const cf_ctx *c, trace *t)
{
    memset(t, 0, sizeof *t);
    if (df_st_open(cf_path(c, c->file), &t->st))
        return fail_line(c, "open", df_last_error());
    t->ts = load_f32(t->st, "timesteps", &t->n_ts);
    t->sigmas = load_f32(t->st, "sigmas", &t->n_sig);
    t->ins = load_f32(t->st, "init_noise_sigma", &t->n_ins);
    t->acp = load_f32(t->st, "alphas_cumprod", &t->n_acp);
    t->betas = load_f32(t->st, "betas", &t->n_betas);
    t->xT = load_f32(t->st, "x_T", &t->per);
    t->fixed = load_f32(t->st, "fixed_noise", &t->n_fixed);
    t->xinit = load_f32(t->st, "x_init", &t->n_xinit);
    t->mi = load_f32(t->st, "model_input", &t->n_mi);
    t->xa = load_f32(t->st, "x_after_step", &t->n_xa);
    t->x0 = load_f32(t->st, "pred_original_sample", &t->n_x0);
    t->noise = load_f32(t->st, "noise", &t->n_noise);
    t->drawn = load_f32(t->st, "noise_drawn", &t->n_drawn);
    size_t S = t->n_ts, per = t->per;
    if (!t->ts || !S || !t->xT || !per || !t->fixed || t->n_fixed != per || !t->xa ||
        t->n_xa != S * per || (t->mi && t->n_mi != S * per) || (t->x0 && t->n_x0 != S * per) ||
        (t->noise && t->n_noise != S * per) || (t->drawn && t->n_drawn != S))
        return fail_line(c, "tensors", "missing timesteps/x_T/fixed_noise/x_after_step or "
                                       "inconsistent shapes");
    return 0;
}

/* set_timesteps with the step count that yields the stored number of timesteps. */
static int schedule_for(df_scheduler *s, int S)
{
    for (int n = S; n >= 1 && n >= S - 1; n--)
        if (!df_scheduler_set_timesteps(s, n) && df_scheduler_count(s) == S)
            return 1;
    return 0;
}

static int check_schedule(const cf_ctx *c, const trace *t, df_scheduler *s, const char *suffix)
{
    int S = (int)t->n_ts, fails = 0;
    char nm[128];
    float got[S > 0 ? S : 1];
    for (int i = 0; i < S; i++)
        got[i] = df_scheduler_timestep(s, i);
    snprintf(nm, sizeof nm, "timesteps%s", suffix);
    fails += cf_compare(c->file, nm, got, t->ts, (size_t)S, 0, 0);
    size_t ns;
    const float *sig = df_scheduler_sigmas(s, &ns);
    snprintf(nm, sizeof nm, "sigmas%s", suffix);
    if (t->sigmas && (!sig || ns != t->n_sig))
        fails += fail_line(c, nm, "no sigma schedule of the stored length");
    else if (t->sigmas)
        fails += cf_compare(c->file, nm, sig, t->sigmas, ns, 0, 1e-6);
    float ins = df_scheduler_init_noise_sigma(s);
    snprintf(nm, sizeof nm, "init_noise_sigma%s", suffix);
    if (t->ins && t->n_ins == 1)
        fails += cf_compare(c->file, nm, &ins, t->ins, 1, 0, 1e-6);
    return fails;
}

static int replay(const cf_ctx *c, const trace *t, df_scheduler *s)
{
    size_t S = t->n_ts, per = t->per;
    int fails = 0;
    float *x = malloc(per * sizeof(float)), *in = malloc(per * sizeof(float));
    float *mo = malloc(per * sizeof(float)), *mi = calloc(S * per, sizeof(float));
    float *xa = calloc(S * per, sizeof(float)), *x0 = calloc(S * per, sizeof(float));
    float *drawn = calloc(S, sizeof(float));
    if (!x || !in || !mo || !mi || !xa || !x0 || !drawn) {
        fails += fail_line(c, "replay", "out of memory");
        goto out;
    }
    float ins = df_scheduler_init_noise_sigma(s);
    for (size_t k = 0; k < per; k++)
        x[k] = t->xT[k] * ins;
    if (t->xinit && t->n_xinit == per)
        fails += compare_scaled(c, "x_init", x, t->xinit, per, 1e-5);
    noise_replay nr = {.noise = t->noise, .per = per};
    size_t x0_steps = 0;
    for (size_t i = 0; i < S; i++) {
        nr.step = (int)i;
        nr.draws = 0;
        if (df_scheduler_scale_model_input(s, (int)i, x, in, per)) {
            fails += fail_line(c, "model_input", df_last_error());
            goto out;
        }
        memcpy(mi + i * per, in, per * sizeof(float));
        for (size_t k = 0; k < per; k++)
            mo[k] = 0.5f * in[k] + 0.1f * t->fixed[k];
        if (df_scheduler_step(s, (int)i, mo, x, x, per, replay_noise, &nr)) {
            fails += fail_line(c, "x_after_step", df_last_error());
            goto out;
        }
        drawn[i] = (float)nr.draws;
        memcpy(xa + i * per, x, per * sizeof(float));
        const float *p = df_scheduler_pred_original(s);
        if (p) {
            memcpy(x0 + i * per, p, per * sizeof(float));
            x0_steps++;
        }
    }
    if (t->drawn) {
        float mism = 0;
        for (size_t i = 0; i < S; i++)
            mism += (drawn[i] != 0) != (t->drawn[i] != 0);
        char name[512];
        snprintf(name, sizeof name, "%s:noise_drawn", c->file);
        cf_line(mism ? "FAIL" : "PASS", name, mism, 0, "steps that draw noise (max_abs = mismatches)");
        fails += mism != 0;
    }
    if (t->mi)
        fails += compare_scaled(c, "model_input", mi, t->mi, S * per, 1e-5);
    fails += compare_scaled(c, "x_after_step", xa, t->xa, S * per, 1e-5);
    if (t->x0 && x0_steps != S)
        fails += fail_line(c, "pred_original_sample", "our step() does not return it");
    else if (t->x0)
        fails += compare_scaled(c, "pred_original_sample", x0, t->x0, S * per, 1e-5);
    else if (x0_steps)
        fails += fail_line(c, "pred_original_sample", "we return it but diffusers' step does not");
out:
    free(x), free(in), free(mo), free(mi), free(xa), free(x0), free(drawn);
    return fails;
}

/* The df-sample path: short name from the file + the model's config. */
static int check_model_config_path(const cf_ctx *c, const trace *t, const char *short_name,
                                   const char *pred)
{
    json_t *cfg;
    if (df_scheduler_load_config(cf_path(c, "pipeline/scheduler/scheduler_config.json"), &cfg))
        return fail_line(c, "schedule_from_model_config", df_last_error());
    df_scheduler *s;
    int fails = 0;
    if (df_scheduler_create(short_name, cfg, pred, &s))
        fails += fail_line(c, "schedule_from_model_config", df_last_error());
    else if (!schedule_for(s, (int)t->n_ts))
        fails += fail_line(c, "schedule_from_model_config", "no step count gives the stored timesteps");
    else
        fails += check_schedule(c, t, s, "(model_config+name)");
    df_scheduler_free(s);
    json_decref(cfg);
    return fails;
}

int cf_check_scheduler(const cf_ctx *c)
{
    trace t;
    int fails = trace_load(c, &t);
    if (fails) {
        trace_free(&t);
        return fails;
    }
    char short_name[128], cls[128];
    const char *pred;
    parse_file_name(c->file, short_name, sizeof short_name, &pred);
    json_t *cfg = config_from_notes(c);
    const char *name = cls;
    if (!cfg || !class_from_call(c, cls, sizeof cls)) {
        /* No resolved config in the manifest: build it as df-sample would. */
        if (cfg)
            json_decref(cfg);
        if (df_scheduler_load_config(cf_path(c, "pipeline/scheduler/scheduler_config.json"), &cfg)) {
            fails += fail_line(c, "config", df_last_error());
            trace_free(&t);
            return fails;
        }
        name = short_name;
    }
    df_scheduler *s = NULL;
    if (df_scheduler_create(name, cfg, pred, &s)) {
        fails += fail_line(c, "create", df_last_error());
    } else if (!schedule_for(s, (int)t.n_ts)) {
        fails += fail_line(c, "timesteps", "no step count gives the stored number of timesteps");
    } else {
        fails += check_schedule(c, &t, s, "");
        const float *acp = df_scheduler_alphas_cumprod(s), *betas = df_scheduler_betas(s);
        size_t nt = (size_t)df_scheduler_num_train_timesteps(s);
        if (t.acp && t.n_acp == nt)
            fails += cf_compare(c->file, "alphas_cumprod", acp, t.acp, nt, 0, 1e-6);
        else if (t.acp)
            fails += fail_line(c, "alphas_cumprod", "length differs from num_train_timesteps");
        if (t.betas && t.n_betas == nt)
            fails += cf_compare(c->file, "betas", betas, t.betas, nt, 0, 1e-6);
        else if (t.betas)
            fails += fail_line(c, "betas", "length differs from num_train_timesteps");
        fails += replay(c, &t, s);
        if (name == cls && pred)
            fails += check_model_config_path(c, &t, short_name, pred);
    }
    df_scheduler_free(s);
    json_decref(cfg);
    trace_free(&t);
    return fails;
}
