/* df-caption.c - caption images through an OpenAI-compatible vision
 * chat-completions API (Groq by default).
 *
 * Reads records with file_name (relative to --root) on stdin, sends each
 * image as a base64 data URL with the prompt, and writes the record back
 * with "text" and "caption_model" added, or with "error". Two threads: a
 * reader thread reads records, selects them (--start/--end, --shard,
 * --resume) and prepares request bodies (file read, optional --max-side
 * downscale, base64); the main thread drives the lib/io/http pool (N requests
 * in flight, retries, rate limit) and writes every finished record as one
 * whole line. SIGINT/SIGTERM: in-flight and prepared records are written
 * with error "interrupted" (so --resume retries them), then exit 1.
 *
 * Tested by tests/tools/test-df-caption.sh against
 * tests/servers/openai_server.py; overhead measured by
 * tests/bench/bench-caption.sh. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "image.h"
#include "jsonl.h"
#include "log.h"
#include "status.h"

#define DEFAULT_ENDPOINT "https://api.groq.com/openai/v1/chat/completions"
#define DEFAULT_MODEL "meta-llama/llama-4-maverick-17b-128e-instruct"
#define DEFAULT_PROMPT \
    "Provide a detailed physical description of the person in this image. Include: " \
    "approximate age, gender, ethnicity/race, facial expression and emotion, hair " \
    "characteristics (color, length, style, hairline), facial features (eyes, nose, " \
    "mouth, lips, chin, cheekbones), facial hair if present, accessories (eyeglasses, " \
    "hats, jewelry), body type indicators, skin tone, makeup if visible, and any other " \
    "distinctive physical characteristics."
#define MAX_PROMPT_BYTES (1u << 20)
#define MAX_RESPONSE_BYTES (4u << 20)
#define REENCODE_QUALITY 90

static const char usage_text[] =
    "Usage: df-caption [OPTIONS] [--root DIR] < records.jsonl > captioned.jsonl\n"
    "Caption each record's image (file_name, relative to --root) through an\n"
    "OpenAI-compatible chat-completions API; adds \"text\" and \"caption_model\".\n"
    "\n"
    "  -r, --root DIR         directory file_name is relative to (default .)\n"
    "      --endpoint URL     chat-completions URL (default " DEFAULT_ENDPOINT ")\n"
    "  -m, --model NAME       model (default " DEFAULT_MODEL ")\n"
    "      --api-key-env VAR  environment variable holding the API key (default GROQ_API_KEY)\n"
    "      --no-auth          send no Authorization header (local servers)\n"
    "      --prompt TEXT      prompt (default: the original project's description prompt)\n"
    "      --prompt-file FILE read the prompt from FILE\n"
    "  -j, --jobs N           requests in flight (default 4)\n"
    "      --rpm N            at most N requests started per minute (default: no limit)\n"
    "      --max-tokens N     max_tokens sent (default 512; 0: not sent)\n"
    "      --temperature T    temperature sent (default: not sent, the server's)\n"
    "      --max-side N       downscale so the longest side is <= N, re-encode JPEG\n"
    "      --max-pixels N     refuse images with more pixels, from the header (default 100000000)\n"
    "      --start I          first record index to caption, 0-based (default 0)\n"
    "      --end I            stop before record index I (default: all)\n"
    "      --shard K/N        only records with index % N == K-1\n"
    "      --shard-by index|name  shard by record index (default) or by a hash of file_name\n"
    "      --resume FILE      skip file_names already captioned in FILE (text, no error)\n"
    "      --pending          send nothing: write the selected records that still\n"
    "                         need a caption, unchanged (to feed other machines)\n"
    "      --retries N        retries on 429, 5xx and transport errors (default 3)\n"
    "      --retry-wait S     first backoff in seconds, doubling (default 1)\n"
    "      --timeout S        per-attempt timeout in seconds (default 120)\n"
    "      --keep-order       write records in input order (default: as they complete)\n"
    "      --strict           exit 1 if any record failed\n"
    "  -q, --quiet            no progress line, no summary\n"
    "      --progress         progress line even when stderr is not a terminal\n"
    "  -h, --help             this help\n";

typedef enum { SHARD_BY_INDEX, SHARD_BY_NAME } shard_mode;

typedef struct {
    const char *root, *endpoint, *model, *api_key_env, *prompt, *resume;
    char *prompt_owned;             /* --prompt-file's text, freed at the end */
    bool no_auth, strict, pending_only, keep_order;
    unsigned long long max_pixels;
    int jobs, max_tokens, max_side, retries, shard_k, shard_n;
    double rpm, temperature, timeout, retry_wait;
    bool has_temperature;
    long long start, end;           /* end < 0: no end */
    shard_mode shard_by;
    df_progress_mode progress;
} options;

/* ---- small helpers ------------------------------------------------------ */

static long long parse_ll(const char *opt, const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        df_usage_error("%s: expected an integer in [%lld, %lld], got '%s'", opt, lo, hi, s);
    return v;
}

static double parse_num(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        df_usage_error("%s: expected a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

static char *read_prompt_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = malloc(MAX_PROMPT_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_PROMPT_BYTES + 1, fp) : 0;
    bool bad = !buf || ferror(fp) || n > MAX_PROMPT_BYTES;
    fclose(fp);
    if (bad) {
        free(buf);
        return NULL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    return buf;
}

/* 64-bit FNV-1a: a stable hash of file_name for --shard-by name. */
static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* A file_name must stay under the root: relative, no ".." component. */
static bool safe_relative(const char *p)
{
    if (p[0] == '\0' || p[0] == '/')
        return false;
    for (const char *s = p; *s;) {
        size_t n = strcspn(s, "/");
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return false;
        s += n;
        if (*s == '/')
            s++;
    }
    return true;
}

/* ---- base64 and the request body --------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 (with padding) of in[0..n) into out, which must hold
 * 4 * ceil(n / 3) bytes. Returns the bytes written. */
static size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/* The request JSON around an empty image URL, serialized once: every body
 * is this text with the data URL spliced in where "url":"" stands (base64
 * needs no JSON escaping, and the sequence "url":"" cannot occur inside an
 * escaped string, so the first match is the key). */
typedef struct {
    char *head, *tail;        /* text before and after the URL value */
    size_t head_len, tail_len;
} body_template;

static df_status make_template(const options *o, body_template *t)
{
    json_t *text = json_pack("{s:s, s:s}", "type", "text", "text", o->prompt);
    json_t *image = json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", "");
    json_t *msg = json_pack("{s:s, s:[o, o]}", "role", "user", "content", text, image);
    json_t *req = json_pack("{s:s, s:[o]}", "model", o->model, "messages", msg);
    if (!req)
        return df_fail(DF_ERR_FORMAT, "prompt or model is not valid UTF-8");
    if (o->max_tokens > 0)
        json_object_set_new(req, "max_tokens", json_integer(o->max_tokens));
    if (o->has_temperature)
        json_object_set_new(req, "temperature", json_real(o->temperature));
    char *s = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(req);
    char *at = s ? strstr(s, "\"url\":\"\"") : NULL;
    if (!at) {
        free(s);
        return df_fail(DF_ERR_NOMEM, "cannot build the request body");
    }
    t->head_len = (size_t)(at - s) + strlen("\"url\":\"");
    t->tail = strdup(s + t->head_len);
    t->tail_len = strlen(t->tail);
    s[t->head_len] = '\0';
    t->head = s;
    return t->tail ? DF_OK : df_fail(DF_ERR_NOMEM, "out of memory");
}

/* head + "data:<mime>;base64," + base64(img) + tail, in one malloc. */
static df_status build_body(const body_template *t, const char *mime, const uint8_t *img,
                            size_t n, char **body, size_t *len)
{
    char prefix[64];
    int plen = snprintf(prefix, sizeof prefix, "data:%s;base64,", mime);
    if (n > (SIZE_MAX / 4 - 4) * 3)
        return df_fail(DF_ERR_NOMEM, "image too large to encode");
    size_t b64 = (n + 2) / 3 * 4;
    size_t total = t->head_len + (size_t)plen + b64 + t->tail_len;
    char *b = malloc(total + 1);
    if (!b)
        return df_fail(DF_ERR_NOMEM, "out of memory for a %zu-byte request", total);
    char *p = b;
    memcpy(p, t->head, t->head_len), p += t->head_len;
    memcpy(p, prefix, (size_t)plen), p += plen;
    p += base64_encode(img, n, p);
    memcpy(p, t->tail, t->tail_len), p += t->tail_len;
    *p = '\0';
    *body = b;
    *len = total;
    return DF_OK;
}

/* ---- image loading ------------------------------------------------------ */

/* Downscale so that the longest side is at most max_side and re-encode as
 * JPEG; *out == NULL when the image is already small enough. */
static df_status shrink_image(const uint8_t *buf, size_t n, int max_side,
                              const df_image_limits *lim, uint8_t **out, size_t *out_n)
{
    *out = NULL;
    int w, h;
    df_status st = df_image_probe_mem(buf, n, NULL, &w, &h);
    if (st != DF_OK || (w <= max_side && h <= max_side))
        return st;
    int tw = w >= h ? max_side : (int)((double)w * max_side / h + 0.5);
    int th = h > w ? max_side : (int)((double)h * max_side / w + 0.5);
    tw = tw < 1 ? 1 : tw;
    th = th < 1 ? 1 : th;
    df_image full = {0}, small = {0};
    /* DCT-scaled decode to at least twice the target keeps the resample
     * antialiased while skipping most of a big JPEG's decoding work. */
    st = df_image_decode_mem_scaled(buf, n, lim, 2 * tw, 2 * th, &full);
    if (st == DF_OK)
        st = df_image_resize(&full, tw, th, &small);
    if (st == DF_OK)
        st = df_image_encode_jpeg_mem(&small, REENCODE_QUALITY, out, out_n);
    df_image_free(&full);
    df_image_free(&small);
    return st;
}

/* Read the image of file_name and build its request body. */
static df_status prepare_body(const options *o, const body_template *t, const char *file_name,
                              char **body, size_t *len)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", o->root, file_name) >= sizeof path)
        return df_fail(DF_ERR_RANGE, "path too long");
    uint8_t *buf = NULL, *small = NULL;
    size_t n = 0, small_n = 0;
    df_status st = df_image_read_file(path, &buf, &n);
    if (st != DF_OK)
        return st;
    df_image_format fmt = df_image_sniff(buf, n);
    int w = 0, h = 0;
    /* The header is checked before anything is sent: a broken header, or a
     * size no decoder here would accept (df-resize's limit), fails the
     * record instead of being "captioned" by a server that never saw it. */
    if (fmt == DF_IMAGE_UNKNOWN)
        st = df_fail(DF_ERR_FORMAT, "not a JPEG or PNG image");
    else
        st = df_image_probe_mem(buf, n, NULL, &w, &h);
    if (st == DF_OK && (uint64_t)w * (uint64_t)h > o->max_pixels)
        st = df_fail(DF_ERR_RANGE, "image too large: %dx%d exceeds the limit of %llu pixels",
                     w, h, o->max_pixels);
    df_image_limits lim = {o->max_pixels};
    if (st == DF_OK && o->max_side > 0)
        st = shrink_image(buf, n, o->max_side, &lim, &small, &small_n);
    if (st == DF_OK && small)
        st = build_body(t, "image/jpeg", small, small_n, body, len);
    else if (st == DF_OK)
        st = build_body(t, fmt == DF_IMAGE_PNG ? "image/png" : "image/jpeg", buf, n, body, len);
    free(buf);
    free(small);
    return st;
}

/* ---- --resume: the set of file_names already captioned ------------------ */

/* A missing file is an empty set, so that the first run of
 * `df-caption --resume out.jsonl >> out.jsonl` needs no special case. */
static df_status load_resume(const char *path, json_t *done, long long *count)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return errno == ENOENT ? DF_OK : df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    df_jsonl_reader r;
    df_jsonl_reader_init(&r, fp);
    json_t *rec;
    df_status st;
    while ((st = df_jsonl_next(&r, &rec)) == DF_OK && rec) {
        const char *name = df_rec_str(rec, "file_name");
        if (name && df_rec_str(rec, "text") && !json_object_get(rec, "error")) {
            json_object_set_new(done, name, json_true());
            (*count)++;
        }
        json_decref(rec);
    }
    df_jsonl_reader_free(&r);
    fclose(fp);
    return st == DF_OK ? DF_OK : df_fail(st, "%s: %s", path, df_last_error());
}

/* ---- the queue between the reader thread and the main thread ------------ */

typedef enum { ITEM_SEND, ITEM_EMIT } item_kind;

typedef struct item {
    item_kind kind;       /* SEND: body to post; EMIT: write rec as it is */
    bool failed;          /* EMIT of a record carrying an error */
    json_t *rec;
    char *body;
    size_t body_len;
    long long seq;        /* input position among the items, set when popped */
    struct item *next;
} item;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* signalled on push, pop and stop */
    item *head, *tail;
    size_t len, cap;
    bool eof;                 /* the reader has finished */
    bool io_error;            /* ... because reading stdin failed */
    char io_msg[256];
} queue;

static volatile sig_atomic_t g_stop;
static df_http_pool *g_pool;

static void on_signal(int sig)
{
    g_stop = 1;
    if (g_pool)
        df_http_pool_wakeup(g_pool);
}

static void item_free(item *it)
{
    if (!it)
        return;
    json_decref(it->rec);
    free(it->body);
    free(it);
}

/* Push, blocking while the queue is full; false once stopping. */
static bool queue_push(queue *q, item *it)
{
    pthread_mutex_lock(&q->lock);
    while (q->len >= q->cap && !g_stop)
        pthread_cond_wait(&q->cond, &q->lock);
    bool ok = !g_stop;
    if (ok) {
        if (q->tail)
            q->tail->next = it;
        else
            q->head = it;
        q->tail = it;
        q->len++;
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->lock);
    if (ok && g_pool)
        df_http_pool_wakeup(g_pool);
    return ok;
}

static item *queue_pop_locked(queue *q)
{
    item *it = q->head;
    if (it) {
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
        q->len--;
        it->next = NULL;
        pthread_cond_broadcast(&q->cond);
    }
    return it;
}

/* ---- the reader thread: select and prepare ------------------------------ */

typedef struct {
    const options *o;
    const body_template *tmpl;
    json_t *resume_set;
    queue *q;
    long long skipped_resume, index;
} reader_ctx;

static bool selected(const reader_ctx *c, const json_t *rec)
{
    const options *o = c->o;
    long long i = c->index;
    if (i < o->start || (o->end >= 0 && i >= o->end))
        return false;
    if (o->shard_n > 1) {
        const char *name = df_rec_str(rec, "file_name");
        uint64_t key = o->shard_by == SHARD_BY_NAME ? fnv1a(name ? name : "") : (uint64_t)i;
        if (key % (uint64_t)o->shard_n != (uint64_t)(o->shard_k - 1))
            return false;
    }
    return true;
}

/* Turn one selected record into a queue item (NULL: skipped by --resume). */
static item *make_item(reader_ctx *c, json_t *rec)
{
    const char *name = df_rec_str(rec, "file_name");
    if (name && c->resume_set && json_object_get(c->resume_set, name)) {
        c->skipped_resume++;
        json_decref(rec);
        return NULL;
    }
    item *it = calloc(1, sizeof *it);
    if (!it) {
        json_decref(rec);
        return NULL;
    }
    it->rec = rec;
    it->kind = ITEM_EMIT;
    if (c->o->pending_only) {
        /* listed as it is; the machine that captions it judges it */
    } else if (json_object_get(rec, "error")) {
        it->failed = true;              /* failed upstream: pass it on */
    } else if (!name) {
        df_rec_set_error(rec, "no file_name");
        it->failed = true;
    } else if (!safe_relative(name)) {
        df_rec_set_error(rec, "file_name must be a relative path without '..'");
        it->failed = true;
    } else if (prepare_body(c->o, c->tmpl, name, &it->body, &it->body_len) != DF_OK) {
        df_rec_set_error(rec, "%s", df_last_error());
        it->failed = true;
    } else {
        it->kind = ITEM_SEND;
    }
    return it;
}

static void *reader_main(void *arg)
{
    reader_ctx *c = arg;
    df_jsonl_reader r;
    df_jsonl_reader_init(&r, stdin);
    json_t *rec;
    df_status st = DF_OK;
    for (; !g_stop; c->index++) {
        if (c->o->end >= 0 && c->index >= c->o->end)
            break;                       /* nothing further is ours */
        if ((st = df_jsonl_next(&r, &rec)) != DF_OK || !rec)
            break;
        if (!selected(c, rec)) {
            json_decref(rec);
            continue;
        }
        item *it = make_item(c, rec);
        if (it && !queue_push(c->q, it)) {
            item_free(it);
            break;
        }
    }
    df_jsonl_reader_free(&r);
    pthread_mutex_lock(&c->q->lock);
    c->q->eof = true;
    if (st != DF_OK) {
        c->q->io_error = true;
        snprintf(c->q->io_msg, sizeof c->q->io_msg, "stdin: %s", df_last_error());
    }
    pthread_cond_broadcast(&c->q->cond);
    pthread_mutex_unlock(&c->q->lock);
    if (g_pool)
        df_http_pool_wakeup(g_pool);
    return NULL;
}

/* ---- responses ---------------------------------------------------------- */

/* One record on its way through the pool. The body is kept for a resend:
 * a 200 whose body is cut or unusable is a transport fault the pool cannot
 * see, so df-caption sends it again itself. */
typedef struct sendctx {
    json_t *rec;
    char *body;
    size_t body_len;
    long long seq;
    int attempts;             /* requests made for this record so far */
    int resends;              /* of which df-caption's own resends */
    double not_before;        /* while waiting in run_state.delayed */
    struct sendctx *next;
} sendctx;

typedef struct {
    const options *o;
    const char *api_key;      /* scrubbed from any error text we record */
    df_progress progress;
    long long captioned, failed;
    bool write_failed;
    long long next_seq;       /* seq of the next item popped from the queue */
    sendctx *delayed;         /* resends waiting for their backoff */
    size_t n_delayed;
    /* --keep-order: finished records held until those before them are out;
     * slot seq % held_cap, for seq in [next_out, next_out + held_cap). */
    long long next_out;
    json_t **held;
    bool *held_failed;
    size_t held_cap;
} run_state;

static run_state *g_run;

/* The caption in an OpenAI chat-completions response, or NULL with *why;
 * *again: the failure is worth a resend (a cut or malformed body, no
 * choices: a server or transport hiccup, not an answer about the image). */
static char *caption_of(const char *body, size_t len, const char **why, bool *again)
{
    json_error_t jerr;
    json_t *resp = json_loadb(body, len, 0, &jerr);
    *again = false;
    if (!resp) {
        *why = "malformed JSON response";
        *again = true;
        return NULL;
    }
    json_t *choices = json_object_get(resp, "choices");
    json_t *content = json_object_get(json_object_get(json_array_get(choices, 0), "message"),
                                      "content");
    const char *s = json_string_value(content);
    char *out = NULL;
    if (!json_is_array(choices) || json_array_size(choices) == 0)
        *why = "empty choices", *again = true;
    else if (!s)
        *why = "no message content in the response";
    else {
        while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
            s++;
        size_t n = strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' ||
                         s[n - 1] == '\r'))
            n--;
        if (n == 0)
            *why = "empty caption";
        else if (!(out = strndup(s, n)))
            *why = "out of memory";
    }
    json_decref(resp);
    return out;
}

/* "HTTP 429: <the server's error.message>" or the transport error. */
static void describe_failure(const df_http_result *r, char *out, size_t n)
{
    if (r->status == 0 || r->status / 100 == 2) {
        snprintf(out, n, "%s", r->error && r->error[0] ? r->error : df_strerror(r->err));
        return;
    }
    const char *msg = NULL;
    json_t *j = r->body_len ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    msg = json_is_string(e) ? json_string_value(e)
                            : json_string_value(json_object_get(e, "message"));
    if (msg)
        snprintf(out, n, "HTTP %ld: %.300s", r->status, msg);
    else if (r->body_len)
        snprintf(out, n, "HTTP %ld: %.200s", r->status, r->body);
    else
        snprintf(out, n, "HTTP %ld", r->status);
    json_decref(j);
}

/* Never let the key reach a record, even if a server echoes it. */
static void scrub_secret(char *s, const char *secret)
{
    size_t k = secret ? strlen(secret) : 0;
    if (k < 4)
        return;
    for (char *p = strstr(s, secret); p; p = strstr(p + 3, secret)) {
        memset(p, '*', 3);
        memmove(p + 3, p + k, strlen(p + k) + 1);
    }
}

static void write_rec(run_state *rs, json_t *rec, bool failed)
{
    if (failed)
        rs->failed++;
    else
        rs->captioned++;
    df_progress_add(&rs->progress, 1, failed ? 1 : 0);
    if (!rs->write_failed && df_jsonl_write_fd(STDOUT_FILENO, rec) != DF_OK) {
        df_error("stdout: %s", df_last_error());
        rs->write_failed = true;
        g_stop = 1;
    }
}

/* Make room in the --keep-order window for seq. */
static bool held_reserve(run_state *rs, long long seq)
{
    size_t need = (size_t)(seq - rs->next_out) + 1;
    if (need <= rs->held_cap)
        return true;
    size_t cap = rs->held_cap ? rs->held_cap : 16;
    while (cap < need)
        cap *= 2;
    json_t **h = calloc(cap, sizeof *h);
    bool *f = calloc(cap, sizeof *f);
    if (!h || !f) {
        free(h);
        free(f);
        return false;
    }
    for (size_t i = 0; i < rs->held_cap; i++) {
        long long s = rs->next_out + (long long)i;
        h[s % (long long)cap] = rs->held[s % (long long)rs->held_cap];
        f[s % (long long)cap] = rs->held_failed[s % (long long)rs->held_cap];
    }
    free(rs->held);
    free(rs->held_failed);
    rs->held = h;
    rs->held_failed = f;
    rs->held_cap = cap;
    return true;
}

/* Write a finished record: at once, or with --keep-order once every record
 * before it (by seq) is out. The caller keeps its reference to rec. The
 * window stays small: the pool holds at most 2 * jobs records. */
static void emit(run_state *rs, json_t *rec, bool failed, long long seq)
{
    if (!rs->o->keep_order) {
        write_rec(rs, rec, failed);
        return;
    }
    if (!held_reserve(rs, seq)) {
        df_error("out of memory holding records for --keep-order");
        rs->write_failed = true;
        g_stop = 1;
        return;
    }
    rs->held[seq % (long long)rs->held_cap] = json_incref(rec);
    rs->held_failed[seq % (long long)rs->held_cap] = failed;
    for (;;) {
        size_t i = (size_t)(rs->next_out % (long long)rs->held_cap);
        json_t *r = rs->held[i];
        if (!r)
            break;
        rs->held[i] = NULL;
        write_rec(rs, r, rs->held_failed[i]);
        json_decref(r);
        rs->next_out++;
    }
}

static void ctx_free(sendctx *c)
{
    json_decref(c->rec);
    free(c->body);
    free(c);
}

static void on_done(const df_http_result *r)
{
    run_state *rs = g_run;
    sendctx *c = r->user;
    json_t *rec = c->rec;
    const char *why = NULL;
    char *text = NULL;
    bool again = false;
    c->attempts += r->attempts;
    if (r->err == DF_OK)
        text = caption_of(r->body, r->body_len, &why, &again);
    if (!text && again && !g_stop && c->attempts < 1 + rs->o->retries) {
        /* Sent again after the pool's backoff for the same retry count. */
        c->resends++;
        double u = (double)rand() / ((double)RAND_MAX + 1.0);
        c->not_before = df_now() + df_http_backoff(rs->o->retry_wait, 60, c->attempts, u);
        c->next = rs->delayed;
        rs->delayed = c;
        rs->n_delayed++;
        return;
    }
    if (text) {
        df_rec_set_str(rec, "text", text);
        df_rec_set_str(rec, "caption_model", rs->o->model);
        free(text);
    } else {
        char msg[512];
        if (r->err == DF_ERR_INTERRUPTED)
            snprintf(msg, sizeof msg, "interrupted");
        else if (why)
            snprintf(msg, sizeof msg, "%s", why);
        else
            describe_failure(r, msg, sizeof msg);
        scrub_secret(msg, rs->api_key);
        df_rec_set_str(rec, "error", msg);
    }
    emit(rs, rec, text == NULL, c->seq);
    ctx_free(c);
}

/* ---- the main loop ------------------------------------------------------ */

/* Hand c to the pool; on failure its record is written with the error. */
static void send_ctx(run_state *rs, sendctx *c)
{
    // one budget of 1 + --retries attempts per record, across df-caption's
    // own resends (cut bodies, empty choices) and the pool's retries
    df_http_request req = {
        .method = "POST", .url = rs->o->endpoint, .body = c->body,
        .body_len = c->body_len, .max_body = MAX_RESPONSE_BYTES, .user = c,
        .done = on_done, .max_attempts = 1 + rs->o->retries - c->attempts,
    };
    if (df_http_submit(g_pool, &req) != DF_OK) {
        df_rec_set_error(c->rec, "%s", df_last_error());
        emit(rs, c->rec, true, c->seq);
        ctx_free(c);
    }
}

static void submit_item(run_state *rs, item *it)
{
    sendctx *c = it->kind == ITEM_SEND ? calloc(1, sizeof *c) : NULL;
    if (it->kind == ITEM_SEND && !c)
        df_rec_set_error(it->rec, "out of memory");
    if (!c) {
        emit(rs, it->rec, it->kind == ITEM_SEND || it->failed, it->seq);
        item_free(it);
        return;
    }
    *c = (sendctx){.rec = it->rec, .body = it->body, .body_len = it->body_len, .seq = it->seq};
    it->rec = NULL;          /* owned by c now, released in on_done */
    it->body = NULL;
    item_free(it);
    send_ctx(rs, c);
}

/* Send the resends whose backoff is over; seconds until the next one is
 * due (1 when none waits). */
static double send_due(run_state *rs)
{
    double now = df_now(), wait = 1.0;
    for (sendctx **pp = &rs->delayed; *pp;) {
        sendctx *c = *pp;
        if (c->not_before <= now) {
            *pp = c->next;
            rs->n_delayed--;
            c->next = NULL;
            send_ctx(rs, c);
        } else {
            if (c->not_before - now < wait)
                wait = c->not_before - now;
            pp = &c->next;
        }
    }
    return wait;
}

static size_t in_work(const run_state *rs)
{
    return df_http_pool_pending(g_pool) + rs->n_delayed;
}

/* Move prepared items into the pool while it has fewer than `backlog`
 * pending; returns true when the reader is done and the queue is empty. */
static bool feed_pool(run_state *rs, queue *q, size_t backlog)
{
    for (;;) {
        pthread_mutex_lock(&q->lock);
        bool drained = q->eof && !q->head;
        bool idle = in_work(rs) == 0;
        if (!q->head && !q->eof && idle && !g_stop) {
            /* Nothing to do until the reader pushes: wait here, briefly so
             * that a signal is noticed even without a wakeup. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100000000;
            if (ts.tv_nsec >= 1000000000)
                ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&q->cond, &q->lock, &ts);
        }
        item *it = in_work(rs) < backlog ? queue_pop_locked(q) : NULL;
        if (it)
            it->seq = rs->next_seq++;
        pthread_mutex_unlock(&q->lock);
        if (!it)
            return drained;
        submit_item(rs, it);
    }
}

/* After a stop: everything prepared but not sent is written as interrupted. */
static void drain_interrupted(run_state *rs, queue *q)
{
    pthread_mutex_lock(&q->lock);
    item *it;
    while ((it = queue_pop_locked(q))) {
        it->seq = rs->next_seq++;
        if (it->kind == ITEM_SEND)
            df_rec_set_error(it->rec, "interrupted");
        emit(rs, it->rec, it->kind == ITEM_SEND || it->failed, it->seq);
        item_free(it);
    }
    pthread_mutex_unlock(&q->lock);
    while (rs->delayed) {
        sendctx *c = rs->delayed;
        rs->delayed = c->next;
        rs->n_delayed--;
        df_rec_set_error(c->rec, "interrupted");
        emit(rs, c->rec, true, c->seq);
        ctx_free(c);
    }
}

static void run_loop(run_state *rs, queue *q)
{
    size_t backlog = 2 * (size_t)rs->o->jobs;
    while (!g_stop) {
        double wait = send_due(rs);
        bool drained = feed_pool(rs, q, backlog);
        if (drained && in_work(rs) == 0)
            break;
        if (df_http_pool_pending(g_pool) > 0) {
            df_http_pool_perform(g_pool, wait);
        } else if (rs->n_delayed > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);        /* a signal cuts it short */
        }
    }
    if (g_stop) {
        df_http_pool_abort(g_pool);      /* on_done writes them "interrupted" */
        drain_interrupted(rs, q);
    }
}

/* ---- options ------------------------------------------------------------ */

enum {
    OPT_ENDPOINT = 256, OPT_API_KEY_ENV, OPT_NO_AUTH, OPT_PROMPT, OPT_PROMPT_FILE, OPT_RPM,
    OPT_MAX_TOKENS, OPT_TEMPERATURE, OPT_MAX_SIDE, OPT_START, OPT_END, OPT_SHARD,
    OPT_SHARD_BY, OPT_RESUME, OPT_RETRIES, OPT_RETRY_WAIT, OPT_TIMEOUT, OPT_STRICT,
    OPT_PROGRESS, OPT_PENDING, OPT_MAX_PIXELS, OPT_KEEP_ORDER
};

static const struct option long_opts[] = {
    {"root", required_argument, 0, 'r'}, {"endpoint", required_argument, 0, OPT_ENDPOINT},
    {"model", required_argument, 0, 'm'}, {"api-key-env", required_argument, 0, OPT_API_KEY_ENV},
    {"no-auth", no_argument, 0, OPT_NO_AUTH}, {"prompt", required_argument, 0, OPT_PROMPT},
    {"prompt-file", required_argument, 0, OPT_PROMPT_FILE},
    {"jobs", required_argument, 0, 'j'}, {"rpm", required_argument, 0, OPT_RPM},
    {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
    {"temperature", required_argument, 0, OPT_TEMPERATURE},
    {"max-side", required_argument, 0, OPT_MAX_SIDE}, {"start", required_argument, 0, OPT_START},
    {"end", required_argument, 0, OPT_END}, {"shard", required_argument, 0, OPT_SHARD},
    {"shard-by", required_argument, 0, OPT_SHARD_BY},
    {"resume", required_argument, 0, OPT_RESUME}, {"pending", no_argument, 0, OPT_PENDING}, {"retries", required_argument, 0, OPT_RETRIES},
    {"retry-wait", required_argument, 0, OPT_RETRY_WAIT},
    {"timeout", required_argument, 0, OPT_TIMEOUT}, {"strict", no_argument, 0, OPT_STRICT},
    {"quiet", no_argument, 0, 'q'}, {"progress", no_argument, 0, OPT_PROGRESS},
    {"max-pixels", required_argument, 0, OPT_MAX_PIXELS},
    {"keep-order", no_argument, 0, OPT_KEEP_ORDER},
    {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
};

static void parse_shard(const char *s, options *o)
{
    char *end;
    errno = 0;
    long k = strtol(s, &end, 10);
    if (errno || end == s || *end != '/')
        df_usage_error("--shard: expected K/N, got '%s'", s);
    const char *ns = end + 1;
    long n = strtol(ns, &end, 10);
    if (errno || end == ns || *end || n < 1 || n > 1000000 || k < 1 || k > n)
        df_usage_error("--shard: expected K/N with 1 <= K <= N, got '%s'", s);
    o->shard_k = (int)k;
    o->shard_n = (int)n;
}

static void parse_option(int c, options *o, const char **prompt_file)
{
    switch (c) {
    case 'r': o->root = optarg; break;
    case OPT_ENDPOINT: o->endpoint = optarg; break;
    case 'm': o->model = optarg; break;
    case OPT_API_KEY_ENV: o->api_key_env = optarg; break;
    case OPT_NO_AUTH: o->no_auth = true; break;
    case OPT_PROMPT: o->prompt = optarg; break;
    case OPT_PROMPT_FILE: *prompt_file = optarg; break;
    case 'j': o->jobs = (int)parse_ll("--jobs", optarg, 1, 1024); break;
    case OPT_RPM: o->rpm = parse_num("--rpm", optarg, 0, 1e9); break;
    case OPT_MAX_TOKENS: o->max_tokens = (int)parse_ll("--max-tokens", optarg, 0, 1 << 30); break;
    case OPT_TEMPERATURE:
        o->temperature = parse_num("--temperature", optarg, 0, 10);
        o->has_temperature = true;
        break;
    case OPT_MAX_SIDE: o->max_side = (int)parse_ll("--max-side", optarg, 1, DF_IMAGE_MAX_SIDE); break;
    case OPT_START: o->start = parse_ll("--start", optarg, 0, INT64_MAX); break;
    case OPT_END: o->end = parse_ll("--end", optarg, 0, INT64_MAX); break;
    case OPT_SHARD: parse_shard(optarg, o); break;
    case OPT_SHARD_BY:
        if (strcmp(optarg, "index") && strcmp(optarg, "name"))
            df_usage_error("--shard-by: expected index or name, got '%s'", optarg);
        o->shard_by = strcmp(optarg, "name") ? SHARD_BY_INDEX : SHARD_BY_NAME;
        break;
    case OPT_RESUME: o->resume = optarg; break;
    case OPT_PENDING: o->pending_only = true; break;
    case OPT_RETRIES: o->retries = (int)parse_ll("--retries", optarg, 0, 100); break;
    case OPT_RETRY_WAIT: o->retry_wait = parse_num("--retry-wait", optarg, 0, 3600); break;
    case OPT_TIMEOUT: o->timeout = parse_num("--timeout", optarg, 0.001, 1e6); break;
    case OPT_STRICT: o->strict = true; break;
    case OPT_MAX_PIXELS:
        o->max_pixels = (unsigned long long)parse_ll("--max-pixels", optarg, 1, INT64_MAX);
        break;
    case OPT_KEEP_ORDER: o->keep_order = true; break;
    case 'q': o->progress = DF_PROGRESS_NEVER; break;
    case OPT_PROGRESS: o->progress = DF_PROGRESS_ALWAYS; break;
    case 'h': fputs(usage_text, stdout); exit(0);
    default: df_usage_error("unknown option");
    }
}

static void parse_args(int argc, char **argv, options *o)
{
    *o = (options){
        .root = ".", .endpoint = DEFAULT_ENDPOINT, .model = DEFAULT_MODEL,
        .api_key_env = "GROQ_API_KEY", .prompt = DEFAULT_PROMPT, .jobs = 4,
        .max_tokens = 512, .retries = 3, .retry_wait = 1, .timeout = 120, .end = -1,
        .progress = DF_PROGRESS_AUTO, .max_pixels = DF_IMAGE_DEFAULT_MAX_PIXELS,
    };
    const char *prompt_file = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "r:m:j:qh", long_opts, NULL)) != -1) {
        if (c == '?')
            df_usage_error("unknown option or missing argument: %s", argv[optind - 1]);
        parse_option(c, o, &prompt_file);
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s' (records come on stdin)", argv[optind]);
    if (strncmp(o->endpoint, "http://", 7) && strncmp(o->endpoint, "https://", 8))
        df_usage_error("--endpoint: expected an http:// or https:// URL");
    if (o->end >= 0 && o->end < o->start)
        df_usage_error("--end must not be below --start");
    if (prompt_file) {
        if (!(o->prompt_owned = read_prompt_file(prompt_file)))
            df_usage_error("--prompt-file %s: cannot read it (or over 1 MiB)", prompt_file);
        o->prompt = o->prompt_owned;
    }
    if (!o->prompt[0])
        df_usage_error("the prompt is empty");
}

/* ---- main --------------------------------------------------------------- */

static df_http_pool *make_pool(const options *o, const char *key, char *auth, size_t auth_n)
{
    df_http_options ho;
    df_http_options_default(&ho);
    ho.max_in_flight = o->jobs;
    ho.total_timeout_s = o->timeout;
    ho.connect_timeout_s = o->timeout < 30 ? o->timeout : 30;
    ho.stall_timeout_s = o->timeout < 60 ? (o->timeout < 1 ? 1 : o->timeout) : 60;
    ho.max_retries = o->retries;
    ho.backoff_base_s = o->retry_wait;
    ho.rpm = o->rpm;
    ho.user_agent = "diffyface-caption/1";
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    if (key) {
        snprintf(auth, auth_n, "Authorization: Bearer %s", key);
        headers[1] = auth;
    }
    ho.headers = headers;
    df_http_pool *p = df_http_pool_new(&ho);
    memset(auth, 0, auth_n);          /* the pool holds its own copy */
    return p;
}

/* The reader thread runs with SIGINT/SIGTERM blocked, so that the signals
 * land in the main thread (waking the pool) and never cut the reader's
 * read(2) short. */
static int start_reader(pthread_t *t, reader_ctx *rc)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int e = pthread_create(t, NULL, reader_main, rc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return e;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);        /* a closed stdout is a write error, reported */
}

static const char *api_key_or_die(const options *o)
{
    if (o->no_auth || o->pending_only)
        return NULL;
    const char *key = getenv(o->api_key_env);
    if (!key || !key[0]) {
        df_error("no API key: environment variable %s is not set "
                 "(see --api-key-env; --no-auth for a server without keys)", o->api_key_env);
        exit(1);
    }
    if (strlen(key) > 4096 || strpbrk(key, "\r\n")) {
        df_error("the API key in %s is malformed", o->api_key_env);
        exit(1);
    }
    return key;
}

static int finish(run_state *rs, queue *q, reader_ctx *rc)
{
    df_progress_finish(&rs->progress);
    int rc_exit = 0;
    if (q->io_error) {
        df_error("%s", q->io_msg);
        rc_exit = 1;
    }
    if (close(STDOUT_FILENO) != 0 && !rs->write_failed) {
        df_error("stdout: %s", strerror(errno));
        rs->write_failed = true;
    }
    if (rs->write_failed)
        rc_exit = 1;
    if (g_stop && !rs->write_failed) {
        df_error("interrupted: %lld captioned, %lld failed or interrupted; "
                 "rerun with --resume to finish", rs->captioned, rs->failed);
        return 1;
    }
    if (rs->failed > 0)
        df_error("%lld of %lld records failed", rs->failed, rs->captioned + rs->failed);
    else if (rs->o->pending_only && rs->o->progress != DF_PROGRESS_NEVER)
        df_error("%lld records pending, %lld already captioned", rs->captioned,
                 rc->skipped_resume);
    else if (rs->o->progress != DF_PROGRESS_NEVER)
        df_error("%lld captioned, %lld skipped as already captioned", rs->captioned,
                 rc->skipped_resume);
    if (rc_exit)
        return rc_exit;
    return rs->o->strict && rs->failed > 0 ? 1 : 0;
}

/* Read, send and write until the input ends or a signal stops us; the
 * exit status. Everything the reader thread touches is static, because
 * after a stop the reader may still sit in a blocking read of stdin. */
static int run(const options *o, const char *key, const body_template *tmpl,
               json_t *resume_set, bool *joined)
{
    static run_state rs;
    rs = (run_state){.o = o, .api_key = key};
    g_run = &rs;
    df_progress_start(&rs.progress, "caption", 0, o->progress);
    static queue q;
    q.cap = (size_t)o->jobs + 1;
    pthread_mutex_init(&q.lock, NULL);
    pthread_cond_init(&q.cond, NULL);
    static reader_ctx rc;
    rc = (reader_ctx){.o = o, .tmpl = tmpl, .resume_set = resume_set, .q = &q};
    pthread_t reader;
    if (start_reader(&reader, &rc) != 0) {
        df_error("cannot start the reader thread");
        return 1;
    }
    run_loop(&rs, &q);
    int code = finish(&rs, &q, &rc);
    /* After a stop, give the reader a moment; if it does not end, the
     * caller exits without freeing what it uses. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    *joined = g_stop ? pthread_timedjoin_np(reader, NULL, &ts) == 0
                     : pthread_join(reader, NULL) == 0;
    return code;
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    static options o;
    parse_args(argc, argv, &o);
    const char *key = api_key_or_die(&o);

    static json_t *resume_set;
    static body_template tmpl;
    static char auth[4200];
    long long resumed = 0;
    bool joined = true;
    int code = 1;
    if (o.resume) {
        resume_set = json_object();
        if (load_resume(o.resume, resume_set, &resumed) != DF_OK) {
            df_error("--resume %s", df_last_error());
            goto out;
        }
    }
    if (make_template(&o, &tmpl) != DF_OK) {
        df_error("%s", df_last_error());
        goto out;
    }
    g_pool = make_pool(&o, key, auth, sizeof auth);
    if (!g_pool) {
        df_error("%s", df_last_error());
        goto out;
    }
    install_signals();
    code = run(&o, key, &tmpl, resume_set, &joined);
out:
    if (joined) {
        df_http_pool_free(g_pool);
        g_pool = NULL;
        json_decref(resume_set);
        free(tmpl.head);
        free(tmpl.tail);
        free(o.prompt_owned);
    }
    if (g_run) {
        free(g_run->held);
        free(g_run->held_failed);
    }
    return code;
}
