/* test_lora_params.c - lib/train/lora_params on the fixture model: the set has
 * exactly the fixtures' LoRA parameters (MANIFEST lora_param_keys, named by
 * df_lora_key in diffusers format, with their shapes); the fixtures' PEFT,
 * diffusers and kohya files load to identical values; files saved in each
 * format have the fixtures' key names and merge through lib/models/lora.c into
 * W + (alpha/r) B A computed here (alpha = rank and alpha != rank); bad
 * ranks, targets, alphas and files fail with errors naming the cause; the
 * initialisations have the right statistics. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "lora.h"
#include "lora_params.h"
#include "rng.h"
#include "safetensors.h"
#include "unit.h"
#include "weights.h"

static char fx[2048];
static char tmpdir[64];

static const char *fxpath(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx, rel);
    return buf[k];
}

static const char *tmppath(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static const char *const UNET_T[] = {"to_q", "to_k", "to_v", "to_out.0"};
static const char *const TE_T[] = {"q_proj", "k_proj", "v_proj", "out_proj"};

static void open_models(df_weights **unet, df_weights **te)
{
    CHECK(df_weights_open_dir(fxpath("pipeline/unet"), NULL, unet) == DF_OK);
    CHECK(df_weights_open_dir(fxpath("pipeline/text_encoder"), NULL, te) == DF_OK);
}

static df_status make_set(df_lora_set *s, df_weights *unet, df_weights *te, int rank, float alpha)
{
    return df_lora_set_create(s, unet, UNET_T, 4, te, TE_T, 4, rank, alpha);
}

/* The set against MANIFEST lora_param_keys: a one-to-one map with shapes. */
static void check_manifest(const df_lora_set *s)
{
    json_error_t je;
    json_t *man = json_load_file(fxpath("refs/MANIFEST.json"), 0, &je);
    const json_t *keys = json_object_get(man, "lora_param_keys");
    CHECK_MSG(json_is_object(keys), "MANIFEST lora_param_keys: %s", je.text);
    CHECK_MSG(json_object_size(keys) == 2 * s->n, "MANIFEST has %zu keys, the set %zu params",
              json_object_size(keys), s->n);
    unsigned char *seen = calloc(2 * s->n, 1);
    const char *key;
    json_t *shape;
    json_object_foreach((json_t *)keys, key, shape) {
        int hits = 0;
        for (size_t i = 0; i < s->n; i++)
            for (int which = 0; which < 2; which++) {
                char k[1100];
                df_lora_key(k, sizeof k, &s->p[i], which, DF_LORA_FMT_DIFFUSERS);
                if (strcmp(k, key) != 0)
                    continue;
                hits++;
                seen[2 * i + which]++;
                long r0 = which ? s->p[i].out : s->rank, r1 = which ? s->rank : s->p[i].in;
                CHECK_MSG(json_array_size(shape) == 2 &&
                          json_integer_value(json_array_get(shape, 0)) == r0 &&
                          json_integer_value(json_array_get(shape, 1)) == r1,
                          "%s: shape differs from (%ld, %ld)", key, r0, r1);
            }
        CHECK_MSG(hits == 1, "%s matches %d params", key, hits);
    }
    for (size_t i = 0; i < 2 * s->n; i++)
        CHECK_MSG(seen[i] == 1, "param %s (%s) not in the MANIFEST", s->p[i / 2].module,
                  i % 2 ? "B" : "A");
    free(seen);
    json_decref(man);
}

static void check_layout(const df_lora_set *s)
{
    CHECK(s->n == 136);
    size_t off = 0, nu = 0;
    for (size_t i = 0; i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        CHECK(p->A == s->params + off && p->gA == s->grads + off);
        off += (size_t)s->rank * p->in;
        CHECK(p->B == s->params + off && p->gB == s->grads + off);
        off += (size_t)s->rank * p->out;
        if (p->component == DF_LORA_UNET)
            nu = off;
        if (i > 0) {
            const df_lora_param *q = &s->p[i - 1];
            CHECK(q->component < p->component ||
                  (q->component == p->component && strcmp(q->module, p->module) < 0));
        }
    }
    CHECK(off == s->nfloats && nu == s->n_unet_floats);
    CHECK(s->p[0].component == DF_LORA_UNET && s->p[s->n - 1].component == DF_LORA_TE);
    df_lora_param *p = df_lora_set_find((df_lora_set *)s, DF_LORA_TE,
                                        "text_model.encoder.layers.1.self_attn.out_proj");
    CHECK(p && p->component == DF_LORA_TE && p->in == 32 && p->out == 32);
    p = df_lora_set_find((df_lora_set *)s, DF_LORA_UNET,
                         "mid_block.attentions.0.transformer_blocks.0.attn2.to_k");
    CHECK(p && p->out == 64 && p->in == 32);   /* cross-attention: text width 32 in */
    CHECK(!df_lora_set_find((df_lora_set *)s, DF_LORA_UNET,
                            "text_model.encoder.layers.1.self_attn.out_proj"));
    CHECK(!df_lora_set_find((df_lora_set *)s, DF_LORA_UNET, "nothing"));
    char k[256];
    df_lora_set *ms = (df_lora_set *)s;
    p = df_lora_set_find(ms, DF_LORA_TE, "text_model.encoder.layers.0.self_attn.q_proj");
    df_lora_key(k, sizeof k, p, 0, DF_LORA_FMT_KOHYA);
    CHECK(!strcmp(k, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"));
    df_lora_key(k, sizeof k, p, 2, DF_LORA_FMT_KOHYA);
    CHECK(!strcmp(k, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"));
    df_lora_key(k, sizeof k, p, 1, DF_LORA_FMT_PEFT);
    CHECK(!strcmp(k, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"));
    df_lora_key(k, sizeof k, p, 2, DF_LORA_FMT_PEFT);
    CHECK(k[0] == '\0');
    df_lora_key(k, 10, p, 0, DF_LORA_FMT_PEFT);     /* does not fit: "" */
    CHECK(k[0] == '\0');
}

/* Key sets of two safetensors files are equal. */
static void same_keys(const char *a, const char *b)
{
    df_safetensors *x, *y;
    CHECK(df_st_open(a, &x) == DF_OK);
    CHECK(df_st_open(b, &y) == DF_OK);
    CHECK_MSG(df_st_count(x) == df_st_count(y), "%s: %zu tensors, %s: %zu", a, df_st_count(x), b,
              df_st_count(y));
    for (size_t i = 0; i < df_st_count(x); i++) {
        const df_st_tensor *t = df_st_at(x, i), *u = df_st_find(y, t->name);
        CHECK_MSG(u && u->ndim == t->ndim, "%s: %s not in %s (or other rank)", a, t->name, b);
    }
    df_st_close(x);
    df_st_close(y);
}

static void randomize(df_lora_set *s, uint64_t seed)
{
    df_rng r;
    df_rng_seed(&r, seed);
    df_rng_randn(&r, s->params, s->nfloats);
    for (size_t i = 0; i < s->nfloats; i++)
        s->params[i] *= 0.1f;
}

/* Save s in fmt, merge the file with lib/models/lora.c into fresh weights, and
 * compare every adapted weight with W + (alpha/r) B A from s itself; then
 * load the file back into a set with s's rank and alpha. */
static void round_trip(const df_lora_set *s, df_lora_format fmt, const char *name)
{
    const char *path = tmppath(name);
    const char *meta[] = {"ss_network_dim", "4", "format", "not-pt", NULL};
    df_status st = df_lora_set_save(s, path, fmt, meta);
    CHECK_MSG(st == DF_OK, "%s: %s", name, df_last_error());
    df_safetensors *f;
    CHECK(df_st_open(path, &f) == DF_OK);
    CHECK(!strcmp(df_st_metadata(f, "format"), "pt"));
    CHECK(df_st_metadata(f, "ss_network_dim") && !strcmp(df_st_metadata(f, "ss_network_dim"), "4"));
    CHECK(df_st_count(f) == s->n * (fmt == DF_LORA_FMT_KOHYA ? 3 : 2));
    if (fmt == DF_LORA_FMT_KOHYA) {
        char k[1100];
        df_lora_key(k, sizeof k, &s->p[0], 2, fmt);
        const df_st_tensor *a = df_st_find(f, k);
        float v = 0;
        CHECK(a && a->ndim == 0 && a->dtype == DF_DTYPE_F32 && df_st_to_f32(a, &v) == DF_OK &&
              v == s->alpha);
    }
    df_st_close(f);

    df_weights *unet, *te, *bu, *bt;
    open_models(&unet, &te);
    open_models(&bu, &bt);
    df_lora_report rep;
    st = df_lora_apply(path, 1.0f, unet, te, &rep);
    CHECK_MSG(st == DF_OK, "%s: %s", name, df_last_error());
    CHECK_MSG(rep.n_applied == rep.n_tensors && rep.n_unmatched == 0 && rep.n_pairs == s->n,
              "%s: %zu of %zu applied, %zu unmatched", name, rep.n_applied, rep.n_tensors,
              rep.n_unmatched);
    df_lora_report_free(&rep);
    double worst = 0;
    const double f_ar = (double)s->alpha / s->rank;
    for (size_t i = 0; i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        char wname[1100];
        snprintf(wname, sizeof wname, "%s.weight", p->module);
        df_weights *w = p->component == DF_LORA_UNET ? unet : te;
        df_weights *b = p->component == DF_LORA_UNET ? bu : bt;
        const float *merged = df_weights_get(w, wname, -1, NULL, NULL);
        const float *base = df_weights_get(b, wname, -1, NULL, NULL);
        CHECK(merged && base);
        if (!merged || !base)
            continue;
        for (int o = 0; o < p->out; o++)
            for (int k = 0; k < p->in; k++) {
                double acc = 0;
                for (int r = 0; r < s->rank; r++)
                    acc += (double)p->B[o * s->rank + r] * p->A[r * p->in + k];
                double want = base[o * p->in + k] + f_ar * acc;
                worst = fmax(worst, fabs(merged[o * p->in + k] - want));
            }
    }
    CHECK_MSG(worst <= 2e-6, "%s (alpha %g): merged weights differ by %g", name, s->alpha, worst);
    df_weights_free(unet);
    df_weights_free(te);

    /* Back into a set: equal values (exact when alpha/rank is a power of two). */
    df_lora_set t;
    CHECK(make_set(&t, bu, bt, s->rank, s->alpha) == DF_OK);
    st = df_lora_set_load(&t, path);
    CHECK_MSG(st == DF_OK, "%s: %s", name, df_last_error());
    double d = unit_max_abs_diff(t.params, s->params, s->nfloats);
    double ratio = (double)s->alpha / s->rank;
    bool pow2 = ratio == ldexp(1.0, ilogb(ratio));
    CHECK_MSG(pow2 ? d == 0 : d <= 1e-7, "%s (alpha %g): reloaded params differ by %g", name,
              s->alpha, d);
    df_lora_set_free(&t);
    df_weights_free(bu);
    df_weights_free(bt);
}

/* A file with the given tensors of src (by predicate) plus extra ones. */
static void write_subset(const char *src, const char *dst, const char *skip_containing,
                         const char *extra_name)
{
    df_safetensors *f;
    CHECK(df_st_open(src, &f) == DF_OK);
    df_st_writer *w = df_st_writer_new();
    for (size_t i = 0; i < df_st_count(f); i++) {
        const df_st_tensor *t = df_st_at(f, i);
        if (skip_containing && strstr(t->name, skip_containing))
            continue;
        df_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    static const float x[4] = {1, 2, 3, 4};
    if (extra_name)
        df_st_writer_add(w, extra_name, DF_DTYPE_F32, 2, (int64_t[]){1, 4}, x);
    CHECK(df_st_write(w, dst) == DF_OK);
    df_st_writer_free(w);
    df_st_close(f);
}

static void check_errors(df_weights *unet, df_weights *te)
{
    df_lora_set s;
    df_status st = make_set(&s, unet, te, 64, 64);
    CHECK(st == DF_ERR_ARG && strstr(df_last_error(), "rank 64 does not fit") &&
          strstr(df_last_error(), "(32x32)"));
    CHECK(s.p == NULL && s.n == 0);
    CHECK(make_set(&s, unet, te, 0, 1) == DF_ERR_ARG);
    CHECK(make_set(&s, unet, te, 4, 0) == DF_ERR_ARG);
    CHECK(make_set(&s, unet, te, 4, NAN) == DF_ERR_ARG);
    const char *bad[] = {"to_zz", "proj_zz"};
    st = df_lora_set_create(&s, unet, bad, 2, te, TE_T, 4, 4, 4);
    CHECK(st == DF_ERR_NOTFOUND && strstr(df_last_error(), "\"to_zz\", \"proj_zz\""));
    CHECK(df_lora_set_create(&s, NULL, UNET_T, 4, NULL, TE_T, 4, 4, 4) == DF_ERR_ARG);

    /* UNet only: the text encoder's tensors of a file belong to nothing. */
    CHECK(df_lora_set_create(&s, unet, UNET_T, 4, NULL, NULL, 0, 4, 4) == DF_OK);
    CHECK(s.n == 128 && s.n_unet_floats == s.nfloats);
    st = df_lora_set_load(&s, fxpath("lora/peft_lora.safetensors"));
    CHECK(st == DF_ERR_NOTFOUND && strstr(df_last_error(), "text_encoder.text_model"));
    df_lora_set_free(&s);

    /* More targets than the file has: the missing parameter is named. */
    const char *more[] = {"to_q", "to_k", "to_v", "to_out.0", "proj_in"};
    CHECK(df_lora_set_create(&s, unet, more, 5, te, TE_T, 4, 4, 4) == DF_OK);
    for (size_t i = 0; i < s.nfloats; i++)
        s.params[i] = 7;
    st = df_lora_set_load(&s, fxpath("lora/peft_lora.safetensors"));
    CHECK(st == DF_ERR_NOTFOUND && strstr(df_last_error(), "proj_in.lora_A.weight"));
    CHECK(s.params[0] == 7 && s.params[s.nfloats - 1] == 7);   /* unchanged on failure */
    df_lora_set_free(&s);

    CHECK(make_set(&s, unet, te, 4, 4) == DF_OK);
    /* An unknown tensor is named; a missing one too. */
    write_subset(fxpath("lora/peft_lora.safetensors"), tmppath("extra.safetensors"), NULL,
                 "unet.foo.lora_A.weight");
    st = df_lora_set_load(&s, tmppath("extra.safetensors"));
    CHECK(st == DF_ERR_NOTFOUND && strstr(df_last_error(), "unet.foo.lora_A.weight"));
    write_subset(fxpath("lora/peft_lora.safetensors"), tmppath("junk.safetensors"), NULL,
                 "something_else");
    st = df_lora_set_load(&s, tmppath("junk.safetensors"));
    CHECK(st == DF_ERR_FORMAT && strstr(df_last_error(), "something_else"));
    write_subset(fxpath("lora/peft_lora.safetensors"), tmppath("missing.safetensors"),
                 "layers.1.self_attn.v_proj.lora_B", NULL);
    st = df_lora_set_load(&s, tmppath("missing.safetensors"));
    CHECK(st == DF_ERR_NOTFOUND && strstr(df_last_error(), "layers.1.self_attn.v_proj.lora_B"));
    /* A wrong shape (rank 4 file into a rank 2 set). */
    df_lora_set r2;
    CHECK(make_set(&r2, unet, te, 2, 2) == DF_OK);
    CHECK(df_lora_set_load(&r2, fxpath("lora/peft_lora.safetensors")) == DF_ERR_SHAPE);
    df_lora_set_free(&r2);
    CHECK(df_lora_set_load(&s, tmppath("absent.safetensors")) != DF_OK);
    CHECK(df_lora_set_init(&s, "xavier", NULL) == DF_ERR_ARG);
    CHECK(df_lora_set_save(&s, tmppath("x.safetensors"), (df_lora_format)7, NULL) == DF_ERR_ARG);
    df_lora_set_free(&s);

    /* kohya's explicit alpha 4 does not fit a set with alpha 8; the PEFT file
     * (no alpha: factor 1) loads with B / 2. */
    df_lora_set a8, a4;
    CHECK(make_set(&a8, unet, te, 4, 8) == DF_OK);
    CHECK(make_set(&a4, unet, te, 4, 4) == DF_OK);
    st = df_lora_set_load(&a8, fxpath("lora/kohya_lora.safetensors"));
    CHECK(st == DF_ERR_ARG && strstr(df_last_error(), ".alpha"));
    CHECK(df_lora_set_load(&a8, fxpath("lora/peft_lora.safetensors")) == DF_OK);
    CHECK(df_lora_set_load(&a4, fxpath("lora/peft_lora.safetensors")) == DF_OK);
    bool ok = true;
    for (size_t i = 0; i < a4.n; i++) {
        ok &= !memcmp(a4.p[i].A, a8.p[i].A, (size_t)a4.rank * a4.p[i].in * sizeof(float));
        for (int k = 0; k < a4.rank * a4.p[i].out; k++)
            ok &= a8.p[i].B[k] == a4.p[i].B[k] / 2;
    }
    CHECK(ok);
    df_lora_set_free(&a8);
    df_lora_set_free(&a4);
}

static void stats(const float *x, size_t n, double *mean, double *std, double *maxabs)
{
    double s = 0, ss = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        m = fmax(m, fabs(x[i]));
    }
    *mean = s / n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *std = sqrt(ss / n);
    *maxabs = m;
}

/* A values of every param gathered; B must be all zero. */
static void check_init(df_weights *unet, df_weights *te, const char *how)
{
    df_lora_set s;
    CHECK(make_set(&s, unet, te, 4, 4) == DF_OK);
    for (size_t i = 0; i < s.nfloats; i++)
        s.params[i] = 1;   /* B must be reset */
    df_rng r;
    df_rng_seed(&r, 42);
    CHECK(df_lora_set_init(&s, how, &r) == DF_OK);
    float *a = calloc(s.nfloats, sizeof *a);
    size_t na = 0;
    bool b_zero = true;
    double bound_ratio = 0;   /* max over params of max|A| * sqrt(in) */
    for (size_t i = 0; i < s.n; i++) {
        const df_lora_param *p = &s.p[i];
        for (int k = 0; k < s.rank * p->in; k++) {
            a[na++] = p->A[k];
            bound_ratio = fmax(bound_ratio, fabs(p->A[k]) * sqrt(p->in));
        }
        for (int k = 0; k < s.rank * p->out; k++)
            b_zero &= p->B[k] == 0;
    }
    double mean, std, mx;
    stats(a, na, &mean, &std, &mx);
    CHECK(b_zero);
    if (!strcmp(how, "gaussian")) {
        fprintf(stderr, "gaussian A: %zu values, mean %.4f, std %.4f (want 0.25)\n", na, mean, std);
        CHECK(fabs(mean) < 0.01 && fabs(std / 0.25 - 1) < 0.03);
    } else {
        /* Every A here has in = 32 (the text width) or 64: bound 1/sqrt(in). */
        double b = 1 / sqrt(32.0);
        fprintf(stderr, "kaiming A: %zu values, mean %.4f, std %.4f (want about %.4f), "
                "max |A| sqrt(in) %.6f\n", na, mean, std, b / sqrt(3.0), bound_ratio);
        CHECK(bound_ratio <= 1 + 1e-6);
        CHECK(fabs(mean) < 0.01);
        /* A mixture of bounds 1/sqrt(32) and 1/sqrt(64): the std lies
         * between theirs over sqrt(3). */
        CHECK(std <= b / sqrt(3.0) * 1.03 && std >= 0.125 / sqrt(3.0) * 0.97);
        /* The in=32 params alone match b/sqrt(3) within a few %. */
        size_t n32 = 0;
        for (size_t i = 0, o = 0; i < s.n; i++) {
            int sz = s.rank * s.p[i].in;
            if (s.p[i].in == 32)
                memmove(a + n32, a + o, (size_t)sz * sizeof *a), n32 += (size_t)sz;
            o += (size_t)sz;
        }
        stats(a, n32, &mean, &std, &mx);
        CHECK_MSG(fabs(std / (b / sqrt(3.0)) - 1) < 0.03 && mx <= b, "in=32: std %g max %g", std,
                  mx);
    }
    /* Reproducible from the seed. */
    df_lora_set t;
    CHECK(make_set(&t, unet, te, 4, 4) == DF_OK);
    df_rng_seed(&r, 42);
    CHECK(df_lora_set_init(&t, how, &r) == DF_OK);
    CHECK(!memcmp(t.params, s.params, s.nfloats * sizeof(float)));
    df_lora_set_free(&t);
    free(a);
    df_lora_set_free(&s);
}

int main(void)
{
    const char *env = getenv("DF_FIXTURES");
    snprintf(fx, sizeof fx, "%s", env ? env : "../shared/fixtures");
    if (access(fxpath("lora/peft_lora.safetensors"), R_OK) != 0) {
        fprintf(stderr, "fixtures not found at %s (set DF_FIXTURES)\n", fx);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/df-lora-params-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    df_weights *unet, *te;
    open_models(&unet, &te);

    df_lora_set s[3];
    const char *files[3] = {"lora/peft_lora.safetensors", "lora/pytorch_lora_weights.safetensors",
                            "lora/kohya_lora.safetensors"};
    for (int f = 0; f < 3; f++) {
        df_status st = make_set(&s[f], unet, te, 4, 4);
        CHECK_MSG(st == DF_OK, "%s", df_last_error());
        if (st != DF_OK)
            return 1;
        st = df_lora_set_load(&s[f], fxpath(files[f]));
        CHECK_MSG(st == DF_OK, "%s: %s", files[f], df_last_error());
    }
    check_layout(&s[0]);
    check_manifest(&s[0]);
    CHECK(!memcmp(s[0].params, s[1].params, s[0].nfloats * sizeof(float)));
    CHECK(!memcmp(s[0].params, s[2].params, s[0].nfloats * sizeof(float)));
    /* Spot check against the file itself. */
    df_safetensors *pf;
    CHECK(df_st_open(fxpath("lora/peft_lora.safetensors"), &pf) == DF_OK);
    float *want = NULL;
    CHECK(df_st_load_f32(pf, "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight",
                         -1, NULL, &want) == DF_OK);
    df_lora_param *p = df_lora_set_find(&s[0], DF_LORA_UNET,
                                        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v");
    CHECK(p && want && !memcmp(p->B, want, (size_t)p->out * 4 * sizeof(float)));
    free(want);
    df_st_close(pf);

    /* Saved files have the fixtures' names, exactly. */
    CHECK(df_lora_set_save(&s[0], tmppath("peft.safetensors"), DF_LORA_FMT_PEFT, NULL) == DF_OK);
    CHECK(df_lora_set_save(&s[0], tmppath("diff.safetensors"), DF_LORA_FMT_DIFFUSERS, NULL) == DF_OK);
    CHECK(df_lora_set_save(&s[0], tmppath("kohya.safetensors"), DF_LORA_FMT_KOHYA, NULL) == DF_OK);
    same_keys(tmppath("peft.safetensors"), fxpath(files[0]));
    same_keys(tmppath("diff.safetensors"), fxpath(files[1]));
    same_keys(tmppath("kohya.safetensors"), fxpath(files[2]));

    /* zero_grad */
    for (size_t i = 0; i < s[0].nfloats; i++)
        s[0].grads[i] = 1;
    df_lora_set_zero_grad(&s[0]);
    CHECK(s[0].grads[0] == 0 && s[0].grads[s[0].nfloats - 1] == 0);
    for (int f = 0; f < 3; f++)
        df_lora_set_free(&s[f]);

    /* Merges through lib/models/lora.c: alpha = rank, 2 * rank, 1.5 * rank. */
    const float alphas[] = {4, 8, 6};
    for (int a = 0; a < 3; a++) {
        df_lora_set t;
        CHECK(make_set(&t, unet, te, 4, alphas[a]) == DF_OK);
        randomize(&t, 7 + (uint64_t)a);
        round_trip(&t, DF_LORA_FMT_PEFT, "rt_peft.safetensors");
        round_trip(&t, DF_LORA_FMT_DIFFUSERS, "rt_diffusers.safetensors");
        round_trip(&t, DF_LORA_FMT_KOHYA, "rt_kohya.safetensors");
        df_lora_set_free(&t);
    }

    check_errors(unet, te);
    check_init(unet, te, "gaussian");
    check_init(unet, te, "kaiming");

    df_weights_free(unet);
    df_weights_free(te);
    const char *names[] = {"peft.safetensors", "diff.safetensors", "kohya.safetensors",
                           "rt_peft.safetensors", "rt_diffusers.safetensors",
                           "rt_kohya.safetensors", "extra.safetensors", "junk.safetensors",
                           "missing.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(tmppath(names[i]));
    CHECK_MSG(rmdir(tmpdir) == 0, "%s left non-empty", tmpdir);
    UNIT_END();
}
