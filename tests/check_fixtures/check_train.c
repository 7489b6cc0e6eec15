/* check_train.c - checks LoRA training steps against refs/train_lora_*:
 * diffusers + peft's loss, model prediction and the gradient of every LoRA
 * parameter for one or more steps, the AdamW updates, gradient clipping and
 * min-SNR weighting (fixtures README, B8).
 *
 * Everything comes from the file and its MANIFEST entry: the LoRA keys and
 * shapes from the init/<key> tensors (rank from their shapes, alpha from
 * "lora_alpha=" in the description, else set_config.lora.alpha, else the
 * rank), the targets from the description's "UNet targets [...]" and
 * "text-encoder targets [...]" lists, AdamW's settings from the entry's
 * "call" (lr=, betas=, weight_decay=, eps=), min-SNR from stepN/snr and the
 * description's "gamma", clipping from stepN/clip_coef and "max_norm=".
 * Steps run while stepN/loss exists, each on the stored batch, from the
 * reference's parameters after the previous step (teacher forcing: a
 * gradient near 0 whose sign rounding decides moves a parameter by 2 lr,
 * which would make every later step differ) with the moments carried.
 *
 * Tolerances: loss 1e-5 relative; gradients GRAD_TOL (below) of each
 * tensor's largest value; parameters after AdamW 0.2 lr, and 2 lr more for
 * elements whose gradient is within its tolerance of 0 (README B8); the
 * step's intermediates (noisy latents, target, text states, prediction) the
 * model tolerance 1e-4 x max(1, max|ref|). Gradients are held to 1e-4 of
 * float64 recomputations of these references by tests/unit/test_train_f64.c. Gradient and parameter tensors
 * print one line per kind and step (the worst tensor) and a FAIL line for
 * each tensor outside tolerance (DF_CF_VERBOSE=1 prints every tensor on
 * stderr). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"
#include "lora_params.h"
#include "model_refs.h"
#include "optim.h"
#include "scheduler.h"
#include "train_step.h"
#include "unet.h"

#define MAX_TARGETS 16
/* Gradients: 1e-2 of each tensor's largest value (plus 1e-5 of the step's
 * largest gradient). The float32 references are that far from the same
 * steps in float64: up to 2.5e-3 at step 1 and 1.5e-2 at step 2 of
 * train_lora_peftinit_gaussian, mostly in the mid block, whose GroupNorms
 * see two values per group on this tiny model; diffyface is within 4e-5 of
 * float64 (tests/unit/test_train_f64.c, tests/bench/train_grads_f64.py).
 * The global norm, a sum over all of them, is held to 1e-3. */
#define GRAD_TOL 1e-2
#define NORM_TOL 1e-3

typedef struct {
    int rank;
    float alpha;
    const char *ut[MAX_TARGETS], *tt[MAX_TARGETS];
    int nut, ntt;
    char tbuf[1024];
    df_adamw_hparams h;
    double gamma, max_norm;
} train_cfg;

/* The number after `key` in s (e.g. "lr=" -> 1e-4), or dflt. */
static double num_after(const char *s, const char *key, double dflt)
{
    const char *p = s ? strstr(s, key) : NULL;
    if (!p)
        return dflt;
    char *end;
    double v = strtod(p + strlen(key), &end);
    return end == p + strlen(key) ? dflt : v;
}

/* The quoted names of the list after `key` ("UNet targets ['to_k', ...]"). */
static int list_after(const char *s, const char *key, const char **out, char **buf,
                      char *bend)
{
    const char *p = s ? strstr(s, key) : NULL;
    if (!p || !(p = strchr(p, '[')))
        return 0;
    const char *e = strchr(p, ']');
    int n = 0;
    while (e && n < MAX_TARGETS && (p = strchr(p, '\'')) && p < e) {
        const char *q = strchr(p + 1, '\'');
        if (!q || q > e || *buf + (q - p) >= bend)
            break;
        memcpy(*buf, p + 1, (size_t)(q - p - 1));
        (*buf)[q - p - 1] = 0;
        out[n++] = *buf;
        *buf += q - p;
        p = q + 1;
    }
    return n;
}

static df_status read_cfg(const cf_ctx *c, const df_safetensors *st, const df_safetensors *init,
                          train_cfg *g)
{
    const char *desc = json_string_value(json_object_get(c->entry, "description"));
    const char *call = json_string_value(json_object_get(c->entry, "call"));
    json_t *lc = json_object_get(json_object_get(c->manifest, "set_config"), "lora");
    char *b = g->tbuf;
    g->nut = list_after(desc, "UNet targets", g->ut, &b, g->tbuf + sizeof g->tbuf);
    g->ntt = list_after(desc, "text-encoder targets", g->tt, &b, g->tbuf + sizeof g->tbuf);
    if (!g->nut) {   // the recipe's defaults
        static const char *const ut[] = {"to_q", "to_k", "to_v", "to_out.0"};
        static const char *const tt[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        memcpy(g->ut, ut, sizeof ut), g->nut = 4;
        memcpy(g->tt, tt, sizeof tt), g->ntt = 4;
    }
    // the rank from the first lora_A/down tensor of the init
    g->rank = 0;
    for (size_t i = 0; i < df_st_count(init) && !g->rank; i++) {
        const df_st_tensor *t = df_st_at(init, i);
        if (!strncmp(t->name, "init/", 5) && t->ndim == 2 &&
            (strstr(t->name, ".down.weight") || strstr(t->name, "lora_A")))
            g->rank = (int)t->shape[0];
    }
    if (!g->rank)
        return df_fail(DF_ERR_FORMAT, "no init/<lora down> tensor to read the rank from");
    double a = json_number_value(json_object_get(lc, "alpha"));
    g->alpha = (float)num_after(desc, "lora_alpha=", a > 0 ? a : g->rank);
    g->h.lr = num_after(call, "lr=", 1e-4);
    g->h.beta1 = num_after(call, "betas=(", 0.9);
    const char *bp = call ? strstr(call, "betas=(") : NULL;
    g->h.beta2 = bp && strchr(bp, ',') ? num_after(strchr(bp, ','), ",", 0.999) : 0.999;
    g->h.weight_decay = num_after(call, "weight_decay=", 1e-2);
    g->h.eps = num_after(call, "eps=", 1e-8);
    g->gamma = df_st_find(st, "step1/snr") ? num_after(desc, "gamma ", 5.0) : 0;
    g->max_norm = df_st_find(st, "step1/clip_coef") ? num_after(desc, "max_norm=", 1.0) : 0;
    return DF_OK;
}

/* Whether the file's tensor `name` is one this checker reads. */
static int known_tensor(const char *name)
{
    static const char *const step_fields[] = {
        "latents", "noise", "timesteps", "input_ids", "noisy_latents", "encoder_hidden_states",
        "target", "model_pred", "loss", "grad_global_norm", "snr", "mse_loss_weights",
        "clip_coef", NULL};
    if (!strncmp(name, "init/", 5))
        return 1;
    if (strncmp(name, "step", 4) || !isdigit((unsigned char)name[4]))
        return 0;
    const char *p = strchr(name, '/');
    if (!p)
        return 0;
    p++;
    for (const char *const *f = step_fields; *f; f++)
        if (!strcmp(p, *f))
            return 1;
    return !strncmp(p, "grad/", 5) || !strncmp(p, "param/", 6) || !strncmp(p, "exp_avg/", 8) ||
           !strncmp(p, "exp_avg_sq/", 11);
}

/* Compare every parameter's A and B (or their gradients, or optimizer
 * moments: `what` picks) with "<prefix><key>"; one line for the worst. */
/* A tolerance: rel x the tensor's largest |value| + abs per element, plus
 * `extra` for elements whose gradient (grads, laid out as the parameters)
 * is within its own uncertainty of 0: grad_rel x the tensor's largest
 * |gradient| + grad_abs. There AdamW's step is lr * sign(g) with the sign
 * decided by rounding, so the parameters may differ by up to 2 lr. */
typedef struct {
    double rel, abs;
    const float *grads;
    double grad_rel, grad_abs, extra;
} tolerance;

static int compare_params(const cf_ctx *c, const df_safetensors *st, const df_lora_set *s,
                          const char *prefix, int what, const df_adamw *o, const tolerance *tl)
{
    int fails = 0, n = 0, missing = 0;
    double worst = 0, worst_abs = 0, worst_rel = 0;   // worst: the largest share of tolerance
    char key[512], name[600], wname[1024] = "";
    for (size_t i = 0; i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        for (int which = 0; which < 2; which++) {
            df_lora_key(key, sizeof key, p, which, DF_LORA_FMT_DIFFUSERS);
            snprintf(name, sizeof name, "%s%s", prefix, key);
            const float *vals = which ? (what == 1 ? p->gB : p->B) : (what == 1 ? p->gA : p->A);
            size_t cnt = (size_t)p->out * s->rank;
            if (!which)
                cnt = (size_t)s->rank * p->in;
            if (what >= 2) {   // moments: the same offset in the optimizer state
                const float *base = what == 2 ? o->m : o->v;
                vals = base + (size_t)((which ? p->B : p->A) - s->params);
            }
            cf_ref r;
            if (!df_st_find(st, name)) {
                missing++;
                continue;
            }
            if (cf_ref_get(c, st, name, &r))
                return fails + 1;
            n++;
            size_t off = (size_t)((which ? p->B : p->A) - s->params);
            const float *g = tl->grads ? tl->grads + off : NULL;
            double mref = 0, mabs = 0, gmax = 0, used = 0;
            for (size_t k = 0; k < r.n && k < cnt; k++) {
                mref = fmax(mref, fabs(r.data[k]));
                gmax = g ? fmax(gmax, fabs(g[k])) : 0;
            }
            for (size_t k = 0; k < r.n && k < cnt; k++) {
                double d = fabs((double)vals[k] - r.data[k]), lim = tl->rel * mref + tl->abs;
                if (g && fabs(g[k]) <= tl->grad_rel * gmax + tl->grad_abs)
                    lim += tl->extra;
                mabs = fmax(mabs, d);
                used = isnan(d) ? INFINITY : fmax(used, d / lim);
            }
            double rel = mabs / fmax(mref, 1e-30);
            if (getenv("DF_CF_VERBOSE"))
                fprintf(stderr, "%s max_ref %.3g max_abs %.3g rel %.3g\n", name, mref, mabs, rel);
            if (r.n != cnt || !(used <= 1)) {
                fails++;
                if (fails <= 10)
                    cf_line("FAIL", name, mabs, rel, r.n != cnt ? "shape differs" : NULL);
            }
            if (used > worst || n == 1) {
                worst = used, worst_abs = mabs, worst_rel = rel;
                snprintf(wname, sizeof wname, "%s", key);
            }
            cf_ref_free(&r);
        }
    }
    char line[1200], note[1200];
    snprintf(line, sizeof line, "%s:%s* (%d tensors)", c->file, prefix, n);
    snprintf(note, sizeof note, "worst %s (%.0f%% of tolerance)%s", wname, 100 * worst,
             missing && n ? "; some keys absent" : "");
    if (n == 0 && missing) {
        cf_line("FAIL", line, NAN, NAN, "no reference tensor matches the LoRA keys");
        return 1;
    }
    cf_line(fails || missing ? "FAIL" : "PASS", line, worst_abs, worst_rel, note);
    return fails;
}

static int compare_scalar(const cf_ctx *c, const df_safetensors *st, const char *name,
                          double got, double tol_rel)
{
    cf_ref r;
    if (cf_ref_get(c, st, name, &r))
        return 1;
    float g = (float)got;
    int f = cf_compare(c->file, name, &g, r.data, 1, 0, tol_rel);
    cf_ref_free(&r);
    return f;
}

static int compare_tensor(const cf_ctx *c, const df_safetensors *st, const char *name,
                          const float *got)
{
    cf_ref r;
    if (cf_ref_get(c, st, name, &r))
        return 1;
    int f = cf_ref_compare(c, name, got, &r);
    cf_ref_free(&r);
    return f;
}

/* Whether the file holds "<prefix><key>" for the set's first parameter. */
static int has_group(const df_safetensors *st, const df_lora_set *s, const char *prefix)
{
    char key[512], name[1024];
    df_lora_key(key, sizeof key, &s->p[0], 0, DF_LORA_FMT_DIFFUSERS);
    snprintf(name, sizeof name, "%s%s", prefix, key);
    return df_st_find(st, name) != NULL;
}

/* Load "<prefix><key>" (init/, stepN/param/) into the set. */
static df_status load_group(const df_safetensors *st, df_lora_set *s, const char *prefix)
{
    char key[512], name[1024];
    for (size_t i = 0; i < s->n; i++) {
        df_lora_param *p = &s->p[i];
        for (int which = 0; which < 2; which++) {
            df_lora_key(key, sizeof key, p, which, DF_LORA_FMT_DIFFUSERS);
            snprintf(name, sizeof name, "%s%s", prefix, key);
            int64_t shape[2] = {which ? p->out : s->rank, which ? s->rank : p->in};
            float *v = NULL;
            df_status e = df_st_load_f32(st, name, 2, shape, &v);
            if (e)
                return e;
            memcpy(which ? p->B : p->A, v, (size_t)(shape[0] * shape[1]) * sizeof *v);
            free(v);
        }
    }
    return DF_OK;
}

/* Every init/<key> of the file must be a parameter of the set. */
static int count_init(const df_safetensors *st)
{
    int n = 0;
    for (size_t i = 0; i < df_st_count(st); i++)
        n += !strncmp(df_st_at(st, i)->name, "init/", 5);
    return n;
}

typedef struct {
    cf_ref lat, noise, ts, ids;
    int64_t *t;
    int32_t *id;
} step_in;

static void step_in_free(step_in *in)
{
    cf_ref_free(&in->lat);
    cf_ref_free(&in->noise);
    cf_ref_free(&in->ts);
    cf_ref_free(&in->ids);
    free(in->t);
    free(in->id);
}

static int read_step(const cf_ctx *c, const df_safetensors *st, int k, step_in *in)
{
    char n[64];
    memset(in, 0, sizeof *in);
    snprintf(n, sizeof n, "step%d/latents", k);
    if (cf_ref_get(c, st, n, &in->lat))
        return 1;
    snprintf(n, sizeof n, "step%d/noise", k);
    if (cf_ref_get(c, st, n, &in->noise))
        return 1;
    snprintf(n, sizeof n, "step%d/timesteps", k);
    if (cf_ref_get(c, st, n, &in->ts))
        return 1;
    snprintf(n, sizeof n, "step%d/input_ids", k);
    if (cf_ref_get(c, st, n, &in->ids))
        return 1;
    if (in->lat.ndim != 4 || in->ids.ndim != 2 || in->ts.n != (size_t)in->lat.shape[0])
        return cf_ref_fail(c, n, "batch shapes do not agree");
    in->t = malloc(in->ts.n * sizeof *in->t);
    in->id = malloc(in->ids.n * sizeof *in->id);
    if (!in->t || !in->id)
        return cf_ref_fail(c, n, "out of memory");
    for (size_t i = 0; i < in->ts.n; i++)
        in->t[i] = (int64_t)in->ts.data[i];
    for (size_t i = 0; i < in->ids.n; i++)
        in->id[i] = (int32_t)in->ids.data[i];
    return 0;
}

typedef struct {
    df_unet *u;
    df_clip *te;
    df_scheduler *sched;
    df_lora_set set;
    df_unet_train *ut;
    df_clip_train *ct;
    df_adamw opt;
} model;

static void model_free(model *m)
{
    df_unet_train_free(m->ut);
    df_clip_train_free(m->ct);
    df_adamw_free(&m->opt);
    df_lora_set_free(&m->set);
    df_scheduler_free(m->sched);
    df_clip_free(m->te);
    df_unet_free(m->u);
}

static df_status model_load(const cf_ctx *c, const df_safetensors *st, const train_cfg *g,
                            model *m)

{
    df_status s;
    if ((s = df_unet_load(cf_path(c, "pipeline/unet"), NULL, &m->u)) ||
        (s = df_clip_load(cf_path(c, "pipeline/text_encoder"), NULL, &m->te)) ||
        (s = df_scheduler_load(cf_path(c, "pipeline"), "ddpm", NULL, &m->sched)) ||
        (s = df_lora_set_create(&m->set, df_unet_weights(m->u), g->ut, g->nut,
                                df_clip_weights(m->te), g->tt, g->ntt, g->rank, g->alpha)))
        return s;
    if ((int)(2 * m->set.n) != count_init(st))
        return df_fail(DF_ERR_SHAPE, "the targets give %zu LoRA tensors, the file has %d init/ "
                       "tensors", 2 * m->set.n, count_init(st));
    if ((s = load_group(st, &m->set, "init/")) ||
        (s = df_unet_train_create(m->u, &m->set, false, &m->ut)) ||
        (s = df_clip_train_create(m->te, &m->set, &m->ct)) ||
        (s = df_adamw_init(&m->opt, m->set.nfloats)))
        return s;
    return DF_OK;
}

/* One step: forward/backward on the stored batch, then clip and AdamW. */
static int run_step(const cf_ctx *c, const df_safetensors *st, const train_cfg *g, model *m,
                    int k)
{
    step_in in;
    char n[96];
    int fails = read_step(c, st, k, &in);
    if (fails) {
        step_in_free(&in);
        return fails;
    }
    int B = (int)in.lat.shape[0], T = (int)in.ids.shape[1];
    int D = df_clip_get_config(m->te)->hidden_size;
    size_t nl = in.lat.n;
    float *noisy = malloc(nl * 4 * sizeof *noisy), *ehs = malloc((size_t)B * T * D * sizeof *ehs);
    float snr[64], wts[64];
    if (!noisy || !ehs || B > 64) {
        step_in_free(&in);
        free(noisy);
        free(ehs);
        return cf_ref_fail(c, "step", "out of memory or batch over 64");
    }
    df_train_model tm = {.unet = m->ut, .text = m->ct, .sched = m->sched, .snr_gamma = g->gamma};
    df_train_batch b = {.B = B, .C = (int)in.lat.shape[1], .h = (int)in.lat.shape[2],
                        .w = (int)in.lat.shape[3], .T = T, .D = D, .latents = in.lat.data,
                        .noise = in.noise.data, .timesteps = in.t, .ids = in.id};
    df_train_trace tr = {.noisy = noisy, .target = noisy + nl, .pred = noisy + 2 * nl,
                         .ehs = ehs, .snr = snr, .weights = wts};
    float loss;
    df_lora_set_zero_grad(&m->set);
    snprintf(n, sizeof n, "step%d", k);
    if (df_train_step(&tm, &b, 1.0f, &loss, &tr) != DF_OK) {
        fails += cf_ref_fail(c, n, df_last_error());
        goto out;
    }
    static const char *const names[] = {"noisy_latents", "target", "model_pred"};
    for (int i = 0; i < 3; i++) {
        snprintf(n, sizeof n, "step%d/%s", k, names[i]);
        fails += compare_tensor(c, st, n, noisy + i * nl);
    }
    snprintf(n, sizeof n, "step%d/encoder_hidden_states", k);
    fails += compare_tensor(c, st, n, ehs);
    if (g->gamma > 0) {
        snprintf(n, sizeof n, "step%d/snr", k);
        fails += compare_tensor(c, st, n, snr);
        snprintf(n, sizeof n, "step%d/mse_loss_weights", k);
        fails += compare_tensor(c, st, n, wts);
    }
    snprintf(n, sizeof n, "step%d/loss", k);
    fails += compare_scalar(c, st, n, loss, 1e-5);
    // gradients: GRAD_TOL of each tensor's largest value, and 1e-5 of the
    // step's largest gradient for tensors at 0 or nearly (a one-token
    // self-attention's q and k get none)
    double gmax = 0;
    for (size_t i = 0; i < m->set.nfloats; i++)
        gmax = fmax(gmax, fabs(m->set.grads[i]));
    tolerance tg = {.rel = GRAD_TOL, .abs = 1e-5 * gmax};
    snprintf(n, sizeof n, "step%d/grad/", k);
    if (has_group(st, &m->set, n))
        fails += compare_params(c, st, &m->set, n, 1, NULL, &tg);
    double coef = 1;
    double norm = df_grad_clip(m->set.grads, m->set.nfloats, g->max_norm, &coef);
    snprintf(n, sizeof n, "step%d/grad_global_norm", k);
    fails += compare_scalar(c, st, n, norm, NORM_TOL);
    if (g->max_norm > 0) {
        snprintf(n, sizeof n, "step%d/clip_coef", k);
        fails += compare_scalar(c, st, n, coef, NORM_TOL);
    }
    float *gsnap = malloc(m->set.nfloats * sizeof *gsnap);
    if (!gsnap) {
        fails += cf_ref_fail(c, n, "out of memory");
        goto out;
    }
    memcpy(gsnap, m->set.grads, m->set.nfloats * sizeof *gsnap);
    df_adamw_begin_step(&m->opt);
    df_adamw_update(&m->opt, 0, m->set.params, m->set.grads, m->set.nfloats, &g->h);
    // parameters: 0.2 lr (an AdamW step moves an element by about lr), and
    // 2 lr more where the gradient is within its tolerance of 0 (README B8)
    tolerance tp = {.abs = 0.2 * g->h.lr, .grads = gsnap, .grad_rel = GRAD_TOL,
                    .grad_abs = 1e-5 * gmax * coef, .extra = 2 * g->h.lr};
    snprintf(n, sizeof n, "step%d/param/", k);
    if (has_group(st, &m->set, n))
        fails += compare_params(c, st, &m->set, n, 0, NULL, &tp);
    else
        fails += cf_ref_fail(c, n, "no parameters stored after this step");
    // the optimizer moments where the reference stored them: m = (1-b1) g,
    // v = (1-b2) g^2, so v's relative error is twice g's
    tolerance tm1 = {.rel = GRAD_TOL, .abs = (1 - g->h.beta1) * 1e-5 * gmax};
    tolerance tm2 = {.rel = 2 * GRAD_TOL, .abs = (1 - g->h.beta2) * 1e-10 * gmax * gmax};
    snprintf(n, sizeof n, "step%d/exp_avg/", k);
    if (has_group(st, &m->set, n))
        fails += compare_params(c, st, &m->set, n, 2, &m->opt, &tm1);
    snprintf(n, sizeof n, "step%d/exp_avg_sq/", k);
    if (has_group(st, &m->set, n))
        fails += compare_params(c, st, &m->set, n, 3, &m->opt, &tm2);
    free(gsnap);
out:
    step_in_free(&in);
    free(noisy);
    free(ehs);
    return fails;
}

/* The file that holds the initial parameters: this one, or the one its
 * description names ("Same init ... as train_lora_nonzeroB"). */
static df_status open_init(const cf_ctx *c, df_safetensors *st, df_safetensors **init)
{
    *init = st;
    if (count_init(st) > 0)
        return DF_OK;
    const char *desc = json_string_value(json_object_get(c->entry, "description"));
    const char *p = desc ? strstr(desc, "train_lora_") : NULL;
    char name[256], rel[300];
    size_t n = 0;
    while (p && n + 1 < sizeof name && (isalnum((unsigned char)p[n]) || p[n] == '_'))
        name[n] = p[n], n++;
    name[n] = 0;
    if (!p)
        return df_fail(DF_ERR_NOTFOUND, "no init/ tensors and no other file named for them");
    snprintf(rel, sizeof rel, "refs/%s.safetensors", name);
    df_status s = df_st_open(cf_path(c, rel), init);
    if (!s && count_init(*init) == 0)
        s = df_fail(DF_ERR_NOTFOUND, "%s has no init/ tensors either", rel);
    return s;
}

int cf_check_train(const cf_ctx *c)
{
    df_safetensors *st = NULL, *init = NULL;
    if (df_st_open(cf_path(c, c->file), &st) != DF_OK)
        return cf_ref_fail(c, "open", df_last_error());
    int fails = 0;
    for (size_t i = 0; i < df_st_count(st); i++)
        if (!known_tensor(df_st_at(st, i)->name))
            fails += cf_ref_fail(c, df_st_at(st, i)->name, "no check for this tensor");
    train_cfg g;
    memset(&g, 0, sizeof g);
    model m;
    memset(&m, 0, sizeof m);
    if (open_init(c, st, &init) || read_cfg(c, st, init, &g) || model_load(c, init, &g, &m)) {
        fails += cf_ref_fail(c, "setup", df_last_error());
    } else {
        char n[64];
        int k;
        for (k = 1; snprintf(n, sizeof n, "step%d/loss", k), df_st_find(st, n); k++) {
            // teacher forcing: step k starts from the reference's parameters
            // after step k-1 (the moments stay ours), so that each step is
            // judged on its own, not on the drift of the steps before it
            snprintf(n, sizeof n, "step%d/param/", k - 1);
            if (k > 1 && has_group(st, &m.set, n) && load_group(st, &m.set, n)) {
                fails += cf_ref_fail(c, n, df_last_error());
                break;
            }
            fails += run_step(c, st, &g, &m, k);
        }
        if (k == 1)
            fails += cf_ref_fail(c, "step1/loss", "no training step in the file");
    }
    model_free(&m);
    if (init != st)
        df_st_close(init);
    df_st_close(st);
    return fails;
}
