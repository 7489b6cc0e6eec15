/* scheduler.c - scheduler construction from a diffusers scheduler config,
 * the training schedule (betas, alphas_cumprod), accessors, the step
 * dispatch and the training forward process (add_noise, get_velocity).
 * The samplers themselves are in scheduler_ddim.c (DDIM, DDPM, PNDM),
 * scheduler_euler.c (Euler, Euler a, LMS) and scheduler_dpm.c (DPM-Solver++,
 * UniPC). Tested by tests/unit/test_scheduler.c and the fixture checker. */
#include "scheduler_impl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---- */

typedef struct {
    const char *name;
    df_sched_kind kind;
    const char *class_name;
} sched_name;

static const sched_name CLASSES[] = {
    {"ddim", DF_SK_DDIM, "DDIMScheduler"},
    {"ddpm", DF_SK_DDPM, "DDPMScheduler"},
    {"pndm", DF_SK_PNDM, "PNDMScheduler"},
    {"euler", DF_SK_EULER, "EulerDiscreteScheduler"},
    {"euler_ancestral", DF_SK_EULER_A, "EulerAncestralDiscreteScheduler"},
    {"lms", DF_SK_LMS, "LMSDiscreteScheduler"},
    {"dpmpp_2m", DF_SK_DPM, "DPMSolverMultistepScheduler"},
    {"unipc", DF_SK_UNIPC, "UniPCMultistepScheduler"},
};
#define NCLASSES (sizeof CLASSES / sizeof CLASSES[0])

static const char *const SHORT_NAMES[] = {
    "ddim", "ddpm", "pndm", "euler", "euler_ancestral", "euler_a", "lms", "dpmpp_2m",
    "dpmpp_2m_karras", "dpmpp_2m_sde", "dpmpp_2m_sde_karras", "unipc", NULL};

const char *const *df_scheduler_names(void) { return SHORT_NAMES; }

/* ---- config reading: present and typed, null = default, absent = default ---- */

static df_status cfg_num(const json_t *c, const char *key, double def, double *out)
{
    json_t *v = c ? json_object_get(c, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return DF_OK;
    }
    if (!json_is_number(v))
        return df_fail(DF_ERR_FORMAT, "scheduler config: \"%s\" must be a number", key);
    *out = json_number_value(v);
    return DF_OK;
}

static df_status cfg_int(const json_t *c, const char *key, int def, int lo, int hi, int *out)
{
    double d;
    df_status st = cfg_num(c, key, def, &d);
    if (st)
        return st;
    if (d != floor(d) || d < lo || d > hi)
        return df_fail(DF_ERR_RANGE, "scheduler config: \"%s\" = %g is not an integer in [%d, %d]",
                       key, d, lo, hi);
    *out = (int)d;
    return DF_OK;
}

static df_status cfg_bool(const json_t *c, const char *key, bool def, bool *out)
{
    json_t *v = c ? json_object_get(c, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return DF_OK;
    }
    if (!json_is_boolean(v))
        return df_fail(DF_ERR_FORMAT, "scheduler config: \"%s\" must be true or false", key);
    *out = json_is_true(v);
    return DF_OK;
}

static df_status cfg_str(const json_t *c, const char *key, const char *def, const char **out)
{
    json_t *v = c ? json_object_get(c, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return DF_OK;
    }
    if (!json_is_string(v))
        return df_fail(DF_ERR_FORMAT, "scheduler config: \"%s\" must be a string", key);
    *out = json_string_value(v);
    return DF_OK;
}

/* One of a fixed set of strings; returns its index. */
static df_status cfg_enum(const json_t *c, const char *key, const char *def,
                          const char *const *allowed, int *out)
{
    const char *v;
    df_status st = cfg_str(c, key, def, &v);
    if (st)
        return st;
    for (int i = 0; allowed[i]; i++)
        if (!strcmp(v, allowed[i])) {
            *out = i;
            return DF_OK;
        }
    return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: %s \"%s\" is not supported", key, v);
}

/* ---- training schedule ---- */

/* torch.linspace(a, b, n, dtype=float32) as torch 1.13's AVX2 CPU kernel
 * computes it: float step, the first half from the start and the second
 * from the end, in blocks of 8 built from a fused multiply-add base (the
 * kernel is compiled with FMA contraction); the last n % 16 elements take
 * the scalar path. This reproduces the SD betas bit for bit. */
static void torch_linspace_f32(double a, double b, int n, float *out)
{
    float start = (float)a, end = (float)b;
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int half = n / 2, i = 0;
    for (; i + 16 <= n; i += 16)
        for (int b0 = i; b0 < i + 16; b0 += 8) {
            float base = b0 < half ? fmaf(step, (float)b0, start)
                                   : fmaf(-step, (float)(n - b0 - 1), end);
            for (int j = 0; j < 8; j++)
                out[b0 + j] = fmaf((float)j, step, base);
        }
    for (; i < n; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
}

/* diffusers' betas_for_alpha_bar (squaredcos_cap_v2), in double then float. */
static void cosine_betas(int n, float *out)
{
    for (int i = 0; i < n; i++) {
        double t1 = (double)i / n, t2 = (double)(i + 1) / n;
        double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
        double b = 1 - (a2 * a2) / (a1 * a1);
        out[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

static df_status make_betas(df_scheduler *s, const json_t *c)
{
    double b0, b1;
    const char *sched;
    df_status st;
    if ((st = cfg_num(c, "beta_start", 0.0001, &b0)) || (st = cfg_num(c, "beta_end", 0.02, &b1)) ||
        (st = cfg_str(c, "beta_schedule", "linear", &sched)))
        return st;
    int n = s->num_train;
    s->betas = malloc(sizeof(float) * n);
    s->acp = malloc(sizeof(float) * n);
    if (!s->betas || !s->acp)
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
    json_t *tb = c ? json_object_get(c, "trained_betas") : NULL;
    if (tb && !json_is_null(tb)) {
        if (!json_is_array(tb) || (int)json_array_size(tb) != n)
            return df_fail(DF_ERR_FORMAT,
                           "scheduler config: \"trained_betas\" must be an array of %d numbers", n);
        for (int i = 0; i < n; i++) {
            json_t *v = json_array_get(tb, i);
            if (!json_is_number(v))
                return df_fail(DF_ERR_FORMAT, "scheduler config: trained_betas[%d] is not a number", i);
            s->betas[i] = (float)json_number_value(v);
        }
    } else if (!strcmp(sched, "linear")) {
        torch_linspace_f32(b0, b1, n, s->betas);
    } else if (!strcmp(sched, "scaled_linear")) {
        torch_linspace_f32(sqrt(b0), sqrt(b1), n, s->betas);
        for (int i = 0; i < n; i++)
            s->betas[i] = s->betas[i] * s->betas[i];
    } else if (!strcmp(sched, "squaredcos_cap_v2")) {
        cosine_betas(n, s->betas);
    } else {
        return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: beta_schedule \"%s\" is not supported",
                       sched);
    }
    /* torch.cumprod on float32 accumulates in double and rounds each output. */
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        float alpha = 1.0f - s->betas[i];
        if (!(s->betas[i] >= 0.0f && s->betas[i] < 1.0f))
            return df_fail(DF_ERR_RANGE, "scheduler config: beta[%d] = %g is outside [0, 1)", i,
                           (double)s->betas[i]);
        acc *= alpha;
        s->acp[i] = (float)acc;
    }
    s->final_acp = s->set_alpha_to_one ? 1.0f : s->acp[0];
    return DF_OK;
}

/* ---- creation ---- */

static const char *const SPACINGS[] = {"leading", "linspace", "trailing", NULL};

static df_status resolve_name(const char *name, const json_t *c, df_sched_kind *kind,
                              json_t *forced)
{
    if (!name) {
        const char *cls;
        df_status st = cfg_str(c, "_class_name", NULL, &cls);
        if (st)
            return st;
        if (!cls)
            return df_fail(DF_ERR_FORMAT, "scheduler config has no \"_class_name\" and no scheduler "
                                          "name was given");
        name = cls;
    }
    for (size_t i = 0; i < NCLASSES; i++)
        if (!strcmp(name, CLASSES[i].class_name)) {
            *kind = CLASSES[i].kind;
            return DF_OK;
        }
    /* Short names: the class plus the overrides users mean by the name. */
    struct { const char *name; df_sched_kind kind; const char *json; } shorts[] = {
        {"ddim", DF_SK_DDIM, "{}"},
        {"ddpm", DF_SK_DDPM, "{}"},
        {"pndm", DF_SK_PNDM, "{\"skip_prk_steps\": true}"},
        {"euler", DF_SK_EULER, "{}"},
        {"euler_ancestral", DF_SK_EULER_A, "{}"},
        {"euler_a", DF_SK_EULER_A, "{}"},
        {"lms", DF_SK_LMS, "{}"},
        {"dpmpp_2m", DF_SK_DPM, "{\"algorithm_type\": \"dpmsolver++\", \"solver_order\": 2, "
                                "\"use_karras_sigmas\": false}"},
        {"dpmpp_2m_karras", DF_SK_DPM, "{\"algorithm_type\": \"dpmsolver++\", \"solver_order\": 2, "
                                       "\"use_karras_sigmas\": true}"},
        {"dpmpp_2m_sde", DF_SK_DPM, "{\"algorithm_type\": \"sde-dpmsolver++\", \"solver_order\": 2, "
                                    "\"use_karras_sigmas\": false}"},
        {"dpmpp_2m_sde_karras", DF_SK_DPM, "{\"algorithm_type\": \"sde-dpmsolver++\", "
                                           "\"solver_order\": 2, \"use_karras_sigmas\": true}"},
        {"unipc", DF_SK_UNIPC, "{}"},
    };
    for (size_t i = 0; i < sizeof shorts / sizeof shorts[0]; i++)
        if (!strcmp(name, shorts[i].name)) {
            *kind = shorts[i].kind;
            json_t *o = json_loads(shorts[i].json, 0, NULL);
            if (!o)
                return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
            json_object_update(forced, o);
            json_decref(o);
            return DF_OK;
        }
    return df_fail(DF_ERR_NOTFOUND, "unknown scheduler \"%s\" (known: ddim, ddpm, pndm, euler, "
                   "euler_ancestral, lms, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde, "
                   "dpmpp_2m_sde_karras, unipc, or a diffusers class name)", name);
}

static df_status read_alpha_family(df_scheduler *s, const json_t *c)
{
    df_status st;
    bool thresholding, skip_prk;
    int vt;
    static const char *const VAR[] = {"fixed_small", NULL};
    switch (s->kind) {
    case DF_SK_DDIM:
        if ((st = cfg_bool(c, "set_alpha_to_one", true, &s->set_alpha_to_one)))
            return st;
        /* fall through */
    case DF_SK_DDPM:
        if ((st = cfg_bool(c, "clip_sample", true, &s->clip_sample)) ||
            (st = cfg_num(c, "clip_sample_range", 1.0, &s->clip_sample_range)) ||
            (st = cfg_bool(c, "thresholding", false, &thresholding)))
            return st;
        if (thresholding)
            return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: thresholding is not supported");
        if (s->kind == DF_SK_DDPM && (st = cfg_enum(c, "variance_type", "fixed_small", VAR, &vt)))
            return st;
        return DF_OK;
    case DF_SK_PNDM:
        if ((st = cfg_bool(c, "set_alpha_to_one", false, &s->set_alpha_to_one)) ||
            (st = cfg_bool(c, "skip_prk_steps", false, &skip_prk)))
            return st;
        if (!skip_prk)
            return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: PNDM without skip_prk_steps "
                                               "(Runge-Kutta warm-up) is not supported");
        return DF_OK;
    default:
        return DF_OK;
    }
}

static df_status read_sigma_family(df_scheduler *s, const json_t *c)
{
    df_status st;
    s->sigma_min = s->sigma_max = NAN;
    if (s->kind == DF_SK_EULER) {
        static const char *const INTERP[] = {"linear", NULL}, *const TTYPE[] = {"discrete", NULL};
        int k;
        if ((st = cfg_enum(c, "interpolation_type", "linear", INTERP, &k)) ||
            (st = cfg_enum(c, "timestep_type", "discrete", TTYPE, &k)) ||
            (st = cfg_num(c, "sigma_min", NAN, &s->sigma_min)) ||
            (st = cfg_num(c, "sigma_max", NAN, &s->sigma_max)))
            return st;
    }
    if (s->kind != DF_SK_EULER_A && (st = cfg_bool(c, "use_karras_sigmas", false, &s->use_karras)))
        return st;
    if (s->kind == DF_SK_DPM || s->kind == DF_SK_UNIPC) {
        bool thresholding;
        if ((st = cfg_int(c, "solver_order", 2, 1, DF_SCHED_MAX_ORDER, &s->solver_order)) ||
            (st = cfg_bool(c, "lower_order_final", true, &s->lower_order_final)) ||
            (st = cfg_bool(c, "thresholding", false, &thresholding)))
            return st;
        if (thresholding)
            return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: thresholding is not supported");
    }
    return DF_OK;
}

static df_status read_dpm(df_scheduler *s, const json_t *c)
{
    static const char *const ALGO[] = {"dpmsolver++", "sde-dpmsolver++", "deis", NULL};
    static const char *const STYPE[] = {"midpoint", "heun", "logrho", "bh1", "bh2", NULL};
    static const char *const FINAL[] = {"zero", "sigma_min", NULL};
    int algo, stype, fin;
    bool lu;
    const char *vt;
    df_status st;
    if ((st = cfg_enum(c, "algorithm_type", "dpmsolver++", ALGO, &algo)) ||
        (st = cfg_enum(c, "solver_type", "midpoint", STYPE, &stype)) ||
        (st = cfg_enum(c, "final_sigmas_type", "zero", FINAL, &fin)) ||
        (st = cfg_bool(c, "euler_at_final", false, &s->euler_at_final)) ||
        (st = cfg_bool(c, "use_lu_lambdas", false, &lu)) ||
        (st = cfg_num(c, "lambda_min_clipped", -INFINITY, &s->lambda_min_clipped)) ||
        (st = cfg_str(c, "variance_type", NULL, &vt)))
        return st;
    if (lu)
        return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: use_lu_lambdas is not supported");
    if (vt)
        return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: variance_type \"%s\" is not supported", vt);
    if (s->solver_order > 2)
        return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: DPM-Solver solver_order %d is not "
                                           "supported (1 or 2)", s->solver_order);
    s->dpm_algo = algo == 1 ? DF_DPM_SDE_PP : DF_DPM_PP;   /* diffusers maps deis to dpmsolver++ */
    s->dpm_heun = stype == 1;                              /* logrho/bh* map to midpoint */
    s->final_sigma_zero = fin == 0;
    return DF_OK;
}

static df_status read_unipc(df_scheduler *s, const json_t *c)
{
    static const char *const STYPE[] = {"bh1", "bh2", "midpoint", "heun", "logrho", NULL};
    int stype;
    df_status st;
    if ((st = cfg_enum(c, "solver_type", "bh2", STYPE, &stype)) ||
        (st = cfg_bool(c, "predict_x0", true, &s->predict_x0)))
        return st;
    s->unipc_bh1 = stype == 0;                             /* others map to bh2 */
    json_t *sp = c ? json_object_get(c, "solver_p") : NULL;
    if (sp && !json_is_null(sp))
        return df_fail(DF_ERR_UNSUPPORTED, "scheduler config: UniPC solver_p is not supported");
    json_t *dc = c ? json_object_get(c, "disable_corrector") : NULL;
    if (dc && !json_is_null(dc)) {
        if (!json_is_array(dc))
            return df_fail(DF_ERR_FORMAT, "scheduler config: \"disable_corrector\" must be an array");
        size_t k = json_array_size(dc);
        s->disable_corrector = calloc(k + 1, sizeof(int));
        if (!s->disable_corrector)
            return df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
        for (size_t i = 0; i < k; i++) {
            json_t *v = json_array_get(dc, i);
            if (!json_is_integer(v))
                return df_fail(DF_ERR_FORMAT, "scheduler config: disable_corrector[%zu] is not an "
                                              "integer", i);
            s->disable_corrector[i] = (int)json_integer_value(v);
        }
        s->n_disable_corrector = (int)k;
    }
    return DF_OK;
}

static df_status read_config(df_scheduler *s, const json_t *c, const char *pred)
{
    df_status st;
    int sp;
    bool rescale;
    bool alpha_family = s->kind == DF_SK_DDIM || s->kind == DF_SK_DDPM || s->kind == DF_SK_PNDM;
    if ((st = cfg_int(c, "num_train_timesteps", 1000, 2, 100000, &s->num_train)) ||
        (st = cfg_int(c, "steps_offset", 0, 0, 100000, &s->steps_offset)) ||
        (st = cfg_enum(c, "timestep_spacing", alpha_family ? "leading" : "linspace", SPACINGS, &sp)))
        return st;
    s->spacing = (df_sched_spacing)sp;
    if (s->kind != DF_SK_PNDM && s->kind != DF_SK_LMS && s->kind != DF_SK_UNIPC) {
        if ((st = cfg_bool(c, "rescale_betas_zero_snr", false, &rescale)))
            return st;
        if (rescale)
            return df_fail(DF_ERR_UNSUPPORTED,
                           "scheduler config: rescale_betas_zero_snr is not supported");
    }
    static const char *const PRED[] = {"epsilon", "v_prediction", "sample", NULL};
    int p;
    if (pred) {
        json_t *o = json_pack("{ss}", "prediction_type", pred);
        st = cfg_enum(o, "prediction_type", "epsilon", PRED, &p);
        json_decref(o);
    } else {
        st = cfg_enum(c, "prediction_type", "epsilon", PRED, &p);
    }
    if (st)
        return st;
    s->pred = p == 0 ? DF_PRED_EPSILON : p == 1 ? DF_PRED_V : DF_PRED_SAMPLE;
    if (s->kind == DF_SK_PNDM && s->pred == DF_PRED_SAMPLE)
        return df_fail(DF_ERR_UNSUPPORTED, "PNDM supports prediction_type epsilon or v_prediction");
    if ((st = read_alpha_family(s, c)) || (st = read_sigma_family(s, c)))
        return st;
    if (s->kind == DF_SK_DPM && (st = read_dpm(s, c)))
        return st;
    if (s->kind == DF_SK_UNIPC && (st = read_unipc(s, c)))
        return st;
    return make_betas(s, c);
}

df_status df_scheduler_create(const char *name, const json_t *config, const char *prediction_type,
                              df_scheduler **out)
{
    *out = NULL;
    if (config && !json_is_object(config))
        return df_fail(DF_ERR_FORMAT, "scheduler config is not a JSON object");
    df_scheduler *s = calloc(1, sizeof *s);
    json_t *merged = config ? json_deep_copy(config) : json_object();
    json_t *forced = json_object();
    df_status st = DF_OK;
    if (!s || !merged || !forced) {
        st = df_fail(DF_ERR_NOMEM, "scheduler: out of memory");
        goto done;
    }
    df_sched_kind kind;
    if ((st = resolve_name(name, config, &kind, forced)))
        goto done;
    json_object_update(merged, forced);
    s->kind = kind;
    for (size_t i = 0; i < NCLASSES; i++)
        if (CLASSES[i].kind == kind)
            s->class_name = CLASSES[i].class_name;
    st = read_config(s, merged, prediction_type);
    /* Before set_timesteps, diffusers' DDIM-like init_noise_sigma is 1 and
     * the sigma samplers report the training sigma_max; set_timesteps fixes it. */
    s->init_noise_sigma = 1.0f;
done:
    json_decref(merged);
    json_decref(forced);
    if (st) {
        df_scheduler_free(s);
        return st;
    }
    *out = s;
    return DF_OK;
}

static void free_state(df_scheduler *s)
{
    for (int k = 0; k < DF_SCHED_MAX_HIST; k++) {
        free(s->hist[k]);
        s->hist[k] = NULL;
    }
    free(s->x0);
    free(s->cur_sample);
    free(s->last_sample);
    free(s->tmp);
    free(s->noise);
    s->x0 = s->cur_sample = s->last_sample = s->tmp = s->noise = NULL;
    s->n = 0;
    s->nhist = 0;
    s->has_x0 = false;
}

void df_scheduler_free(df_scheduler *s)
{
    if (!s)
        return;
    free_state(s);
    free(s->betas);
    free(s->acp);
    free(s->ts);
    free(s->sigmas);
    free(s->disable_corrector);
    free(s);
}

/* ---- numpy pieces ---- */

double df_sched_np_round(double x) { return nearbyint(x); }   /* default mode: half to even */

/* np.linspace(0, stop, num): i * (stop / (num-1)), the last exactly stop. */
void df_sched_np_linspace(double stop, int num, double *out)
{
    if (num == 1) {
        out[0] = 0;
        return;
    }
    double step = stop / (num - 1);
    for (int i = 0; i < num; i++)
        out[i] = i * step;
    out[num - 1] = stop;
}

/* np.arange(start, 0, -step) for float step: numpy fills start, start+delta
 * with delta taken from the first two values. Returns the length. */
int df_sched_np_arange_down(double start, double step, double *out, int cap)
{
    int len = (int)ceil((0 - start) / -step);
    if (len > cap)
        len = cap;
    double delta = (start - step) - start;
    for (int i = 0; i < len; i++)
        out[i] = start + i * delta;
    return len;
}

/* np.interp(x, arange(n), fp) with numpy's exact-hit rule. */
double df_sched_np_interp(double x, const float *fp, int n)
{
    if (x <= 0)
        return fp[0];
    if (x >= n - 1)
        return fp[n - 1];
    int j = (int)floor(x);
    if ((double)j == x)
        return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - j) + (double)fp[j];
}

float df_sched_train_sigma(const df_scheduler *s, int t)
{
    return sqrtf((1.0f - s->acp[t]) / s->acp[t]);
}

/* Karras et al. (2022) rho = 7 ramp between sigma_max and sigma_min, double. */
void df_sched_karras(const df_scheduler *s, double sigma_min, double sigma_max, int steps,
                     double *out)
{
    double rho = 7.0, min_inv = pow(sigma_min, 1 / rho), max_inv = pow(sigma_max, 1 / rho);
    df_sched_np_linspace(1.0, steps, out);
    for (int i = 0; i < steps; i++)
        out[i] = pow(max_inv + out[i] * (min_inv - max_inv), rho);
}

/* log of the float32 training sigmas, as diffusers' np.log(sigmas) (float32). */
float *df_sched_log_sigmas(const df_scheduler *s)
{
    float *l = malloc(sizeof(float) * s->num_train);
    if (l)
        for (int k = 0; k < s->num_train; k++)
            l[k] = logf(df_sched_train_sigma(s, k));
    return l;
}

/* diffusers' _sigma_to_t: interpolate log sigma between the two training
 * sigmas around it (log_sigmas ascending, n entries). */
double df_sched_sigma_to_t(const float *log_sigmas, int n, double sigma)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int k = 0; k < n; k++)
        if (ls - (double)log_sigmas[k] >= 0)
            low = k;
    if (low > n - 2)
        low = n - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(lo - hi);   /* numpy: float32 - float32 stays float32 */
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

void df_sched_push_hist(df_scheduler *s, const float *v, size_t n, int cap)
{
    if (s->nhist == cap) {
        float *oldest = s->hist[0];
        memmove(s->hist, s->hist + 1, sizeof(float *) * (cap - 1));
        s->hist[cap - 1] = oldest;
    } else {
        s->nhist++;
    }
    memcpy(s->hist[s->nhist - 1], v, n * sizeof(float));
}

/* ---- schedule and accessors ---- */

df_status df_scheduler_set_timesteps(df_scheduler *s, int steps)
{
    if (steps < 1 || steps > s->num_train)
        return df_fail(DF_ERR_RANGE, "scheduler: %d inference steps is outside [1, %d]", steps,
                       s->num_train);
    free(s->ts);
    free(s->sigmas);
    s->ts = NULL;
    s->sigmas = NULL;
    free_state(s);
    s->steps = steps;
    s->next = 0;
    s->begin = 0;
    s->lower_order_nums = 0;
    s->this_order = 0;
    s->init_noise_sigma = 1.0f;
    switch (s->kind) {
    case DF_SK_DDIM: case DF_SK_DDPM: case DF_SK_PNDM:
        return df_sched_alpha_timesteps(s, steps);
    case DF_SK_EULER: case DF_SK_EULER_A: case DF_SK_LMS:
        return df_sched_k_timesteps(s, steps);
    default:
        return df_sched_dpm_timesteps(s, steps);
    }
}

int df_scheduler_count(const df_scheduler *s) { return s->ts ? s->count : 0; }
float df_scheduler_timestep(const df_scheduler *s, int i)
{
    return s->ts && i >= 0 && i < s->count ? (float)s->ts[i] : NAN;
}
bool df_scheduler_timesteps_are_int(const df_scheduler *s) { return s->ts_int; }
int64_t df_scheduler_timestep_int(const df_scheduler *s, int i)
{
    return s->ts && i >= 0 && i < s->count ? (int64_t)s->ts[i] : -1;
}
const float *df_scheduler_sigmas(const df_scheduler *s, size_t *n)
{
    if (n)
        *n = s->sigmas ? (size_t)s->count + 1 : 0;
    return s->sigmas;
}
float df_scheduler_init_noise_sigma(const df_scheduler *s) { return s->init_noise_sigma; }
int df_scheduler_num_train_timesteps(const df_scheduler *s) { return s->num_train; }
const float *df_scheduler_betas(const df_scheduler *s) { return s->betas; }
const float *df_scheduler_alphas_cumprod(const df_scheduler *s) { return s->acp; }
const char *df_scheduler_class_name(const df_scheduler *s) { return s->class_name; }

const char *df_scheduler_short_name(const df_scheduler *s)
{
    switch (s->kind) {
    case DF_SK_DDIM: return "ddim";
    case DF_SK_DDPM: return "ddpm";
    case DF_SK_PNDM: return "pndm";
    case DF_SK_EULER: return "euler";
    case DF_SK_EULER_A: return "euler_ancestral";
    case DF_SK_LMS: return "lms";
    case DF_SK_DPM:
        /* The DPM names say what they force: the algorithm and Karras
         * sigmas (a config's other solver_order is not in the name). */
        if (s->dpm_algo == DF_DPM_SDE_PP)
            return s->use_karras ? "dpmpp_2m_sde_karras" : "dpmpp_2m_sde";
        return s->use_karras ? "dpmpp_2m_karras" : "dpmpp_2m";
    case DF_SK_UNIPC: return "unipc";
    }
    return s->class_name;
}
df_pred_type df_scheduler_prediction(const df_scheduler *s) { return s->pred; }
const float *df_scheduler_pred_original(const df_scheduler *s) { return s->has_x0 ? s->x0 : NULL; }

df_status df_scheduler_scale_model_input(df_scheduler *s, int i, const float *x, float *out,
                                         size_t n)
{
    if (!s->ts || i < 0 || i >= s->count)
        return df_fail(DF_ERR_ARG, "scheduler: step %d outside the schedule of %d", i,
                       df_scheduler_count(s));
    if (s->kind == DF_SK_EULER || s->kind == DF_SK_EULER_A || s->kind == DF_SK_LMS) {
        float sigma = s->sigmas[i];
        float d = sqrtf(sigma * sigma + 1.0f);
        for (size_t k = 0; k < n; k++)
            out[k] = x[k] / d;
    } else if (out != x) {
        memcpy(out, x, n * sizeof(float));
    }
    return DF_OK;
}

static df_status alloc_state(df_scheduler *s, size_t n)
{
    if (s->n == n)
        return DF_OK;
    if (s->n != 0)
        return df_fail(DF_ERR_SHAPE, "scheduler: step with %zu elements after steps with %zu "
                                     "(call set_timesteps to start over)", n, s->n);
    if (n == 0 || n > SIZE_MAX / sizeof(float))
        return df_fail(DF_ERR_RANGE, "scheduler: bad tensor size %zu", n);
    size_t b = n * sizeof(float);
    for (int k = 0; k < DF_SCHED_MAX_HIST; k++)
        s->hist[k] = malloc(b);
    s->x0 = malloc(b);
    s->cur_sample = malloc(b);
    s->last_sample = malloc(b);
    s->tmp = malloc(b);
    s->noise = malloc(b);
    for (int k = 0; k < DF_SCHED_MAX_HIST; k++)
        if (!s->hist[k]) {
            free_state(s);
            return df_fail(DF_ERR_NOMEM, "scheduler: out of memory for %zu elements", n);
        }
    if (!s->x0 || !s->cur_sample || !s->last_sample || !s->tmp || !s->noise) {
        free_state(s);
        return df_fail(DF_ERR_NOMEM, "scheduler: out of memory for %zu elements", n);
    }
    s->n = n;
    return DF_OK;
}

df_status df_scheduler_step(df_scheduler *s, int i, const float *model_out, const float *sample,
                            float *out, size_t n, df_noise_fn noise_fn, void *noise_ctx)
{
    if (!s->ts)
        return df_fail(DF_ERR_ARG, "scheduler: step before set_timesteps");
    if (i != s->next || i >= s->count)
        return df_fail(DF_ERR_ARG, "scheduler: step %d out of order (expected %d of %d)", i, s->next,
                       s->count);
    df_status st = alloc_state(s, n);
    if (st)
        return st;
    s->has_x0 = false;
    switch (s->kind) {
    case DF_SK_DDIM: case DF_SK_DDPM: case DF_SK_PNDM:
        st = df_sched_alpha_step(s, i, model_out, sample, out, n, noise_fn, noise_ctx);
        break;
    case DF_SK_EULER: case DF_SK_EULER_A: case DF_SK_LMS:
        st = df_sched_k_step(s, i, model_out, sample, out, n, noise_fn, noise_ctx);
        break;
    case DF_SK_DPM:
        st = df_sched_dpm_step(s, i, model_out, sample, out, n, noise_fn, noise_ctx);
        break;
    case DF_SK_UNIPC:
        st = df_sched_unipc_step(s, i, model_out, sample, out, n);
        break;
    }
    if (st)
        return st;
    s->next++;
    for (size_t k = 0; k < n; k++)
        if (!isfinite(out[k]))
            return df_fail(DF_ERR_NUMERIC, "scheduler: non-finite value in the sample after step %d "
                                           "(t = %g)", i, s->ts[i]);
    return DF_OK;
}

df_status df_scheduler_set_begin_index(df_scheduler *s, int begin)
{
    if (!s->ts)
        return df_fail(DF_ERR_ARG, "scheduler: begin index before set_timesteps");
    if (begin < 0 || begin >= s->count)
        return df_fail(DF_ERR_RANGE, "scheduler: begin index %d outside [0, %d)", begin, s->count);
    if (s->next != s->begin)
        return df_fail(DF_ERR_ARG, "scheduler: begin index after the first step");
    s->begin = begin;
    s->next = begin;
    return DF_OK;
}

df_status df_scheduler_add_noise_at(const df_scheduler *s, int index, const float *x0,
                                    const float *noise, size_t n, float *out)
{
    if (!s->ts || index < 0 || index >= s->count)
        return df_fail(DF_ERR_RANGE, "scheduler: add_noise at step %d outside the schedule of %d",
                       index, df_scheduler_count(s));
    switch (s->kind) {
    case DF_SK_DDIM: case DF_SK_DDPM: case DF_SK_PNDM: {
        int64_t t = (int64_t)s->ts[index];
        return df_scheduler_add_noise(s, x0, noise, &t, 1, n, out);
    }
    case DF_SK_EULER: case DF_SK_EULER_A: case DF_SK_LMS: {
        float sigma = s->sigmas[index];
        for (size_t k = 0; k < n; k++)
            out[k] = x0[k] + noise[k] * sigma;
        return DF_OK;
    }
    default: {   /* DPM, UniPC: _sigma_to_alpha_sigma_t, float32 */
        float sigma = s->sigmas[index];
        float alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
        float sigma_t = sigma * alpha;
        for (size_t k = 0; k < n; k++)
            out[k] = alpha * x0[k] + sigma_t * noise[k];
        return DF_OK;
    }
    }
}

/* ---- training forward process ---- */

static df_status fwd(const df_scheduler *s, const float *x0, const float *noise, const int64_t *t,
                     int batch, size_t per_item, float *out, bool velocity)
{
    for (int b = 0; b < batch; b++)
        if (t[b] < 0 || t[b] >= s->num_train)
            return df_fail(DF_ERR_RANGE, "scheduler: timestep %lld outside [0, %d)",
                           (long long)t[b], s->num_train);
    for (int b = 0; b < batch; b++) {
        float a = s->acp[t[b]];
        float sa = sqrtf(a), s1 = sqrtf(1.0f - a);
        const float *x = x0 + b * per_item, *e = noise + b * per_item;
        float *o = out + b * per_item;
        for (size_t k = 0; k < per_item; k++)
            o[k] = velocity ? sa * e[k] - s1 * x[k] : sa * x[k] + s1 * e[k];
    }
    return DF_OK;
}

df_status df_scheduler_add_noise(const df_scheduler *s, const float *x0, const float *noise,
                                 const int64_t *t, int batch, size_t per_item, float *out)
{
    return fwd(s, x0, noise, t, batch, per_item, out, false);
}

df_status df_scheduler_get_velocity(const df_scheduler *s, const float *x0, const float *noise,
                                    const int64_t *t, int batch, size_t per_item, float *out)
{
    return fwd(s, x0, noise, t, batch, per_item, out, true);
}

/* ---- config file ---- */

/* Copy src to dst with the bare NaN / Infinity / -Infinity outside strings
 * replaced by null. dst holds 2 * strlen(src) + 1 bytes ("NaN" grows by one). */
static void null_nonfinite(const char *p, char *dst)
{
    static const char *const toks[] = {"-Infinity", "Infinity", "NaN"};
    bool in_str = false;
    while (*p) {
        if (in_str) {
            if (*p == '\\' && p[1])
                *dst++ = *p++;
            else if (*p == '"')
                in_str = false;
            *dst++ = *p++;
            continue;
        }
        if (*p == '"')
            in_str = true;
        int hit = -1;
        for (int k = 0; k < 3 && hit < 0; k++)
            if (!strncmp(p, toks[k], strlen(toks[k])))
                hit = k;
        if (hit >= 0) {
            memcpy(dst, "null", 4);
            dst += 4;
            p += strlen(toks[hit]);
        } else {
            *dst++ = *p++;
        }
    }
    *dst = 0;
}

/* Parse into a JSON object; what names the source in errors. */
static df_status parse_text(const char *text, size_t len, const char *what, json_t **out)
{
    if (len > (SIZE_MAX - 1) / 2)
        return df_fail(DF_ERR_RANGE, "%s: too large", what);
    char *buf = malloc(2 * len + 1);
    if (!buf)
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", what);
    null_nonfinite(text, buf);
    json_error_t je;
    json_t *j = json_loads(buf, 0, &je);
    free(buf);
    if (!j)
        return df_fail(DF_ERR_FORMAT, "%s:%d: %s", what, je.line, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return df_fail(DF_ERR_FORMAT, "%s: not a JSON object", what);
    }
    *out = j;
    return DF_OK;
}

df_status df_scheduler_load_config(const char *path, json_t **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return df_fail(DF_ERR_NOTFOUND, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            if (cap > (64u << 20)) {
                free(buf);
                fclose(f);
                return df_fail(DF_ERR_RANGE, "%s: larger than 64 MiB", path);
            }
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0)
            break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return df_fail(DF_ERR_IO, "%s: read error", path);
    }
    buf[len] = 0;
    df_status st = parse_text(buf, len, path, out);
    free(buf);
    return st;
}

df_status df_scheduler_load(const char *model_dir, const char *name, const char *prediction_type,
                            df_scheduler **out)
{
    *out = NULL;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", model_dir) >=
        sizeof path)
        return df_fail(DF_ERR_RANGE, "%s: path too long", model_dir);
    json_t *cfg;
    df_status st = df_scheduler_load_config(path, &cfg);
    if (st)
        return st;
    st = df_scheduler_create(name, cfg, prediction_type, out);
    json_decref(cfg);
    if (st) {
        char why[512];
        snprintf(why, sizeof why, "%s", df_last_error());   /* df_fail reuses that buffer */
        return df_fail(st, "%s: %s", path, why);
    }
    return DF_OK;
}

df_status df_scheduler_parse_config(const char *text, json_t **out)
{
    *out = NULL;
    return parse_text(text, strlen(text), "scheduler config", out);
}
