/* checkpoint.c - df-train's checkpoints: save atomically, find the newest
 * complete one, restore bit-exactly (see checkpoint.h).
 * Tested by tests/unit/test_checkpoint.c. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonl.h"
#include "safetensors.h"

#define MT_WORDS 624
#define STATE_FORMAT "df-train checkpoint"
#define STATE_VERSION 1

/* ---- files and directories ---- */

/* malloc'd printf; NULL when out of memory. */
static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

static bool is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static df_status mkdir_p(const char *dir)
{
    char *p = strdup(dir);
    if (!p)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    df_status st = DF_OK;
    for (char *c = p + 1; st == DF_OK; c++) {
        bool end = *c == '\0';
        if (*c != '/' && !end)
            continue;
        *c = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            st = df_fail(DF_ERR_IO, "%s: mkdir: %s", p, strerror(errno));
        else if (!is_dir(p))
            st = df_fail(DF_ERR_IO, "%s: not a directory", p);
        if (end)
            break;
        *c = '/';
    }
    free(p);
    return st;
}

/* So that a rename survives a crash, its directory is synced too. */
static df_status fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        df_status st = df_fail(DF_ERR_IO, "%s: fsync: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return st;
    }
    close(fd);
    return DF_OK;
}

/* path.tmp, fsync, rename. */
static df_status write_file_atomic(const char *path, const char *data, size_t len)
{
    char *tmp = pathf("%s.tmp", path);
    if (!tmp)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    df_status st = DF_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    for (size_t done = 0; done < len && st == DF_OK;) {
        ssize_t k = write(fd, data + done, len - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            st = df_fail(DF_ERR_IO, "%s: write: %s", tmp, strerror(errno));
        else
            done += (size_t)k;
    }
    if (st == DF_OK && fsync(fd) != 0)
        st = df_fail(DF_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == DF_OK)
        st = df_fail(DF_ERR_IO, "%s: close: %s", tmp, strerror(errno));
    if (st == DF_OK && rename(tmp, path) != 0)
        st = df_fail(DF_ERR_IO, "%s: rename: %s", path, strerror(errno));
    if (st != DF_OK)
        unlink(tmp);
    free(tmp);
    return st;
}

static int remove_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

/* rm -r of a checkpoint (or leftover) directory; absent is fine. */
static df_status remove_tree(const char *path)
{
    if (nftw(path, remove_cb, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return df_fail(DF_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    return DF_OK;
}

/* "checkpoint-<digits>" exactly (no ".tmp" and nothing else); its step. */
static bool parse_ckpt_name(const char *name, long *step)
{
    const char *d = name + strlen("checkpoint-");
    if (strncmp(name, "checkpoint-", strlen("checkpoint-")) != 0 || *d < '0' || *d > '9')
        return false;
    char *end;
    errno = 0;
    long v = strtol(d, &end, 10);
    if (*end != '\0' || errno != 0 || v < 0)
        return false;
    *step = v;
    return true;
}

typedef struct {
    long step;
    char *name;
} ckpt_entry;

static int cmp_entry_desc(const void *a, const void *b)
{
    const ckpt_entry *x = a, *y = b;
    return (x->step < y->step) - (x->step > y->step);
}

static void free_entries(ckpt_entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* The checkpoint-<N> directories of dir, highest N first. */
static df_status list_checkpoints(const char *dir, ckpt_entry **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? DF_OK : df_fail(DF_ERR_IO, "%s: %s", dir, strerror(errno));
    ckpt_entry *v = NULL;
    size_t n = 0, cap = 0;
    df_status st = DF_OK;
    struct dirent *e;
    while (st == DF_OK && (e = readdir(d))) {
        long step;
        if (!parse_ckpt_name(e->d_name, &step))
            continue;
        char *full = pathf("%s/%s", dir, e->d_name);
        if (!full) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        bool ok = is_dir(full);
        free(full);
        if (!ok)
            continue;
        if (n == cap) {
            size_t c = cap ? 2 * cap : 16;
            ckpt_entry *nv = realloc(v, c * sizeof *nv);
            if (!nv) {
                st = df_fail(DF_ERR_NOMEM, "out of memory");
                break;
            }
            v = nv;
            cap = c;
        }
        if (!(v[n].name = strdup(e->d_name))) {
            st = df_fail(DF_ERR_NOMEM, "out of memory");
            break;
        }
        v[n++].step = step;
    }
    closedir(d);
    if (st != DF_OK) {
        free_entries(v, n);
        return st;
    }
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_entry_desc);
    *out = v;
    *nout = n;
    return DF_OK;
}

/* ---- save ---- */

static df_status write_optimizer(const char *path, const df_lora_set *s, const df_adamw *o)
{
    df_st_writer *w = df_st_writer_new();
    if (!w)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    /* B is saved scaled in lora.safetensors when alpha != rank; its exact
     * values go here so that a resume is bit-exact. */
    bool exact_b = s->alpha != (float)s->rank;
    int64_t step = o->step;
    df_status st = df_st_writer_add(w, "step", DF_DTYPE_I64, 0, NULL, &step);
    for (size_t i = 0; st == DF_OK && i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        for (int which = 0; which < 2 && st == DF_OK; which++) {
            char key[1100], name[1200];
            df_lora_key(key, sizeof key, p, which, DF_LORA_FMT_PEFT);
            const float *x = which ? p->B : p->A;
            size_t off = (size_t)(x - s->params);
            int64_t shape[2] = {which ? p->out : s->rank, which ? s->rank : p->in};
            snprintf(name, sizeof name, "exp_avg/%s", key);
            st = df_st_writer_add(w, name, DF_DTYPE_F32, 2, shape, o->m + off);
            snprintf(name, sizeof name, "exp_avg_sq/%s", key);
            if (st == DF_OK)
                st = df_st_writer_add(w, name, DF_DTYPE_F32, 2, shape, o->v + off);
            snprintf(name, sizeof name, "param/%s", key);
            if (st == DF_OK && which == 1 && exact_b)
                st = df_st_writer_add(w, name, DF_DTYPE_F32, 2, shape, p->B);
        }
    }
    if (st == DF_OK)
        st = df_st_writer_meta(w, "format", "pt");
    if (st == DF_OK)
        st = df_st_write(w, path);
    df_st_writer_free(w);
    return st;
}

static char *hex_mt(const df_rng *r)
{
    char *h = malloc(MT_WORDS * 8 + 1);
    if (h)
        for (int i = 0; i < MT_WORDS; i++)
            snprintf(h + 8 * i, 9, "%08" PRIx32, r->mt[i]);
    return h;
}

static json_t *state_json(const df_lora_set *s, const df_train_state *st)
{
    char seed[32], rseed[32], nn[32];
    uint64_t bits;
    memcpy(&bits, &st->rng.next_normal, sizeof bits);
    snprintf(seed, sizeof seed, "%" PRIu64, st->seed);
    snprintf(rseed, sizeof rseed, "%" PRIu64, st->rng.seed);
    snprintf(nn, sizeof nn, "0x%016" PRIx64, bits);
    char *mt = hex_mt(&st->rng);
    json_t *order = json_array();
    json_t *root = NULL;
    if (!mt || !order)
        goto out;
    for (size_t i = 0; i < st->n_order; i++)
        if (json_array_append_new(order, json_integer(st->order[i])) != 0)
            goto out;
    /* Seeds are strings: JSON readers often cannot hold a full uint64. */
    root = json_pack("{s:s, s:i, s:I, s:I, s:I, s:s, "
                     "s:{s:s, s:i, s:b, s:s, s:f, s:s}, "
                     "s:{s:i, s:f, s:I, s:I}, s:O, s:s?}",
                     "format", STATE_FORMAT, "version", STATE_VERSION,
                     "step", (json_int_t)st->step, "epoch", (json_int_t)st->epoch,
                     "pos", (json_int_t)st->pos, "seed", seed,
                     "rng", "seed", rseed, "index", st->rng.index,
                     "has_next_normal", (int)st->rng.has_next_normal,
                     "next_normal", nn, "next_normal_value", st->rng.next_normal, "mt", mt,
                     "lora", "rank", s->rank, "alpha", (double)s->alpha,
                     "params", (json_int_t)s->n, "floats", (json_int_t)s->nfloats,
                     "order", order, "config_json", st->config_json);
out:
    free(mt);
    json_decref(order);
    return root;
}

static df_status write_state(const char *path, const df_lora_set *s, const df_train_state *st)
{
    json_t *j = state_json(s, st);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!text)
        return df_fail(DF_ERR_NOMEM, "%s: cannot encode the training state "
                       "(out of memory, or config_json is not UTF-8)", path);
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    df_status r = write_file_atomic(path, line, n + 1);
    free(line);
    return r;
}

/* Fill dir/<name>.tmp with the three files. */
static df_status write_checkpoint_dir(const char *tmpdir, const df_lora_set *s, const df_adamw *o,
                                      const df_train_state *st)
{
    char *lora = pathf("%s/lora.safetensors", tmpdir);
    char *opt = pathf("%s/optimizer.safetensors", tmpdir);
    char *state = pathf("%s/state.json", tmpdir);
    char rank[32], alpha[32], step[32];
    snprintf(rank, sizeof rank, "%d", s->rank);
    snprintf(alpha, sizeof alpha, "%.9g", s->alpha);
    snprintf(step, sizeof step, "%ld", st->step);
    const char *meta[] = {"lora_rank", rank, "lora_alpha", alpha, "step", step, NULL};
    df_status r = (!lora || !opt || !state) ? df_fail(DF_ERR_NOMEM, "out of memory") : DF_OK;
    if (r == DF_OK && (r = mkdir_p(tmpdir)) == DF_OK &&
        (r = df_lora_set_save(s, lora, DF_LORA_FMT_PEFT, meta)) == DF_OK &&
        (r = write_optimizer(opt, s, o)) == DF_OK && (r = write_state(state, s, st)) == DF_OK)
        r = fsync_dir(tmpdir);
    free(lora);
    free(opt);
    free(state);
    return r;
}

/* Move the complete tmpdir to final; an existing final (the same step saved
 * again) is swapped out to a .tmp name first and removed afterwards. */
static df_status publish(const char *dir, const char *tmpdir, const char *final,
                         const char *old)
{
    df_status r = remove_tree(old);
    bool had_old = false;
    if (r == DF_OK && is_dir(final)) {
        if (rename(final, old) != 0)
            return df_fail(DF_ERR_IO, "%s: rename: %s", final, strerror(errno));
        had_old = true;
    }
    if (r == DF_OK && rename(tmpdir, final) != 0)
        return df_fail(DF_ERR_IO, "%s: rename: %s", tmpdir, strerror(errno));
    if (r == DF_OK)
        r = fsync_dir(dir);
    if (r == DF_OK && had_old)
        r = remove_tree(old);
    return r;
}

/* Delete all but the new checkpoint and the keep-1 others with the highest steps. */
static df_status prune(const char *dir, const char *current, int keep)
{
    ckpt_entry *v;
    size_t n;
    df_status r = list_checkpoints(dir, &v, &n);
    int kept = 1;
    for (size_t i = 0; r == DF_OK && i < n; i++) {
        if (!strcmp(v[i].name, current) || kept++ < keep)
            continue;
        char *p = pathf("%s/%s", dir, v[i].name);
        r = p ? remove_tree(p) : df_fail(DF_ERR_NOMEM, "out of memory");
        free(p);
        if (r != DF_OK)
            r = df_fail(r, "checkpoint %s/%s saved, but deleting an old one failed: %s", dir,
                        current, df_last_error());
    }
    free_entries(v, n);
    return r;
}

df_status df_checkpoint_save(const char *dir, const df_lora_set *s, const df_adamw *o,
                             const df_train_state *st, int keep)
{
    if (o->n != s->nfloats)
        return df_fail(DF_ERR_ARG, "checkpoint: optimizer has %zu moments, the LoRA set %zu "
                       "parameters", o->n, s->nfloats);
    if (st->step < 0 || keep < 0)
        return df_fail(DF_ERR_ARG, "checkpoint: negative step or keep");
    df_status r = mkdir_p(dir);
    if (r != DF_OK)
        return r;
    char name[64], latest[80];
    snprintf(name, sizeof name, "checkpoint-%ld", st->step);
    int nl = snprintf(latest, sizeof latest, "%s\n", name);
    char *final = pathf("%s/%s", dir, name);
    char *tmpdir = pathf("%s/%s.tmp", dir, name);
    char *old = pathf("%s/%s.old.tmp", dir, name);
    char *latest_path = pathf("%s/latest", dir);
    if (!final || !tmpdir || !old || !latest_path)
        r = df_fail(DF_ERR_NOMEM, "out of memory");
    /* A leftover of an interrupted save of this step goes first. */
    if (r == DF_OK && (r = remove_tree(tmpdir)) == DF_OK &&
        (r = write_checkpoint_dir(tmpdir, s, o, st)) == DF_OK &&
        (r = publish(dir, tmpdir, final, old)) == DF_OK &&
        (r = write_file_atomic(latest_path, latest, (size_t)nl)) == DF_OK &&
        (r = fsync_dir(dir)) == DF_OK && keep > 0)
        r = prune(dir, name, keep);
    free(final);
    free(tmpdir);
    free(old);
    free(latest_path);
    return r;
}

/* ---- load ---- */

/* The checkpoint directory name to load: latest's, when it names a complete
 * one, else the highest complete checkpoint-<N>. */
static df_status find_checkpoint(const char *dir, char **name)
{
    *name = NULL;
    char *lp = pathf("%s/latest", dir);
    if (!lp)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    FILE *f = fopen(lp, "r");
    free(lp);
    if (f) {
        char buf[256];
        long step;
        if (fgets(buf, sizeof buf, f)) {
            buf[strcspn(buf, "\r\n")] = '\0';
            char *state = pathf("%s/%s/state.json", dir, buf);
            if (parse_ckpt_name(buf, &step) && state && is_file(state))
                *name = strdup(buf);
            free(state);
        }
        fclose(f);
        if (*name)
            return DF_OK;
    }
    ckpt_entry *v;
    size_t n;
    df_status r = list_checkpoints(dir, &v, &n);
    for (size_t i = 0; r == DF_OK && i < n && !*name; i++) {
        char *state = pathf("%s/%s/state.json", dir, v[i].name);
        if (state && is_file(state))
            *name = strdup(v[i].name);
        free(state);
    }
    free_entries(v, n);
    if (r == DF_OK && !*name)
        r = df_fail(DF_ERR_NOTFOUND, "%s: no checkpoint to resume from", dir);
    return r;
}

static bool get_long(const json_t *j, const char *key, long lo, long *out)
{
    const json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > LONG_MAX)
        return false;
    *out = (long)json_integer_value(v);
    return true;
}

static bool get_u64(const json_t *j, const char *key, uint64_t *out)
{
    const char *s = json_string_value(json_object_get(j, key));
    if (!s || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    *out = v;
    return *end == '\0' && errno == 0;
}

static bool parse_hex32(const char *h, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        int c = h[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return true;
}

static df_status parse_rng(const json_t *j, df_rng *r)
{
    long index;
    const char *mt = json_string_value(json_object_get(j, "mt"));
    const char *nn = json_string_value(json_object_get(j, "next_normal"));
    const json_t *has = json_object_get(j, "has_next_normal");
    if (!json_is_object(j) || !get_u64(j, "seed", &r->seed) || !get_long(j, "index", 0, &index) ||
        index > MT_WORDS || !mt || strlen(mt) != MT_WORDS * 8 || !json_is_boolean(has) || !nn ||
        strlen(nn) != 18 || strncmp(nn, "0x", 2) != 0)
        return DF_ERR_FORMAT;
    for (int i = 0; i < MT_WORDS; i++)
        if (!parse_hex32(mt + 8 * i, &r->mt[i]))
            return DF_ERR_FORMAT;
    uint32_t hi, lo;
    if (!parse_hex32(nn + 2, &hi) || !parse_hex32(nn + 10, &lo))
        return DF_ERR_FORMAT;
    uint64_t bits = (uint64_t)hi << 32 | lo;
    memcpy(&r->next_normal, &bits, sizeof bits);
    r->index = (int)index;
    r->has_next_normal = json_is_true(has);
    return DF_OK;
}

/* state.json into out (fresh allocations), checked against the set. */
static df_status parse_state(const char *path, const df_lora_set *s, df_train_state *out)
{
    json_t *j;
    df_status r = df_json_load_file(path, &j);
    if (r != DF_OK)
        return r;
    memset(out, 0, sizeof *out);
    const json_t *lora = json_object_get(j, "lora"), *order = json_object_get(j, "order");
    const json_t *cfg = json_object_get(j, "config_json");
    const char *fmt = json_string_value(json_object_get(j, "format"));
    long version, rank, nparams, nfloats;
    if (!fmt || strcmp(fmt, STATE_FORMAT) != 0 || !get_long(j, "version", 0, &version))
        r = df_fail(DF_ERR_FORMAT, "%s: not a df-train checkpoint state", path);
    else if (version != STATE_VERSION)
        r = df_fail(DF_ERR_UNSUPPORTED, "%s: checkpoint version %ld (this build reads %d)", path,
                    version, STATE_VERSION);
    else if (!get_long(j, "step", 0, &out->step) || !get_long(j, "epoch", 0, &out->epoch) ||
             !get_long(j, "pos", 0, &out->pos) || !get_u64(j, "seed", &out->seed) ||
             parse_rng(json_object_get(j, "rng"), &out->rng) != DF_OK ||
             !json_is_array(order) || (cfg && !json_is_string(cfg) && !json_is_null(cfg)) ||
             !json_is_object(lora) || !get_long(lora, "rank", 1, &rank) ||
             !json_is_number(json_object_get(lora, "alpha")) ||
             !get_long(lora, "params", 0, &nparams) || !get_long(lora, "floats", 0, &nfloats))
        r = df_fail(DF_ERR_FORMAT, "%s: missing or malformed field", path);
    if (r == DF_OK) {
        float alpha = (float)json_number_value(json_object_get(lora, "alpha"));
        if (rank != s->rank || alpha != s->alpha || (size_t)nparams != s->n ||
            (size_t)nfloats != s->nfloats)
            r = df_fail(DF_ERR_SHAPE,
                        "%s: checkpoint LoRA has rank %ld, alpha %g, %ld params (%ld floats); "
                        "this run has rank %d, alpha %g, %zu params (%zu floats)",
                        path, rank, alpha, nparams, nfloats, s->rank, s->alpha, s->n, s->nfloats);
    }
    if (r == DF_OK) {
        out->n_order = json_array_size(order);
        out->order = malloc((out->n_order ? out->n_order : 1) * sizeof *out->order);
        if (!out->order)
            r = df_fail(DF_ERR_NOMEM, "out of memory");
        for (size_t i = 0; r == DF_OK && i < out->n_order; i++) {
            const json_t *v = json_array_get(order, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                r = df_fail(DF_ERR_FORMAT, "%s: order[%zu] is not an entry index", path, i);
            else
                out->order[i] = (int64_t)json_integer_value(v);
        }
    }
    if (r == DF_OK && json_is_string(cfg) && !(out->config_json = strdup(json_string_value(cfg))))
        r = df_fail(DF_ERR_NOMEM, "out of memory");
    json_decref(j);
    if (r != DF_OK)
        df_train_state_free(out);
    return r;
}

/* Load one F32 tensor of known shape into dst. */
static df_status read_exact(const df_safetensors *f, const char *name, const int64_t *shape,
                            float *dst)
{
    const df_st_tensor *t = df_st_find(f, name);
    if (!t)
        return df_fail(DF_ERR_NOTFOUND, "%s: no tensor %s", df_st_path(f), name);
    df_status r = df_st_check_shape(t, 2, shape);
    if (r == DF_OK && t->dtype != DF_DTYPE_F32)
        r = df_fail(DF_ERR_SHAPE, "%s: %s is %s, not F32", df_st_path(f), name,
                    df_dtype_name(t->dtype));
    return r == DF_OK ? df_st_to_f32(t, dst) : r;
}

/* optimizer.safetensors into m, v (nfloats each), *step, and the exact B
 * values into b_exact (a params-sized block) when the file has them. */
static df_status read_optimizer(const char *path, const df_lora_set *s, float *m, float *v,
                                float *b_exact, bool *has_b, long *step)
{
    df_safetensors *f;
    df_status r = df_st_open(path, &f);
    if (r != DF_OK)
        return r;
    *has_b = false;
    const df_st_tensor *ts = df_st_find(f, "step");
    int64_t k = -1;
    if (!ts || ts->numel != 1 || df_st_to_i64(ts, &k) != DF_OK || k < 0)
        r = df_fail(DF_ERR_FORMAT, "%s: no valid scalar \"step\"", path);
    *step = (long)k;
    size_t expected = 1;
    for (size_t i = 0; r == DF_OK && i < s->n; i++) {
        const df_lora_param *p = &s->p[i];
        for (int which = 0; which < 2 && r == DF_OK; which++) {
            char key[1100], name[1200];
            df_lora_key(key, sizeof key, p, which, DF_LORA_FMT_PEFT);
            size_t off = (size_t)((which ? p->B : p->A) - s->params);
            int64_t shape[2] = {which ? p->out : s->rank, which ? s->rank : p->in};
            snprintf(name, sizeof name, "exp_avg/%s", key);
            r = read_exact(f, name, shape, m + off);
            snprintf(name, sizeof name, "exp_avg_sq/%s", key);
            if (r == DF_OK)
                r = read_exact(f, name, shape, v + off);
            expected += 2;
            snprintf(name, sizeof name, "param/%s", key);
            if (r == DF_OK && which == 1 && df_st_find(f, name)) {
                r = read_exact(f, name, shape, b_exact + off);
                *has_b = true;
                expected++;
            }
        }
    }
    if (r == DF_OK && df_st_count(f) != expected)
        r = df_fail(DF_ERR_FORMAT, "%s: %zu tensors, expected %zu for this LoRA set", path,
                    df_st_count(f), expected);
    df_st_close(f);
    return r;
}

df_status df_checkpoint_load(const char *dir, df_lora_set *s, df_adamw *o, df_train_state *st)
{
    bool alloc_o = !o->m && o->n == 0;
    if (!alloc_o && o->n != s->nfloats)
        return df_fail(DF_ERR_ARG, "checkpoint: optimizer has %zu moments, the LoRA set %zu "
                       "parameters", o->n, s->nfloats);
    char *name;
    df_status r = find_checkpoint(dir, &name);
    if (r != DF_OK)
        return r;
    char *state = pathf("%s/%s/state.json", dir, name);
    char *opt = pathf("%s/%s/optimizer.safetensors", dir, name);
    char *lora = pathf("%s/%s/lora.safetensors", dir, name);
    size_t nf = s->nfloats ? s->nfloats : 1;
    float *m = malloc(nf * sizeof *m), *v = malloc(nf * sizeof *v);
    float *b = malloc(nf * sizeof *b);
    df_train_state ns = {0};
    bool has_b = false;
    long step = 0;
    if (!state || !opt || !lora || !m || !v || !b)
        r = df_fail(DF_ERR_NOMEM, "out of memory");
    if (r == DF_OK && (r = parse_state(state, s, &ns)) == DF_OK &&
        (r = read_optimizer(opt, s, m, v, b, &has_b, &step)) == DF_OK)
        r = df_lora_set_load(s, lora);   /* commits s only when the whole file loads */
    if (r == DF_OK) {
        /* Nothing fails from here on. */
        if (has_b)
            for (size_t i = 0; i < s->n; i++)
                memcpy(s->p[i].B, b + (s->p[i].B - s->params),
                       (size_t)s->p[i].out * (size_t)s->rank * sizeof *b);
        if (alloc_o) {
            o->m = m;
            o->v = v;
            o->n = s->nfloats;
            m = v = NULL;
        } else {
            memcpy(o->m, m, s->nfloats * sizeof *m);
            memcpy(o->v, v, s->nfloats * sizeof *v);
        }
        o->step = step;
        *st = ns;
    } else {
        df_train_state_free(&ns);
    }
    free(m);
    free(v);
    free(b);
    free(state);
    free(opt);
    free(lora);
    free(name);
    return r;
}

void df_train_state_free(df_train_state *st)
{
    free(st->order);
    free(st->config_json);
    memset(st, 0, sizeof *st);
}
