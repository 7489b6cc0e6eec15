/* df-encode-latents - VAE-encode a dataset's images (and optionally embed
 * their captions) into a latent cache that df-train reads. See
 * man/df-encode-latents.1; the cache layout is in lib/io/latent_cache.h.
 *
 * Flow: records are read in order; each selected one (--shard) is checked,
 * looked up in the cache (a hit needs no work), else decoded, center-cropped
 * to --resolution, encoded (and mirrored with --flip) and queued for the
 * current shard. Output records wait in a queue until every entry they name
 * is on disk, so stdout never promises what a kill could lose: the queue is
 * written, in input order, whenever the shard being filled is empty (after
 * each flush of --batch-size encoded records, or at once when nothing is
 * pending).
 *
 * Tested by tests/tools/test-df-encode-latents.sh. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip.h"
#include "image.h"
#include "jsonl.h"
#include "latent_cache.h"
#include "log.h"
#include "ops.h"
#include "tokenizer.h"
#include "vae.h"

static const char usage_text[] =
    "Usage: df-encode-latents --model MODEL_DIR --root DATASET_DIR --out CACHE_DIR\n"
    "                         [--resolution N] [--flip] [--shard K/N] [--text-embeddings]\n"
    "                         [--batch-size B] [-t N] [-q|--quiet|--progress] [--strict]\n"
    "                         < metadata.jsonl > records.jsonl\n"
    "VAE-encode the images named by the records' file_name (relative to --root) into\n"
    "the latent cache CACHE_DIR, which df-train reads. Entries already in the cache\n"
    "are not encoded again. One output record per input record.\n"
    "  --model DIR          diffusers folder (vae/; text_encoder/, tokenizer/ for\n"
    "                       --text-embeddings)\n"
    "  --root DIR           the dataset directory file_name is relative to\n"
    "  --out DIR            the cache directory (created if missing)\n"
    "  --resolution N       square training size, a multiple of 8 (default: the VAE's\n"
    "                       sample_size)\n"
    "  --flip               also encode the left-right mirror image\n"
    "  --shard K/N          only records number i (from 0) with i % N == K-1; several\n"
    "                       shards may write into one CACHE_DIR at the same time\n"
    "  --text-embeddings    also store the text encoder's embedding of each caption\n"
    "  --batch-size B       images per shard file, the work a kill can lose (default 8)\n"
    "  -t, --threads N      compute threads (default: all cores)\n"
    "  --strict             exit 1 when any record failed\n"
    "  -q, --quiet          no progress line; --progress: always draw it\n"
    "  -h, --help           this help\n";

typedef struct {
    const char *model, *root, *out;
    int resolution, batch, threads, shard_k, shard_n;
    bool flip, text_emb, strict;
    df_progress_mode progress;
} options;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { (void)sig; interrupted = 1; }

/* ---------------------------------------------------------------- arguments */

/* K/N with 1 <= K <= N, as df-caption's --shard. */
static void parse_shard(const char *s, options *o)
{
    char *end;
    errno = 0;
    long k = strtol(s, &end, 10), n = 0;
    if (!errno && end != s && *end == '/') {
        const char *ns = end + 1;
        n = strtol(ns, &end, 10);
        if (errno || end == ns || *end)
            n = 0;
    }
    if (n < 1 || n > 1000000 || k < 1 || k > n)
        df_usage_error("--shard: expected K/N with 1 <= K <= N, got '%s'", s);
    o->shard_k = (int)k;
    o->shard_n = (int)n;
}

static void parse_args(int argc, char **argv, options *o)
{
    enum { O_MODEL = 256, O_ROOT, O_OUT, O_RES, O_FLIP, O_SHARD, O_TEXT, O_BATCH, O_STRICT,
           O_PROGRESS };
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL}, {"root", required_argument, 0, O_ROOT},
        {"out", required_argument, 0, O_OUT}, {"resolution", required_argument, 0, O_RES},
        {"flip", no_argument, 0, O_FLIP}, {"shard", required_argument, 0, O_SHARD},
        {"text-embeddings", no_argument, 0, O_TEXT}, {"batch-size", required_argument, 0, O_BATCH},
        {"threads", required_argument, 0, 't'}, {"strict", no_argument, 0, O_STRICT},
        {"quiet", no_argument, 0, 'q'}, {"progress", no_argument, 0, O_PROGRESS},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    *o = (options){.batch = 8, .progress = DF_PROGRESS_AUTO};
    int c;
    while ((c = getopt_long(argc, argv, "hqt:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); exit(0);
        case O_MODEL: o->model = optarg; break;
        case O_ROOT: o->root = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_RES:
            o->resolution = (int)df_parse_long_arg("--resolution", optarg, 8, 8192);
            if (o->resolution % 8)
                df_usage_error("--resolution: %d is not a multiple of 8", o->resolution);
            break;
        case O_FLIP: o->flip = true; break;
        case O_SHARD: parse_shard(optarg, o); break;
        case O_TEXT: o->text_emb = true; break;
        case O_BATCH: o->batch = (int)df_parse_long_arg("--batch-size", optarg, 1, 4096); break;
        case 't': o->threads = (int)df_parse_long_arg("--threads", optarg, 1, 1024); break;
        case O_STRICT: o->strict = true; break;
        case 'q': o->progress = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: o->progress = DF_PROGRESS_ALWAYS; break;
        default: df_usage_error("unknown option");
        }
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->model)
        df_usage_error("--model MODEL_DIR is required");
    if (!o->root)
        df_usage_error("--root DATASET_DIR is required");
    if (!o->out)
        df_usage_error("--out CACHE_DIR is required");
}

/* ---------------------------------------------------------------- the run */

typedef struct {
    json_t *rec;
    bool pending;        /* names entries of the shard not yet written */
} queued;

typedef struct {
    const options *o;
    df_vae *vae;
    df_clip *clip;
    df_tokenizer *tok;
    df_latent_writer *cache;
    int R, C, h, w, T, hidden;
    float *pix, *mean, *logvar, *temb;   /* (2,3,R,R), (2,C,h,w) x2, (T,hidden) */
    queued *q;
    size_t nq, capq;
    long pending_records;
    long records, encoded, cached, failed;
    df_progress prog;
} run;

/* A relative path that stays inside --root: no leading '/', no "..". */
static bool inside_root(const char *p)
{
    if (!*p || p[0] == '/')
        return false;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return false;
        s += n + (e ? 1 : 0);
    }
    return true;
}

/* Write the queued records (all of them: call only with no entry pending). */
static int emit_queue(run *r)
{
    int rc = 0;
    for (size_t i = 0; i < r->nq; i++) {
        if (rc == 0 && df_jsonl_write_fd(STDOUT_FILENO, r->q[i].rec) != DF_OK) {
            df_error("writing records: %s", df_last_error());
            rc = 1;
        }
        json_decref(r->q[i].rec);
    }
    r->nq = 0;
    return rc;
}

static int enqueue(run *r, json_t *rec, bool pending)
{
    if (r->nq == r->capq) {
        size_t cap = r->capq ? r->capq * 2 : 64;
        queued *q = realloc(r->q, cap * sizeof *q);
        if (!q) {
            df_error("out of memory");
            json_decref(rec);
            return 1;
        }
        r->q = q;
        r->capq = cap;
    }
    r->q[r->nq++] = (queued){rec, pending};
    return 0;
}

/* Write the pending shard, then the records waiting for it. A failed write
 * ends the run; the records that named its entries go out with an error,
 * so nothing is lost silently. */
static int flush(run *r)
{
    int rc = 0;
    if (df_latent_writer_pending(r->cache) && df_latent_writer_flush(r->cache) != DF_OK) {
        char *msg = strdup(df_last_error());
        df_error("%s", msg ? msg : "cache write failed");
        for (size_t i = 0; i < r->nq; i++)
            if (r->q[i].pending) {
                df_rec_set_error(r->q[i].rec, "cache write failed: %s", msg ? msg : "");
                r->encoded--;
                r->failed++;
            }
        free(msg);
        rc = 1;
    }
    r->pending_records = 0;
    return emit_queue(r) || rc;
}

static const char *const out_fields[] = {"shard", "index", "size", "resolution", "entries",
                                         "cached", "flip_shard", "flip_index",
                                         "has_text_embedding"};

static void clear_out_fields(json_t *rec)
{
    for (size_t i = 0; i < sizeof out_fields / sizeof *out_fields; i++)
        json_object_del(rec, out_fields[i]);
}

/* Decode root/fn and center-crop it to R x R (resampling as df-resize --crop
 * center does), into r->pix as (3,R,R) and, with want[1], the mirror as the
 * next image. Returns the number of images, 0 with the record's error set. */
static int load_pixels(run *r, const char *fn, const bool want[2], json_t *rec)
{
    char *path = NULL;
    uint8_t *buf = NULL;
    size_t n = 0;
    df_image img = {0}, fitted = {0};
    int B = 0;
    if (asprintf(&path, "%s/%s", r->o->root, fn) < 0) {
        df_rec_set_error(rec, "out of memory");
        return 0;
    }
    if (df_image_read_file(path, &buf, &n) || df_image_decode_mem(buf, n, NULL, &img) ||
        df_image_fit(&img, r->R, DF_FIT_CENTER, &fitted)) {
        df_rec_set_error(rec, "%s", df_last_error());
    } else {
        size_t plane = (size_t)3 * r->R * r->R;
        for (int f = 0; f < 2; f++)
            if (want[f])
                df_latent_pixels(&fitted, f, r->pix + plane * B++);
    }
    free(path);
    free(buf);
    df_image_free(&img);
    df_image_free(&fitted);
    return B;
}

enum { REC_FAILED, REC_CACHED, REC_ENCODED, REC_FATAL };

/* The cache fields of a record whose entries are all known. */
static void set_out_fields(run *r, json_t *rec, const char *const shard[2], const long index[2],
                           bool cached)
{
    df_rec_set_str(rec, "shard", shard[0]);
    df_rec_set_int(rec, "index", index[0]);
    json_object_set_new(rec, "size", json_pack("[i,i,i]", r->C, r->h, r->w));
    df_rec_set_int(rec, "resolution", r->R);
    df_rec_set_int(rec, "entries", r->o->flip ? 2 : 1);
    json_object_set_new(rec, "cached", json_boolean(cached));
    if (r->o->flip) {
        df_rec_set_str(rec, "flip_shard", shard[1]);
        df_rec_set_int(rec, "flip_index", index[1]);
    }
    json_object_set_new(rec, "has_text_embedding", json_boolean(r->o->text_emb));
}

static int process(run *r, json_t *rec)
{
    if (json_object_get(rec, "error"))
        return REC_FAILED;        /* failed upstream, or a malformed line: passed on */
    clear_out_fields(rec);
    json_t *fnv = json_object_get(rec, "file_name"), *tv = json_object_get(rec, "text");
    const char *fn = json_string_value(fnv), *text = json_string_value(tv);
    if (!fnv || (fn && !*fn)) {
        df_rec_set_error(rec, "record has no file_name");
        return REC_FAILED;
    }
    if (!fn) {
        df_rec_set_error(rec, "file_name is not a string");
        return REC_FAILED;
    }
    if (!tv || json_is_null(tv)) {
        df_rec_set_error(rec, "no caption (the record has no \"text\")");
        return REC_FAILED;
    }
    if (!text) {
        df_rec_set_error(rec, "text is not a string");
        return REC_FAILED;
    }
    if (!inside_root(fn)) {
        df_rec_set_error(rec, "file_name must be a path inside --root (no leading '/', no '..')");
        return REC_FAILED;
    }
    int nf = r->o->flip ? 2 : 1;
    const char *shard[2] = {NULL, NULL};
    long index[2] = {0, 0};
    bool want[2] = {false, false}, any = false;
    for (int f = 0; f < nf; f++) {
        want[f] = !df_latent_writer_lookup(r->cache, fn, f, text, r->o->text_emb, &shard[f],
                                           &index[f]);
        any |= want[f];
    }
    if (!any) {
        set_out_fields(r, rec, shard, index, true);
        return REC_CACHED;
    }
    int B = load_pixels(r, fn, want, rec);
    if (B == 0)
        return REC_FAILED;
    if (df_latent_encode(r->vae, r->pix, B, r->R, r->R, r->mean, r->logvar) != DF_OK) {
        df_rec_set_error(rec, "VAE encode: %s", df_last_error());
        return REC_FAILED;
    }
    if (r->o->text_emb && df_clip_encode_text(r->clip, r->tok, &text, 1, r->temb, NULL)) {
        df_rec_set_error(rec, "text encoder: %s", df_last_error());
        return REC_FAILED;
    }
    /* The index line gets the record as it came (no cache fields yet). */
    size_t nl = (size_t)r->C * r->h * r->w;
    for (int f = 0, b = 0; f < nf; f++) {
        if (!want[f])
            continue;
        if (df_latent_writer_add(r->cache, rec, f, r->mean + nl * b, r->logvar + nl * b,
                                 r->o->text_emb ? r->temb : NULL, &shard[f], &index[f])) {
            df_error("%s", df_last_error());
            return REC_FATAL;
        }
        b++;
    }
    set_out_fields(r, rec, shard, index, false);
    return REC_ENCODED;
}

static int run_records(run *r)
{
    df_jsonl_reader rd;
    df_jsonl_reader_init(&rd, stdin);
    long long i = -1;
    int rc = 0;
    while (rc == 0 && !interrupted) {
        json_t *rec;
        if (df_jsonl_next(&rd, &rec) != DF_OK) {
            if (!interrupted) {
                df_error("reading records: %s", df_last_error());
                rc = 1;
            }
            break;
        }
        if (!rec)
            break;
        i++;
        if (r->o->shard_n && i % r->o->shard_n != r->o->shard_k - 1) {
            json_decref(rec);
            continue;
        }
        r->records++;
        int what = process(r, rec);
        if (what == REC_FATAL) {
            df_rec_set_error(rec, "%s", df_last_error());
            r->failed++;
            enqueue(r, rec, false);
            rc = 1;
            break;
        }
        if (what == REC_FAILED) {
            clear_out_fields(rec);
            r->failed++;
        }
        r->cached += what == REC_CACHED;
        r->encoded += what == REC_ENCODED;
        r->pending_records += what == REC_ENCODED;
        df_progress_add(&r->prog, 1, what == REC_FAILED);
        if (enqueue(r, rec, what == REC_ENCODED)) {
            rc = 1;
            break;
        }
        if (df_latent_writer_pending(r->cache) == 0 || r->pending_records >= r->o->batch)
            rc = flush(r);
    }
    df_jsonl_reader_free(&rd);
    if (flush(r))
        rc = 1;
    return rc;
}

/* ---------------------------------------------------------------- setup */

static char *join(const char *a, const char *b)
{
    char *s;
    return asprintf(&s, "%s/%s", a, b) < 0 ? NULL : s;
}

/* Load the models and open the cache; exits 1 on any failure. */
static void setup(const options *o, run *r)
{
    char *dir = join(o->model, "vae");
    if (!dir || df_vae_load(dir, NULL, &r->vae) != DF_OK) {
        df_error("%s", dir ? df_last_error() : "out of memory");
        exit(1);
    }
    free(dir);
    r->R = o->resolution ? o->resolution : df_vae_sample_size(r->vae);
    int H, W;
    df_vae_latent_size(r->vae, r->R, r->R, &r->h, &r->w);
    df_vae_image_size(r->vae, r->h, r->w, &H, &W);
    if (r->R < 1 || H != r->R || W != r->R) {
        df_error("--resolution %d: not a multiple of the VAE's scale factor %d", r->R,
                 r->h ? W / r->h : 8);
        exit(1);
    }
    if (df_vae_in_channels(r->vae) != 3) {
        df_error("%s/vae: in_channels %d, RGB images need 3", o->model,
                 df_vae_in_channels(r->vae));
        exit(1);
    }
    r->C = df_vae_latent_channels(r->vae);
    char vae_hash[65], te_hash[65];
    if (df_latent_cache_vae_identity(o->model, vae_hash) != DF_OK) {
        df_error("%s", df_last_error());
        exit(1);
    }
    if (o->text_emb) {
        char *td = join(o->model, "tokenizer"), *cd = join(o->model, "text_encoder");
        if (!td || !cd || df_tokenizer_load(td, &r->tok) != DF_OK ||
            df_clip_load(cd, NULL, &r->clip) != DF_OK ||
            df_latent_cache_text_encoder_identity(o->model, te_hash) != DF_OK) {
            df_error("%s", td && cd ? df_last_error() : "out of memory");
            exit(1);
        }
        free(td);
        free(cd);
        r->T = df_tokenizer_max_length(r->tok);
        r->hidden = df_clip_get_config(r->clip)->hidden_size;
    }
    size_t plane = (size_t)3 * r->R * r->R, nl = (size_t)r->C * r->h * r->w;
    r->pix = malloc(2 * plane * sizeof *r->pix);
    r->mean = malloc(2 * nl * sizeof *r->mean);
    r->logvar = malloc(2 * nl * sizeof *r->logvar);
    r->temb = o->text_emb ? malloc((size_t)r->T * r->hidden * sizeof *r->temb) : NULL;
    if (!r->pix || !r->mean || !r->logvar || (o->text_emb && !r->temb)) {
        df_error("out of memory");
        exit(1);
    }
    df_latent_writer_config cfg = {
        .dir = o->out, .shard_k = o->shard_k, .shard_n = o->shard_n, .vae_hash = vae_hash,
        .resolution = r->R, .latent_channels = r->C, .latent_h = r->h, .latent_w = r->w,
        .scaling_factor = df_vae_scaling_factor(r->vae),
        .text_encoder_hash = o->text_emb ? te_hash : NULL, .text_len = r->T,
        .text_hidden = r->hidden};
    if (df_latent_writer_open(&cfg, &r->cache) != DF_OK) {
        df_error("%s", df_last_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    /* With fd 1 closed, the next open() (a shard, the index) would get it
     * and records would be written into that file. */
    if (fcntl(STDOUT_FILENO, F_GETFD) < 0) {
        df_error("stdout: %s", strerror(errno));
        return 1;
    }
    options o;
    parse_args(argc, argv, &o);
    if (o.threads)
        df_ops_set_threads(o.threads);
    /* Fail before loading anything when the cache cannot be made. */
    struct stat sb;
    if (mkdir(o.out, 0777) && errno != EEXIST) {
        df_error("--out %s: %s", o.out, strerror(errno));
        return 1;
    }
    if (stat(o.out, &sb) || !S_ISDIR(sb.st_mode)) {
        df_error("--out %s: not a directory", o.out);
        return 1;
    }
    if (stat(o.root, &sb) || !S_ISDIR(sb.st_mode)) {
        df_error("--root %s: not a directory", o.root);
        return 1;
    }

    run r = {.o = &o};
    setup(&o, &r);

    /* No SA_RESTART: a signal while waiting for input ends the read. */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);          /* a closed stdout is a write error, reported */

    df_progress_start(&r.prog, "encode", 0, o.progress);
    int rc = run_records(&r);
    df_progress_finish(&r.prog);
    if (df_latent_writer_close(r.cache) != DF_OK) {
        df_error("%s", df_last_error());
        rc = 1;
    }
    if (interrupted) {
        df_error("interrupted: the records written are in the cache; run again to finish");
        rc = 1;
    }
    if (fflush(stdout) || ferror(stdout) || fclose(stdout)) {
        df_error("writing records: %s", strerror(errno));
        rc = 1;
    }
    fprintf(stderr, "%s: %ld records, %ld encoded, %ld cached, %ld failed\n", df_progname(),
            r.records, r.encoded, r.cached, r.failed);
    free(r.q);
    free(r.pix);
    free(r.mean);
    free(r.logvar);
    free(r.temb);
    df_clip_free(r.clip);
    df_tokenizer_free(r.tok);
    df_vae_free(r.vae);
    if (rc == 0 && o.strict && r.failed)
        rc = 1;
    return rc;
}
