/* df-merge - merge several metadata.jsonl files into one dataset.
 *
 * All inputs are read first (so an unreadable input stops the run before
 * anything is written), records are deduplicated by file_name (and, with
 * --dedupe content, by the sha256 of the image bytes), name conflicts are
 * resolved by policy and each one is reported, then the result goes to
 * stdout or, with --out, into a self-contained ImageFolder directory.
 * Records are kept in order of first appearance.
 * Tested by tests/tools/test-df-merge.sh; manual in man/df-merge.1. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "jsonl.h"
#include "log.h"

#define USAGE "Usage: df-merge [OPTIONS] [[--source NAME] FILE]...\n"

static void usage(void)
{
    printf(USAGE
           "Merge metadata.jsonl files (FILE '-' is stdin; none means stdin) into one on\n"
           "stdout, or into an ImageFolder dataset with --out. file_name resolves\n"
           "against each input's directory (stdin: the current directory); on stdout it\n"
           "is rewritten relative to the output file's directory (else the current one).\n"
           "\n"
           "  -o, --out DIR          write DIR/metadata.jsonl and the images (hard links,\n"
           "                         copies across file systems); failed records to stdout\n"
           "  -r, --root DIR         resolve every file_name against DIR instead\n"
           "  -s, --source NAME      set source=NAME on records of the following inputs\n"
           "                         that have none ('' stops)\n"
           "  -d, --dedupe KIND      name (default) or content (also sha256 of the image)\n"
           "  -c, --on-conflict P    same file_name with different text or image, or (with\n"
           "                         --dedupe content) same image with different text:\n"
           "                         keep first (default), last, rename (keep both; prefix\n"
           "                         source or input#), or fail (exit 1, nothing written)\n"
           "      --verify           check that every image exists and decodes\n"
           "      --source-dirs      prefix file_name with the source (or input<N>), giving\n"
           "                         each source its own directory\n"
           "      --require-text     drop records without a caption (text)\n"
           "      --drop-errors      drop records that carry an error (counted)\n"
           "      --copy             with --out, copy images instead of hard-linking\n"
           "      --strict           exit 1 if any record failed\n"
           "  -q, --quiet            no progress line\n"
           "      --progress         progress line even when stderr is not a terminal\n"
           "  -h, --help             this help\n");
}

typedef enum { KEEP_FIRST, KEEP_LAST, RENAME, FAIL } conflict_policy;

typedef struct {
    json_t *rec;
    char *path;          /* resolved image path, NULL for error records */
    int input;
    long line;
    int hashed;          /* 0 not yet, 1 sha valid, -1 unreadable */
    unsigned char sha[32];
    bool dropped;
} entry;

typedef struct {
    /* options */
    const char *out_dir, *root;
    bool dedupe_content, verify, require_text, drop_errors, copy, strict, source_dirs;
    conflict_policy policy;
    df_progress_mode progress_mode;
    /* state */
    const char **inputs;   /* display names */
    entry *e;
    size_t n, cap;
    json_t *by_name;       /* file_name -> entry index */
    json_t *by_hash;       /* hex sha256 -> entry index */
    df_progress prog;
    char *out_base;        /* stdout mode: absolute directory file_name is made relative to */
    /* counts for the summary */
    long in, out, dup, content_dup, conflicts, missing, errors, no_text, no_text_dropped,
         errors_dropped, linked, copied;
} merge;

/* ---- images: existence, hashing, identity ---- */

static df_status sha256_file(const char *path, unsigned char out[32])
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", path,
                       strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    df_status s = DF_OK;
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        s = df_fail(DF_ERR_NOMEM, "sha256: cannot initialize");
    } else {
        unsigned char buf[1 << 16];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, fp)) > 0)
            EVP_DigestUpdate(ctx, buf, k);
        unsigned int len = 32;
        if (ferror(fp))
            s = df_fail(DF_ERR_IO, "%s: read error", path);
        else
            EVP_DigestFinal_ex(ctx, out, &len);
    }
    EVP_MD_CTX_free(ctx);
    fclose(fp);
    return s;
}

/* Hash an entry's image once; -1 when it cannot be read. */
static int entry_hash(entry *e)
{
    if (!e->hashed)
        e->hashed = sha256_file(e->path, e->sha) == DF_OK ? 1 : -1;
    return e->hashed;
}

static void hex32(const unsigned char *sha, char hex[65])
{
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", sha[i]);
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!strcmp(a, b))
        return true;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Same image? Same file, or equal bytes. When either cannot be read we
 * cannot tell, and only the captions decide. */
static bool same_image(entry *a, entry *b)
{
    if (same_file(a->path, b->path))
        return true;
    if (entry_hash(a) < 0 || entry_hash(b) < 0)
        return true;
    return !memcmp(a->sha, b->sha, 32);
}

static bool same_text(const json_t *a, const json_t *b)
{
    const char *x = df_rec_str(a, "text"), *y = df_rec_str(b, "text");
    return (!x && !y) || (x && y && !strcmp(x, y));
}

/* --verify: the image exists and decodes without warnings. */
static bool verify_image(merge *m, json_t *rec, const char *path)
{
    df_image img = {0};
    df_status s = df_image_decode_file(path, NULL, &img);
    df_image_free(&img);
    if (s == DF_OK)
        return true;
    if (access(path, F_OK) != 0) {
        m->missing++;
        df_rec_set_error(rec, "image not found: %s", path);
    } else {
        df_rec_set_error(rec, "image does not decode: %s", df_last_error());
    }
    return false;
}

/* ---- the entry table ---- */

static entry *append(merge *m, json_t *rec, char *path, int input, long line)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 1024;
        entry *e = realloc(m->e, cap * sizeof *e);
        if (!e) {
            df_error("out of memory after %zu records", m->n);
            exit(1);
        }
        m->e = e;
        m->cap = cap;
    }
    entry *e = &m->e[m->n++];
    *e = (entry){.rec = rec, .path = path, .input = input, .line = line};
    return e;
}

static void index_name(merge *m, const char *name, size_t i)
{
    json_object_set_new(m->by_name, name, json_integer((json_int_t)i));
}

static void index_hash(merge *m, size_t i)
{
    entry *e = &m->e[i];
    if (!m->dedupe_content || entry_hash(e) < 0)
        return;
    char hex[65];
    hex32(e->sha, hex);
    if (!json_object_get(m->by_hash, hex))
        json_object_set_new(m->by_hash, hex, json_integer((json_int_t)i));
}

static void unindex_hash(merge *m, size_t i)
{
    entry *e = &m->e[i];
    if (!m->dedupe_content || e->hashed != 1)
        return;
    char hex[65];
    hex32(e->sha, hex);
    json_t *v = json_object_get(m->by_hash, hex);
    if (v && (size_t)json_integer_value(v) == i)
        json_object_del(m->by_hash, hex);
}

/* The directory a record's source gets: its source, else "input<N>". */
static void source_prefix(const json_t *rec, int input, char *buf, size_t cap)
{
    const char *src = df_rec_str(rec, "source");
    if (src && *src) {
        snprintf(buf, cap, "%s", src);
        for (char *p = buf; *p; p++)
            if (*p == '/')
                *p = '_';   /* a source name must not add directory levels */
    } else {
        snprintf(buf, cap, "input%d", input + 1);
    }
}

/* A name for a renamed record: "<source>/<file_name>" (or "input<N>/..."),
 * with "-2", "-3", ... added to the prefix until it is free. */
static char *rename_target(merge *m, const entry *e, const char *fn)
{
    char prefix[256];
    source_prefix(e->rec, e->input, prefix, sizeof prefix);
    size_t cap = strlen(prefix) + strlen(fn) + 32;
    char *name = malloc(cap);
    if (!name)
        return NULL;
    for (int k = 1;; k++) {
        if (k == 1)
            snprintf(name, cap, "%s/%s", prefix, fn);
        else
            snprintf(name, cap, "%s-%d/%s", prefix, k, fn);
        if (!json_object_get(m->by_name, name))
            return name;
    }
}

/* The new record `ni` has the file_name of kept record `ki`. */
static void resolve_name_clash(merge *m, size_t ki, size_t ni, const char *fn)
{
    entry *k = &m->e[ki], *n = &m->e[ni];
    bool st = same_text(k->rec, n->rec), si = same_image(k, n);
    if (st && si) {
        m->dup++;
        n->dropped = true;
        return;
    }
    m->conflicts++;
    const char *what = !st && !si ? "text and image" : !st ? "text" : "image";
    if (m->policy == KEEP_FIRST || m->policy == FAIL) {
        n->dropped = true;
        df_warn("conflict: \"%s\": %s:%ld and %s:%ld have different %s; %s", fn,
                m->inputs[k->input], k->line, m->inputs[n->input], n->line, what,
                m->policy == FAIL ? "failing" : "keeping the first");
    } else if (m->policy == KEEP_LAST) {
        /* The later record takes the earlier one's place in the output. */
        df_warn("conflict: \"%s\": %s:%ld and %s:%ld have different %s; keeping the last", fn,
                m->inputs[k->input], k->line, m->inputs[n->input], n->line, what);
        unindex_hash(m, ki);
        entry tmp = *k;
        *k = *n;
        *n = tmp;
        n->dropped = true;
        index_hash(m, ki);
    } else {
        char *name = rename_target(m, n, fn);
        if (!name) {
            df_error("out of memory");
            exit(1);
        }
        df_warn("conflict: \"%s\": %s:%ld and %s:%ld have different %s; renaming the second "
                "to \"%s\"", fn, m->inputs[k->input], k->line, m->inputs[n->input], n->line,
                what, name);
        df_rec_set_str(n->rec, "renamed_from", fn);
        df_rec_set_str(n->rec, "file_name", name);
        index_name(m, name, ni);
        index_hash(m, ni);
        free(name);
    }
}

/* The new record `ni` has the same image bytes as kept record `ki` under
 * another name, and another caption: a conflict, decided by the policy
 * like a name conflict (rename keeps both: their names already differ). */
static void resolve_content_clash(merge *m, size_t ki, size_t ni, const char *fn)
{
    entry *k = &m->e[ki], *n = &m->e[ni];
    const char *kfn = df_rec_str(k->rec, "file_name");
    m->conflicts++;
    const char *act = m->policy == KEEP_LAST ? "keeping the last"
                      : m->policy == RENAME  ? "keeping both"
                      : m->policy == FAIL    ? "failing"
                                             : "keeping the first";
    df_warn("conflict: \"%s\" and \"%s\": %s:%ld and %s:%ld have the same image and different "
            "text; %s", kfn, fn, m->inputs[k->input], k->line, m->inputs[n->input], n->line, act);
    if (m->policy == KEEP_LAST) {
        /* The later record takes the earlier one's place (and its hash). */
        json_object_del(m->by_name, kfn);
        entry tmp = *k;
        *k = *n;
        *n = tmp;
        n->dropped = true;
        index_name(m, fn, ki);
    } else if (m->policy == RENAME) {
        index_name(m, fn, ni);
    } else {
        n->dropped = true;
    }
}

/* ---- paths ---- */

/* p with "." and empty components removed and ".." applied where a
 * component precedes it ("sub/../sub/a.jpg" is "sub/a.jpg"; "/.." is "/").
 * *escapes (may be NULL) is set when a relative p goes above its start.
 * New string; "." for nothing. */
static char *lexical_norm(const char *p, bool *escapes)
{
    bool abs = p[0] == '/';
    size_t L = strlen(p);
    char *out = malloc(L + 3), *o = out;
    if (!out) {
        df_error("out of memory");
        exit(1);
    }
    size_t base = 0;   /* out[0..base) is "/" or "../../" that ".." cannot remove */
    if (abs)
        *o++ = '/', base = 1;
    if (escapes)
        *escapes = false;
    for (const char *s = p; *s;) {
        size_t k = strcspn(s, "/");
        if (k == 2 && s[0] == '.' && s[1] == '.') {
            if ((size_t)(o - out) > base) {      /* drop the last component */
                while (o > out + base && o[-1] != '/')
                    o--;
                if (o > out + base)
                    o--;                          /* its separator */
            } else if (!abs) {
                if (escapes)
                    *escapes = true;
                memcpy(o, o > out ? "/.." : "..", o > out ? 3 : 2);
                o += o > out ? 3 : 2;
                base = (size_t)(o - out);
            }
        } else if (k && !(k == 1 && s[0] == '.')) {
            if ((size_t)(o - out) > (abs ? 1 : 0))
                *o++ = '/';
            memcpy(o, s, k);
            o += k;
        }
        s += k;
        s += *s == '/';
    }
    if (o == out)
        *o++ = '.';
    *o = '\0';
    return out;
}

/* Absolute and normalised. */
static char *abs_norm(const char *p)
{
    if (p[0] == '/')
        return lexical_norm(p, NULL);
    static char cwd[PATH_MAX];   /* asked once: one call per record adds up */
    if (!cwd[0] && !getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "/");
    size_t cap = strlen(cwd) + strlen(p) + 2;
    char *j = malloc(cap);
    if (!j) {
        df_error("out of memory");
        exit(1);
    }
    snprintf(j, cap, "%s/%s", cwd, p);
    char *n = lexical_norm(j, NULL);
    free(j);
    return n;
}

/* Path of target relative to directory base (both absolute, normalised). */
static char *relative_to(const char *base, const char *target)
{
    size_t i = 0, common = 0;
    for (;; i++) {                    /* common = end of the last shared component */
        char b = base[i], t = target[i];
        if ((b == '/' || !b) && (t == '/' || !t))
            common = i;
        if (!b || !t || b != t)
            break;
    }
    size_t ups = 0;
    if (!strcmp(base, "/"))
        common = 0;
    else
        for (const char *s = base + common; *s; s++)
            ups += *s == '/';
    const char *rest = target + common + (target[common] == '/');
    size_t cap = 3 * ups + strlen(rest) + 2;
    char *r = malloc(cap), *o = r;
    if (!r) {
        df_error("out of memory");
        exit(1);
    }
    for (size_t u = 0; u < ups; u++)
        o += sprintf(o, u + 1 < ups || *rest ? "../" : "..");
    snprintf(o, cap - (size_t)(o - r), "%s", rest);
    if (!*r)
        snprintf(r, cap, ".");
    return r;
}

/* The directory the stdout records will be read from: that of the file
 * stdout is redirected to, else the current directory. */
static char *output_base(void)
{
    struct stat sb;
    char buf[PATH_MAX];
    if (fstat(STDOUT_FILENO, &sb) == 0 && S_ISREG(sb.st_mode)) {
        ssize_t k = readlink("/proc/self/fd/1", buf, sizeof buf - 1);
        if (k > 0 && buf[0] == '/') {
            buf[k] = '\0';
            char *slash = strrchr(buf, '/');
            slash[slash == buf] = '\0';
            return lexical_norm(buf, NULL);
        }
    }
    return abs_norm(".");
}

/* ---- reading ---- */

static char *resolve_path(const char *root, const char *fn)
{
    size_t cap = strlen(root) + strlen(fn) + 2;
    char *p = malloc(cap);
    if (!p) {
        df_error("out of memory");
        exit(1);
    }
    if (fn[0] == '/')
        snprintf(p, cap, "%s", fn);
    else
        snprintf(p, cap, "%s/%s", root, fn);
    return p;
}

/* Records that failed (here or upstream): passed on or dropped, counted. */
static void add_failed(merge *m, json_t *rec, int input, long line)
{
    m->errors++;
    if (m->drop_errors) {
        m->errors_dropped++;
        json_decref(rec);
        return;
    }
    append(m, rec, NULL, input, line);
}

static void add_record(merge *m, json_t *rec, int input, long line, const char *root,
                       const char *source)
{
    m->in++;
    if (source && *source && !json_object_get(rec, "source"))
        df_rec_set_str(rec, "source", source);
    if (json_object_get(rec, "error")) {
        add_failed(m, rec, input, line);
        return;
    }
    const char *fn = df_rec_str(rec, "file_name");
    if (!fn || !*fn) {
        df_rec_set_error(rec, "no file_name");
        add_failed(m, rec, input, line);
        return;
    }
    bool escapes;
    char *norm = lexical_norm(fn, &escapes);
    if (!escapes && strcmp(norm, fn)) {
        /* "sub/../sub/a.jpg" is "sub/a.jpg": one name for dedupe and --out. */
        df_rec_set_str(rec, "file_name", norm);
        fn = df_rec_str(rec, "file_name");
    }
    free(norm);
    const char *text = df_rec_str(rec, "text");
    if (!text || !*text) {
        m->no_text++;
        if (m->require_text) {
            m->no_text_dropped++;
            json_decref(rec);
            return;
        }
    }
    char *path = resolve_path(root, fn);
    if (m->verify && !verify_image(m, rec, path)) {
        free(path);
        add_failed(m, rec, input, line);
        return;
    }
    if (m->source_dirs) {
        /* Each source in its own directory: the image still resolves from
         * the original name (path above). */
        char prefix[256];
        source_prefix(rec, input, prefix, sizeof prefix);
        char *name = resolve_path(prefix, fn);
        df_rec_set_str(rec, "file_name", name);
        free(name);
        fn = df_rec_str(rec, "file_name");
    }
    entry *e = append(m, rec, path, input, line);
    size_t ni = m->n - 1;
    if (m->dedupe_content && entry_hash(e) < 0) {
        m->missing++;
        df_rec_set_error(rec, "cannot read image: %s", df_last_error());
        free(e->path);
        e->path = NULL;
        m->errors++;
        if (m->drop_errors) {
            m->errors_dropped++;
            e->dropped = true;
        }
        return;
    }
    json_t *k = json_object_get(m->by_name, fn);
    if (k) {
        resolve_name_clash(m, (size_t)json_integer_value(k), ni, fn);
        return;
    }
    if (m->dedupe_content) {
        char hex[65];
        hex32(e->sha, hex);
        json_t *h = json_object_get(m->by_hash, hex);
        if (h) {
            size_t ki = (size_t)json_integer_value(h);
            if (same_text(m->e[ki].rec, rec)) {
                m->dup++;
                m->content_dup++;
                e->dropped = true;
            } else {
                resolve_content_clash(m, ki, ni, fn);
            }
            return;
        }
    }
    index_name(m, fn, ni);
    index_hash(m, ni);
}

static df_status read_input(merge *m, int idx, const char *arg, const char *source)
{
    bool is_stdin = !strcmp(arg, "-");
    FILE *fp = is_stdin ? stdin : fopen(arg, "r");
    if (!fp)
        return df_fail(DF_ERR_IO, "%s: %s", arg, strerror(errno));
    char *dir = NULL;
    const char *root = m->root;
    if (!root) {
        if (is_stdin)
            root = ".";
        else if ((dir = strdup(arg)))
            root = dirname(dir);
        else
            root = ".";
    }
    df_jsonl_reader r;
    df_jsonl_reader_init(&r, fp);
    r.name = m->inputs[idx];   /* a bad line's error names its file */
    df_status s;
    json_t *rec;
    while ((s = df_jsonl_next(&r, &rec)) == DF_OK && rec) {
        long errors = m->errors;
        add_record(m, rec, idx, r.lineno, root, source);
        df_progress_add(&m->prog, 1, m->errors - errors);
    }
    if (s != DF_OK)
        s = df_fail(s, "%s: %s", m->inputs[idx], df_last_error());
    df_jsonl_reader_free(&r);
    free(dir);
    if (!is_stdin)
        fclose(fp);
    return s;
}

/* ---- writing ---- */

static int write_records_stdout(merge *m)
{
    for (size_t i = 0; i < m->n; i++) {
        if (m->e[i].dropped)
            continue;
        const char *fn = df_rec_str(m->e[i].rec, "file_name");
        if (m->e[i].path && fn && fn[0] != '/') {
            /* Resolve from where the output is read: its own directory. */
            char *a = abs_norm(m->e[i].path), *rel = relative_to(m->out_base, a);
            df_rec_set_str(m->e[i].rec, "file_name", rel);
            free(a);
            free(rel);
        }
        if (df_jsonl_write_fd(STDOUT_FILENO, m->e[i].rec) != DF_OK) {
            df_error("stdout: %s", df_last_error());
            return 1;
        }
        m->out++;
    }
    return 0;
}

/* mkdir -p for the directory part of path (path itself excluded). */
static df_status make_parents(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            df_status st = df_fail(DF_ERR_IO, "mkdir %s: %s", p, strerror(errno));
            free(p);
            return st;
        }
        *s = '/';
    }
    free(p);
    return DF_OK;
}

static df_status copy_file(const char *src, const char *dst)
{
    size_t L = strlen(dst);
    char *tmp = malloc(L + 16);
    if (!tmp)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    snprintf(tmp, L + 16, "%s.tmp%d", dst, (int)getpid());
    df_status s = DF_OK;
    FILE *in = fopen(src, "rb"), *out = in ? fopen(tmp, "wb") : NULL;
    if (!in || !out) {
        s = df_fail(!in && errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s",
                    !in ? src : tmp, strerror(errno));
    } else {
        char buf[1 << 16];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, in)) > 0)
            if (fwrite(buf, 1, k, out) != k)
                break;
        if (ferror(in) || ferror(out))
            s = df_fail(DF_ERR_IO, "copying %s to %s: %s", src, dst, strerror(errno));
    }
    if (in)
        fclose(in);
    if (out && fclose(out) != 0 && s == DF_OK)
        s = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (s == DF_OK && rename(tmp, dst) != 0)
        s = df_fail(DF_ERR_IO, "%s: %s", dst, strerror(errno));
    if (s != DF_OK && out)
        unlink(tmp);
    free(tmp);
    return s;
}

/* Put src at dst: a hard link where possible, else (or with --copy) a copy.
 * An existing dst is replaced unless it already is src. */
static df_status place_image(merge *m, const char *src, const char *dst)
{
    if (access(src, R_OK) != 0)
        return df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "image %s: %s", src,
                       strerror(errno));
    df_status s = make_parents(dst);
    if (s != DF_OK)
        return s;
    if (same_file(src, dst)) {
        m->linked++;
        return DF_OK;
    }
    unlink(dst);
    if (!m->copy && link(src, dst) == 0) {
        m->linked++;
        return DF_OK;
    }
    if ((s = copy_file(src, dst)) == DF_OK)
        m->copied++;
    return s;
}

/* A file_name must stay inside the dataset directory. */
static bool safe_relative(const char *fn)
{
    if (fn[0] == '/')
        return false;
    for (const char *p = fn; *p;) {
        size_t k = strcspn(p, "/");
        if (k == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += k;
        p += *p == '/';
    }
    return true;
}

/* Materialize one kept record; false (and an error on the record) if not. */
static bool materialize(merge *m, entry *e)
{
    const char *fn = df_rec_str(e->rec, "file_name");
    if (!safe_relative(fn)) {
        df_rec_set_error(e->rec, "file_name \"%s\" would leave the dataset directory", fn);
        return false;
    }
    char *dst = resolve_path(m->out_dir, fn);   /* fn is normalised (add_record) */
    df_status s = place_image(m, e->path, dst);
    free(dst);
    if (s == DF_OK)
        return true;
    if (s == DF_ERR_NOTFOUND)
        m->missing++;
    df_rec_set_error(e->rec, "%s", df_last_error());
    return false;
}

static int write_dataset(merge *m)
{
    char *meta = resolve_path(m->out_dir, "metadata.jsonl"), *tmp = NULL;
    int rc = 1, fd = -1;
    if (make_parents(meta) != DF_OK) {
        df_error("%s", df_last_error());
        goto out;
    }
    size_t L = strlen(meta) + 16;
    if (!(tmp = malloc(L)))
        goto out;
    snprintf(tmp, L, "%s.tmp%d", meta, (int)getpid());
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        df_error("%s: %s", tmp, strerror(errno));
        goto out;
    }
    df_progress p;
    df_progress_start(&p, "place", (int64_t)m->n, m->progress_mode);
    for (size_t i = 0; i < m->n; i++) {
        entry *e = &m->e[i];
        if (e->dropped)
            continue;
        bool ok = e->path && materialize(m, e);
        if (!ok && e->path)
            m->errors++;
        df_progress_add(&p, 1, !ok);
        if (!ok && m->drop_errors) {
            m->errors_dropped++;
            continue;
        }
        /* Good records into the dataset; failed ones to stdout, not lost. */
        if (df_jsonl_write_fd(ok ? fd : STDOUT_FILENO, e->rec) != DF_OK) {
            df_progress_finish(&p);
            df_error("%s: %s", ok ? tmp : "stdout", df_last_error());
            goto out;
        }
        m->out += ok;
    }
    df_progress_finish(&p);
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        df_error("%s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, meta) != 0) {
        df_error("%s: %s", meta, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (rc && tmp)
        unlink(tmp);
    free(tmp);
    free(meta);
    return rc;
}

/* ---- main ---- */

static void summary(const merge *m)
{
    fprintf(stderr, "%s: in %ld, out %ld, duplicates %ld (%ld by content), conflicts %ld, "
            "missing %ld, errors %ld (%ld dropped), without text %ld (%ld dropped)",
            df_progname(), m->in, m->out, m->dup, m->content_dup, m->conflicts, m->missing,
            m->errors, m->errors_dropped, m->no_text, m->no_text_dropped);
    if (m->out_dir)
        fprintf(stderr, ", linked %ld, copied %ld", m->linked, m->copied);
    fputc('\n', stderr);
}

typedef struct {
    const char *path, *source;
} input_arg;

static int parse_args(int argc, char **argv, merge *m, input_arg **ins, int *nin)
{
    enum { O_VERIFY = 256, O_REQTEXT, O_DROPERR, O_COPY, O_STRICT, O_PROGRESS, O_SRCDIRS };
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},          {"root", required_argument, 0, 'r'},
        {"source", required_argument, 0, 's'},       {"dedupe", required_argument, 0, 'd'},
        {"on-conflict", required_argument, 0, 'c'},  {"verify", no_argument, 0, O_VERIFY},
        {"require-text", no_argument, 0, O_REQTEXT}, {"drop-errors", no_argument, 0, O_DROPERR},
        {"copy", no_argument, 0, O_COPY},            {"strict", no_argument, 0, O_STRICT},
        {"quiet", no_argument, 0, 'q'},              {"progress", no_argument, 0, O_PROGRESS},
        {"source-dirs", no_argument, 0, O_SRCDIRS},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *source = NULL;
    bool seen_stdin = false;
    *ins = calloc((size_t)argc + 1, sizeof **ins);
    *nin = 0;
    if (!*ins)
        return 1;
    int c;
    /* The leading '-' returns inputs in order (as code 1), so --source
     * applies to the inputs that follow it. */
    while ((c = getopt_long(argc, argv, "-o:r:s:d:c:qh", opts, NULL)) != -1) {
        switch (c) {
        case 1:
            if (!strcmp(optarg, "-")) {
                if (seen_stdin)
                    df_usage_error("stdin ('-') given twice");
                seen_stdin = true;
            }
            (*ins)[(*nin)++] = (input_arg){optarg, source};
            break;
        case 'o': m->out_dir = optarg; break;
        case 'r': m->root = optarg; break;
        case 's': source = optarg; break;
        case 'd':
            if (!strcmp(optarg, "content"))
                m->dedupe_content = true;
            else if (strcmp(optarg, "name"))
                df_usage_error("--dedupe: expected name or content, got '%s'", optarg);
            break;
        case 'c':
            if (!strcmp(optarg, "first")) m->policy = KEEP_FIRST;
            else if (!strcmp(optarg, "last")) m->policy = KEEP_LAST;
            else if (!strcmp(optarg, "rename")) m->policy = RENAME;
            else if (!strcmp(optarg, "fail")) m->policy = FAIL;
            else df_usage_error("--on-conflict: expected first, last, rename or fail, got '%s'",
                                optarg);
            break;
        case O_VERIFY: m->verify = true; break;
        case O_REQTEXT: m->require_text = true; break;
        case O_DROPERR: m->drop_errors = true; break;
        case O_COPY: m->copy = true; break;
        case O_SRCDIRS: m->source_dirs = true; break;
        case O_STRICT: m->strict = true; break;
        case 'q': m->progress_mode = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: m->progress_mode = DF_PROGRESS_ALWAYS; break;
        case 'h': usage(); exit(0);
        default: fprintf(stderr, "Try 'df-merge --help'.\n"); exit(2);
        }
    }
    if (m->copy && !m->out_dir)
        df_usage_error("--copy needs --out");
    if (*nin == 0)
        (*ins)[(*nin)++] = (input_arg){"-", source};
    return 0;
}

int main(int argc, char **argv)
{
    df_log_init("df-merge");
    merge m = {.policy = KEEP_FIRST, .progress_mode = DF_PROGRESS_AUTO};
    input_arg *ins;
    int nin;
    if (parse_args(argc, argv, &m, &ins, &nin) != 0) {
        df_error("out of memory");
        return 1;
    }
    m.inputs = calloc((size_t)nin, sizeof *m.inputs);
    m.by_name = json_object();
    m.by_hash = json_object();
    if (!m.inputs || !m.by_name || !m.by_hash) {
        df_error("out of memory");
        return 1;
    }
    for (int i = 0; i < nin; i++)
        m.inputs[i] = strcmp(ins[i].path, "-") ? ins[i].path : "<stdin>";

    int rc = 0;
    df_progress_start(&m.prog, "merge", 0, m.progress_mode);
    for (int i = 0; i < nin && !rc; i++)
        if (read_input(&m, i, ins[i].path, ins[i].source) != DF_OK) {
            df_error("%s", df_last_error());
            rc = 1;
        }
    df_progress_finish(&m.prog);
    if (!rc && m.policy == FAIL && m.conflicts > 0) {
        df_error("--on-conflict fail: %ld conflicts, nothing written", m.conflicts);
        rc = 1;
    }
    if (!rc && !m.out_dir)
        m.out_base = output_base();
    if (!rc)
        rc = m.out_dir ? write_dataset(&m) : write_records_stdout(&m);
    if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0) {
        df_error("stdout: write error");
        rc = 1;
    }
    summary(&m);
    if (!rc && m.strict && m.errors > 0) {
        df_error("--strict: %ld failed records", m.errors);
        rc = 1;
    }
    for (size_t i = 0; i < m.n; i++) {
        json_decref(m.e[i].rec);
        free(m.e[i].path);
    }
    free(m.e);
    free(ins);
    free(m.inputs);
    free(m.out_base);
    json_decref(m.by_name);
    json_decref(m.by_hash);
    return rc;
}
