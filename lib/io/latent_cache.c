/* latent_cache.c - the latent cache: index files, shards, the crash-safe
 * writer and the checking reader. The layout and the rules are described
 * in latent_cache.h. Tested by tests/unit/test_latent_cache.c and
 * tests/tools/test-df-encode-latents.sh. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jsonl.h"
#include "latent_cache.h"
#include "safetensors.h"

/* ---------------------------------------------------------------- identity hashes */

/* sha256 over the concatenated bytes of the files; a NULL path is skipped,
 * a path whose file is missing fails unless optional. */
static df_status hash_files(const char *const *paths, const int *optional, int n,
                            char out_hex[65])
{
    enum { CHUNK = 1 << 20 };
    out_hex[0] = 0;
    unsigned char *chunk = malloc(CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!chunk || !md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(md);
        free(chunk);
        return df_fail(DF_ERR_NOMEM, "sha256: cannot initialize");
    }
    df_status st = DF_OK;
    for (int i = 0; i < n && st == DF_OK; i++) {
        if (!paths[i])
            continue;
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (!(optional[i] && errno == ENOENT))
                st = df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", paths[i],
                             strerror(errno));
            continue;
        }
        for (;;) {
            ssize_t k = read(fd, chunk, CHUNK);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0) {
                st = df_fail(DF_ERR_IO, "%s: %s", paths[i], strerror(errno));
                break;
            }
            if (k == 0)
                break;
            EVP_DigestUpdate(md, chunk, (size_t)k);
        }
        close(fd);
    }
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    if (st == DF_OK && (!EVP_DigestFinal_ex(md, d, &dn) || dn != 32))
        st = df_fail(DF_ERR_IO, "sha256: cannot finish");
    if (st == DF_OK)
        for (unsigned i = 0; i < 32; i++)
            snprintf(out_hex + 2 * i, 3, "%02x", d[i]);
    EVP_MD_CTX_free(md);
    free(chunk);
    return st;
}

/* dir/diffusion_pytorch_model.safetensors, else dir/model.safetensors (the
 * order of df_weights_open_dir without a variant); malloc'd, NULL if none. */
static char *weight_file(const char *dir)
{
    static const char *const stems[] = {"diffusion_pytorch_model", "model"};
    for (int i = 0; i < 2; i++) {
        char *p;
        if (asprintf(&p, "%s/%s.safetensors", dir, stems[i]) < 0)
            return NULL;
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            return p;
        free(p);
    }
    return NULL;
}

static df_status component_identity(const char *model_dir, const char *component,
                                    const char *const *extra, int nextra, char out_hex[65])
{
    char *paths[8] = {0}, *dir = NULL;
    int optional[8] = {0}, n = 0;
    df_status st = DF_OK;
    if (asprintf(&dir, "%s/%s", model_dir, component) < 0)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    if (asprintf(&paths[n++], "%s/config.json", dir) < 0)
        paths[n - 1] = NULL;
    if (!(paths[n++] = weight_file(dir)))
        st = df_fail(DF_ERR_NOTFOUND, "%s: no diffusion_pytorch_model.safetensors or "
                     "model.safetensors", dir);
    for (int i = 0; i < nextra && n < 8; i++, n++) {
        optional[n] = 1;
        if (asprintf(&paths[n], "%s/%s", model_dir, extra[i]) < 0)
            paths[n] = NULL;
    }
    if (st == DF_OK && !paths[0])
        st = df_fail(DF_ERR_NOMEM, "out of memory");
    if (st == DF_OK)
        st = hash_files((const char *const *)paths, optional, n, out_hex);
    for (int i = 0; i < n; i++)
        free(paths[i]);
    free(dir);
    return st;
}

df_status df_latent_cache_vae_identity(const char *model_dir, char out_hex[65])
{
    return component_identity(model_dir, "vae", NULL, 0, out_hex);
}

df_status df_latent_cache_text_encoder_identity(const char *model_dir, char out_hex[65])
{
    static const char *const tok[] = {"tokenizer/vocab.json", "tokenizer/merges.txt",
                                      "tokenizer/special_tokens_map.json",
                                      "tokenizer/tokenizer_config.json"};
    return component_identity(model_dir, "text_encoder", tok, 4, out_hex);
}

/* ---------------------------------------------------------------- encoding */

void df_latent_pixels(const df_image *img, int flip, float *chw)
{
    // img (H,W,3) uint8, chw (3,H,W)
    int H = img->h, W = img->w;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++) {
            const uint8_t *row = img->px + (size_t)y * W * 3;
            float *o = chw + ((size_t)c * H + y) * W;
            for (int x = 0; x < W; x++) {
                int sx = flip ? W - 1 - x : x;
                o[x] = (float)row[sx * 3 + c] / 127.5f - 1.0f;
            }
        }
}

df_status df_latent_encode(df_vae *v, const float *images, int B, int H, int W, float *mean,
                           float *logvar)
{
    int h, w, L = df_vae_latent_channels(v);
    df_vae_latent_size(v, H, W, &h, &w);
    size_t n = (size_t)B * 2 * L * h * w;
    float *moments = malloc(n * sizeof *moments);
    if (!moments)
        return df_fail(DF_ERR_NOMEM, "out of memory for %zu moments", n);
    df_status st = df_vae_encode(v, images, B, H, W, moments);
    if (st == DF_OK)
        df_vae_posterior(moments, B, L, h * w, mean, logvar, NULL);
    free(moments);
    return st;
}

/* ---------------------------------------------------------------- a string -> long map */

typedef struct {
    char **keys;
    long *vals;
    size_t cap, n;
} strmap;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static long *map_slot(const strmap *m, const char *key)
{
    size_t i = fnv1a(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key))
        i = (i + 1) & (m->cap - 1);
    return &m->vals[i];
}

static bool map_get(const strmap *m, const char *key, long *val)
{
    if (!m->cap)
        return false;
    long *v = map_slot(m, key);
    size_t i = (size_t)(v - m->vals);
    if (!m->keys[i])
        return false;
    *val = *v;
    return true;
}

static int map_grow(strmap *m)
{
    strmap g = {.cap = m->cap ? m->cap * 2 : 256};
    g.keys = calloc(g.cap, sizeof *g.keys);
    g.vals = calloc(g.cap, sizeof *g.vals);
    if (!g.keys || !g.vals) {
        free(g.keys);
        free(g.vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            long *v = map_slot(&g, m->keys[i]);
            g.keys[v - g.vals] = m->keys[i];
            *v = m->vals[i];
        }
    g.n = m->n;
    free(m->keys);
    free(m->vals);
    *m = g;
    return 0;
}

/* Insert or overwrite; the key is copied. */
static int map_put(strmap *m, const char *key, long val)
{
    if ((m->n + 1) * 2 > m->cap && map_grow(m))
        return -1;
    long *v = map_slot(m, key);
    size_t i = (size_t)(v - m->vals);
    if (!m->keys[i]) {
        if (!(m->keys[i] = strdup(key)))
            return -1;
        m->n++;
    }
    *v = val;
    return 0;
}

static void map_free(strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* "0file_name" / "1file_name": the key of an entry within a directory. */
static char *entry_key(const char *file_name, int flip)
{
    size_t n = strlen(file_name);
    char *k = malloc(n + 2);
    if (k) {
        k[0] = flip ? '1' : '0';
        memcpy(k + 1, file_name, n + 1);
    }
    return k;
}

/* ---------------------------------------------------------------- index files */

/* One index line as read. */
typedef struct {
    char *file_name, *text, *shard;
    long index;
    int flip, C, h, w, has_te;
    int dir;                  /* which of the dirs given */
    char encoded_at[32];      /* UTC "2026-01-05T12:34:56.789Z" of the line ("" if absent) */
    long seq;                 /* reading order within the dir */
    int sid;                  /* reader: shard table id */
} raw_entry;

typedef struct {
    raw_entry *v;
    size_t n, cap;
} raw_vec;

static void raw_free(raw_entry *e)
{
    free(e->file_name);
    free(e->text);
    free(e->shard);
}

static void raw_vec_free(raw_vec *rv)
{
    for (size_t i = 0; i < rv->n; i++)
        raw_free(&rv->v[i]);
    free(rv->v);
    memset(rv, 0, sizeof *rv);
}

static int raw_push(raw_vec *rv, raw_entry *e)
{
    if (rv->n == rv->cap) {
        size_t cap = rv->cap ? rv->cap * 2 : 256;
        raw_entry *v = realloc(rv->v, cap * sizeof *v);
        if (!v)
            return -1;
        rv->v = v;
        rv->cap = cap;
    }
    rv->v[rv->n++] = *e;
    return 0;
}

/* A shard name from an index line must stay inside the cache dir. */
static bool shard_name_ok(const char *s)
{
    size_t n = strlen(s), suf = strlen(".safetensors");
    return n > suf && !strchr(s, '/') && s[0] != '.' && !strcmp(s + n - suf, ".safetensors");
}

static bool get_int(const json_t *o, const char *key, long lo, long hi, long *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return false;
    *out = (long)json_integer_value(v);
    return true;
}

/* Parse one index line into e; NULL, or what is wrong. */
static const char *parse_line(const char *line, raw_entry *e)
{
    memset(e, 0, sizeof *e);
    json_error_t jerr;
    json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
    const char *why = NULL;
    json_t *size = o ? json_object_get(o, "size") : NULL;
    json_t *flip = o ? json_object_get(o, "flip") : NULL;
    json_t *te = o ? json_object_get(o, "has_text_embedding") : NULL;
    json_t *text = o ? json_object_get(o, "text") : NULL;
    json_t *when = o ? json_object_get(o, "encoded_at") : NULL;
    long idx = 0, sz[3] = {0};
    if (!json_is_object(o))
        why = "not a JSON object";
    else if (!json_is_string(json_object_get(o, "file_name")))
        why = "no \"file_name\" string";
    else if (!json_is_string(json_object_get(o, "shard")) ||
             !shard_name_ok(json_string_value(json_object_get(o, "shard"))))
        why = "no \"shard\" (a file name ending in .safetensors, inside the cache)";
    else if (!get_int(o, "index", 0, 1L << 40, &idx))
        why = "no \"index\" (a whole number >= 0)";
    else if (!json_is_array(size) || json_array_size(size) != 3)
        why = "no \"size\" [C,h,w]";
    else if ((flip && !json_is_boolean(flip)) || (te && !json_is_boolean(te)))
        why = "\"flip\" and \"has_text_embedding\" must be true or false";
    else if (text && !json_is_string(text) && !json_is_null(text))
        why = "\"text\" must be a string";
    else if (when && (!json_is_string(when) || json_string_length(when) >= sizeof e->encoded_at))
        why = "\"encoded_at\" must be a time string";
    for (int d = 0; !why && d < 3; d++) {
        json_t *v = json_array_get(size, (size_t)d);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20)
            why = "\"size\" must hold three whole numbers >= 1";
        else
            sz[d] = (long)json_integer_value(v);
    }
    if (!why) {
        e->file_name = strdup(json_string_value(json_object_get(o, "file_name")));
        e->shard = strdup(json_string_value(json_object_get(o, "shard")));
        e->text = json_is_string(text) ? strdup(json_string_value(text)) : NULL;
        e->index = idx;
        e->C = (int)sz[0];
        e->h = (int)sz[1];
        e->w = (int)sz[2];
        e->flip = json_is_true(flip);
        e->has_te = json_is_true(te);
        if (when)
            memcpy(e->encoded_at, json_string_value(when), json_string_length(when) + 1);
        if (!e->file_name || !e->shard || (json_is_string(text) && !e->text)) {
            raw_free(e);
            why = "out of memory";
        }
    }
    json_decref(o);
    return why;
}

/* Append the entries of one index file to rv. A last line without its
 * newline is a write that was cut (or is under way): it is dropped, and
 * *good_end (may be NULL) gets the byte offset after the last complete
 * line. Any other bad line is an error naming file and line. A missing file
 * is no entries. */
static df_status load_index_file(const char *path, int dir, long *seq, raw_vec *rv,
                                 off_t *good_end)
{
    if (good_end)
        *good_end = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return errno == ENOENT ? DF_OK : df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    off_t end = 0;
    df_status st = DF_OK;
    while ((n = getline(&line, &cap, fp)) > 0) {
        lineno++;
        if (line[n - 1] != '\n')
            break;                      /* torn last line */
        end += n;
        line[n - 1] = 0;
        if (strspn(line, " \t\r") == (size_t)(n - 1))
            continue;
        raw_entry e;
        const char *why = parse_line(line, &e);
        if (why) {
            st = df_fail(DF_ERR_FORMAT, "%s line %ld: %s", path, lineno, why);
            break;
        }
        e.dir = dir;
        e.seq = (*seq)++;
        if (raw_push(rv, &e)) {
            raw_free(&e);
            st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
    }
    if (st == DF_OK && ferror(fp))
        st = df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    free(line);
    fclose(fp);
    if (good_end)
        *good_end = end;
    return st;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The index files of dir: "index.jsonl" first, then "index.*.jsonl" in
 * name order. *names is a malloc'd array of malloc'd names. */
static df_status list_index_files(const char *dir, char ***names, size_t *n)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", dir,
                       strerror(errno));
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    bool plain = false;
    df_status st = DF_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *s = de->d_name;
        size_t len = strlen(s);
        if (!strcmp(s, "index.jsonl")) {
            plain = true;
            continue;
        }
        if (len <= strlen("index..jsonl") || strncmp(s, "index.", 6) ||
            strcmp(s + len - 6, ".jsonl"))
            continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                st = df_fail(DF_ERR_NOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        if (!(v[cnt] = strdup(s))) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        cnt++;
    }
    closedir(d);
    if (st == DF_OK && cnt)
        qsort(v, cnt, sizeof *v, cmp_cstr);
    if (st == DF_OK && plain) {
        char **nv = realloc(v, (cnt + 1) * sizeof *nv);
        char *p = strdup("index.jsonl");
        if (!nv || !p) {
            free(p);
            if (nv)
                v = nv;
            st = df_fail(DF_ERR_NOMEM, "out of memory");
        } else {
            v = nv;
            memmove(v + 1, v, cnt * sizeof *v);
            v[0] = p;
            cnt++;
        }
    }
    if (st != DF_OK) {
        for (size_t i = 0; i < cnt; i++)
            free(v[i]);
        free(v);
        return st;
    }
    *names = v;
    *n = cnt;
    return DF_OK;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ---------------------------------------------------------------- shard metadata */

typedef struct {
    char vae_hash[80], te_hash[80], scaling[40];
    long resolution, C, h, w;
    char where[1200];            /* "dir/shard-00000.safetensors", for messages */
} shard_identity;

static const char *meta(const df_safetensors *st, const char *key)
{
    const char *v = df_st_metadata(st, key);
    return v ? v : "";
}

static bool meta_long(const df_safetensors *st, const char *key, long *out)
{
    const char *s = df_st_metadata(st, key);
    char *end;
    if (!s || !*s)
        return false;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 1)
        return false;
    *out = v;
    return true;
}

/* Read a shard's identity; DF_ERR_FORMAT when it is not a latent shard. */
static df_status read_identity(const df_safetensors *st, const char *where, shard_identity *id)
{
    memset(id, 0, sizeof *id);
    snprintf(id->where, sizeof id->where, "%s", where);
    if (strcmp(meta(st, "format"), DF_LATENT_FORMAT))
        return df_fail(DF_ERR_FORMAT, "%s: not a latent cache shard (metadata format \"%s\", "
                       "want \"%s\")", where, meta(st, "format"), DF_LATENT_FORMAT);
    if (!meta_long(st, "resolution", &id->resolution) ||
        !meta_long(st, "latent_channels", &id->C) || !meta_long(st, "latent_height", &id->h) ||
        !meta_long(st, "latent_width", &id->w) || !*meta(st, "vae_hash") ||
        !*meta(st, "scaling_factor"))
        return df_fail(DF_ERR_FORMAT, "%s: metadata lacks vae_hash, scaling_factor, resolution "
                       "or the latent size", where);
    snprintf(id->vae_hash, sizeof id->vae_hash, "%s", meta(st, "vae_hash"));
    snprintf(id->te_hash, sizeof id->te_hash, "%s", meta(st, "text_encoder_hash"));
    snprintf(id->scaling, sizeof id->scaling, "%s", meta(st, "scaling_factor"));
    return DF_OK;
}

/* DF_OK when b agrees with a; otherwise an error saying what differs. */
static df_status same_identity(const shard_identity *a, const shard_identity *b)
{
    if (strcmp(a->vae_hash, b->vae_hash))
        return df_fail(DF_ERR_FORMAT, "%s: made with another VAE: vae_hash %.16s... differs "
                       "from %s's %.16s...", b->where, b->vae_hash, a->where, a->vae_hash);
    if (a->resolution != b->resolution)
        return df_fail(DF_ERR_FORMAT, "%s: resolution %ld differs from %s's %ld", b->where,
                       b->resolution, a->where, a->resolution);
    if (a->C != b->C || a->h != b->h || a->w != b->w)
        return df_fail(DF_ERR_FORMAT, "%s: latent size [%ld,%ld,%ld] differs from %s's "
                       "[%ld,%ld,%ld]", b->where, b->C, b->h, b->w, a->where, a->C, a->h, a->w);
    if (strcmp(a->scaling, b->scaling))
        return df_fail(DF_ERR_FORMAT, "%s: scaling_factor %s differs from %s's %s", b->where,
                       b->scaling, a->where, a->scaling);
    if (*a->te_hash && *b->te_hash && strcmp(a->te_hash, b->te_hash))
        return df_fail(DF_ERR_FORMAT, "%s: text embeddings made with another text encoder: "
                       "text_encoder_hash %.16s... differs from %s's %.16s...", b->where,
                       b->te_hash, a->where, a->te_hash);
    return DF_OK;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    int dir;
    char *name, *path;
    df_safetensors *st;          /* open while in the ring of recently used */
} shard_rec;

#define OPEN_SHARDS 16

struct df_latent_cache {
    df_latent_entry *entries;
    size_t n;
    shard_rec *shards;
    size_t nshards;
    int ring[OPEN_SHARDS], ring_next;
    shard_identity id;
    bool have_id;
    char te_hash[80];
    int T, hidden;
    pthread_mutex_t mu;
};

static int cmp_entry_order(const void *pa, const void *pb)
{
    const raw_entry *a = pa, *b = pb;
    int c = strcmp(a->file_name, b->file_name);
    if (c)
        return c;
    if (a->flip != b->flip)
        return a->flip - b->flip;
    if (a->dir != b->dir)
        return a->dir - b->dir;
    /* ISO 8601 UTC times of one format sort as strings */
    if ((c = strcmp(a->encoded_at, b->encoded_at)))
        return c;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int cmp_by_shard(const void *pa, const void *pb)
{
    const raw_entry *a = *(raw_entry *const *)pa, *b = *(raw_entry *const *)pb;
    if (a->sid != b->sid)
        return a->sid - b->sid;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* Give each entry its shard table id, adding shards as they are first named. */
static df_status build_shard_table(df_latent_cache *c, raw_vec *rv, const char *const *dirs)
{
    strmap m = {0};
    df_status st = DF_OK;
    size_t cap = 0;
    for (size_t i = 0; i < rv->n && st == DF_OK; i++) {
        raw_entry *e = &rv->v[i];
        char *key;
        long id;
        if (asprintf(&key, "%d/%s", e->dir, e->shard) < 0)
            return df_fail(DF_ERR_NOMEM, "out of memory");
        if (map_get(&m, key, &id)) {
            e->sid = (int)id;
            free(key);
            continue;
        }
        if (c->nshards == cap) {
            cap = cap ? cap * 2 : 64;
            shard_rec *ns = realloc(c->shards, cap * sizeof *ns);
            if (!ns) {
                free(key);
                st = df_fail(DF_ERR_NOMEM, "out of memory");
                break;
            }
            c->shards = ns;
        }
        shard_rec *s = &c->shards[c->nshards];
        memset(s, 0, sizeof *s);
        s->dir = e->dir;
        s->name = strdup(e->shard);
        if (asprintf(&s->path, "%s/%s", dirs[e->dir], e->shard) < 0)
            s->path = NULL;
        if (!s->name || !s->path || map_put(&m, key, (long)c->nshards)) {
            free(s->name);
            free(s->path);
            st = df_fail(DF_ERR_NOMEM, "out of memory");
        } else {
            e->sid = (int)c->nshards++;
        }
        free(key);
    }
    map_free(&m);
    return st;
}

static df_status check_entry_tensor(const df_safetensors *st, const char *where, const char *kind,
                                    long index, int ndim, const int64_t *shape)
{
    char name[64];
    snprintf(name, sizeof name, "%s/%ld", kind, index);
    const df_st_tensor *t = df_st_find(st, name);
    if (!t)
        return df_fail(DF_ERR_FORMAT, "%s: no tensor \"%s\" (named by the index)", where, name);
    if (t->dtype != DF_DTYPE_F32 || df_st_check_shape(t, ndim, shape) != DF_OK)
        return df_fail(DF_ERR_SHAPE, "%s: tensor \"%s\" is not F32 of the index's shape", where,
                       name);
    return DF_OK;
}

/* Open every shard once: present, a latent shard, the same identity as the
 * first, holding its entries' tensors with the index's shapes. */
static df_status check_shards(df_latent_cache *c, raw_vec *rv, const char *const *dirs)
{
    raw_entry **by = malloc((rv->n ? rv->n : 1) * sizeof *by);
    if (!by)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < rv->n; i++)
        by[i] = &rv->v[i];
    qsort(by, rv->n, sizeof *by, cmp_by_shard);
    df_status st = DF_OK;
    size_t j = 0;
    for (size_t s = 0; s < c->nshards && st == DF_OK; s++) {
        shard_rec *sr = &c->shards[s];
        char where[1200];
        snprintf(where, sizeof where, "%s/%s", dirs[sr->dir], sr->name);
        df_safetensors *sf;
        if (df_st_open(sr->path, &sf) != DF_OK) {
            st = df_fail(DF_ERR_FORMAT, "%s: shard named by the index cannot be read: %s",
                         dirs[sr->dir], df_last_error());
            break;
        }
        shard_identity id;
        st = read_identity(sf, where, &id);
        if (st == DF_OK && c->have_id)
            st = same_identity(&c->id, &id);
        else if (st == DF_OK) {
            c->id = id;
            c->have_id = true;
        }
        if (st == DF_OK && *id.te_hash && !*c->te_hash)
            snprintf(c->te_hash, sizeof c->te_hash, "%s", id.te_hash);
        else if (st == DF_OK && *id.te_hash && strcmp(id.te_hash, c->te_hash))
            st = df_fail(DF_ERR_FORMAT, "%s: text embeddings made with another text encoder "
                         "(text_encoder_hash %.16s... differs from %.16s...)", where,
                         id.te_hash, c->te_hash);
        for (; j < rv->n && by[j]->sid == (int)s && st == DF_OK; j++) {
            raw_entry *e = by[j];
            int64_t shape[3] = {e->C, e->h, e->w};
            if (e->C != id.C || e->h != id.h || e->w != id.w)
                st = df_fail(DF_ERR_FORMAT, "%s: entry %ld (%s) has size [%d,%d,%d], the "
                             "shard's metadata says [%ld,%ld,%ld]", where, e->index,
                             e->file_name, e->C, e->h, e->w, id.C, id.h, id.w);
            if (st == DF_OK)
                st = check_entry_tensor(sf, where, "mean", e->index, 3, shape);
            if (st == DF_OK)
                st = check_entry_tensor(sf, where, "logvar", e->index, 3, shape);
            if (st == DF_OK && e->has_te) {
                char name[64];
                snprintf(name, sizeof name, "text_embedding/%ld", e->index);
                const df_st_tensor *t = df_st_find(sf, name);
                if (!*id.te_hash)
                    st = df_fail(DF_ERR_FORMAT, "%s: has text embeddings but no "
                                 "text_encoder_hash", where);
                else if (!t || t->dtype != DF_DTYPE_F32 || t->ndim != 2 || t->shape[0] < 1 ||
                         t->shape[1] < 1)
                    st = df_fail(DF_ERR_FORMAT, "%s: no F32 [T,hidden] tensor \"%s\"", where,
                                 name);
                else if (c->T && (t->shape[0] != c->T || t->shape[1] != c->hidden))
                    st = df_fail(DF_ERR_SHAPE, "%s: \"%s\" is [%lld,%lld], others are [%d,%d]",
                                 where, name, (long long)t->shape[0], (long long)t->shape[1],
                                 c->T, c->hidden);
                else {
                    c->T = (int)t->shape[0];
                    c->hidden = (int)t->shape[1];
                }
            }
        }
        df_st_close(sf);
    }
    free(by);
    return st;
}

/* Keep, per (file_name, flip, dir), the newest entry (encoded_at, then
 * reading order); move the kept ones into c->entries in order. rv must be
 * sorted by cmp_entry_order. */
static df_status keep_latest(df_latent_cache *c, raw_vec *rv)
{
    c->entries = calloc(rv->n ? rv->n : 1, sizeof *c->entries);
    if (!c->entries)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < rv->n; i++) {
        raw_entry *e = &rv->v[i], *next = i + 1 < rv->n ? &rv->v[i + 1] : NULL;
        if (next && next->dir == e->dir && next->flip == e->flip &&
            !strcmp(next->file_name, e->file_name))
            continue;                    /* superseded by a newer line */
        df_latent_entry *d = &c->entries[c->n++];
        d->file_name = e->file_name;
        d->text = e->text;
        e->file_name = e->text = NULL;
        d->flip = e->flip;
        d->C = e->C;
        d->h = e->h;
        d->w = e->w;
        d->shard = e->sid;
        d->index = e->index;
        d->has_text_embedding = e->has_te;
    }
    return DF_OK;
}

df_status df_latent_cache_open(const char *const *dirs, int ndirs, df_latent_cache **out)
{
    *out = NULL;
    if (ndirs < 1)
        return df_fail(DF_ERR_ARG, "latent cache: no directory given");
    df_latent_cache *c = calloc(1, sizeof *c);
    if (!c)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    for (int i = 0; i < OPEN_SHARDS; i++)
        c->ring[i] = -1;
    raw_vec rv = {0};
    df_status st = DF_OK;
    for (int d = 0; d < ndirs && st == DF_OK; d++) {
        char **names;
        size_t nn;
        long seq = 0;
        if ((st = list_index_files(dirs[d], &names, &nn)) != DF_OK)
            break;
        if (nn == 0)
            st = df_fail(DF_ERR_NOTFOUND, "%s: not a latent cache (no index.jsonl or "
                         "index.*.jsonl)", dirs[d]);
        for (size_t k = 0; k < nn && st == DF_OK; k++) {
            char *path;
            if (asprintf(&path, "%s/%s", dirs[d], names[k]) < 0) {
                st = df_fail(DF_ERR_NOMEM, "out of memory");
                break;
            }
            st = load_index_file(path, d, &seq, &rv, NULL);
            free(path);
        }
        free_names(names, nn);
    }
    if (st == DF_OK)
        st = build_shard_table(c, &rv, dirs);
    if (st == DF_OK)
        st = check_shards(c, &rv, dirs);
    if (st == DF_OK) {
        if (rv.n)   // an empty cache (killed before its first shard): no qsort on NULL
            qsort(rv.v, rv.n, sizeof *rv.v, cmp_entry_order);
        st = keep_latest(c, &rv);
    }
    raw_vec_free(&rv);
    if (st != DF_OK) {
        df_latent_cache_close(c);
        return st;
    }
    *out = c;
    return DF_OK;
}

void df_latent_cache_close(df_latent_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->entries[i].file_name);
        free(c->entries[i].text);
    }
    free(c->entries);
    for (size_t i = 0; i < c->nshards; i++) {
        df_st_close(c->shards[i].st);
        free(c->shards[i].name);
        free(c->shards[i].path);
    }
    free(c->shards);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

size_t df_latent_cache_count(const df_latent_cache *c) { return c->n; }

const df_latent_entry *df_latent_cache_entry(const df_latent_cache *c, size_t i)
{
    return i < c->n ? &c->entries[i] : NULL;
}

const char *df_latent_cache_vae_hash(const df_latent_cache *c)
{
    return c->have_id ? c->id.vae_hash : "";
}

int df_latent_cache_resolution(const df_latent_cache *c)
{
    return c->have_id ? (int)c->id.resolution : 0;
}

float df_latent_cache_scaling_factor(const df_latent_cache *c)
{
    return c->have_id ? strtof(c->id.scaling, NULL) : 0.0f;
}

void df_latent_cache_latent_size(const df_latent_cache *c, int *C, int *h, int *w)
{
    *C = c->have_id ? (int)c->id.C : 0;
    *h = c->have_id ? (int)c->id.h : 0;
    *w = c->have_id ? (int)c->id.w : 0;
}

void df_latent_cache_text_shape(const df_latent_cache *c, int *T, int *hidden)
{
    *T = c->T;
    *hidden = c->hidden;
}

const char *df_latent_cache_text_encoder_hash(const df_latent_cache *c)
{
    return *c->te_hash ? c->te_hash : NULL;
}

/* The shard of sid, opened if needed; the least recently opened of the
 * OPEN_SHARDS kept open is closed to make room. Under c->mu. */
static df_status shard_get(df_latent_cache *c, int sid, df_safetensors **out)
{
    shard_rec *s = &c->shards[sid];
    if (!s->st) {
        int old = c->ring[c->ring_next];
        if (old >= 0) {
            df_st_close(c->shards[old].st);
            c->shards[old].st = NULL;
        }
        if (df_st_open(s->path, &s->st) != DF_OK) {
            c->ring[c->ring_next] = -1;
            return df_fail(DF_ERR_IO, "%s", df_last_error());
        }
        c->ring[c->ring_next] = sid;
        c->ring_next = (c->ring_next + 1) % OPEN_SHARDS;
    }
    *out = s->st;
    return DF_OK;
}

static df_status read_tensor(const df_safetensors *st, const char *kind, long index, size_t numel,
                             float *dst)
{
    char name[64];
    snprintf(name, sizeof name, "%s/%ld", kind, index);
    const df_st_tensor *t = df_st_find(st, name);
    if (!t || t->numel != numel)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\" missing or resized since the cache "
                       "was opened", df_st_path(st), name);
    return df_st_to_f32(t, dst);
}

df_status df_latent_cache_read(df_latent_cache *c, size_t i, float *mean, float *logvar,
                               float *text_emb)
{
    if (i >= c->n)
        return df_fail(DF_ERR_RANGE, "latent cache: entry %zu of %zu", i, c->n);
    const df_latent_entry *e = &c->entries[i];
    if (text_emb && !e->has_text_embedding)
        return df_fail(DF_ERR_NOTFOUND, "latent cache: %s%s has no text embedding",
                       e->file_name, e->flip ? " (flipped)" : "");
    size_t n = (size_t)e->C * e->h * e->w;
    pthread_mutex_lock(&c->mu);
    df_safetensors *st = NULL;
    df_status s = shard_get(c, e->shard, &st);
    if (s == DF_OK)
        s = read_tensor(st, "mean", e->index, n, mean);
    if (s == DF_OK)
        s = read_tensor(st, "logvar", e->index, n, logvar);
    if (s == DF_OK && text_emb)
        s = read_tensor(st, "text_embedding", e->index, (size_t)c->T * c->hidden, text_emb);
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* ---------------------------------------------------------------- writer */

struct df_latent_writer {
    df_latent_writer_config cfg;
    char *dir, *vae_hash, *te_hash;
    char *prefix;                /* "shard-" or "shard-K-of-N-" */
    char *index_path;
    int index_fd;
    long next_no;                /* number of the next shard file */
    raw_vec known;               /* every entry of the dir, and those added */
    strmap keys;                 /* entry_key -> position in known (the last wins) */
    /* the shard being filled */
    char cur[256];
    size_t npend, cap;
    float *mean, *logvar, *te;   /* (cap, C*h*w) x2, (cap, T*hidden) */
    char **lines;                /* index lines, each with its newline */
};

static size_t latent_numel(const df_latent_writer *w)
{
    return (size_t)w->cfg.latent_channels * w->cfg.latent_h * w->cfg.latent_w;
}

static size_t te_numel(const df_latent_writer *w)
{
    return w->te_hash ? (size_t)w->cfg.text_len * w->cfg.text_hidden : 0;
}

/* fsync a directory, so that a rename in it survives a crash. */
static df_status sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return df_fail(DF_ERR_IO, "%s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems cannot fsync a directory (EINVAL): nothing to do there. */
    return rc && e != EINVAL ? df_fail(DF_ERR_IO, "%s: fsync: %s", dir, strerror(e)) : DF_OK;
}

/* The number of a file of this writer's series ("<prefix>00012.safetensors"
 * -> 12), -1 when the name is not one; *tmp set for "<...>.safetensors.tmp". */
static long series_number(const df_latent_writer *w, const char *name, bool *tmp)
{
    size_t pl = strlen(w->prefix);
    if (strncmp(name, w->prefix, pl))
        return -1;
    const char *p = name + pl, *q = p;
    while (*q >= '0' && *q <= '9')
        q++;
    if (q == p || q - p > 12)
        return -1;
    *tmp = !strcmp(q, ".safetensors.tmp");
    if (!*tmp && strcmp(q, ".safetensors"))
        return -1;
    return strtol(p, NULL, 10);
}

/* Remove this series' *.tmp files and the shards no index line names (a
 * kill between a shard's rename and its index lines), and find the number
 * after the last one in use. Only this writer (holding the lock) writes
 * this series, so nothing here can be another process's file. */
static df_status clean_series(df_latent_writer *w)
{
    strmap named = {0};
    for (size_t i = 0; i < w->known.n; i++)
        if (map_put(&named, w->known.v[i].shard, 1)) {
            map_free(&named);
            return df_fail(DF_ERR_NOMEM, "out of memory");
        }
    DIR *d = opendir(w->dir);
    if (!d) {
        map_free(&named);
        return df_fail(DF_ERR_IO, "%s: %s", w->dir, strerror(errno));
    }
    df_status st = DF_OK;
    struct dirent *de;
    w->next_no = 0;
    while ((de = readdir(d))) {
        bool tmp = false;
        long no = series_number(w, de->d_name, &tmp), one;
        if (no < 0)
            continue;
        if (!tmp && map_get(&named, de->d_name, &one)) {
            if (no + 1 > w->next_no)
                w->next_no = no + 1;
            continue;
        }
        char *path;
        if (asprintf(&path, "%s/%s", w->dir, de->d_name) < 0) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        if (unlink(path) && errno != ENOENT)
            st = df_fail(DF_ERR_IO, "%s: cannot remove a leftover: %s", path, strerror(errno));
        free(path);
    }
    closedir(d);
    map_free(&named);
    return st;
}

/* The dir must not hold latents of another VAE, resolution or latent size:
 * the first shard named by each index file is compared with this run's. */
static df_status check_dir_identity(df_latent_writer *w)
{
    shard_identity mine = {0};
    snprintf(mine.vae_hash, sizeof mine.vae_hash, "%s", w->vae_hash);
    snprintf(mine.te_hash, sizeof mine.te_hash, "%s", w->te_hash ? w->te_hash : "");
    snprintf(mine.scaling, sizeof mine.scaling, "%.9g", (double)w->cfg.scaling_factor);
    mine.resolution = w->cfg.resolution;
    mine.C = w->cfg.latent_channels;
    mine.h = w->cfg.latent_h;
    mine.w = w->cfg.latent_w;
    snprintf(mine.where, sizeof mine.where, "this run");
    df_status st = DF_OK;
    for (size_t i = 0; i < w->known.n && st == DF_OK; i++) {
        const raw_entry *e = &w->known.v[i];
        /* Checking every shard would open thousands of files at each start;
         * one per index file (its first line's) catches a mixed-up --out,
         * and df_latent_cache_open checks them all. (Here an entry's dir is
         * the number of its index file, see load_known.) */
        if (i > 0 && e->dir == w->known.v[i - 1].dir)
            continue;
        char *path;
        df_safetensors *sf;
        if (asprintf(&path, "%s/%s", w->dir, e->shard) < 0) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        if (df_st_open(path, &sf) != DF_OK) {
            st = df_fail(DF_ERR_FORMAT, "%s: shard named by the index cannot be read: %s",
                         w->dir, df_last_error());
        } else {
            shard_identity theirs;
            st = read_identity(sf, path, &theirs);
            if (st == DF_OK)
                st = same_identity(&theirs, &mine);
            df_st_close(sf);
        }
        free(path);
    }
    if (st != DF_OK)
        return df_fail(st, "%s (use another cache directory)", df_last_error());
    return DF_OK;
}

/* Load every index of the dir into w->known (entry dir field = the file's
 * number, so check_dir_identity can see file boundaries), repairing this
 * writer's own index first. */
static df_status load_known(df_latent_writer *w)
{
    char **names;
    size_t nn;
    df_status st = list_index_files(w->dir, &names, &nn);
    if (st != DF_OK)
        return st;
    const char *own = strrchr(w->index_path, '/') + 1;
    long seq = 0;
    for (size_t k = 0; k < nn && st == DF_OK; k++) {
        char *path;
        off_t good;
        if (asprintf(&path, "%s/%s", w->dir, names[k]) < 0) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        st = load_index_file(path, (int)k, &seq, &w->known, &good);
        struct stat sb;
        if (st == DF_OK && !strcmp(names[k], own) && fstat(w->index_fd, &sb) == 0 &&
            sb.st_size > good && ftruncate(w->index_fd, good) != 0)
            st = df_fail(DF_ERR_IO, "%s: cannot cut the torn last line: %s", path,
                         strerror(errno));
        free(path);
    }
    free_names(names, nn);
    /* the newest line of a key wins, as in the reader */
    for (size_t i = 0; i < w->known.n && st == DF_OK; i++) {
        char *k = entry_key(w->known.v[i].file_name, w->known.v[i].flip);
        long prev;
        if (k && map_get(&w->keys, k, &prev) &&
            strcmp(w->known.v[prev].encoded_at, w->known.v[i].encoded_at) > 0) {
            free(k);
            continue;
        }
        if (!k || map_put(&w->keys, k, (long)i))
            st = df_fail(DF_ERR_NOMEM, "out of memory");
        free(k);
    }
    return st;
}

df_status df_latent_writer_open(const df_latent_writer_config *cfg, df_latent_writer **out)
{
    *out = NULL;
    if (cfg->resolution < 1 || cfg->latent_channels < 1 || cfg->latent_h < 1 ||
        cfg->latent_w < 1 || !cfg->vae_hash || !*cfg->vae_hash ||
        (cfg->text_encoder_hash && (cfg->text_len < 1 || cfg->text_hidden < 1)) ||
        (cfg->shard_n && (cfg->shard_k < 1 || cfg->shard_k > cfg->shard_n)))
        return df_fail(DF_ERR_ARG, "latent writer: bad configuration");
    if (mkdir(cfg->dir, 0777) && errno != EEXIST)
        return df_fail(DF_ERR_IO, "%s: %s", cfg->dir, strerror(errno));
    struct stat sb;
    if (stat(cfg->dir, &sb) || !S_ISDIR(sb.st_mode))
        return df_fail(DF_ERR_IO, "%s: not a directory", cfg->dir);
    df_latent_writer *w = calloc(1, sizeof *w);
    if (!w)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    w->cfg = *cfg;
    w->index_fd = -1;
    w->dir = strdup(cfg->dir);
    w->vae_hash = strdup(cfg->vae_hash);
    w->te_hash = cfg->text_encoder_hash ? strdup(cfg->text_encoder_hash) : NULL;
    int ok = w->dir && w->vae_hash && (w->te_hash || !cfg->text_encoder_hash);
    if (ok && cfg->shard_n)
        ok = asprintf(&w->prefix, "shard-%d-of-%d-", cfg->shard_k, cfg->shard_n) >= 0 &&
             asprintf(&w->index_path, "%s/index.%d-of-%d.jsonl", cfg->dir, cfg->shard_k,
                      cfg->shard_n) >= 0;
    else if (ok)
        ok = (w->prefix = strdup("shard-")) &&
             asprintf(&w->index_path, "%s/index.jsonl", cfg->dir) >= 0;
    df_status st = ok ? DF_OK : df_fail(DF_ERR_NOMEM, "out of memory");
    if (st == DF_OK) {
        w->index_fd = open(w->index_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (w->index_fd < 0)
            st = df_fail(DF_ERR_IO, "%s: %s", w->index_path, strerror(errno));
        else if (flock(w->index_fd, LOCK_EX | LOCK_NB))
            st = errno == EWOULDBLOCK
                     ? df_fail(DF_ERR_IO, "%s: another process is writing this index (the "
                               "same --shard into the same directory)", w->index_path)
                     : df_fail(DF_ERR_IO, "%s: lock: %s", w->index_path, strerror(errno));
    }
    if (st == DF_OK)
        st = load_known(w);
    if (st == DF_OK)
        st = check_dir_identity(w);
    if (st == DF_OK)
        st = clean_series(w);
    if (st == DF_OK)
        st = sync_dir(w->dir);
    if (st != DF_OK) {
        w->npend = 0;
        df_latent_writer_close(w);
        return st;
    }
    *out = w;
    return DF_OK;
}

bool df_latent_writer_lookup(df_latent_writer *w, const char *file_name, int flip,
                             const char *text, bool need_text_embedding, const char **shard,
                             long *index)
{
    char *k = entry_key(file_name, flip);
    long pos;
    bool hit = k && map_get(&w->keys, k, &pos);
    free(k);
    if (!hit)
        return false;
    const raw_entry *e = &w->known.v[pos];
    if (text && (!e->text || strcmp(text, e->text)))
        return false;
    if (need_text_embedding && !e->has_te)
        return false;
    if (shard)
        *shard = e->shard;
    if (index)
        *index = e->index;
    return true;
}

static df_status grow_pending(df_latent_writer *w)
{
    size_t cap = w->cap ? w->cap * 2 : 16, nl = latent_numel(w), nt = te_numel(w);
    float *m = realloc(w->mean, cap * nl * sizeof *m);
    if (m)
        w->mean = m;
    float *l = realloc(w->logvar, cap * nl * sizeof *l);
    if (l)
        w->logvar = l;
    float *t = nt ? realloc(w->te, cap * nt * sizeof *t) : NULL;
    if (t)
        w->te = t;
    char **lines = realloc(w->lines, cap * sizeof *lines);
    if (lines)
        w->lines = lines;
    if (!m || !l || (nt && !t) || !lines)
        return df_fail(DF_ERR_NOMEM, "out of memory for the pending shard");
    w->cap = cap;
    return DF_OK;
}

/* "2026-01-05T12:34:56.789Z": when an entry was made, so that the newest
 * of a key wins whichever index file it is in. */
static void now_utc(char out[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* The index line of an entry: the record's fields, then the cache's. */
static char *index_line(const df_latent_writer *w, const json_t *rec, int flip, long index,
                        const char *when)
{
    static const char *const drop[] = {"error", "cached", "entries", "flip_shard", "flip_index"};
    json_t *o = json_copy((json_t *)rec);
    if (!o)
        return NULL;
    for (size_t i = 0; i < sizeof drop / sizeof *drop; i++)
        json_object_del(o, drop[i]);
    json_object_set_new(o, "shard", json_string(w->cur));
    json_object_set_new(o, "index", json_integer(index));
    json_object_set_new(o, "size", json_pack("[i,i,i]", w->cfg.latent_channels, w->cfg.latent_h,
                                             w->cfg.latent_w));
    json_object_set_new(o, "flip", json_boolean(flip));
    json_object_set_new(o, "resolution", json_integer(w->cfg.resolution));
    json_object_set_new(o, "has_text_embedding", json_boolean(w->te_hash != NULL));
    json_object_set_new(o, "encoded_at", json_string(when));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = 0;
    return line;
}

df_status df_latent_writer_add(df_latent_writer *w, const json_t *rec, int flip,
                               const float *mean, const float *logvar, const float *text_emb,
                               const char **shard, long *index)
{
    const char *fn = df_rec_str(rec, "file_name"), *text = df_rec_str(rec, "text");
    if (!fn || (w->te_hash && !text_emb))
        return df_fail(DF_ERR_ARG, "latent writer: entry without file_name or text embedding");
    if (w->npend == 0)
        snprintf(w->cur, sizeof w->cur, "%s%05ld.safetensors", w->prefix, w->next_no);
    df_status st = w->npend == w->cap ? grow_pending(w) : DF_OK;
    if (st != DF_OK)
        return st;
    size_t i = w->npend, nl = latent_numel(w), nt = te_numel(w);
    char when[32];
    now_utc(when);
    raw_entry e = {.file_name = strdup(fn), .text = text ? strdup(text) : NULL,
                   .shard = strdup(w->cur), .index = (long)i, .flip = flip != 0,
                   .C = w->cfg.latent_channels, .h = w->cfg.latent_h, .w = w->cfg.latent_w,
                   .has_te = w->te_hash != NULL, .seq = LONG_MAX};
    memcpy(e.encoded_at, when, sizeof when);
    char *k = entry_key(fn, flip);
    char *line = index_line(w, rec, flip, (long)i, when);
    if (!e.file_name || !e.shard || (text && !e.text) || !k || !line ||
        raw_push(&w->known, &e) || map_put(&w->keys, k, (long)w->known.n - 1)) {
        raw_free(&e);
        free(k);
        free(line);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    free(k);
    memcpy(w->mean + i * nl, mean, nl * sizeof *mean);
    memcpy(w->logvar + i * nl, logvar, nl * sizeof *logvar);
    if (nt)
        memcpy(w->te + i * nt, text_emb, nt * sizeof *text_emb);
    w->lines[i] = line;
    w->npend++;
    *shard = w->known.v[w->known.n - 1].shard;
    *index = (long)i;
    return DF_OK;
}

size_t df_latent_writer_pending(const df_latent_writer *w) { return w ? w->npend : 0; }

static df_status write_shard(df_latent_writer *w, const char *path)
{
    df_st_writer *sw = df_st_writer_new();
    if (!sw)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    int64_t shape[3] = {w->cfg.latent_channels, w->cfg.latent_h, w->cfg.latent_w};
    int64_t tshape[2] = {w->cfg.text_len, w->cfg.text_hidden};
    size_t nl = latent_numel(w), nt = te_numel(w);
    df_status st = DF_OK;
    char name[64], val[64];
    for (size_t i = 0; i < w->npend && st == DF_OK; i++) {
        snprintf(name, sizeof name, "mean/%zu", i);
        st = df_st_writer_add(sw, name, DF_DTYPE_F32, 3, shape, w->mean + i * nl);
        snprintf(name, sizeof name, "logvar/%zu", i);
        if (st == DF_OK)
            st = df_st_writer_add(sw, name, DF_DTYPE_F32, 3, shape, w->logvar + i * nl);
        snprintf(name, sizeof name, "text_embedding/%zu", i);
        if (st == DF_OK && nt)
            st = df_st_writer_add(sw, name, DF_DTYPE_F32, 2, tshape, w->te + i * nt);
    }
    if (st == DF_OK)
        st = df_st_writer_meta(sw, "format", DF_LATENT_FORMAT);
    if (st == DF_OK)
        st = df_st_writer_meta(sw, "vae_hash", w->vae_hash);
    if (st == DF_OK && w->te_hash)
        st = df_st_writer_meta(sw, "text_encoder_hash", w->te_hash);
    const struct { const char *key; long v; } ints[] = {
        {"resolution", w->cfg.resolution}, {"latent_channels", w->cfg.latent_channels},
        {"latent_height", w->cfg.latent_h}, {"latent_width", w->cfg.latent_w},
        {"entries", (long)w->npend}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints && st == DF_OK; i++) {
        snprintf(val, sizeof val, "%ld", ints[i].v);
        st = df_st_writer_meta(sw, ints[i].key, val);
    }
    snprintf(val, sizeof val, "%.9g", (double)w->cfg.scaling_factor);
    if (st == DF_OK)
        st = df_st_writer_meta(sw, "scaling_factor", val);
    if (st == DF_OK)
        st = df_st_write(sw, path);       /* .tmp, fsync, rename */
    df_st_writer_free(sw);
    return st;
}

static df_status append_lines(df_latent_writer *w)
{
    size_t total = 0;
    for (size_t i = 0; i < w->npend; i++)
        total += strlen(w->lines[i]);
    char *buf = malloc(total ? total : 1), *p = buf;
    if (!buf)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < w->npend; i++) {
        size_t n = strlen(w->lines[i]);
        memcpy(p, w->lines[i], n);
        p += n;
    }
    /* One write for the whole group: with O_APPEND, a kill leaves at worst
     * a torn last line, which the next open cuts off. */
    df_status st = DF_OK;
    for (size_t off = 0; off < total;) {
        ssize_t k = write(w->index_fd, buf + off, total - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            st = df_fail(DF_ERR_IO, "%s: %s", w->index_path, strerror(errno));
            break;
        }
        off += (size_t)k;
    }
    free(buf);
    if (st == DF_OK && fsync(w->index_fd))
        st = df_fail(DF_ERR_IO, "%s: fsync: %s", w->index_path, strerror(errno));
    return st;
}

df_status df_latent_writer_flush(df_latent_writer *w)
{
    if (!w || w->npend == 0)
        return DF_OK;
    char *path;
    if (asprintf(&path, "%s/%s", w->dir, w->cur) < 0)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    df_status st = write_shard(w, path);
    free(path);
    if (st == DF_OK)
        st = sync_dir(w->dir);
    if (st == DF_OK)
        st = append_lines(w);
    for (size_t i = 0; i < w->npend; i++)
        free(w->lines[i]);
    w->npend = 0;
    w->next_no++;
    return st;
}

df_status df_latent_writer_close(df_latent_writer *w)
{
    if (!w)
        return DF_OK;
    df_status st = df_latent_writer_flush(w);
    for (size_t i = 0; i < w->npend; i++)
        free(w->lines[i]);
    if (w->index_fd >= 0)
        close(w->index_fd);          /* releases the lock */
    raw_vec_free(&w->known);
    map_free(&w->keys);
    free(w->mean);
    free(w->logvar);
    free(w->te);
    free(w->lines);
    free(w->dir);
    free(w->vae_hash);
    free(w->te_hash);
    free(w->prefix);
    free(w->index_path);
    free(w);
    return st;
}
