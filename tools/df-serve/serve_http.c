/* serve_http.c - HTTP on libmicrohttpd: a thread per connection (a request
 * for an image waits in its handler until the job is done, and watches its
 * socket meanwhile, so that a client that leaves cancels only its own job),
 * the body limit (413, from Content-Length before reading, or as a chunked
 * body grows), the API key (401 before any body is read; compared in
 * constant time, never logged), routing to the three APIs, and one JSONL
 * record per request on stdout when the request is over. Tested by
 * tests/tools/test-df-serve.sh and test-df-serve-limits.sh. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gen_params.h"
#include "jsonl.h"
#include "log.h"
#include "serve.h"

static struct MHD_Daemon *daemon_;

typedef struct {
    double t0;
    char method[16];
    char *url;
    char *body;
    size_t len;
    bool too_big, denied, answered;
    serve_reply reply;
} req_ctx;

/* Equal keys in constant time: both hashed first, so that neither the
 * length nor the first differing byte shows in the timing. */
static bool key_ok(struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    h += 7;
    unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
    unsigned la = 0, lb = 0;
    if (!EVP_Digest(h, strlen(h), a, &la, EVP_sha256(), NULL) ||
        !EVP_Digest(g_cfg.api_key, strlen(g_cfg.api_key), b, &lb, EVP_sha256(), NULL) ||
        la != lb)
        return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, req_ctx *q)
{
    serve_reply *r = &q->reply;
    if (!r->body) {
        r->body = strdup("");
        r->len = 0;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(r->len, r->body, free);
    if (!resp)
        return MHD_NO;
    r->body = NULL;                /* the response owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->ctype ? r->ctype : "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (r->retry_after > 0) {
        char s[16];
        snprintf(s, sizeof s, "%d", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, s);
    }
    if (r->status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    q->answered = true;
    return rc;
}

static void dispatch(struct MHD_Connection *c, req_ctx *q)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    serve_request rq = {.method = q->method, .url = q->url, .body = q->body ? q->body : "",
                        .body_len = q->len, .conn_fd = ci ? ci->connect_fd : -1,
                        .host = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                            MHD_HTTP_HEADER_HOST)};
    serve_reply *r = &q->reply;
    if (page_route(&rq, r) || openai_route(&rq, r) || a1111_route(&rq, r))
        return;
    reply_error(r, 404, "no such endpoint: %s %s", q->method, q->url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    req_ctx *q = *con_cls;
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q)
            return MHD_NO;
        *con_cls = q;
        q->t0 = df_now();
        snprintf(q->method, sizeof q->method, "%s", method);
        /* A URL is logged: keep it short. */
        q->url = strndup(url, 256);
        if (!q->url)
            return MHD_NO;         /* out of memory: MHD drops the connection */
        /* The page itself holds nothing secret, and must load to ask for
         * the key; everything else needs it. */
        bool page = !strcmp(method, "GET") && (!strcmp(url, "/") || !strcmp(url, "/index.html"));
        if (g_cfg.api_key && !page && !key_ok(c)) {
            q->denied = true;
            reply_error(&q->reply, 401, "a valid 'Authorization: Bearer KEY' header is required");
            return send_reply(c, q);
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > g_cfg.max_body) {
            q->too_big = true;
            reply_error(&q->reply, 413, "request body over this server's --max-body %zu bytes",
                        g_cfg.max_body);
            return send_reply(c, q);
        }
        return MHD_YES;
    }
    if (q->answered) {             /* answered early: the rest of the body is dropped */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (q->too_big)
            return MHD_YES;
        if (q->len + n > g_cfg.max_body) {
            q->too_big = true;
            free(q->body);
            q->body = NULL;
            return MHD_YES;
        }
        char *grown = realloc(q->body, q->len + n + 1);
        if (!grown)
            return MHD_NO;
        memcpy(grown + q->len, upload_data, n);
        q->len += n;
        grown[q->len] = 0;
        q->body = grown;
        return MHD_YES;
    }
    if (q->too_big)
        reply_error(&q->reply, 413, "request body over this server's --max-body %zu bytes",
                    g_cfg.max_body);
    else
        dispatch(c, q);
    return send_reply(c, q);
}

/* One record per request, when it is over (sent, or the client gone). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    req_ctx *q = *con_cls;
    if (!q)
        return;
    *con_cls = NULL;
    serve_reply *r = &q->reply;
    char when[40], endpoint[300];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + k, sizeof when - k, ".%03ldZ", ts.tv_nsec / 1000000);
    snprintf(endpoint, sizeof endpoint, "%s %s", q->method, q->url ? q->url : "");
    json_t *rec = json_object();
    df_rec_set_str(rec, "time", when);
    df_rec_set_str(rec, "endpoint", endpoint);
    df_rec_set_int(rec, "status", r->status ? r->status : 500);
    df_rec_set_num(rec, "seconds", (double)(long long)((df_now() - q->t0) * 1e4 + 0.5) / 1e4);
    if (r->pipeline_seconds > 0)
        df_rec_set_num(rec, "pipeline_seconds",
                       (double)(long long)(r->pipeline_seconds * 1e4 + 0.5) / 1e4);
    if (r->has_stages) {
        static const char *const names[] = {"text_encoder", "unet", "vae"};
        json_t *st = json_object();
        for (int k = 0; k < 3; k++)
            df_rec_set_num(st, names[k], (double)(long long)(r->stage_seconds[k] * 1e4 + 0.5) / 1e4);
        json_object_set_new(rec, "stage_seconds", st);
    }
    if (r->has_seed)
        df_rec_set_int(rec, "seed", r->seed);
    if (r->images)
        df_rec_set_int(rec, "images", r->images);
    if (r->error)
        df_rec_set_str(rec, "error", r->error);
    else if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        df_rec_set_str(rec, "error", "the connection closed before the answer was sent");
    if (df_rec_write_line(1, rec) != DF_OK)
        df_warn("stdout: %s", df_last_error());
    json_decref(rec);
    free(r->body);
    free(r->error);
    free(q->body);
    free(q->url);
    free(q);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    if (s) {
        size_t n = strlen(s);
        while (n && s[n - 1] == '\n')
            s[--n] = 0;
        df_warn("http: %s", s);
    }
    free(s);
}

/* "HOST:PORT", HOST an IPv4 address or "localhost". */
static df_status parse_listen(const char *s, struct sockaddr_in *sa)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return df_fail(DF_ERR_ARG, "--listen %s: want HOST:PORT", s);
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - s), s);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return df_fail(DF_ERR_ARG, "--listen %s: bad port", s);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return df_fail(DF_ERR_ARG, "--listen %s: '%s' is not an IPv4 address", s, host);
    return DF_OK;
}

df_status http_start(void)
{
    struct sockaddr_in sa;
    df_status st = parse_listen(g_cfg.listen, &sa);
    if (st != DF_OK)
        return st;
    daemon_ = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
            MHD_USE_ITC | MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,   /* first, or MHD logs some itself */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(g_cfg.queue_max + 64),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
        MHD_OPTION_END);
    if (!daemon_)
        return df_fail(DF_ERR_IO, "cannot listen on %s: %s", g_cfg.listen,
                       errno ? strerror(errno) : "libmicrohttpd failed to start");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    /* Tests and scripts read the port from here when --listen asked for 0. */
    fprintf(stderr, "%s: listening on http://%s:%u/\n", df_progname(), ip,
            di ? di->port : ntohs(sa.sin_port));
    return DF_OK;
}

void http_quiesce(void)
{
    if (daemon_) {
        MHD_socket s = MHD_quiesce_daemon(daemon_);
        if (s != MHD_INVALID_SOCKET)
            close(s);
    }
}

void http_stop(void)
{
    if (daemon_)
        MHD_stop_daemon(daemon_);
    daemon_ = NULL;
}
