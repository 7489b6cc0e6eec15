/* df-resize.c - decode, orient, crop, resize and encode the images named by
 * records, writing one record per input with the new file_name, width and
 * height. See man/df-resize.1.
 *
 * Flow: the main thread reads records (stdin, or a sorted scan of --root),
 * gives each an output name (deterministic, in input order, never
 * colliding) and puts it in a window of slots; -j worker threads take
 * pending slots and do the image work; the main thread writes finished
 * slots in input order, so output order = input order, with at most
 * 4 * j records in flight.
 *
 * Tested by tests/tools/test-df-resize.sh. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "jsonl.h"
#include "log.h"

static const char usage_text[] =
    "Usage: df-resize --out DIR [--root DIR] [--scan] [--size N] [--crop center|pad|pad-black|none]\n"
    "                 [--format jpg|png] [--quality N] [--min-side N] [--max-side N]\n"
    "                 [--max-pixels N] [--no-dct-scaling] [-j N] [--strict] [--quiet|--progress]\n"
    "                 [< records.jsonl] > records.jsonl\n"
    "Resize the images named by the records' file_name (relative to --root) into --out.\n"
    "With --scan, or with --root and stdin a terminal, scan --root recursively for\n"
    "*.jpg, *.jpeg and *.png instead of reading records.\n"
    "  --out DIR          where resized images go (required; created if missing)\n"
    "  --root DIR         directory file_name is relative to (default .)\n"
    "  --scan             scan --root for images instead of reading stdin\n"
    "  --size N           training resolution (default 768)\n"
    "  --crop MODE        center: centered square; pad, pad-black: whole image on a\n"
    "                     white or black square; none: longest side N (default center)\n"
    "  --format FMT       jpg or png (default jpg)\n"
    "  --quality N        JPEG quality 1-100 (default 95)\n"
    "  --min-side N       error \"too small\" when the shorter side is below N\n"
    "                     (else smaller images are upscaled, marked upscaled: true)\n"
    "  --max-side N       error \"too large\" when the longer side is above N\n"
    "  --max-pixels N     refuse images with more pixels (default 100000000)\n"
    "  --no-dct-scaling   always decode JPEGs at full size\n"
    "  -j, --jobs N       worker threads (default 1)\n"
    "  --strict           exit 1 when any record failed\n"
    "  --quiet            no progress line; --progress: always draw it\n"
    "  -h, --help         this help\n";

typedef struct {
    const char *root, *out;
    int size, quality, min_side, max_side, jobs;
    uint64_t max_pixels;
    df_image_fit_mode fit;
    bool png, dct_scaling, strict, scan;
    df_progress_mode progress;
} options;

/* ---------------------------------------------------------------- argument parsing */

static void parse_args(int argc, char **argv, options *o)
{
    enum { O_ROOT = 256, O_OUT, O_SCAN, O_SIZE, O_CROP, O_FORMAT, O_QUALITY, O_MIN, O_MAX,
           O_MAXPIX, O_NODCT, O_STRICT, O_QUIET, O_PROGRESS };
    static const struct option longopts[] = {
        { "root", required_argument, 0, O_ROOT }, { "out", required_argument, 0, O_OUT },
        { "scan", no_argument, 0, O_SCAN }, { "size", required_argument, 0, O_SIZE },
        { "crop", required_argument, 0, O_CROP }, { "format", required_argument, 0, O_FORMAT },
        { "quality", required_argument, 0, O_QUALITY }, { "min-side", required_argument, 0, O_MIN },
        { "max-side", required_argument, 0, O_MAX }, { "max-pixels", required_argument, 0, O_MAXPIX },
        { "no-dct-scaling", no_argument, 0, O_NODCT }, { "jobs", required_argument, 0, 'j' },
        { "strict", no_argument, 0, O_STRICT }, { "quiet", no_argument, 0, O_QUIET },
        { "progress", no_argument, 0, O_PROGRESS }, { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    *o = (options){ .root = NULL, .size = 768, .quality = 95, .jobs = 1, .fit = DF_FIT_CENTER,
                    .max_pixels = DF_IMAGE_DEFAULT_MAX_PIXELS, .dct_scaling = true,
                    .progress = DF_PROGRESS_AUTO };
    int c;
    while ((c = getopt_long(argc, argv, "hj:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); exit(0);
        case O_ROOT: o->root = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_SCAN: o->scan = true; break;
        case O_SIZE: o->size = (int)df_parse_long_arg("--size", optarg, 1, 16384); break;
        case O_QUALITY: o->quality = (int)df_parse_long_arg("--quality", optarg, 1, 100); break;
        case O_MIN: o->min_side = (int)df_parse_long_arg("--min-side", optarg, 0, DF_IMAGE_MAX_SIDE); break;
        case O_MAX: o->max_side = (int)df_parse_long_arg("--max-side", optarg, 0, DF_IMAGE_MAX_SIDE); break;
        case O_MAXPIX: o->max_pixels = (uint64_t)df_parse_long_arg("--max-pixels", optarg, 1, LONG_MAX); break;
        case 'j': o->jobs = (int)df_parse_long_arg("-j", optarg, 1, 256); break;
        case O_NODCT: o->dct_scaling = false; break;
        case O_STRICT: o->strict = true; break;
        case O_QUIET: o->progress = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: o->progress = DF_PROGRESS_ALWAYS; break;
        case O_CROP:
            if (!strcmp(optarg, "center")) o->fit = DF_FIT_CENTER;
            else if (!strcmp(optarg, "pad")) o->fit = DF_FIT_PAD_WHITE;
            else if (!strcmp(optarg, "pad-black")) o->fit = DF_FIT_PAD_BLACK;
            else if (!strcmp(optarg, "none")) o->fit = DF_FIT_NONE;
            else df_usage_error("--crop: '%s' is not center, pad, pad-black or none", optarg);
            break;
        case O_FORMAT:
            if (!strcmp(optarg, "jpg") || !strcmp(optarg, "jpeg")) o->png = false;
            else if (!strcmp(optarg, "png")) o->png = true;
            else df_usage_error("--format: '%s' is not jpg or png", optarg);
            break;
        default: df_usage_error("unknown option");
        }
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->out)
        df_usage_error("--out DIR is required");
    if (o->max_side && o->min_side > o->max_side)
        df_usage_error("--min-side %d is above --max-side %d", o->min_side, o->max_side);
    /* --root with an interactive stdin means "scan it", as for a raw download */
    if (o->root && isatty(STDIN_FILENO))
        o->scan = true;
    if (!o->root)
        o->root = ".";
}

/* ---------------------------------------------------------------- paths */

static char *join(const char *a, const char *b)
{
    if (b[0] == '/')
        return strdup(b);
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (s)
        snprintf(s, la + lb + 2, "%s%s%s", a, la && a[la - 1] == '/' ? "" : "/", b);
    return s;
}

/* mkdir -p of the directory part of path (path itself is a file). */
static int make_parents(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    free(p);
    return 0;
}

/* A relative path that stays inside its root: no leading '/', no ".."
 * component, nothing empty. Such names are mirrored under --out. */
static bool is_safe_relative(const char *p)
{
    if (!*p || p[0] == '/')
        return false;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 2 && s[0] == '.' && s[1] == '.') || (n == 1 && s[0] == '.'))
            return false;
        s += n + (e ? 1 : 0);
        if (e && !*s)
            return false;
    }
    return true;
}

/* Output name for input name `in`: the same relative path with the new
 * extension; inputs that are not a safe relative path, and names already
 * taken in this run (a.jpg and a.png, duplicates) get the first 8 hex
 * digits of sha256(in) appended, then a counter if needed. `used` is a
 * JSON object used as a string set. */
static char *output_name(const char *in, const char *ext, json_t *used)
{
    bool safe = is_safe_relative(in);
    const char *base = safe ? in : (strrchr(in, '/') ? strrchr(in, '/') + 1 : in);
    if (!*base)
        base = "image";
    const char *slash = strrchr(base, '/'), *dot = strrchr(base, '.');
    size_t stem = dot && dot > (slash ? slash : base) ? (size_t)(dot - base) : strlen(base);

    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)in, strlen(in), md);
    char hex[9];
    snprintf(hex, sizeof hex, "%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);

    size_t cap = stem + 40 + strlen(ext);
    char *name = malloc(cap);
    if (!name)
        return NULL;
    for (int attempt = 0;; attempt++) {
        if (attempt == 0 && safe)
            snprintf(name, cap, "%.*s.%s", (int)stem, base, ext);
        else if (attempt <= 1)
            snprintf(name, cap, "%.*s-%s.%s", (int)stem, base, hex, ext);
        else
            snprintf(name, cap, "%.*s-%s-%d.%s", (int)stem, base, hex, attempt, ext);
        if (!json_object_get(used, name)) {
            json_object_set_new(used, name, json_true());
            return name;
        }
    }
}

/* ---------------------------------------------------------------- scanning */

static bool has_image_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct {
    char **v;
    size_t n, cap;
    dev_t skip_dev;      /* the --out directory, when it lies under --root */
    ino_t skip_ino;
} name_list;

static int list_push(name_list *l, char *s)
{
    if (!s)
        return -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            free(s);
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 0;
}

/* Collect image files under root/rel (rel "" for root itself) as paths
 * relative to root. Symlinked directories are not followed (no loops). */
static int scan_dir(const char *root, const char *rel, name_list *l)
{
    char *dir = *rel ? join(root, rel) : strdup(root);
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) {
        df_error("%s: %s", dir ? dir : root, strerror(errno));
        free(dir);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *r = *rel ? join(rel, e->d_name) : strdup(e->d_name);
        char *full = r ? join(root, r) : NULL;
        struct stat sb;
        if (!r || !full || lstat(full, &sb)) {
            free(r);
            free(full);
            continue;
        }
        if (S_ISDIR(sb.st_mode)) {
            if (!(sb.st_dev == l->skip_dev && sb.st_ino == l->skip_ino))
                rc = scan_dir(root, r, l);
            free(r);
        } else if (has_image_ext(e->d_name)) {
            rc = list_push(l, r);
        } else {
            free(r);
        }
        free(full);
    }
    closedir(d);
    free(dir);
    return rc;
}

/* ---------------------------------------------------------------- the work on one record */

/* Target dimensions before fitting: what DCT scaling must keep. */
static void dct_min_size(const options *o, int w, int h, int *mw, int *mh)
{
    double s = o->fit == DF_FIT_CENTER ? (w < h ? w : h) : (w > h ? w : h);
    double f = 2.0 * o->size / s;   /* keep 2x the final size: the resample still antialiases */
    *mw = (int)(w * f + 0.999);
    *mh = (int)(h * f + 0.999);
}

/* Remove dst's temporary files (dst.PID.N.tmp) left by runs that were
 * killed: those whose PID no longer exists. A live PID may be a concurrent
 * run (GNU parallel) writing the same name, so its file stays. */
static void remove_stale_tmp(const char *dst)
{
    const char *slash = strrchr(dst, '/');
    const char *base = slash ? slash + 1 : dst;
    size_t bl = strlen(base);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - dst) : 1, slash ? dst : ".");
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *n = e->d_name;
        if (strncmp(n, base, bl) || n[bl] != '.')
            continue;
        char *end;
        long pid = strtol(n + bl + 1, &end, 10);
        if (end == n + bl + 1 || *end != '.' || pid <= 0)
            continue;
        size_t nl = strlen(n);
        if (nl < 4 || strcmp(n + nl - 4, ".tmp"))
            continue;
        if (kill((pid_t)pid, 0) == -1 && errno == ESRCH) {
            char path[PATH_MAX + 256];
            snprintf(path, sizeof path, "%s/%s", dir, n);
            unlink(path);
        }
    }
    if (d)
        closedir(d);
}

/* Write n bytes to dst through a temporary file and a rename, so that a
 * crash never leaves a half-written image under the final name. */
static df_status write_atomic(const char *dst, const uint8_t *buf, size_t n)
{
    remove_stale_tmp(dst);
    size_t tl = strlen(dst) + 48;
    char *tmp = malloc(tl);
    if (!tmp)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    /* pid and thread keep concurrent runs (GNU parallel) apart */
    snprintf(tmp, tl, "%s.%d.%lu.tmp", dst, (int)getpid(), (unsigned long)pthread_self() % 1000000);
    FILE *fp = make_parents(dst) ? NULL : fopen(tmp, "wb");
    bool ok = fp && fwrite(buf, 1, n, fp) == n;
    int e = errno;
    if (fp && fclose(fp) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && rename(tmp, dst)) {
        ok = false;
        e = errno;
    }
    if (!ok && fp)
        unlink(tmp);
    free(tmp);
    return ok ? DF_OK : df_fail(DF_ERR_IO, "%s: %s", dst, strerror(e));
}

/* Decode src, fit it, encode it and write it to dst. Sets the output and
 * source sizes on the record; on failure sets its error. */
static bool resize_one(const options *o, const char *src, const char *dst, json_t *rec)
{
    uint8_t *buf = NULL, *enc = NULL;
    size_t n = 0, nenc = 0;
    df_image img = { 0 }, fitted = { 0 };
    int w = 0, h = 0;
    bool ok = false;
    df_image_limits lim = { o->max_pixels };

    if (df_image_read_file(src, &buf, &n) || df_image_probe_mem(buf, n, NULL, &w, &h))
        goto fail;
    df_rec_set_int(rec, "source_width", w);
    df_rec_set_int(rec, "source_height", h);
    if (o->min_side && (w < h ? w : h) < o->min_side) {
        df_rec_set_error(rec, "too small: %dx%d, smaller than --min-side %d", w, h, o->min_side);
        goto out;
    }
    if (o->max_side && (w > h ? w : h) > o->max_side) {
        df_rec_set_error(rec, "too large: %dx%d, longer side above %d", w, h, o->max_side);
        goto out;
    }
    int mw = 0, mh = 0;
    if (o->dct_scaling)
        dct_min_size(o, w, h, &mw, &mh);
    if (df_image_decode_mem_scaled(buf, n, &lim, mw, mh, &img) ||
        df_image_fit(&img, o->size, o->fit, &fitted))
        goto fail;
    if (o->png ? df_image_encode_png_mem(&fitted, NULL, &enc, &nenc)
               : df_image_encode_jpeg_mem(&fitted, o->quality, &enc, &nenc))
        goto fail;

    if (write_atomic(dst, enc, nenc))
        goto fail;
    df_rec_set_int(rec, "width", fitted.w);
    df_rec_set_int(rec, "height", fitted.h);
    /* The side the fit scales to --size (the shorter for a center crop,
     * else the longer) was below it: the pixels were made up. */
    if ((o->fit == DF_FIT_CENTER ? (w < h ? w : h) : (w > h ? w : h)) < o->size)
        json_object_set_new(rec, "upscaled", json_true());
    ok = true;
    goto out;
fail:
    df_rec_set_error(rec, "%s", df_last_error());
out:
    free(buf);
    free(enc);
    df_image_free(&img);
    df_image_free(&fitted);
    return ok;
}

/* ---------------------------------------------------------------- the worker pool */

enum { SLOT_FREE, SLOT_PENDING, SLOT_DONE };

typedef struct {
    json_t *rec;
    char *src;        /* full input path, NULL when the record is passed through */
    char *dst;        /* full output path */
    char *out_rel;    /* new file_name */
    int state;
    bool failed;
} slot;

typedef struct {
    const options *o;
    slot *s;
    size_t cap;
    size_t head, tail, next;      /* oldest unwritten, next to fill, next to work on */
    bool quit;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
} pool;

static void process_slot(const options *o, slot *sl)
{
    if (!sl->src)                 /* failed upstream or no file_name: pass on */
        return;
    const char *orig = df_rec_str(sl->rec, "file_name");
    json_object_set_new(sl->rec, "source_file", json_string(orig));
    if (resize_one(o, sl->src, sl->dst, sl->rec))
        df_rec_set_str(sl->rec, "file_name", sl->out_rel);
    else
        sl->failed = true;
}

static void *worker(void *arg)
{
    pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->next == p->tail && !p->quit)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->next == p->tail)
            break;
        slot *sl = &p->s[p->next++ % p->cap];
        pthread_mutex_unlock(&p->mu);
        process_slot(p->o, sl);
        pthread_mutex_lock(&p->mu);
        sl->state = SLOT_DONE;
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Fill a slot from a record: decide its paths (in input order, so names
 * are deterministic) or mark it to pass through with an error. */
static int prepare_slot(const options *o, json_t *used, json_t *rec, slot *sl)
{
    *sl = (slot){ .rec = rec, .state = SLOT_PENDING };
    if (json_object_get(rec, "error")) {
        sl->failed = true;        /* failed upstream (or a malformed line): counted, passed on */
        return 0;
    }
    const char *fn = df_rec_str(rec, "file_name");
    if (!fn || !*fn) {
        df_rec_set_error(rec, "record has no file_name");
        sl->failed = true;
        return 0;
    }
    sl->out_rel = output_name(fn, o->png ? "png" : "jpg", used);
    sl->src = join(o->root, fn);
    sl->dst = sl->out_rel ? join(o->out, sl->out_rel) : NULL;
    if (!sl->out_rel || !sl->src || !sl->dst) {
        df_error("out of memory");
        return -1;
    }
    return 0;
}

static void slot_clear(slot *sl)
{
    json_decref(sl->rec);
    free(sl->src);
    free(sl->dst);
    free(sl->out_rel);
    memset(sl, 0, sizeof *sl);
}

/* Records come from the scan list or from stdin. */
typedef struct {
    name_list *names;
    size_t i;
    df_jsonl_reader rd;
} source;

static df_status next_record(source *src, json_t **rec)
{
    if (!src->names)
        return df_jsonl_next(&src->rd, rec);
    *rec = NULL;
    if (src->i >= src->names->n)
        return DF_OK;
    const char *name = src->names->v[src->i++];
    *rec = json_object();
    json_t *s = json_string(name);
    if (s)
        json_object_set_new(*rec, "file_name", s);
    else   /* JSON strings are UTF-8: such a name cannot be a record field */
        df_rec_set_error(*rec, "file name is not valid UTF-8: %s", name);   /* stored escaped */
    return DF_OK;
}

typedef struct { long in, ok, failed; } counts;

static int pool_start(pool *p, const options *o, pthread_t *th)
{
    *p = (pool){ .o = o, .cap = (size_t)o->jobs * 4 };
    p->s = calloc(p->cap, sizeof *p->s);
    if (!p->s)
        return 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    int n = 0;
    while (n < o->jobs && pthread_create(&th[n], NULL, worker, p) == 0)
        n++;
    return n;
}

/* Stop the workers (pending slots are dropped after an early stop), join
 * them and free what is left. */
static void pool_stop(pool *p, pthread_t *th, int nth)
{
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    p->tail = p->next;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    for (size_t i = 0; i < p->cap; i++)
        if (p->s[i].rec)
            slot_clear(&p->s[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p->s);
}

/* Read records into free slots until the window is full or the input
 * ends. 0, or 1 when the run must stop. */
static int pool_fill(pool *p, source *src, json_t *used, bool *eof, counts *c)
{
    while (!*eof && p->tail - p->head < p->cap) {   /* only this thread moves tail */
        json_t *rec;
        if (next_record(src, &rec)) {
            df_error("reading records: %s", df_last_error());
            return 1;
        }
        if (!rec) {
            *eof = true;
            break;
        }
        c->in++;
        slot *sl = &p->s[p->tail % p->cap];
        if (prepare_slot(p->o, used, rec, sl)) {
            slot_clear(sl);
            return 1;
        }
        pthread_mutex_lock(&p->mu);
        p->tail++;
        pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->mu);
    }
    return 0;
}

/* Wait for the oldest slot, write its record, free the slot. */
static int pool_write_oldest(pool *p, df_progress *prog, counts *c)
{
    slot *sl = &p->s[p->head % p->cap];
    pthread_mutex_lock(&p->mu);
    while (sl->state != SLOT_DONE)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (sl->failed)
        c->failed++;
    else
        c->ok++;
    int rc = 0;
    if (df_jsonl_write_fd(STDOUT_FILENO, sl->rec)) {
        df_error("writing records: %s", df_last_error());
        rc = 1;
    }
    df_progress_add(prog, 1, sl->failed);
    slot_clear(sl);
    p->head++;
    return rc;
}

/* The main loop: keep the window full, write finished slots in order. */
static int run(const options *o, source *src, df_progress *prog, counts *c)
{
    pool p = { 0 };
    json_t *used = json_object();
    pthread_t *th = calloc((size_t)o->jobs, sizeof *th);
    int nth = used && th ? pool_start(&p, o, th) : 0;
    if (nth == 0) {
        df_error("cannot start worker threads");
        if (p.s) pool_stop(&p, th, 0);
        free(th);
        json_decref(used);
        return 1;
    }
    int rc = 0;
    bool eof = false;
    while (rc == 0) {
        rc = pool_fill(&p, src, used, &eof, c);
        if (rc || p.head == p.tail)
            break;
        rc = pool_write_oldest(&p, prog, c);
    }
    pool_stop(&p, th, nth);
    free(th);
    json_decref(used);
    return rc;
}

/* ---------------------------------------------------------------- main */

static bool same_dir(const char *a, const char *b)
{
    struct stat sa, sb;
    return !stat(a, &sa) && !stat(b, &sb) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    options o;
    parse_args(argc, argv, &o);

    if (mkdir(o.out, 0777) && errno != EEXIST) {
        df_error("%s: %s", o.out, strerror(errno));
        return 1;
    }
    if (same_dir(o.out, o.root))
        df_usage_error("--out must not be the --root directory (the inputs would be overwritten)");

    name_list names = { 0 };
    source src = { 0 };
    if (o.scan) {
        struct stat sb;
        if (!stat(o.out, &sb)) {
            names.skip_dev = sb.st_dev;
            names.skip_ino = sb.st_ino;
        }
        if (scan_dir(o.root, "", &names)) {
            for (size_t i = 0; i < names.n; i++)
                free(names.v[i]);
            free(names.v);
            return 1;
        }
        qsort(names.v, names.n, sizeof *names.v, cmp_str);
        src.names = &names;
    } else {
        df_jsonl_reader_init(&src.rd, stdin);
    }

    df_progress prog;
    df_progress_start(&prog, "resize", o.scan ? (int64_t)names.n : 0, o.progress);
    counts c = { 0 };
    int rc = run(&o, &src, &prog, &c);
    df_progress_finish(&prog);

    if (o.scan) {
        for (size_t i = 0; i < names.n; i++)
            free(names.v[i]);
        free(names.v);
    } else {
        df_jsonl_reader_free(&src.rd);
    }
    if (fflush(stdout) || ferror(stdout) || fclose(stdout)) {
        df_error("writing records: %s", strerror(errno));
        rc = 1;
    }
    fprintf(stderr, "%s: %ld records, %ld resized, %ld failed\n", df_progname(), c.in, c.ok, c.failed);
    if (rc == 0 && o.strict && c.failed)
        rc = 1;
    return rc;
}
