/* lora_params.c - the trainable LoRA parameter set: discovery of the target
 * weights, one block for params and one for grads, peft's initialisations,
 * and LoRA files in and out (see lora_params.h).
 * Tested by tests/unit/test_lora_params.c. */
#include "lora_params.h"

#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const component_name[2] = {"unet", "text encoder"};
static const char *const peft_prefix[2] = {"unet.", "text_encoder."};
static const char *const kohya_prefix[2] = {"lora_unet_", "lora_te_"};

static bool ends_with(const char *s, size_t n, const char *suf)
{
    size_t m = strlen(suf);
    return n >= m && memcmp(s + n - m, suf, m) == 0;
}

/* module is the target itself or ends with ".<target>". */
static bool matches_target(const char *module, size_t n, const char *target)
{
    size_t m = strlen(target);
    if (n == m)
        return memcmp(module, target, m) == 0;
    return n > m && module[n - m - 1] == '.' && memcmp(module + n - m, target, m) == 0;
}

static int cmp_param(const void *a, const void *b)
{
    const df_lora_param *x = a, *y = b;
    if (x->component != y->component)
        return x->component - y->component;
    return strcmp(x->module, y->module);
}

/* Append p to the growing array *v (n used, *cap allocated). */
static df_status push_param(df_lora_param **v, size_t *n, size_t *cap, const df_lora_param *p)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        df_lora_param *nv = realloc(*v, c * sizeof *nv);
        if (!nv)
            return df_fail(DF_ERR_NOMEM, "LoRA set: out of memory");
        *v = nv;
        *cap = c;
    }
    (*v)[(*n)++] = *p;
    return DF_OK;
}

static void join_targets(char *buf, size_t cap, const char *const *t, int n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s\"%s\"", i ? ", " : "", t[i]);
}

/* Every 2-D "<module>.weight" of w whose module matches a target. */
static df_status collect(df_lora_set *s, size_t *cap, df_weights *w, int comp,
                         const char *const *targets, int nt, int rank)
{
    if (!w || nt <= 0)
        return DF_OK;
    const df_safetensors *f = df_weights_file(w);
    size_t found = 0;
    for (size_t i = 0; i < df_st_count(f); i++) {
        const df_st_tensor *t = df_st_at(f, i);
        size_t n = strlen(t->name);
        if (t->ndim != 2 || !ends_with(t->name, n, ".weight"))
            continue;
        size_t mlen = n - strlen(".weight");
        bool hit = false;
        for (int k = 0; k < nt && !hit; k++)
            hit = matches_target(t->name, mlen, targets[k]);
        if (!hit)
            continue;
        if (t->shape[0] > INT_MAX || t->shape[1] > INT_MAX)
            return df_fail(DF_ERR_RANGE, "%s: %s is too large for a LoRA", component_name[comp],
                           t->name);
        if (rank > t->shape[0] || rank > t->shape[1])
            return df_fail(DF_ERR_ARG, "rank %d does not fit %s weight %s (%lldx%lld)", rank,
                           component_name[comp], t->name, (long long)t->shape[0],
                           (long long)t->shape[1]);
        df_lora_param p = {.component = comp, .out = (int)t->shape[0], .in = (int)t->shape[1]};
        if (!(p.module = strndup(t->name, mlen)))
            return df_fail(DF_ERR_NOMEM, "LoRA set: out of memory");
        df_status st = push_param(&s->p, &s->n, cap, &p);
        if (st != DF_OK) {
            free(p.module);
            return st;
        }
        found++;
    }
    if (found == 0) {
        char list[512];
        join_targets(list, sizeof list, targets, nt);
        return df_fail(DF_ERR_NOTFOUND, "no 2-D %s weight matches the LoRA targets %s",
                       component_name[comp], list);
    }
    return DF_OK;
}

/* Sizes, then the two blocks, then the pointers into them (llm.c's layout). */
static df_status allocate(df_lora_set *s)
{
    size_t total = 0, r = (size_t)s->rank;
    for (size_t i = 0; i < s->n; i++) {
        size_t k = (size_t)s->p[i].in + (size_t)s->p[i].out;
        if (k > (SIZE_MAX / sizeof(float) - total) / r)
            return df_fail(DF_ERR_NOMEM, "LoRA set: parameter count overflows");
        total += r * k;
    }
    s->params = calloc(total ? total : 1, sizeof(float));
    s->grads = calloc(total ? total : 1, sizeof(float));
    if (!s->params || !s->grads)
        return df_fail(DF_ERR_NOMEM, "LoRA set: out of memory for %zu parameters", total);
    s->nfloats = total;
    size_t off = 0;
    for (size_t i = 0; i < s->n; i++) {
        df_lora_param *p = &s->p[i];
        if (p->component == DF_LORA_UNET)
            s->n_unet_floats = off + r * (size_t)(p->in + p->out);
        p->A = s->params + off;
        p->gA = s->grads + off;
        off += r * (size_t)p->in;
        p->B = s->params + off;
        p->gB = s->grads + off;
        off += r * (size_t)p->out;
    }
    return DF_OK;
}

df_status df_lora_set_create(df_lora_set *s, df_weights *unet, const char *const *unet_targets,
                             int n_ut, df_weights *te, const char *const *te_targets, int n_tt,
                             int rank, float alpha)
{
    memset(s, 0, sizeof *s);
    if (rank < 1)
        return df_fail(DF_ERR_ARG, "LoRA rank %d: must be at least 1", rank);
    if (!isfinite(alpha) || !(alpha > 0))
        return df_fail(DF_ERR_ARG, "LoRA alpha %g: must be a positive number", alpha);
    s->rank = rank;
    s->alpha = alpha;
    size_t cap = 0;
    df_status st = collect(s, &cap, unet, DF_LORA_UNET, unet_targets, n_ut, rank);
    if (st == DF_OK)
        st = collect(s, &cap, te, DF_LORA_TE, te_targets, n_tt, rank);
    if (st == DF_OK && s->n == 0)
        st = df_fail(DF_ERR_ARG, "LoRA set: no model or no targets given");
    if (st == DF_OK) {
        qsort(s->p, s->n, sizeof *s->p, cmp_param);
        st = allocate(s);
    }
    if (st != DF_OK)
        df_lora_set_free(s);
    return st;
}

void df_lora_set_free(df_lora_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->p[i].module);
    free(s->p);
    free(s->params);
    free(s->grads);
    memset(s, 0, sizeof *s);
}

df_lora_param *df_lora_set_find(df_lora_set *s, int component, const char *module)
{
    df_lora_param key = {.component = component, .module = (char *)module};
    if (s->n == 0)
        return NULL;
    return bsearch(&key, s->p, s->n, sizeof *s->p, cmp_param);
}

void df_lora_set_zero_grad(df_lora_set *s)
{
    memset(s->grads, 0, s->nfloats * sizeof *s->grads);
}

/* torch's uniform_(from, to) for float: 24 random bits, float math. */
static void uniform_fill(df_rng *rng, float *x, size_t n, float from, float to)
{
    for (size_t i = 0; i < n; i++) {
        float u = (float)(df_rng_u32(rng) & 0xffffffu) * (1.0f / 16777216.0f);
        x[i] = u * (to - from) + from;
    }
}

df_status df_lora_set_init(df_lora_set *s, const char *how, df_rng *rng)
{
    bool gaussian = how && !strcmp(how, "gaussian"), kaiming = how && !strcmp(how, "kaiming");
    if (!gaussian && !kaiming)
        return df_fail(DF_ERR_ARG, "unknown LoRA init \"%s\" (gaussian, kaiming)",
                       how ? how : "(null)");
    size_t r = (size_t)s->rank;
    for (size_t i = 0; i < s->n; i++) {
        df_lora_param *p = &s->p[i];
        size_t na = r * (size_t)p->in;
        if (gaussian) {
            /* nn.init.normal_(A, std=1/r); torch scales N(0,1) draws by the
             * float std (the small-tensor path scales in double first, so
             * below 16 elements and for r not a power of two the last bit
             * may differ from torch). */
            const float std = (float)(1.0 / (double)s->rank);
            df_rng_randn(rng, p->A, na);
            for (size_t k = 0; k < na; k++)
                p->A[k] *= std;
        } else {
            /* nn.init.kaiming_uniform_(A, a=sqrt(5)): bound = sqrt(3) * gain /
             * sqrt(fan_in), gain = sqrt(2 / (1 + a^2)): 1/sqrt(in) up to rounding,
             * computed as torch does. */
            double a = sqrt(5.0);
            double gain = sqrt(2.0 / (1.0 + a * a));
            double bound = sqrt(3.0) * (gain / sqrt((double)p->in));
            uniform_fill(rng, p->A, na, (float)-bound, (float)bound);
        }
        memset(p->B, 0, (size_t)p->out * r * sizeof *p->B);
    }
    return DF_OK;
}

void df_lora_key(char *buf, size_t cap, const df_lora_param *p, int which, df_lora_format fmt)
{
    static const char *const peft[2] = {".lora_A.weight", ".lora_B.weight"};
    static const char *const diff_unet[2] = {".lora.down.weight", ".lora.up.weight"};
    static const char *const diff_te[2] = {".lora_linear_layer.down.weight",
                                           ".lora_linear_layer.up.weight"};
    static const char *const kohya[3] = {".lora_down.weight", ".lora_up.weight", ".alpha"};
    if (cap == 0)
        return;
    buf[0] = '\0';
    int c = p->component == DF_LORA_TE;
    if (which < 0 || which > 2 || (which == 2 && fmt != DF_LORA_FMT_KOHYA))
        return;
    int n;
    if (fmt == DF_LORA_FMT_KOHYA) {
        n = snprintf(buf, cap, "%s%s%s", kohya_prefix[c], p->module, kohya[which]);
        /* kohya: the module's dots become underscores, the suffix keeps its own. */
        size_t pre = strlen(kohya_prefix[c]), ml = strlen(p->module);
        for (size_t i = pre; n >= 0 && (size_t)n < cap && i < pre + ml; i++)
            if (buf[i] == '.')
                buf[i] = '_';
    } else {
        const char *suf = fmt == DF_LORA_FMT_PEFT ? peft[which] : c ? diff_te[which] : diff_unet[which];
        n = snprintf(buf, cap, "%s%s%s", peft_prefix[c], p->module, suf);
    }
    if (n < 0 || (size_t)n >= cap)
        buf[0] = '\0';
}

/* ---- loading ---- */

/* Name endings of the A (0) and B (1) halves and alpha (2), as lib/models/lora.c
 * sorts them. The processor form "<attn>.processor.to_q_lora.down.weight"
 * ends in "_lora..." and is renamed by module_of(). */
static const struct { const char *suffix; int which; } suffixes[] = {
    {".lora_A.weight", 0},          {".lora_B.weight", 1},
    {".lora_A.default.weight", 0},  {".lora_B.default.weight", 1},
    {".lora.down.weight", 0},       {".lora.up.weight", 1},
    {".lora_linear_layer.down.weight", 0}, {".lora_linear_layer.up.weight", 1},
    {"_lora.down.weight", 0},       {"_lora.up.weight", 1},
    {".lora_down.weight", 0},       {".lora_up.weight", 1},
    {".alpha", 2},
};

static const char *skip(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) == 0 ? s + n : s;
}

/* diffusers' attention-processor naming: "<attn>.processor.to_q" ->
 * "<attn>.to_q", "<attn>.processor.to_out" -> "<attn>.to_out.0". Writes into
 * out (cap bytes); false if it does not fit. */
static bool module_of(const char *m, char *out, size_t cap)
{
    const char *p = strstr(m, ".processor.");
    int n;
    if (!p)
        n = snprintf(out, cap, "%s", m);
    else {
        const char *leaf = p + strlen(".processor.");
        n = snprintf(out, cap, "%.*s.%s%s", (int)(p - m), m, leaf,
                     strcmp(leaf, "to_out") ? "" : ".0");
    }
    return n >= 0 && (size_t)n < cap;
}

/* The parameter a key base (the name without its LoRA suffix) belongs to. */
static df_lora_param *resolve(df_lora_set *s, const char *base)
{
    char buf[1024];
    for (int c = 0; c < 2; c++) {
        if (strncmp(base, kohya_prefix[c], strlen(kohya_prefix[c])) != 0)
            continue;
        /* kohya's "_" for "." is ambiguous: compare with our own names. */
        for (size_t i = 0; i < s->n; i++) {
            if (s->p[i].component != c)
                continue;
            df_lora_key(buf, sizeof buf, &s->p[i], 2, DF_LORA_FMT_KOHYA);
            size_t n = strlen(buf);
            if (n > strlen(".alpha") && strlen(base) == n - strlen(".alpha") &&
                !strncmp(buf, base, n - strlen(".alpha")))
                return &s->p[i];
        }
        return NULL;
    }
    const char *b = skip(base, "base_model.model.");
    int comp = -1;
    for (int c = 0; c < 2; c++)
        if (!strncmp(b, peft_prefix[c], strlen(peft_prefix[c]))) {
            comp = c;
            b += strlen(peft_prefix[c]);
            break;
        }
    b = skip(b, "base_model.model.");
    if (!module_of(b, buf, sizeof buf))
        return NULL;
    if (comp >= 0)
        return df_lora_set_find(s, comp, buf);
    /* No model prefix: the module name alone says where it fits. */
    df_lora_param *p = df_lora_set_find(s, DF_LORA_UNET, buf);
    return p ? p : df_lora_set_find(s, DF_LORA_TE, buf);
}

static bool all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

/* One tensor of the file into its slot of tmp (a copy of the params block);
 * have[i] collects bits 1 = A, 2 = B, 4 = alpha per parameter. */
static df_status load_tensor(df_lora_set *s, const char *path, const df_st_tensor *t, float *tmp,
                             unsigned char *have)
{
    size_t n = strlen(t->name), k;
    for (k = 0; k < sizeof suffixes / sizeof suffixes[0]; k++)
        if (ends_with(t->name, n, suffixes[k].suffix))
            break;
    if (k == sizeof suffixes / sizeof suffixes[0])
        return df_fail(DF_ERR_FORMAT, "%s: tensor %s is not a LoRA tensor", path, t->name);
    char *base = strndup(t->name, n - strlen(suffixes[k].suffix));
    if (!base)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    df_lora_param *p = resolve(s, base);
    free(base);
    if (!p)
        return df_fail(DF_ERR_NOTFOUND,
                       "%s: tensor %s belongs to no parameter of the LoRA set "
                       "(other targets or another model?)", path, t->name);
    size_t i = (size_t)(p - s->p);
    int which = suffixes[k].which;
    if (have[i] & (1 << which))
        return df_fail(DF_ERR_FORMAT, "%s: tensor %s: the %s of %s appears twice", path, t->name,
                       which == 2 ? "alpha" : which ? "lora_B" : "lora_A", p->module);
    have[i] |= (unsigned char)(1 << which);
    if (which == 2) {
        float a;
        if (t->numel != 1)
            return df_fail(DF_ERR_SHAPE, "%s: alpha %s must be a scalar", path, t->name);
        df_status st = df_st_to_f32(t, &a);
        if (st != DF_OK)
            return st;
        if (!(fabsf(a - s->alpha) <= 1e-6f * fmaxf(1.0f, fabsf(s->alpha))))
            return df_fail(DF_ERR_ARG, "%s: %s = %g differs from the LoRA alpha %g", path,
                           t->name, a, s->alpha);
        return DF_OK;
    }
    size_t r = (size_t)s->rank;
    int64_t shape[2] = {which ? p->out : s->rank, which ? s->rank : p->in};
    df_status st = df_st_check_shape(t, 2, shape);
    if (st != DF_OK)
        return df_fail(st, "%s: %s: %s", path, p->module, df_last_error());
    float *dst = tmp + ((which ? p->B : p->A) - s->params);
    if ((st = df_st_to_f32(t, dst)) != DF_OK)
        return st;
    if (!all_finite(dst, which ? (size_t)p->out * r : r * (size_t)p->in))
        return df_fail(DF_ERR_NUMERIC, "%s: %s holds NaN or Inf", path, t->name);
    return DF_OK;
}

df_status df_lora_set_load(df_lora_set *s, const char *path)
{
    df_safetensors *f;
    df_status st = df_st_open(path, &f);
    if (st != DF_OK)
        return st;
    float *tmp = malloc((s->nfloats ? s->nfloats : 1) * sizeof *tmp);
    unsigned char *have = calloc(s->n ? s->n : 1, 1);
    if (!tmp || !have)
        st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; st == DF_OK && i < df_st_count(f); i++)
        st = load_tensor(s, path, df_st_at(f, i), tmp, have);
    for (size_t i = 0; st == DF_OK && i < s->n; i++) {
        if ((have[i] & 3) == 3)
            continue;
        char key[1100];
        df_lora_key(key, sizeof key, &s->p[i], (have[i] & 1) ? 1 : 0, DF_LORA_FMT_PEFT);
        st = df_fail(DF_ERR_NOTFOUND, "%s: no tensor for %s (in any format)", path, key);
    }
    /* Without an alpha in the file the values are meant for factor 1. */
    const float f_ar = s->alpha / (float)s->rank;
    if (st == DF_OK && f_ar != 1.0f)
        for (size_t i = 0; i < s->n; i++) {
            if (have[i] & 4)
                continue;
            float *b = tmp + (s->p[i].B - s->params);
            for (size_t k = 0; k < (size_t)s->p[i].out * (size_t)s->rank; k++)
                b[k] /= f_ar;
        }
    if (st == DF_OK)
        memcpy(s->params, tmp, s->nfloats * sizeof *tmp);
    free(tmp);
    free(have);
    df_st_close(f);
    return st;
}

/* ---- saving ---- */

df_status df_lora_set_save(const df_lora_set *s, const char *path, df_lora_format fmt,
                           const char *const *meta_kv)
{
    if (fmt != DF_LORA_FMT_PEFT && fmt != DF_LORA_FMT_DIFFUSERS && fmt != DF_LORA_FMT_KOHYA)
        return df_fail(DF_ERR_ARG, "%s: unknown LoRA format %d", path, (int)fmt);
    const float f_ar = s->alpha / (float)s->rank;
    bool scale_b = fmt != DF_LORA_FMT_KOHYA && f_ar != 1.0f;
    size_t r = (size_t)s->rank;
    float *scaled = NULL;
    df_st_writer *w = df_st_writer_new();
    df_status st = w ? DF_OK : df_fail(DF_ERR_NOMEM, "out of memory");
    if (st == DF_OK && scale_b) {
        /* The B halves, scaled, in one block. */
        size_t nb = 0;
        for (size_t i = 0; i < s->n; i++)
            nb += (size_t)s->p[i].out * r;
        if (!(scaled = malloc((nb ? nb : 1) * sizeof *scaled)))
            st = df_fail(DF_ERR_NOMEM, "out of memory");
    }
    size_t boff = 0;
    for (size_t i = 0; st == DF_OK && i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        char key[1100];
        int64_t sa[2] = {s->rank, p->in}, sb[2] = {p->out, s->rank};
        const float *b = p->B;
        if (scale_b) {
            float *d = scaled + boff;
            for (size_t k = 0; k < (size_t)p->out * r; k++)
                d[k] = p->B[k] * f_ar;
            b = d;
            boff += (size_t)p->out * r;
        }
        df_lora_key(key, sizeof key, p, 0, fmt);
        st = df_st_writer_add(w, key, DF_DTYPE_F32, 2, sa, p->A);
        if (st == DF_OK) {
            df_lora_key(key, sizeof key, p, 1, fmt);
            st = df_st_writer_add(w, key, DF_DTYPE_F32, 2, sb, b);
        }
        if (st == DF_OK && fmt == DF_LORA_FMT_KOHYA) {
            df_lora_key(key, sizeof key, p, 2, fmt);
            st = df_st_writer_add(w, key, DF_DTYPE_F32, 0, NULL, &s->alpha);
        }
    }
    for (size_t i = 0; st == DF_OK && meta_kv && meta_kv[i]; i += 2) {
        if (!meta_kv[i + 1]) {
            st = df_fail(DF_ERR_ARG, "%s: metadata key \"%s\" has no value", path, meta_kv[i]);
            break;
        }
        st = df_st_writer_meta(w, meta_kv[i], meta_kv[i + 1]);
    }
    if (st == DF_OK)
        st = df_st_writer_meta(w, "format", "pt");
    if (st == DF_OK)
        st = df_st_write(w, path);
    df_st_writer_free(w);
    free(scaled);
    return st;
}
