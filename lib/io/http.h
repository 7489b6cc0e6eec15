/* http.h - HTTP client pool on libcurl's multi interface: N requests in
 * flight over reused connections, bounded redirects, connect/stall/total
 * timeouts, retries with exponential backoff and jitter on 429, 5xx and
 * transport errors (honoring Retry-After in seconds or as an HTTP date),
 * a client-side rate limit (requests per minute), streamed or buffered
 * response bodies, and Range resume of a streamed body.
 *
 * One thread drives a pool: submit requests, then call df_http_pool_run()
 * (or df_http_pool_perform() in your own loop); each request ends with one
 * call of its done callback, from inside run/perform, in that thread.
 *
 * Secrets: header values (Authorization, API keys, anything given as a
 * header) are never written to any log or error text by this module, and
 * error texts never contain a URL's query string or user info. On a
 * redirect to another host libcurl drops Authorization and Cookie headers;
 * other headers are sent on, so secrets belong in Authorization.
 * Proxies and CA bundles come from the environment as libcurl reads them
 * (http_proxy, https_proxy, no_proxy, CURL_CA_BUNDLE, SSL_CERT_FILE...).
 *
 * Tested by tests/unit/test_http.c (Retry-After parsing, backoff bounds,
 * rate limiter math, and a pool against tests/servers/file_server.py) and
 * through tests/tools/test-df-fetch.sh. */
#ifndef DF_HTTP_H
#define DF_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "status.h"

/* ---- pool options ---------------------------------------------------- */

typedef struct {
    int max_in_flight;          /* transfers running at once (default 8) */
    double connect_timeout_s;   /* TCP+TLS connect (default 30) */
    double stall_timeout_s;     /* abort an attempt when under 1 byte/s arrives
                                   for this long (default 60; 0 = never);
                                   1 s granularity (libcurl's low-speed check) */
    double total_timeout_s;     /* whole attempt, 0 = no limit (default 0) */
    int max_redirects;          /* default 10; 0 = do not follow */
    int max_retries;            /* retries after the first attempt (default 3) */
    double backoff_base_s;      /* first retry waits ~base (default 1) */
    double backoff_max_s;       /* cap of the exponential backoff (default 60) */
    double retry_after_max_s;   /* a longer Retry-After is clamped to this (default 300) */
    bool hold_on_retry_after;   /* a Retry-After also holds back every new
                                   start of the pool until then (default true) */
    double rpm;                 /* attempts started per minute, 0 = no limit */
    const char *user_agent;     /* default "diffyface/1" */
    const char *const *headers; /* NULL-terminated "Name: value" lines added to
                                   every request (copied at pool creation) */
} df_http_options;

/* Fill *o with the defaults above. */
void df_http_options_default(df_http_options *o);

/* ---- requests ---------------------------------------------------------- */

typedef struct df_http_pool df_http_pool;

/* The outcome of a request, valid only during the done callback. */
typedef struct {
    void *user;              /* the request's user pointer */
    df_status err;           /* DF_OK: a 2xx response was fully received.
                                DF_ERR_NET: HTTP error status or transport
                                failure after all retries; DF_ERR_RANGE: body
                                over max_body/max_bytes; DF_ERR_IO: the sink
                                refused data; DF_ERR_INTERRUPTED: aborted by
                                df_http_pool_abort() */
    long status;             /* HTTP status of the last attempt, 0 if none */
    const char *error;       /* one line, "" when err == DF_OK; no secrets */
    const char *body;        /* buffered body, NUL-terminated (never NULL):
                                the whole 2xx body when no sink was given,
                                else up to 64 KiB of an error response */
    size_t body_len;
    int attempts;            /* attempts made (1 + retries used) */
    uint64_t offset;         /* streamed: bytes the sink holds at the end
                                (resume offset + bytes received) */
    int64_t total_size;      /* full size announced by the server (Content-
                                Length, or Content-Range total), -1 unknown */
    double elapsed_s;        /* from submit to completion */
    void *headers_priv_;     /* internal: see df_http_result_header() */
} df_http_result;

/* A response header of the last attempt (case-insensitive name), value
 * trimmed, or NULL. Valid during the done callback only. */
const char *df_http_result_header(const df_http_result *r, const char *name);

typedef void (*df_http_done_fn)(const df_http_result *r);

/* Streaming sink for a 2xx body. write gets each chunk in order; return
 * false to abort the request (it ends with DF_ERR_IO and your df_fail text,
 * or DF_ERR_RANGE if you returned false after df_fail(DF_ERR_RANGE...)).
 * rewind is called before the first chunk of an attempt when the response
 * does not continue at the sink's current offset (a 200 answer to a Range
 * request, or a restart): the sink must drop everything past `at` (always 0
 * today: truncate the file, reset its hash). Return false to abort. */
typedef bool (*df_http_write_fn)(void *user, const void *data, size_t n);
typedef bool (*df_http_rewind_fn)(void *user, uint64_t at);

typedef struct {
    const char *method;         /* NULL: GET, or POST when body is set */
    const char *url;            /* http:// or https:// only */
    const char *const *headers; /* NULL-terminated "Name: value" (copied) */
    const void *body;           /* request body (copied), may be NULL */
    size_t body_len;
    size_t max_body;            /* buffered body cap (default 0 = 64 MiB) */
    /* Streamed body (df-fetch): when write is set, 2xx bodies go to it. */
    df_http_write_fn write;
    df_http_rewind_fn rewind;
    uint64_t resume_from;       /* the sink already holds this many bytes:
                                   ask for the rest with Range (also used on
                                   retries after a partial attempt) */
    uint64_t max_bytes;         /* streamed size cap incl. resume, 0 = none */
    int max_attempts;           /* 0: 1 + the pool's max_retries; n > 0: at
                                   most n attempts (a caller that resends on
                                   its own keeps one budget across sends) */
    void *user;                 /* passed back in df_http_result.user */
    df_http_done_fn done;       /* required */
} df_http_request;

/* ---- pool -------------------------------------------------------------- */

/* Create a pool (o NULL: defaults). NULL with df_fail detail on failure. */
df_http_pool *df_http_pool_new(const df_http_options *o);
/* Abort anything pending (done callbacks run with DF_ERR_INTERRUPTED), free. */
void df_http_pool_free(df_http_pool *p);

/* Queue a request; everything in *req is copied. DF_ERR_ARG for a missing
 * url/done or a scheme other than http(s). Safe to call from a done
 * callback. */
df_status df_http_submit(df_http_pool *p, const df_http_request *req);

/* Requests queued, waiting for a retry, or in flight. */
size_t df_http_pool_pending(const df_http_pool *p);

/* One turn of the event loop: start what may start, move data, wait at
 * most max_wait_s for activity, run done callbacks of finished requests.
 * Returns the number still pending. */
size_t df_http_pool_perform(df_http_pool *p, double max_wait_s);

/* Loop until nothing is pending or *stop becomes non-zero (stop may be
 * NULL; a signal handler sets it). DF_ERR_INTERRUPTED when stopped; the
 * pending requests stay pending (call df_http_pool_abort to end them). */
df_status df_http_pool_run(df_http_pool *p, volatile int *stop);

/* End every pending request now: done callbacks with DF_ERR_INTERRUPTED. */
void df_http_pool_abort(df_http_pool *p);

/* Wake a pool that is waiting in perform/run (async-signal-safe), so that a
 * stop flag set by a signal handler is seen promptly. */
void df_http_pool_wakeup(df_http_pool *p);

/* ---- pieces, public for tests ----------------------------------------- */

/* Parse a Retry-After value: delta-seconds ("120") or an HTTP-date (IMF
 * fixdate "Sun, 06 Nov 1994 08:49:37 GMT", plus the obsolete RFC 850 and
 * asctime forms). *delay_s = seconds from now (>= 0; a past date gives 0).
 * false when the value is neither. */
bool df_http_parse_retry_after(const char *value, time_t now, double *delay_s);

/* Backoff before retry number `retry` (1-based): d = min(max, base*2^(retry-1)),
 * then "equal jitter": d/2 + u*d/2 with u in [0,1). Result in [d/2, d]. */
double df_http_backoff(double base_s, double max_s, int retry, double u);

/* Client-side rate limit: starts spaced at least 60/rpm seconds apart, so
 * that any window of W seconds holds at most floor(W*rpm/60) + 1 starts. */
typedef struct {
    double interval_s;   /* 60/rpm, 0 = unlimited */
    double next_s;       /* earliest time (df_now clock) of the next start */
} df_http_ratelimit;

void df_http_ratelimit_init(df_http_ratelimit *rl, double rpm);
/* Seconds to wait before a start at time now (0: may start now). */
double df_http_ratelimit_wait(const df_http_ratelimit *rl, double now);
/* Record a start at time now (call only when wait() returned 0). */
void df_http_ratelimit_take(df_http_ratelimit *rl, double now);

/* Copy url into out (size n) without user info and query string, for
 * messages: "https://host/path?token=x" -> "https://host/path". */
void df_http_redact_url(const char *url, char *out, size_t n);

#endif
