/* lora.c - LoRA key formats (peft, diffusers, kohya) and merging into weights.
 * Tested by tests/unit/test_lora.c and the fixture checker's LoRA references. */
#include "lora.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum target { T_UNKNOWN, T_UNET, T_TE };
enum fmt { F_PEFT = 1, F_DIFFUSERS = 2, F_KOHYA = 4 };

/* One adapter: a down/up pair (and maybe alpha) for one module. */
typedef struct {
    char *base;                   /* key prefix shared by the pair */
    enum target target;
    char *module;                 /* resolved module path (without .weight) */
    const df_st_tensor *down, *up, *alpha;
    int fmt;
} adapter;

typedef struct {
    adapter *v;
    size_t n, cap;
} adapter_list;

static bool ends_with(const char *s, const char *suf, size_t *prefix_len)
{
    size_t n = strlen(s), m = strlen(suf);
    if (n < m || strcmp(s + n - m, suf) != 0)
        return false;
    *prefix_len = n - m;
    return true;
}

static adapter *find_or_add(adapter_list *l, const char *base, size_t len)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i].base) == len && !strncmp(l->v[i].base, base, len))
            return &l->v[i];
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        adapter *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    adapter *a = &l->v[l->n++];
    memset(a, 0, sizeof *a);
    a->base = strndup(base, len);
    return a->base ? a : (l->n--, NULL);
}

/* The suffixes that mark the down and up halves, per format. For the old
 * attention-processor form the module name also changes, see module_of(). */
static const struct { const char *suffix; int is_up; int fmt; } suffixes[] = {
    {".lora_A.weight", 0, F_PEFT},          {".lora_B.weight", 1, F_PEFT},
    {".lora_A.default.weight", 0, F_PEFT},  {".lora_B.default.weight", 1, F_PEFT},
    {".lora.down.weight", 0, F_DIFFUSERS},  {".lora.up.weight", 1, F_DIFFUSERS},
    {".lora_linear_layer.down.weight", 0, F_DIFFUSERS},
    {".lora_linear_layer.up.weight", 1, F_DIFFUSERS},
    {"_lora.down.weight", 0, F_DIFFUSERS},  {"_lora.up.weight", 1, F_DIFFUSERS},
    {".lora_down.weight", 0, F_KOHYA},      {".lora_up.weight", 1, F_KOHYA},
};

/* Sort one tensor into its adapter; returns false when the name has no
 * LoRA shape at all (it is then unmatched). */
static bool classify(adapter_list *l, const df_st_tensor *t)
{
    size_t len;
    if (ends_with(t->name, ".alpha", &len)) {
        adapter *a = find_or_add(l, t->name, len);
        if (!a || a->alpha)   // a second alpha of one module is reported, not dropped
            return false;
        a->alpha = t;
        return true;
    }
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        if (!ends_with(t->name, suffixes[i].suffix, &len))
            continue;
        adapter *a = find_or_add(l, t->name, len);
        // a module's second down (or up) tensor under another format's suffix
        // (lora_down and lora_A) would silently replace the first: it is
        // reported as unmatched instead, so every tensor is accounted for
        if (!a || (suffixes[i].is_up ? a->up : a->down))
            return false;
        if (suffixes[i].is_up)
            a->up = t;
        else
            a->down = t;
        a->fmt |= suffixes[i].fmt;
        return true;
    }
    return false;
}

static char *strip_prefix(const char *s, const char *p)
{
    size_t n = strlen(p);
    return strncmp(s, p, n) == 0 ? (char *)s + n : NULL;
}

/* diffusers' attention-processor naming: "<attn>.processor.to_q" -> "<attn>.to_q",
 * "to_out" -> "to_out.0". */
static char *module_of_processor(const char *m)
{
    const char *p = strstr(m, ".processor.");
    if (!p)
        return strdup(m);
    const char *leaf = p + strlen(".processor.");
    size_t head = (size_t)(p - m);
    char *out = malloc(head + strlen(leaf) + 8);
    if (!out)
        return NULL;
    memcpy(out, m, head);
    out[head] = '\0';
    strcat(out, ".");
    strcat(out, leaf);
    if (!strcmp(leaf, "to_out"))
        strcat(out, ".0");
    return out;
}

/* kohya name of a module: prefix + module with '.' -> '_'. */
static void kohya_name(char *buf, size_t cap, const char *prefix, const char *module, size_t mlen)
{
    size_t n = strlen(prefix);
    if (n + mlen + 1 > cap) {
        buf[0] = '\0';
        return;
    }
    memcpy(buf, prefix, n);
    for (size_t i = 0; i < mlen; i++)
        buf[n + i] = module[i] == '.' ? '_' : module[i];
    buf[n + mlen] = '\0';
}

/* Find the module of weights `w` whose kohya name is `k`. */
static char *kohya_resolve(const df_weights *w, const char *prefix, const char *k)
{
    const df_safetensors *st = df_weights_file(w);
    char buf[1024];
    for (size_t i = 0; i < df_st_count(st); i++) {
        const char *name = df_st_at(st, i)->name;
        size_t mlen;
        if (!ends_with(name, ".weight", &mlen))
            continue;
        kohya_name(buf, sizeof buf, prefix, name, mlen);
        if (!strcmp(buf, k))
            return strndup(name, mlen);
    }
    return NULL;
}

static bool has_weight(df_weights *w, const char *module)
{
    char name[1024];
    int n = snprintf(name, sizeof name, "%s.weight", module);   /* a cut name must not match */
    return w && n > 0 && (size_t)n < sizeof name && df_weights_has(w, name);
}

/* Decide the target model and module path of an adapter. */
static void resolve(adapter *a, df_weights *unet, df_weights *te)
{
    if (strip_prefix(a->base, "lora_unet_")) {
        a->target = T_UNET;
        a->module = unet ? kohya_resolve(unet, "lora_unet_", a->base) : NULL;
        return;
    }
    if (strip_prefix(a->base, "lora_te_")) {
        a->target = T_TE;
        a->module = te ? kohya_resolve(te, "lora_te_", a->base) : NULL;
        return;
    }
    const char *b = a->base;
    const char *s;
    if ((s = strip_prefix(b, "base_model.model.")))
        b = s;
    enum target tgt = T_UNKNOWN;
    if ((s = strip_prefix(b, "unet."))) {
        tgt = T_UNET;
        b = s;
    } else if ((s = strip_prefix(b, "text_encoder."))) {
        tgt = T_TE;
        b = s;
    }
    if ((s = strip_prefix(b, "base_model.model.")))
        b = s;
    char *m = module_of_processor(b);
    if (!m)
        return;
    /* Files without a model prefix: the module name alone says where it fits. */
    if (tgt == T_UNKNOWN)
        tgt = has_weight(unet, m) ? T_UNET : has_weight(te, m) ? T_TE : T_UNKNOWN;
    a->target = tgt;
    if ((tgt == T_UNET && has_weight(unet, m)) || (tgt == T_TE && has_weight(te, m)))
        a->module = m;
    else
        free(m);
}

static void add_unmatched(df_lora_report *rep, const char *name)
{
    char **v = realloc(rep->unmatched, (rep->n_unmatched + 1) * sizeof *v);
    if (!v)
        return;
    rep->unmatched = v;
    v[rep->n_unmatched] = strdup(name);
    if (v[rep->n_unmatched])
        rep->n_unmatched++;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* Check that down (r, in[, kh, kw]) and up (out, r[, 1, 1]) fit the weight
 * (out, in[, kh, kw]); returns the rank or 0. */
static int64_t check_fit(const adapter *a, int wnd, const int64_t *ws)
{
    const df_st_tensor *d = a->down, *u = a->up;
    if (d->ndim != wnd || u->ndim != wnd || (wnd != 2 && wnd != 4))
        return 0;
    int64_t r = d->shape[0];
    if (u->shape[1] != r || u->shape[0] != ws[0] || d->shape[1] != ws[1])
        return 0;
    if (wnd == 4) {
        bool kdown = d->shape[2] == ws[2] && d->shape[3] == ws[3] && u->shape[2] == 1 && u->shape[3] == 1;
        if (!kdown)
            return 0;
    }
    return r;
}

static bool all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

/* W (out, in*k) += f * up (out, r) @ down (r, in*k), accumulated in double.
 * down and up have the sizes check_fit() matched to W, so r*inner and out*r
 * are no larger than W's own element count times r. NaN or Inf in the file
 * is refused here: merged, it would only surface as NaN latents later. */
static df_status merge(const char *path, float *w, const adapter *a, int64_t r, int64_t out,
                       int64_t inner, float f)
{
    float *down = malloc((size_t)(r * inner) * sizeof *down);
    float *up = malloc((size_t)(out * r) * sizeof *up);
    df_status st = (!down || !up) ? df_fail(DF_ERR_NOMEM, "LoRA merge: out of memory") : DF_OK;
    if (st == DF_OK && (st = df_st_to_f32(a->down, down)) == DF_OK &&
        (st = df_st_to_f32(a->up, up)) == DF_OK) {
        if (!all_finite(down, (size_t)(r * inner)) || !all_finite(up, (size_t)(out * r)))
            st = df_fail(DF_ERR_NUMERIC, "%s: LoRA %s holds NaN or Inf (non-finite values)",
                         path, a->base);
    }
    if (st == DF_OK && w) {
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < inner; i++) {
                double acc = 0;
                for (int64_t k = 0; k < r; k++)
                    acc += (double)up[o * r + k] * down[k * inner + i];
                w[o * inner + i] += (float)(f * acc);
            }
    }
    free(down);
    free(up);
    return st;
}

static df_status alpha_of(const adapter *a, int64_t r, float *alpha)
{
    *alpha = (float)r;    /* no alpha stored: diffusers/peft use alpha = rank */
    if (!a->alpha)
        return DF_OK;
    if (a->alpha->numel != 1)
        return df_fail(DF_ERR_SHAPE, "%s: alpha must be a scalar", a->alpha->name);
    return df_st_to_f32(a->alpha, alpha);
}

static const char *format_name(int fmts)
{
    switch (fmts) {
    case F_PEFT: return "peft";
    case F_DIFFUSERS: return "diffusers";
    case F_KOHYA: return "kohya";
    case 0: return "unknown";
    default: return "mixed";
    }
}

/* Apply (merge_weights) or only check the file: the check does every step
 * but the copy-on-write and the merge, so it is cheap and reports the same. */
static df_status apply_file(const char *path, float scale, df_weights *unet,
                            df_weights *text_encoder, df_lora_report *rep, bool merge_weights)
{
    memset(rep, 0, sizeof *rep);
    df_safetensors *st;
    df_status s = df_st_open(path, &st);
    if (s != DF_OK)
        return s;
    adapter_list l = {0};
    size_t n = df_st_count(st);
    rep->n_tensors = n;
    int fmts = 0;
    for (size_t i = 0; i < n; i++)
        if (!classify(&l, df_st_at(st, i)))
            add_unmatched(rep, df_st_at(st, i)->name);
    for (size_t i = 0; i < l.n; i++) {
        adapter *a = &l.v[i];
        if (a->down && a->up)
            resolve(a, unet, text_encoder);
    }

    /* Validate everything before changing any weight. */
    for (size_t i = 0; i < l.n && s == DF_OK; i++) {
        adapter *a = &l.v[i];
        if (!a->module)
            continue;
        df_weights *w = a->target == T_UNET ? unet : text_encoder;
        char wname[1100];
        snprintf(wname, sizeof wname, "%s.weight", a->module);
        const df_st_tensor *wt = df_st_find(df_weights_file(w), wname);
        int64_t r = wt ? check_fit(a, wt->ndim, wt->shape) : 0;
        if (r == 0) {
            char sd[96], su[96], sw[96];
            shape_str(sd, sizeof sd, a->down->ndim, a->down->shape);
            shape_str(su, sizeof su, a->up->ndim, a->up->shape);
            shape_str(sw, sizeof sw, wt ? wt->ndim : 0, wt ? wt->shape : NULL);
            s = df_fail(DF_ERR_SHAPE,
                        "%s: LoRA %s %s / %s does not fit weight %s %s (a LoRA for another model?)",
                        path, a->base, sd, su, wname, sw);
        }
    }
    for (size_t i = 0; i < l.n && s == DF_OK; i++) {
        adapter *a = &l.v[i];
        if (!a->module) {
            const df_st_tensor *parts[3] = {a->down, a->up, a->alpha};
            for (int k = 0; k < 3; k++)
                if (parts[k])
                    add_unmatched(rep, parts[k]->name);
            continue;
        }
        df_weights *w = a->target == T_UNET ? unet : text_encoder;
        char wname[1100];
        snprintf(wname, sizeof wname, "%s.weight", a->module);
        const df_st_tensor *wt = df_st_find(df_weights_file(w), wname);
        int wnd = wt->ndim;
        int64_t ws[DF_ST_MAX_DIMS];
        memcpy(ws, wt->shape, sizeof ws);
        float *wp = merge_weights ? df_weights_mut(w, wname, &wnd, ws) : NULL;
        if (merge_weights && !wp) {
            s = df_fail(DF_ERR_NOMEM, "%s: cannot make %s writable", path, wname);
            break;
        }
        int64_t r = a->down->shape[0];
        float alpha;
        if ((s = alpha_of(a, r, &alpha)) != DF_OK)
            break;
        int64_t inner = ws[1] * (wnd == 4 ? ws[2] * ws[3] : 1);
        if (!isfinite(alpha)) {
            s = df_fail(DF_ERR_NUMERIC, "%s: %s: alpha %g is not finite", path,
                        a->alpha->name, alpha);
            break;
        }
        if ((s = merge(path, wp, a, r, ws[0], inner, scale * alpha / (float)r)) != DF_OK)
            break;
        rep->n_pairs++;
        rep->n_applied += 2 + (a->alpha != NULL);
        if (a->target == T_UNET)
            rep->n_unet_pairs++;
        else
            rep->n_te_pairs++;
        fmts |= a->fmt;
    }
    rep->format = format_name(fmts);
    for (size_t i = 0; i < l.n; i++) {
        free(l.v[i].base);
        free(l.v[i].module);
    }
    free(l.v);
    df_st_close(st);
    return s;
}

df_status df_lora_apply(const char *path, float scale, df_weights *unet,
                        df_weights *text_encoder, df_lora_report *rep)
{
    return apply_file(path, scale, unet, text_encoder, rep, true);
}

df_status df_lora_check(const char *path, df_weights *unet, df_weights *text_encoder,
                        df_lora_report *rep)
{
    return apply_file(path, 1.0f, unet, text_encoder, rep, false);
}

void df_lora_report_free(df_lora_report *rep)
{
    for (size_t i = 0; i < rep->n_unmatched; i++)
        free(rep->unmatched[i]);
    free(rep->unmatched);
    memset(rep, 0, sizeof *rep);
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && !S_ISDIR(sb.st_mode);
}

df_status df_lora_parse_arg(const char *arg, char **path, float *scale)
{
    *scale = 1.0f;
    const char *colon = strrchr(arg, ':');
    size_t len = strlen(arg);
    if (colon && colon[1]) {
        char *end;
        double v = strtod(colon + 1, &end);
        if (*end == '\0' && isfinite(v)) {
            *scale = (float)v;
            len = (size_t)(colon - arg);
        } else if (colon > arg && !is_file(arg)) {
            /* "FILE:abc" with FILE there and no file of the whole name: the
             * user meant a scale, and "No such file" would mislead. */
            char *head = strndup(arg, (size_t)(colon - arg));
            bool bad_scale = head && is_file(head);
            free(head);
            if (bad_scale)
                return df_fail(DF_ERR_ARG, "bad scale '%s' in '%s' (want FILE[:SCALE], SCALE "
                               "a finite number)", colon + 1, arg);
        }
    }
    if (len == 0)
        return df_fail(DF_ERR_ARG, "empty LoRA path in '%s'", arg);
    *path = strndup(arg, len);
    return *path ? DF_OK : df_fail(DF_ERR_NOMEM, "out of memory");
}
