/* test_latent_cache.c - lib/io/latent_cache:
 *  - df_latent_encode (the tool's path after the pixel conversion) on the
 *    fixture reference's exact input image gives its mean and logvar
 *    (refs/vae.safetensors, 1e-4 relative); df_latent_pixels' mapping and
 *    mirror;
 *  - the VAE identity equals sha256 of config.json + weights computed by
 *    sha256sum, and changes with the config;
 *  - writer/reader round trip (order by file_name then flip, data, text
 *    embeddings, metadata), several dirs merged;
 *  - crash leftovers: a torn last index line (dropped by the reader, cut
 *    by the next writer), a .tmp file and an orphan shard (removed);
 *  - a second writer of the same index is refused (lock); a re-encoded key
 *    replaces the old entry (last line wins);
 *  - the reader's consistency errors: another VAE, another resolution,
 *    another latent size, a missing shard, a bad index line, a shard name
 *    leaving the dir; the writer refuses a dir of another VAE.
 * The fixture parts need DF_FIXTURES (skipped with a message if absent).
 *
 * With --dump DIR... it is the tool test's helper instead: it opens the
 * dirs with df_latent_cache_open and prints one JSON line of cache facts,
 * then one line per entry with its data (exit 1 and the error on stderr
 * when the open fails). */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "latent_cache.h"
#include "safetensors.h"
#include "unit.h"

static char tmpdir[] = "/tmp/df-test-latent-XXXXXX";
static char fx[1024];

static const char *tpath(const char *name)
{
    static char buf[4][1200];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* ---------------------------------------------------------------- --dump */

static json_t *floats(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static int dump(int ndirs, char **dirs)
{
    df_latent_cache *c;
    if (df_latent_cache_open((const char *const *)dirs, ndirs, &c) != DF_OK) {
        fprintf(stderr, "df_latent_cache_open: %s\n", df_last_error());
        return 1;
    }
    int C, h, w, T, H;
    df_latent_cache_latent_size(c, &C, &h, &w);
    df_latent_cache_text_shape(c, &T, &H);
    const char *teh = df_latent_cache_text_encoder_hash(c);
    json_t *head = json_pack("{s:s, s:i, s:f, s:I, s:[i,i,i], s:[i,i], s:s?}", "vae_hash",
                             df_latent_cache_vae_hash(c), "resolution",
                             df_latent_cache_resolution(c), "scaling_factor",
                             (double)df_latent_cache_scaling_factor(c), "count",
                             (json_int_t)df_latent_cache_count(c), "latent_size", C, h, w,
                             "text_shape", T, H, "text_encoder_hash", teh);
    char *s = json_dumps(head, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(head);
    size_t n = (size_t)C * h * w;
    float *mean = malloc((n + 1) * sizeof *mean), *lv = malloc((n + 1) * sizeof *lv);
    float *te = malloc(((size_t)T * H + 1) * sizeof *te);
    int rc = 0;
    for (size_t i = 0; i < df_latent_cache_count(c); i++) {
        const df_latent_entry *e = df_latent_cache_entry(c, i);
        if (df_latent_cache_read(c, i, mean, lv, e->has_text_embedding ? te : NULL) != DF_OK) {
            fprintf(stderr, "read %zu: %s\n", i, df_last_error());
            rc = 1;
            break;
        }
        json_t *o = json_pack("{s:s, s:s?, s:b, s:[i,i,i], s:b, s:o, s:o}", "file_name",
                              e->file_name, "text", e->text, "flip", e->flip, "size", e->C,
                              e->h, e->w, "has_text_embedding", e->has_text_embedding, "mean",
                              floats(mean, n), "logvar", floats(lv, n));
        if (e->has_text_embedding)
            json_object_set_new(o, "text_embedding", floats(te, (size_t)T * H));
        s = json_dumps(o, JSON_COMPACT);
        puts(s);
        free(s);
        json_decref(o);
    }
    free(mean);
    free(lv);
    free(te);
    df_latent_cache_close(c);
    return fflush(stdout) || rc ? 1 : 0;
}

/* ---------------------------------------------------------------- fixture parts */

static void test_encode_refs(void)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/refs/vae.safetensors", fx);
    df_safetensors *st;
    df_vae *v;
    if (df_st_open(path, &st) != DF_OK) {
        CHECK_MSG(0, "%s", df_last_error());
        return;
    }
    snprintf(path, sizeof path, "%s/pipeline/vae", fx);
    if (df_vae_load(path, NULL, &v) != DF_OK) {
        CHECK_MSG(0, "%s", df_last_error());
        df_st_close(st);
        return;
    }
    float *img = NULL, *rmean = NULL, *rlv = NULL;
    CHECK(df_st_load_f32(st, "image", -1, NULL, &img) == DF_OK);
    CHECK(df_st_load_f32(st, "mean", -1, NULL, &rmean) == DF_OK);
    CHECK(df_st_load_f32(st, "logvar", -1, NULL, &rlv) == DF_OK);
    const df_st_tensor *ti = df_st_find(st, "image"), *tm = df_st_find(st, "mean");
    if (img && rmean && rlv && ti->ndim == 4 && tm->ndim == 4) {
        int B = (int)ti->shape[0], H = (int)ti->shape[2], W = (int)ti->shape[3];
        size_t n = tm->numel;
        float *mean = malloc(n * sizeof *mean), *lv = malloc(n * sizeof *lv);
        df_status s = df_latent_encode(v, img, B, H, W, mean, lv);
        CHECK_MSG(s == DF_OK, "%s", df_last_error());
        double mx = 1;
        for (size_t i = 0; i < n; i++) {
            mx = fabs(rmean[i]) > mx ? fabs(rmean[i]) : mx;
            mx = fabs(rlv[i]) > mx ? fabs(rlv[i]) : mx;
        }
        double dm = unit_max_abs_diff(mean, rmean, n), dl = unit_max_abs_diff(lv, rlv, n);
        CHECK_MSG(dm <= 1e-4 * mx, "mean differs from refs by %g (tolerance %g)", dm, 1e-4 * mx);
        CHECK_MSG(dl <= 1e-4 * mx, "logvar differs from refs by %g (tolerance %g)", dl, 1e-4 * mx);
        fprintf(stderr, "encode vs refs/vae.safetensors: max |diff| mean %.3g, logvar %.3g\n", dm,
                dl);
        free(mean);
        free(lv);
    }
    free(img);
    free(rmean);
    free(rlv);
    df_vae_free(v);
    df_st_close(st);
}

static void sha256sum_of(const char *files, char out[65])
{
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "cat %s | sha256sum", files);
    FILE *p = popen(cmd, "r");
    out[0] = 0;
    if (p) {
        if (fscanf(p, "%64s", out) != 1)
            out[0] = 0;
        pclose(p);
    }
}

static void test_identity(void)
{
    char got[65], want[65], files[8192], model[1200];
    snprintf(model, sizeof model, "%s/pipeline", fx);
    CHECK_MSG(df_latent_cache_vae_identity(model, got) == DF_OK, "%s", df_last_error());
    snprintf(files, sizeof files, "'%s/vae/config.json' '%s/vae/diffusion_pytorch_model.safetensors'",
             model, model);
    sha256sum_of(files, want);
    CHECK_MSG(strlen(want) == 64 && !strcmp(got, want), "vae identity %s, sha256sum %s", got,
              want);
    /* the text encoder's: weights, config and the tokenizer files */
    CHECK(df_latent_cache_text_encoder_identity(model, got) == DF_OK);
    snprintf(files, sizeof files, "'%s/text_encoder/config.json' '%s/text_encoder/model.safetensors' "
             "'%s/tokenizer/vocab.json' '%s/tokenizer/merges.txt' "
             "'%s/tokenizer/special_tokens_map.json' '%s/tokenizer/tokenizer_config.json'",
             model, model, model, model, model, model);
    sha256sum_of(files, want);
    CHECK_MSG(!strcmp(got, want), "text encoder identity %s, sha256sum %s", got, want);

    /* another config, the same weights: another identity */
    char cmd[8000];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/m/vae' && cp '%s/vae/config.json' '%s/m/vae/' && "
             "echo ' ' >> '%s/m/vae/config.json' && ln -s '%s/vae/diffusion_pytorch_model.safetensors' "
             "'%s/m/vae/'", tmpdir, model, tmpdir, tmpdir, model, tmpdir);
    CHECK(system(cmd) == 0);
    char other[65], first[65];
    CHECK(df_latent_cache_vae_identity(model, first) == DF_OK);
    CHECK(df_latent_cache_vae_identity(tpath("m"), other) == DF_OK);
    CHECK(strcmp(first, other) != 0);
    CHECK(df_latent_cache_vae_identity(tpath("nothing"), other) == DF_ERR_NOTFOUND);
}

/* ---------------------------------------------------------------- synthetic caches */

#define C_ 4
#define H_ 3
#define W_ 2
#define T_ 5
#define D_ 6

static const char *HASH_A = "aaaa000000000000000000000000000000000000000000000000000000000001";
static const char *HASH_B = "bbbb000000000000000000000000000000000000000000000000000000000002";

/* Deterministic data of an entry: depends on name, flip and a version. */
static void fill(float *v, size_t n, const char *name, int flip, int kind, int version)
{
    unsigned h = 2166136261u;
    for (const char *s = name; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((h % 1000) + i * 0.25 + flip * 1000 + kind * 10000 + version * 100000);
}

static df_latent_writer_config config(const char *dir, const char *hash, int res, int h, int k,
                                      int n, bool te)
{
    return (df_latent_writer_config){.dir = dir, .shard_k = k, .shard_n = n, .vae_hash = hash,
                                     .resolution = res, .latent_channels = C_, .latent_h = h,
                                     .latent_w = W_, .scaling_factor = 0.18215f,
                                     .text_encoder_hash = te ? HASH_B : NULL, .text_len = T_,
                                     .text_hidden = D_};
}

/* Add names[0..n) (both flips when flips) with version `version`, flushing
 * every `per_shard` names. */
static void write_entries(df_latent_writer *w, const char *const *names, int n, bool flips,
                          int per_shard, int version, bool te, int h)
{
    float mean[C_ * 8 * W_], lv[C_ * 8 * W_], emb[T_ * D_];
    size_t nl = (size_t)C_ * h * W_;
    for (int i = 0; i < n; i++) {
        for (int f = 0; f <= (int)flips; f++) {
            json_t *rec = json_pack("{s:s, s:s, s:i}", "file_name", names[i], "text", names[i],
                                    "extra", i);
            fill(mean, nl, names[i], f, 0, version);
            fill(lv, nl, names[i], f, 1, version);
            fill(emb, T_ * D_, names[i], 0, 2, version);
            const char *shard;
            long index;
            CHECK_MSG(df_latent_writer_add(w, rec, f, mean, lv, te ? emb : NULL, &shard,
                                           &index) == DF_OK, "%s", df_last_error());
            json_decref(rec);
        }
        if ((i + 1) % per_shard == 0)
            CHECK(df_latent_writer_flush(w) == DF_OK);
    }
}

static df_latent_writer *open_writer(df_latent_writer_config cfg)
{
    df_latent_writer *w = NULL;
    df_status s = df_latent_writer_open(&cfg, &w);
    CHECK_MSG(s == DF_OK, "writer open %s: %s", cfg.dir, df_last_error());
    return w;
}

static df_status open_dirs(df_latent_cache **c, int n, ...)
{
    const char *dirs[8];
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        dirs[i] = va_arg(ap, const char *);
    va_end(ap);
    return df_latent_cache_open(dirs, n, c);
}

static bool entry_is(df_latent_cache *c, size_t i, const char *name, int flip, int version)
{
    const df_latent_entry *e = df_latent_cache_entry(c, i);
    if (!e || strcmp(e->file_name, name) || e->flip != flip)
        return false;
    float m[C_ * 8 * W_], l[C_ * 8 * W_], wm[C_ * 8 * W_], wl[C_ * 8 * W_];
    float t[T_ * D_], wt[T_ * D_];
    size_t n = (size_t)e->C * e->h * e->w;
    if (df_latent_cache_read(c, i, m, l, e->has_text_embedding ? t : NULL) != DF_OK)
        return false;
    fill(wm, n, name, flip, 0, version);
    fill(wl, n, name, flip, 1, version);
    fill(wt, T_ * D_, name, 0, 2, version);
    return !memcmp(m, wm, n * sizeof *m) && !memcmp(l, wl, n * sizeof *l) &&
           (!e->has_text_embedding || !memcmp(t, wt, sizeof t));
}

static void test_roundtrip(void)
{
    const char *names[] = {"c.jpg", "a/b.png", "b.jpg", "a.png", "z.png"};
    df_latent_writer *w = open_writer(config(tpath("rt"), HASH_A, 24, H_, 0, 0, true));
    if (!w)
        return;
    write_entries(w, names, 5, true, 2, 0, true, H_);
    CHECK(df_latent_writer_pending(w) == 2);            /* z.png, both flips */
    const char *shard;
    long index;
    CHECK(df_latent_writer_lookup(w, "z.png", 1, "z.png", true, &shard, &index));
    CHECK(!strcmp(shard, "shard-00002.safetensors") && index == 1);
    CHECK(!df_latent_writer_lookup(w, "z.png", 1, "other text", false, NULL, NULL));
    CHECK(!df_latent_writer_lookup(w, "y.png", 0, NULL, false, NULL, NULL));
    CHECK(df_latent_writer_close(w) == DF_OK);

    df_latent_cache *c;
    df_status s = open_dirs(&c, 1, tpath("rt"));
    CHECK_MSG(s == DF_OK, "%s", df_last_error());
    if (s != DF_OK)
        return;
    CHECK(df_latent_cache_count(c) == 10);
    const char *sorted[] = {"a.png", "a/b.png", "b.jpg", "c.jpg", "z.png"};
    for (int i = 0; i < 5; i++)
        for (int f = 0; f < 2; f++)
            CHECK_MSG(entry_is(c, (size_t)(2 * i + f), sorted[i], f, 0), "entry %d", 2 * i + f);
    const df_latent_entry *e = df_latent_cache_entry(c, 0);
    CHECK(e->C == C_ && e->h == H_ && e->w == W_ && e->has_text_embedding && !strcmp(e->text, "a.png"));
    CHECK(!strcmp(df_latent_cache_vae_hash(c), HASH_A));
    CHECK(df_latent_cache_resolution(c) == 24);
    CHECK_NEAR(df_latent_cache_scaling_factor(c), 0.18215, 1e-7);
    int T, D;
    df_latent_cache_text_shape(c, &T, &D);
    CHECK(T == T_ && D == D_);
    CHECK(df_latent_cache_text_encoder_hash(c) && !strcmp(df_latent_cache_text_encoder_hash(c), HASH_B));
    CHECK(df_latent_cache_entry(c, 10) == NULL);
    df_latent_cache_close(c);

    /* the index lines keep the record's other fields */
    FILE *fp = fopen(tpath("rt/index.jsonl"), "r");
    char line[2048];
    CHECK(fp && fgets(line, sizeof line, fp) && strstr(line, "\"extra\":0") &&
          strstr(line, "\"shard\":\"shard-00000.safetensors\"") && strstr(line, "\"size\":[4,3,2]"));
    if (fp)
        fclose(fp);

    /* two shards of one run (K/N) plus a second dir: merged, sorted, no dedupe across dirs */
    const char *n1[] = {"m1", "m3"}, *n2[] = {"m2", "m1"};
    df_latent_writer *w1 = open_writer(config(tpath("sh"), HASH_A, 24, H_, 1, 2, false));
    df_latent_writer *w2 = open_writer(config(tpath("sh"), HASH_A, 24, H_, 2, 2, false));
    if (w1 && w2) {
        write_entries(w1, n1, 1, false, 1, 0, false, H_);
        write_entries(w2, n2, 1, false, 1, 0, false, H_);
        write_entries(w1, n1 + 1, 1, false, 1, 0, false, H_);
    }
    CHECK(df_latent_writer_close(w1) == DF_OK);
    CHECK(df_latent_writer_close(w2) == DF_OK);
    CHECK(access(tpath("sh/index.1-of-2.jsonl"), F_OK) == 0);
    CHECK(access(tpath("sh/shard-2-of-2-00000.safetensors"), F_OK) == 0);
    s = open_dirs(&c, 2, tpath("sh"), tpath("rt"));
    CHECK_MSG(s == DF_OK, "%s", df_last_error());
    if (s == DF_OK) {
        CHECK(df_latent_cache_count(c) == 13);
        CHECK(entry_is(c, 8, "m1", 0, 0) && entry_is(c, 9, "m2", 0, 0) &&
              entry_is(c, 10, "m3", 0, 0) && entry_is(c, 11, "z.png", 0, 0));
        df_latent_cache_close(c);
    }
}

static void append(const char *path, const char *text)
{
    FILE *fp = fopen(path, "a");
    CHECK(fp && fputs(text, fp) >= 0);
    if (fp)
        fclose(fp);
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) ? -1 : (long)sb.st_size;
}

static void test_crash_leftovers(void)
{
    const char *names[] = {"p1", "p2", "p3"};
    df_latent_writer *w = open_writer(config(tpath("cr"), HASH_A, 24, H_, 0, 0, false));
    if (!w)
        return;
    write_entries(w, names, 2, false, 1, 0, false, H_);
    CHECK(df_latent_writer_close(w) == DF_OK);
    long good = file_size(tpath("cr/index.jsonl"));
    /* as a kill leaves them: a torn line, a .tmp, a shard no line names */
    append(tpath("cr/index.jsonl"), "{\"file_name\":\"p3\",\"shard\":\"shard-00002.saf");
    append(tpath("cr/shard-00005.safetensors.tmp"), "partial");
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tpath("cr/shard-00001.safetensors"),
             tpath("cr/shard-00007.safetensors"));
    CHECK(system(cmd) == 0);

    df_latent_cache *c;
    df_status s = open_dirs(&c, 1, tpath("cr"));
    CHECK_MSG(s == DF_OK, "reader with a torn last line: %s", df_last_error());
    if (s == DF_OK) {
        CHECK(df_latent_cache_count(c) == 2);
        df_latent_cache_close(c);
    }
    w = open_writer(config(tpath("cr"), HASH_A, 24, H_, 0, 0, false));
    if (!w)
        return;
    CHECK(file_size(tpath("cr/index.jsonl")) == good);
    CHECK(access(tpath("cr/shard-00005.safetensors.tmp"), F_OK) != 0);
    CHECK(access(tpath("cr/shard-00007.safetensors"), F_OK) != 0);
    CHECK(access(tpath("cr/shard-00001.safetensors"), F_OK) == 0);

    /* a second writer of the same index is refused while this one holds it */
    df_latent_writer_config cfg = config(tpath("cr"), HASH_A, 24, H_, 0, 0, false);
    df_latent_writer *w2 = NULL;
    CHECK(df_latent_writer_open(&cfg, &w2) != DF_OK && w2 == NULL);
    CHECK_MSG(strstr(df_last_error(), "another process"), "%s", df_last_error());

    /* re-encoding a key (a new version of p1) and adding p3: the last line wins */
    CHECK(df_latent_writer_lookup(w, "p1", 0, "p1", false, NULL, NULL));
    write_entries(w, names, 3, false, 3, 1, false, H_);
    CHECK(df_latent_writer_close(w) == DF_OK);
    s = open_dirs(&c, 1, tpath("cr"));
    CHECK_MSG(s == DF_OK, "%s", df_last_error());
    if (s == DF_OK) {
        CHECK(df_latent_cache_count(c) == 3);
        CHECK(entry_is(c, 0, "p1", 0, 1) && entry_is(c, 1, "p2", 0, 1) && entry_is(c, 2, "p3", 0, 1));
        df_latent_cache_close(c);
    }
    /* the next shard number follows the last one in use */
    CHECK(access(tpath("cr/shard-00002.safetensors"), F_OK) == 0);

    /* the newest line wins across index files: p2 again from a --shard
     * writer (read after index.jsonl), then from a plain one (read before) */
    usleep(5000);
    w = open_writer(config(tpath("cr"), HASH_A, 24, H_, 2, 2, false));
    if (w)
        write_entries(w, names + 1, 1, false, 1, 2, false, H_);
    CHECK(df_latent_writer_close(w) == DF_OK);
    usleep(5000);
    w = open_writer(config(tpath("cr"), HASH_A, 24, H_, 0, 0, false));
    if (w)
        write_entries(w, names + 1, 1, false, 1, 3, false, H_);
    CHECK(df_latent_writer_close(w) == DF_OK);
    s = open_dirs(&c, 1, tpath("cr"));
    CHECK_MSG(s == DF_OK, "%s", df_last_error());
    if (s == DF_OK) {
        CHECK(df_latent_cache_count(c) == 3);
        CHECK_MSG(entry_is(c, 1, "p2", 0, 3), "the newest p2 (in index.jsonl) wins");
        df_latent_cache_close(c);
    }
}

static void expect_open_error(const char *what, const char *needle, int n, const char *d1,
                              const char *d2)
{
    df_latent_cache *c = NULL;
    df_status s = n == 1 ? open_dirs(&c, 1, d1) : open_dirs(&c, 2, d1, d2);
    CHECK_MSG(s != DF_OK && c == NULL, "%s: opened", what);
    CHECK_MSG(strstr(df_last_error(), needle), "%s: message \"%s\" lacks \"%s\"", what,
              df_last_error(), needle);
    df_latent_cache_close(c);
}

static void make_cache(const char *name, const char *hash, int res, int h)
{
    const char *names[] = {"q1", "q2"};
    df_latent_writer *w = open_writer(config(tpath(name), hash, res, h, 0, 0, false));
    if (w) {
        write_entries(w, names, 2, false, 1, 0, false, h);
        CHECK(df_latent_writer_close(w) == DF_OK);
    }
}

static void test_consistency(void)
{
    make_cache("base", HASH_A, 24, H_);
    make_cache("othervae", HASH_B, 24, H_);
    make_cache("otherres", HASH_A, 32, H_);
    make_cache("othersize", HASH_A, 24, 4);
    expect_open_error("another VAE", "another VAE", 2, tpath("base"), tpath("othervae"));
    expect_open_error("VAE names the dir", tpath("othervae"), 2, tpath("base"), tpath("othervae"));
    expect_open_error("another resolution", "resolution 32 differs", 2, tpath("base"),
                      tpath("otherres"));
    expect_open_error("another latent size", "latent size", 2, tpath("base"), tpath("othersize"));
    expect_open_error("not a cache", "not a latent cache", 1, tmpdir, NULL);
    expect_open_error("no dir", "No such file", 1, tpath("absent"), NULL);

    /* the writer refuses to mix */
    df_latent_writer_config cfg = config(tpath("base"), HASH_B, 24, H_, 1, 3, false);
    df_latent_writer *w = NULL;
    CHECK(df_latent_writer_open(&cfg, &w) != DF_OK && !w);
    CHECK_MSG(strstr(df_last_error(), "another VAE"), "%s", df_last_error());
    cfg = config(tpath("base"), HASH_A, 32, H_, 1, 3, false);
    CHECK(df_latent_writer_open(&cfg, &w) != DF_OK && !w);
    CHECK_MSG(strstr(df_last_error(), "resolution"), "%s", df_last_error());

    /* damage: a missing shard, a bad line in the middle, a shard outside */
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && rm '%s/shard-00001.safetensors'", tpath("base"),
             tpath("noshard"), tpath("noshard"));
    CHECK(system(cmd) == 0);
    expect_open_error("missing shard", "shard-00001.safetensors", 1, tpath("noshard"), NULL);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && sed -i '1s/^/garbage /' '%s/index.jsonl'",
             tpath("base"), tpath("badline"), tpath("badline"));
    CHECK(system(cmd) == 0);
    expect_open_error("bad line", "index.jsonl line 1", 1, tpath("badline"), NULL);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && sed -i '1s/shard-00000/..\\/x\\/shard-00000/' "
             "'%s/index.jsonl'", tpath("base"), tpath("escape"), tpath("escape"));
    CHECK(system(cmd) == 0);
    expect_open_error("shard outside", "\"shard\"", 1, tpath("escape"), NULL);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && sed -i '2s/\"index\":0/\"index\":5/' "
             "'%s/index.jsonl'", tpath("base"), tpath("noentry"), tpath("noentry"));
    CHECK(system(cmd) == 0);
    expect_open_error("entry not in its shard", "mean/5", 1, tpath("noentry"), NULL);
}

static void test_pixels(void)
{
    df_image img;
    CHECK(df_image_alloc(&img, 3, 2) == DF_OK);
    for (int i = 0; i < 18; i++)
        img.px[i] = (uint8_t)(i * 15);
    float a[18], b[18];
    df_latent_pixels(&img, 0, a);
    df_latent_pixels(&img, 1, b);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++) {
                float want = (float)img.px[(y * 3 + x) * 3 + c] / 127.5f - 1.0f;
                CHECK(a[(c * 2 + y) * 3 + x] == want);
                CHECK(b[(c * 2 + y) * 3 + (2 - x)] == want);
            }
    img.px[0] = 0;
    img.px[1] = 255;
    df_latent_pixels(&img, 0, a);
    CHECK(a[0] == -1.0f && a[6] == 1.0f);
    df_image_free(&img);
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--dump"))
        return dump(argc - 2, argv + 2);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *env = getenv("DF_FIXTURES");
    snprintf(fx, sizeof fx, "%s", env ? env : "../shared/fixtures");
    test_pixels();
    test_roundtrip();
    test_crash_leftovers();
    test_consistency();
    struct stat sb;
    if (stat(fx, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        test_encode_refs();
        test_identity();
    } else {
        fprintf(stderr, "SKIP fixture parts: no fixtures at %s (set DF_FIXTURES)\n", fx);
    }
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    UNIT_END();
}
