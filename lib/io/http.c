/* http.c - the HTTP client pool of http.h on libcurl's multi interface.
 *
 * Life of a request: submit() copies it into a `req` on the FIFO; start()
 * gives it an easy handle when a slot is free, the rate limit allows and no
 * Retry-After hold is active; curl moves the data (on_header, on_write);
 * finish() classifies the attempt: success, final failure, or a retry that
 * waits on the `waiting` list until its backoff (or Retry-After) is over.
 * Only done() frees a req, always after calling its callback once.
 *
 * Tested by tests/unit/test_http.c and tests/tools/test-df-fetch.sh. */
#include "http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

#define ERR_BODY_MAX   (64u * 1024)          /* kept of an error response */
#define HDR_MAX        (64u * 1024)          /* kept of response headers */
#define BODY_MAX_DEF   ((size_t)64 << 20)    /* buffered 2xx body default cap */
#define FREE_EASY_MAX  64

/* A growable byte buffer that is always NUL-terminated. */
typedef struct {
    char *p;
    size_t len, cap;
} buf;

static bool buf_add(buf *b, const void *d, size_t n)
{
    if (n > SIZE_MAX - b->len - 1)
        return false;
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return false;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = 0;
    return true;
}

static void buf_clear(buf *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = 0;
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

typedef struct req {
    struct req *next;
    df_http_pool *pool;
    /* the request, copied */
    char *method, *url, *body;
    size_t body_len, max_body;
    struct curl_slist *hdrs;
    df_http_write_fn write;
    df_http_rewind_fn rewind;
    uint64_t max_bytes;
    void *user;
    df_http_done_fn done;
    /* across attempts */
    uint64_t offset;            /* bytes the sink holds */
    int attempts, retries_used;
    int max_retries;            /* this request's: the pool's, or max_attempts - 1 */
    int slot;                   /* index in pool->running while in flight */
    bool range_restart_used;    /* one free restart after a 416 */
    double t_submit, not_before;
    /* this attempt */
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    buf body_buf, hdr_buf;
    bool began, ok2xx;
    df_status abort_err;        /* set by a callback that stopped the transfer */
    bool abort_restart;         /* ...and the next attempt starts from 0 */
    char abort_msg[256];
    long status;
    int64_t total_size;
} req;

struct df_http_pool {
    df_http_options o;
    char **headers;             /* pool headers, copied */
    char *user_agent;
    CURLM *multi;
    req *q_head, *q_tail;       /* not started yet, FIFO */
    req *waiting;               /* waiting for a retry time */
    req **running;              /* max_in_flight slots, NULL when free */
    size_t n_queued, n_waiting, n_running;
    CURL *free_easy[FREE_EASY_MAX];
    size_t n_free;
    df_http_ratelimit rl;
    double hold_until;          /* Retry-After hold of the whole pool */
    uint64_t rng;
};

/* ---- pieces ------------------------------------------------------------ */

void df_http_options_default(df_http_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_in_flight = 8;
    o->connect_timeout_s = 30;
    o->stall_timeout_s = 60;
    o->total_timeout_s = 0;
    o->max_redirects = 10;
    o->max_retries = 3;
    o->backoff_base_s = 1;
    o->backoff_max_s = 60;
    o->retry_after_max_s = 300;
    o->hold_on_retry_after = true;
    o->rpm = 0;
    o->user_agent = "diffyface/1";
}

double df_http_backoff(double base_s, double max_s, int retry, double u)
{
    if (retry < 1)
        retry = 1;
    double d = base_s;
    for (int i = 1; i < retry && d < max_s; i++)
        d *= 2;
    if (d > max_s)
        d = max_s;
    if (u < 0)
        u = 0;
    if (u >= 1)
        u = 0.999999;
    return d / 2 + u * d / 2;
}

void df_http_ratelimit_init(df_http_ratelimit *rl, double rpm)
{
    rl->interval_s = rpm > 0 ? 60.0 / rpm : 0;
    rl->next_s = 0;
}

double df_http_ratelimit_wait(const df_http_ratelimit *rl, double now)
{
    if (rl->interval_s <= 0 || now >= rl->next_s)
        return 0;
    return rl->next_s - now;
}

/* The next start may come one interval after this one, never earlier; an
 * idle spell earns no credit, so no burst can break the spacing. */
void df_http_ratelimit_take(df_http_ratelimit *rl, double now)
{
    if (rl->interval_s > 0)
        rl->next_s = (now > rl->next_s ? now : rl->next_s) + rl->interval_s;
}

/* Whole string matched by strptime format fmt, trailing blanks allowed. */
static bool parse_date_fmt(const char *s, const char *fmt, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, fmt, &tm);
    if (!end)
        return false;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end)
        return false;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return false;
    *out = t;
    return true;
}

bool df_http_parse_retry_after(const char *value, time_t now, double *delay_s)
{
    if (!value)
        return false;
    while (*value == ' ' || *value == '\t')
        value++;
    if (isdigit((unsigned char)*value)) {
        char *end;
        unsigned long long v = strtoull(value, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end)
            return false;
        *delay_s = v > 1000000000ull ? 1e9 : (double)v;   /* saturate absurd values */
        return true;
    }
    /* IMF-fixdate, then the obsolete RFC 850 and asctime forms (RFC 9110 5.6.7). */
    static const char *const fmts[] = {
        "%a, %d %b %Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
        "%a %b %e %H:%M:%S %Y",
    };
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        time_t t;
        if (parse_date_fmt(value, fmts[i], &t)) {
            *delay_s = t > now ? (double)(t - now) : 0;
            return true;
        }
    }
    return false;
}

void df_http_redact_url(const char *url, char *out, size_t n)
{
    if (n == 0)
        return;
    const char *s = url ? url : "";
    const char *scheme_end = strstr(s, "://");
    size_t k = 0;
    const char *p = s;
    if (scheme_end) {
        size_t sl = (size_t)(scheme_end - s) + 3;
        for (size_t i = 0; i < sl && k + 1 < n; i++)
            out[k++] = s[i];
        p = scheme_end + 3;
        /* drop "user:pass@" from the authority part */
        size_t auth_len = strcspn(p, "/?#");
        const char *at = memchr(p, '@', auth_len);
        if (at)
            p = at + 1;
    }
    for (; *p && *p != '?' && *p != '#' && k + 1 < n; p++)
        out[k++] = *p;
    out[k] = 0;
}

/* ---- response headers ---------------------------------------------------- */

/* Find header `name` in a block of "Name: value\r\n" lines; copy its trimmed
 * value into out. */
static bool find_header(const char *hdrs, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (const char *line = hdrs; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (len > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            const char *e = line + len;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
            size_t vl = (size_t)(e - v);
            if (vl >= n)
                vl = n - 1;
            memcpy(out, v, vl);
            out[vl] = 0;
            return true;
        }
        line = eol ? eol + 1 : NULL;
    }
    return false;
}

const char *df_http_result_header(const df_http_result *r, const char *name)
{
    static __thread char value[1024];
    const char *hdrs = r->headers_priv_;
    if (!hdrs || !find_header(hdrs, name, value, sizeof value))
        return NULL;
    return value;
}

/* "bytes S-E/T" (T may be "*"): start and total (-1 if unknown). */
static bool parse_content_range(const char *v, uint64_t *start, int64_t *total)
{
    if (strncasecmp(v, "bytes", 5) != 0)
        return false;
    v += 5;
    while (*v == ' ')
        v++;
    char *end;
    if (!isdigit((unsigned char)*v))
        return false;
    unsigned long long s = strtoull(v, &end, 10);
    if (*end != '-' || !isdigit((unsigned char)end[1]))
        return false;
    unsigned long long e = strtoull(end + 1, &end, 10);
    if (*end != '/' || e < s)
        return false;
    if (end[1] == '*') {
        *total = -1;
    } else {
        if (!isdigit((unsigned char)end[1]))
            return false;
        unsigned long long t = strtoull(end + 1, &end, 10);
        if (t <= e || t > INT64_MAX)
            return false;
        *total = (int64_t)t;
    }
    *start = s;
    return true;
}

/* ---- curl callbacks ---------------------------------------------------- */

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    req *r = ud;
    size_t n = size * nmemb;
    /* Each response (redirect, 100-continue, the final one) starts with its
     * status line: keep only the last response's headers. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0)
        buf_clear(&r->hdr_buf);
    if (r->hdr_buf.len + n <= HDR_MAX && !buf_add(&r->hdr_buf, data, n))
        return 0;
    return n;
}

static bool abort_with(req *r, df_status s, bool restart, const char *msg)
{
    r->abort_err = s;
    r->abort_restart = restart;
    snprintf(r->abort_msg, sizeof r->abort_msg, "%s", msg);
    return false;
}

/* Drop what the sink holds and start over from byte 0. */
static bool sink_restart(req *r)
{
    if (r->offset == 0)
        return true;
    if (r->rewind && !r->rewind(r->user, 0))
        return abort_with(r, DF_ERR_IO, false, df_last_error());
    r->offset = 0;
    return true;
}

/* First look at a 2xx streamed response: does it continue where the sink
 * is, and does it fit under max_bytes? */
static bool begin_stream(req *r)
{
    curl_off_t cl = -1;
    curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    int64_t total = cl >= 0 ? (int64_t)cl : -1;
    if (r->status == 206) {
        char v[256];
        uint64_t start;
        if (!find_header(r->hdr_buf.p, "Content-Range", v, sizeof v) ||
            !parse_content_range(v, &start, &total) || start != r->offset)
            return abort_with(r, DF_ERR_NET, true,
                              "206 response does not continue at the requested offset");
    } else if (!sink_restart(r)) {
        return false;
    }
    r->total_size = total;
    if (r->max_bytes && total >= 0 && (uint64_t)total > r->max_bytes) {
        char msg[128];
        snprintf(msg, sizeof msg, "too large: %lld bytes > max %llu",
                 (long long)total, (unsigned long long)r->max_bytes);
        return abort_with(r, DF_ERR_RANGE, false, msg);
    }
    return true;
}

static bool begin_body(req *r)
{
    r->began = true;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    r->ok2xx = r->status >= 200 && r->status < 300;
    if (!r->ok2xx)
        return true;
    if (r->write)
        return begin_stream(r);
    curl_off_t cl = -1;
    curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    r->total_size = cl >= 0 ? (int64_t)cl : -1;
    if (cl >= 0 && (uint64_t)cl > r->max_body)
        return abort_with(r, DF_ERR_RANGE, false, "response body too large");
    return true;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    req *r = ud;
    size_t n = size * nmemb;
    if (!r->began && !begin_body(r))
        return 0;
    if (!r->ok2xx) {    /* error page: keep its start for the message */
        size_t room = ERR_BODY_MAX > r->body_buf.len ? ERR_BODY_MAX - r->body_buf.len : 0;
        if (room && !buf_add(&r->body_buf, data, n < room ? n : room))
            return 0;
        return n;
    }
    if (r->write) {
        if (r->max_bytes && (r->offset + n < r->offset || r->offset + n > r->max_bytes))
            return abort_with(r, DF_ERR_RANGE, false, "too large: body exceeds max bytes"), 0;
        df_clear_error();
        if (!r->write(r->user, data, n))
            return abort_with(r, DF_ERR_IO, false, df_last_error()), 0;
        r->offset += n;
        return n;
    }
    if (n > r->max_body - r->body_buf.len)
        return abort_with(r, DF_ERR_RANGE, false, "response body too large"), 0;
    if (!buf_add(&r->body_buf, data, n))
        return abort_with(r, DF_ERR_NOMEM, false, "out of memory for the response body"), 0;
    return n;
}

/* ---- pool ---------------------------------------------------------------- */

static uint64_t rng_next(df_http_pool *p)
{
    /* xorshift64*: jitter needs spread, not quality */
    p->rng ^= p->rng >> 12;
    p->rng ^= p->rng << 25;
    p->rng ^= p->rng >> 27;
    return p->rng * 2685821657736338717ull;
}

static double rng_unit(df_http_pool *p)
{
    return (rng_next(p) >> 11) * (1.0 / 9007199254740992.0);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

df_http_pool *df_http_pool_new(const df_http_options *o)
{
    pthread_once(&curl_once, curl_init_once);
    df_http_pool *p = calloc(1, sizeof *p);
    if (!p) {
        df_fail(DF_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (o)
        p->o = *o;
    else
        df_http_options_default(&p->o);
    if (p->o.max_in_flight < 1)
        p->o.max_in_flight = 1;
    size_t nh = 0;
    while (p->o.headers && p->o.headers[nh])
        nh++;
    p->headers = calloc(nh + 1, sizeof *p->headers);
    p->user_agent = strdup(p->o.user_agent ? p->o.user_agent : "diffyface/1");
    p->multi = curl_multi_init();
    p->running = calloc((size_t)p->o.max_in_flight, sizeof *p->running);
    bool ok = p->headers && p->user_agent && p->multi && p->running;
    for (size_t i = 0; ok && i < nh; i++)
        ok = (p->headers[i] = strdup(p->o.headers[i])) != NULL;
    p->o.headers = NULL;    /* the caller's array may go away */
    if (!ok) {
        df_http_pool_free(p);
        df_fail(DF_ERR_NOMEM, "cannot create the HTTP pool");
        return NULL;
    }
    curl_multi_setopt(p->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)p->o.max_in_flight);
    curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, (long)p->o.max_in_flight + 4);
    df_http_ratelimit_init(&p->rl, p->o.rpm);
    p->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)p;
    if (!p->rng)
        p->rng = 88172645463325252ull;
    return p;
}

static void req_free(req *r)
{
    free(r->method);
    free(r->url);
    free(r->body);
    curl_slist_free_all(r->hdrs);
    buf_free(&r->body_buf);
    buf_free(&r->hdr_buf);
    free(r);
}

static void easy_release(df_http_pool *p, req *r)
{
    if (!r->easy)
        return;
    curl_multi_remove_handle(p->multi, r->easy);
    p->running[r->slot] = NULL;
    if (p->n_free < FREE_EASY_MAX) {
        curl_easy_reset(r->easy);
        p->free_easy[p->n_free++] = r->easy;
    } else {
        curl_easy_cleanup(r->easy);
    }
    r->easy = NULL;
    p->n_running--;
}

/* Finish a request: one callback, then free. */
static void done(df_http_pool *p, req *r, df_status err, const char *msg)
{
    df_http_result res = {
        .user = r->user, .err = err, .status = r->status,
        .error = err == DF_OK ? "" : msg,
        .body = r->body_buf.p ? r->body_buf.p : "",
        .body_len = r->body_buf.len,
        .attempts = r->attempts, .offset = r->offset,
        .total_size = r->total_size,
        .elapsed_s = df_now() - r->t_submit,
        .headers_priv_ = r->hdr_buf.p,
    };
    r->done(&res);
    req_free(r);
}

void df_http_pool_abort(df_http_pool *p)
{
    /* Callbacks may submit more; those are aborted too, by the next round. */
    while (df_http_pool_pending(p)) {
        for (int i = 0; i < p->o.max_in_flight; i++) {
            req *r = p->running[i];
            if (r) {
                easy_release(p, r);
                done(p, r, DF_ERR_INTERRUPTED, "interrupted");
            }
        }
        while (p->waiting) {
            req *r = p->waiting;
            p->waiting = r->next;
            p->n_waiting--;
            done(p, r, DF_ERR_INTERRUPTED, "interrupted");
        }
        while (p->q_head) {
            req *r = p->q_head;
            p->q_head = r->next;
            if (!p->q_head)
                p->q_tail = NULL;
            p->n_queued--;
            done(p, r, DF_ERR_INTERRUPTED, "interrupted");
        }
    }
}

void df_http_pool_free(df_http_pool *p)
{
    if (!p)
        return;
    if (p->multi && p->running)
        df_http_pool_abort(p);
    for (size_t i = 0; i < p->n_free; i++)
        curl_easy_cleanup(p->free_easy[i]);
    if (p->multi)
        curl_multi_cleanup(p->multi);
    for (size_t i = 0; p->headers && p->headers[i]; i++)
        free(p->headers[i]);
    free(p->headers);
    free(p->user_agent);
    free(p->running);
    free(p);
}

size_t df_http_pool_pending(const df_http_pool *p)
{
    return p->n_queued + p->n_waiting + p->n_running;
}

void df_http_pool_wakeup(df_http_pool *p)
{
    curl_multi_wakeup(p->multi);
}

static struct curl_slist *slist_add(struct curl_slist *l, const char *s, bool *ok)
{
    struct curl_slist *n = curl_slist_append(l, s);
    if (!n)
        *ok = false;
    return n ? n : l;
}

df_status df_http_submit(df_http_pool *p, const df_http_request *q)
{
    if (!q->url || !q->done)
        return df_fail(DF_ERR_ARG, "http request without url or done callback");
    if (strncasecmp(q->url, "http://", 7) != 0 && strncasecmp(q->url, "https://", 8) != 0)
        return df_fail(DF_ERR_ARG, "only http:// and https:// URLs are supported");
    req *r = calloc(1, sizeof *r);
    if (!r)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    bool ok = true;
    r->pool = p;
    r->url = strdup(q->url);
    r->method = strdup(q->method ? q->method : q->body ? "POST" : "GET");
    ok = r->url && r->method;
    if (ok && q->body) {
        r->body = malloc(q->body_len ? q->body_len : 1);
        ok = r->body != NULL;
        if (ok)
            memcpy(r->body, q->body, q->body_len);
        r->body_len = q->body_len;
    }
    for (size_t i = 0; ok && p->headers[i]; i++)
        r->hdrs = slist_add(r->hdrs, p->headers[i], &ok);
    for (size_t i = 0; ok && q->headers && q->headers[i]; i++)
        r->hdrs = slist_add(r->hdrs, q->headers[i], &ok);
    /* No "Expect: 100-continue" round trip before large bodies. */
    if (ok && q->body)
        r->hdrs = slist_add(r->hdrs, "Expect:", &ok);
    if (!ok) {
        req_free(r);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    r->max_body = q->max_body ? q->max_body : BODY_MAX_DEF;
    r->max_retries = q->max_attempts > 0 && q->max_attempts - 1 < p->o.max_retries
                         ? q->max_attempts - 1
                         : p->o.max_retries;
    r->write = q->write;
    r->rewind = q->rewind;
    r->offset = q->write ? q->resume_from : 0;
    r->max_bytes = q->max_bytes;
    r->user = q->user;
    r->done = q->done;
    r->total_size = -1;
    r->t_submit = df_now();
    if (p->q_tail)
        p->q_tail->next = r;
    else
        p->q_head = r;
    p->q_tail = r;
    p->n_queued++;
    return DF_OK;
}

static void setup_easy(df_http_pool *p, req *r)
{
    CURL *e = r->easy;
    const df_http_options *o = &p->o;
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, p->user_agent);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, o->max_redirects > 0 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)o->max_redirects);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(o->connect_timeout_s * 1000));
    if (o->stall_timeout_s > 0) {
        long t = (long)(o->stall_timeout_s + 0.999);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, t < 1 ? 1L : t);
    }
    if (o->total_timeout_s > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->total_timeout_s * 1000));
    if (r->write)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
    if (strcmp(r->method, "GET") == 0 && !r->body) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(r->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
        if (r->body) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        }
    }
    if (r->write && r->offset > 0) {
        char range[48];
        snprintf(range, sizeof range, "%llu-", (unsigned long long)r->offset);
        curl_easy_setopt(e, CURLOPT_RANGE, range);
    }
}

static bool start(df_http_pool *p, req *r)
{
    r->easy = p->n_free ? p->free_easy[--p->n_free] : curl_easy_init();
    if (!r->easy)
        return false;
    r->attempts++;
    r->errbuf[0] = 0;
    r->began = r->ok2xx = false;
    r->abort_err = DF_OK;
    r->abort_restart = false;
    r->abort_msg[0] = 0;
    r->status = 0;
    buf_clear(&r->body_buf);
    buf_clear(&r->hdr_buf);
    setup_easy(p, r);
    if (curl_multi_add_handle(p->multi, r->easy) != CURLM_OK) {
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
        return false;
    }
    for (r->slot = 0; p->running[r->slot]; r->slot++)
        ;
    p->running[r->slot] = r;
    p->n_running++;
    return true;
}

/* The waiting request whose time has come earliest, unlinked; or NULL. */
static req *take_due(df_http_pool *p, double now)
{
    req **best = NULL;
    for (req **pp = &p->waiting; *pp; pp = &(*pp)->next)
        if ((*pp)->not_before <= now && (!best || (*pp)->not_before < (*best)->not_before))
            best = pp;
    if (!best)
        return NULL;
    req *r = *best;
    *best = r->next;
    r->next = NULL;
    p->n_waiting--;
    return r;
}

/* Start as many as slots, the rate limit and a Retry-After hold allow. */
static void start_ready(df_http_pool *p)
{
    while (p->n_running < (size_t)p->o.max_in_flight) {
        double now = df_now();
        if (now < p->hold_until || df_http_ratelimit_wait(&p->rl, now) > 0)
            return;
        req *r = take_due(p, now);
        if (!r && p->q_head) {
            r = p->q_head;
            p->q_head = r->next;
            if (!p->q_head)
                p->q_tail = NULL;
            r->next = NULL;
            p->n_queued--;
        }
        if (!r)
            return;
        df_http_ratelimit_take(&p->rl, now);
        if (!start(p, r))
            done(p, r, DF_ERR_NOMEM, "cannot start an HTTP transfer");
    }
}

/* Seconds until start_ready might start something, or -1 if nothing waits. */
static double next_start_in(const df_http_pool *p)
{
    if (p->n_running >= (size_t)p->o.max_in_flight || (!p->q_head && !p->waiting))
        return -1;
    double now = df_now();
    double t = p->q_head ? now : 1e300;
    for (const req *r = p->waiting; r; r = r->next)
        if (r->not_before < t)
            t = r->not_before;
    if (t < p->hold_until)
        t = p->hold_until;
    double rl = df_http_ratelimit_wait(&p->rl, now);
    if (t < now + rl)
        t = now + rl;
    return t > now ? t - now : 0;
}

static bool retryable_status(long s)
{
    return s == 408 || s == 429 || (s >= 500 && s <= 599);
}

static bool retryable_curl(CURLcode c)
{
    switch (c) {
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_CERTPROBLEM:
    case CURLE_LOGIN_DENIED: case CURLE_WRITE_ERROR: case CURLE_OUT_OF_MEMORY:
    case CURLE_FILESIZE_EXCEEDED: case CURLE_ABORTED_BY_CALLBACK:
        return false;
    default:
        return true;
    }
}

static void schedule_retry(df_http_pool *p, req *r, double delay)
{
    r->not_before = df_now() + delay;
    r->next = p->waiting;
    p->waiting = r;
    p->n_waiting++;
}

/* Retry r if its budget allows; the delay is the server's Retry-After when
 * it sent one, else the jittered exponential backoff. */
static bool maybe_retry(df_http_pool *p, req *r)
{
    if (r->retries_used >= r->max_retries)
        return false;
    r->retries_used++;
    double delay = df_http_backoff(p->o.backoff_base_s, p->o.backoff_max_s,
                                   r->retries_used, rng_unit(p));
    char v[256];
    double ra;
    if (r->status && find_header(r->hdr_buf.p ? r->hdr_buf.p : "", "Retry-After", v, sizeof v) &&
        df_http_parse_retry_after(v, time(NULL), &ra)) {
        delay = ra < p->o.retry_after_max_s ? ra : p->o.retry_after_max_s;
        if (p->o.hold_on_retry_after && df_now() + delay > p->hold_until)
            p->hold_until = df_now() + delay;
    }
    schedule_retry(p, r, delay);
    return true;
}

static void finish(df_http_pool *p, req *r, CURLcode rc)
{
    if (rc == CURLE_OK && !r->began)    /* empty body: the checks still apply */
        begin_body(r);
    if (!r->status)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    easy_release(p, r);
    char msg[512];
    if (r->abort_err != DF_OK) {
        df_status err = r->abort_err;
        snprintf(msg, sizeof msg, "%s", r->abort_msg);
        if (r->abort_restart) {      /* unusable 206: start over from byte 0 */
            if (!sink_restart(r)) {
                done(p, r, r->abort_err, r->abort_msg);
                return;
            }
            if (maybe_retry(p, r))
                return;
        }
        done(p, r, err, msg);
        return;
    }
    if (rc != CURLE_OK) {
        snprintf(msg, sizeof msg, "%s%s", rc == CURLE_OPERATION_TIMEDOUT ? "timeout: " : "",
                 r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
        if (!retryable_curl(rc) || !maybe_retry(p, r))
            done(p, r, DF_ERR_NET, msg);
        return;
    }
    if (r->status >= 200 && r->status < 300) {
        done(p, r, DF_OK, "");
        return;
    }
    /* The server refused our Range: start once more from byte 0. */
    if (r->status == 416 && r->offset > 0 && !r->range_restart_used && r->write) {
        r->range_restart_used = true;
        if (sink_restart(r)) {
            schedule_retry(p, r, 0);
            return;
        }
        done(p, r, r->abort_err, r->abort_msg);
        return;
    }
    snprintf(msg, sizeof msg, "HTTP %ld", r->status);
    if (!retryable_status(r->status) || !maybe_retry(p, r))
        done(p, r, DF_ERR_NET, msg);
}

static void harvest(df_http_pool *p)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(p->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        req *r;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        finish(p, r, m->data.result);
    }
}

size_t df_http_pool_perform(df_http_pool *p, double max_wait_s)
{
    int running;
    start_ready(p);
    curl_multi_perform(p->multi, &running);
    harvest(p);
    start_ready(p);
    if (!df_http_pool_pending(p))
        return 0;
    double wait = max_wait_s;
    double ns = next_start_in(p);
    if (ns >= 0 && ns < wait)
        wait = ns;
    long ct = -1;
    curl_multi_timeout(p->multi, &ct);
    if (ct >= 0 && ct / 1000.0 < wait)
        wait = ct / 1000.0;
    if (wait > 0)
        curl_multi_poll(p->multi, NULL, 0, (int)(wait * 1000 + 0.999), NULL);
    curl_multi_perform(p->multi, &running);
    harvest(p);
    return df_http_pool_pending(p);
}

df_status df_http_pool_run(df_http_pool *p, volatile int *stop)
{
    while (df_http_pool_pending(p)) {
        if (stop && *stop)
            return DF_ERR_INTERRUPTED;
        df_http_pool_perform(p, 1.0);
    }
    return DF_OK;
}
