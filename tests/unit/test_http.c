/* test_http.c - lib/io/http pieces that stand alone: Retry-After parsing (delta
 * seconds and the three HTTP-date forms), backoff bounds, the rate limiter's
 * window guarantee, URL redaction; and the pool itself against a one-thread
 * canned-response server on 127.0.0.1 (retries counted, Retry-After and a
 * POST body seen by the server, error status after the retry budget, a
 * streamed body resumed with Range, restarted on a 200, cut by max_bytes).
 * The whole pool under faults is tested by tests/tools/test-df-fetch.sh. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "unit.h"

/* RFC 9110's example date, 1994-11-06 08:49:37 UTC. */
#define EXAMPLE_T 784111777

static void test_retry_after(void)
{
    double d = -1;
    CHECK(df_http_parse_retry_after("120", 0, &d) && d == 120);
    CHECK(df_http_parse_retry_after("  7 ", 0, &d) && d == 7);
    CHECK(df_http_parse_retry_after("0", 0, &d) && d == 0);
    CHECK(df_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE_T - 30, &d) && d == 30);
    CHECK(df_http_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", EXAMPLE_T - 5, &d) && d == 5);
    CHECK(df_http_parse_retry_after("Sun Nov  6 08:49:37 1994", EXAMPLE_T - 2, &d) && d == 2);
    /* a date in the past means "now" */
    CHECK(df_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE_T + 100, &d) && d == 0);
    CHECK(!df_http_parse_retry_after("", 0, &d));
    CHECK(!df_http_parse_retry_after("-5", 0, &d));
    CHECK(!df_http_parse_retry_after("12abc", 0, &d));
    CHECK(!df_http_parse_retry_after("soon", 0, &d));
    CHECK(!df_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT junk", 0, &d));
    CHECK(!df_http_parse_retry_after(NULL, 0, &d));
}

static void test_backoff(void)
{
    CHECK_NEAR(df_http_backoff(1, 60, 1, 0), 0.5, 1e-12);
    CHECK_NEAR(df_http_backoff(1, 60, 3, 0.5), 3.0, 1e-12);       /* d = 4 */
    CHECK_NEAR(df_http_backoff(0.25, 60, 2, 0), 0.25, 1e-12);     /* d = 0.5 */
    CHECK_NEAR(df_http_backoff(1, 60, 40, 0), 30, 1e-12);         /* capped d = 60 */
    /* every draw stays in [d/2, d] for the doubling, capped d */
    unsigned s = 12345;
    for (int retry = 1; retry <= 12; retry++) {
        double d = 1;
        for (int i = 1; i < retry; i++)
            d *= 2;
        if (d > 100)
            d = 100;
        for (int k = 0; k < 200; k++) {
            s = s * 1103515245u + 12345u;
            double u = (s >> 8) / 16777216.0;
            double b = df_http_backoff(1, 100, retry, u);
            CHECK_MSG(b >= d / 2 && b <= d, "retry %d u %g -> %g (d %g)", retry, u, b, d);
        }
    }
}

/* A greedy client that starts whenever allowed, at 1 ms steps over 20 s:
 * no window of W seconds may hold more than floor(W*rpm/60)+1 starts, and
 * the limiter must not starve it either. */
static void test_ratelimit(void)
{
    const double rpm = 150;              /* interval 0.4 s */
    df_http_ratelimit rl;
    df_http_ratelimit_init(&rl, rpm);
    double starts[200];
    int n = 0;
    for (int step = 0; step <= 20000 && n < 200; step++) {
        double now = 1000 + step * 0.001;
        if (df_http_ratelimit_wait(&rl, now) == 0) {
            df_http_ratelimit_take(&rl, now);
            starts[n++] = now;
        }
    }
    CHECK_MSG(n == 51, "%d starts in 20 s at 150 rpm", n);   /* 0, 0.4, ..., 20.0 */
    const double windows[] = {0.39, 1, 5, 10, 19.99};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        int maxc = 0;
        for (int i = 0; i < n; i++) {
            int c = 0;
            for (int j = i; j < n && starts[j] <= starts[i] + windows[w] + 1e-9; j++)
                c++;
            if (c > maxc)
                maxc = c;
        }
        int bound = (int)(windows[w] * rpm / 60 + 1e-9) + 1;
        CHECK_MSG(maxc <= bound, "window %g s: %d starts > %d", windows[w], maxc, bound);
    }
    df_http_ratelimit_init(&rl, 0);
    CHECK(df_http_ratelimit_wait(&rl, 5) == 0);
    df_http_ratelimit_take(&rl, 5);
    CHECK(df_http_ratelimit_wait(&rl, 5) == 0);
}

static void test_redact(void)
{
    char out[128];
    df_http_redact_url("https://user:pw@host.example/a/b?token=secret#x", out, sizeof out);
    CHECK(strcmp(out, "https://host.example/a/b") == 0);
    df_http_redact_url("http://h:8080/p", out, sizeof out);
    CHECK(strcmp(out, "http://h:8080/p") == 0);
    df_http_redact_url("http://h/p?q", out, 8);
    CHECK(strcmp(out, "http://") == 0);
}

/* ---- pool against a canned server --------------------------------------- */

/* Answers connection k with responses[k] (one request per connection, then
 * close), and keeps the first bytes of each request it read. */
typedef struct {
    int lfd, port, n;
    const char *const *responses;
    char seen[8][2048];
} canned;

static void *canned_main(void *arg)
{
    canned *c = arg;
    for (int k = 0; k < c->n; k++) {
        int fd = accept(c->lfd, NULL, NULL);
        if (fd < 0)
            break;
        size_t got = 0;
        /* read headers and, if any, a body, until the client has sent it all */
        for (;;) {
            ssize_t m = read(fd, c->seen[k] + got, sizeof c->seen[k] - 1 - got);
            if (m <= 0)
                break;
            got += (size_t)m;
            c->seen[k][got] = 0;
            char *eoh = strstr(c->seen[k], "\r\n\r\n");
            if (!eoh)
                continue;
            char *cl = strstr(c->seen[k], "Content-Length: ");
            size_t want = cl ? (size_t)strtoul(cl + 16, NULL, 10) : 0;
            if (got >= (size_t)(eoh + 4 - c->seen[k]) + want || got >= sizeof c->seen[k] - 1)
                break;
        }
        ssize_t w = send(fd, c->responses[k], strlen(c->responses[k]), MSG_NOSIGNAL);
        (void)w;
        close(fd);
    }
    return NULL;
}

static bool canned_start(canned *c, pthread_t *th)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->lfd < 0 || bind(c->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(c->lfd, 8) != 0 || getsockname(c->lfd, (struct sockaddr *)&a, &al) != 0)
        return false;
    c->port = ntohs(a.sin_port);
    return pthread_create(th, NULL, canned_main, c) == 0;
}

typedef struct {
    int calls;
    df_status err;
    long status;
    int attempts;
    char body[256], error[256], hdr[64];
} outcome;

static void on_done(const df_http_result *r)
{
    outcome *o = r->user;
    o->calls++;
    o->err = r->err;
    o->status = r->status;
    o->attempts = r->attempts;
    snprintf(o->body, sizeof o->body, "%s", r->body);
    snprintf(o->error, sizeof o->error, "%s", r->error);
    const char *h = df_http_result_header(r, "X-Answer");
    snprintf(o->hdr, sizeof o->hdr, "%s", h ? h : "");
}

static df_http_pool *test_pool(int retries)
{
    df_http_options o;
    df_http_options_default(&o);
    o.max_retries = retries;
    o.backoff_base_s = 0.01;
    o.backoff_max_s = 0.02;
    o.stall_timeout_s = 5;
    static const char *const hdrs[] = {"Authorization: Bearer sekrit", NULL};
    o.headers = hdrs;
    return df_http_pool_new(&o);
}

static void test_pool_retries(void)
{
    static const char *const resp[] = {
        "HTTP/1.1 503 Busy\r\nRetry-After: 0\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        "HTTP/1.1 429 Slow\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Answer:  42 \r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    };
    canned c = {.n = 3, .responses = resp};
    pthread_t th;
    CHECK(canned_start(&c, &th));
    df_http_pool *p = test_pool(2);
    CHECK(p != NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x?k=v", c.port);
    outcome o = {0};
    const char *const hdrs[] = {"Content-Type: application/json", NULL};
    df_http_request rq = {.url = url, .headers = hdrs, .body = "{\"a\":1}", .body_len = 7,
                          .user = &o, .done = on_done};
    CHECK(df_http_submit(p, &rq) == DF_OK);
    CHECK(df_http_pool_run(p, NULL) == DF_OK);
    pthread_join(th, NULL);
    close(c.lfd);
    df_http_pool_free(p);
    CHECK(o.calls == 1 && o.err == DF_OK && o.status == 200 && o.attempts == 3);
    CHECK(strcmp(o.body, "hello") == 0);
    CHECK(strcmp(o.hdr, "42") == 0);
    for (int k = 0; k < 3; k++) {
        CHECK_MSG(strncmp(c.seen[k], "POST /x?k=v HTTP/1.1\r\n", 22) == 0, "%.40s", c.seen[k]);
        CHECK(strstr(c.seen[k], "\r\nAuthorization: Bearer sekrit\r\n") != NULL);
        CHECK(strstr(c.seen[k], "\r\n\r\n{\"a\":1}") != NULL);
    }
}

static void test_pool_gives_up(void)
{
    static const char *const resp[] = {
        "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
        "HTTP/1.1 502 Oops\r\nContent-Length: 7\r\nConnection: close\r\n\r\nbad gw!",
    };
    canned c = {.n = 2, .responses = resp};
    pthread_t th;
    CHECK(canned_start(&c, &th));
    df_http_pool *p = test_pool(1);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/y", c.port);
    outcome o = {0};
    df_http_request rq = {.url = url, .user = &o, .done = on_done};
    CHECK(df_http_submit(p, &rq) == DF_OK);
    CHECK(df_http_pool_run(p, NULL) == DF_OK);
    pthread_join(th, NULL);
    close(c.lfd);
    df_http_pool_free(p);
    CHECK(o.calls == 1 && o.err == DF_ERR_NET && o.status == 502 && o.attempts == 2);
    CHECK(strcmp(o.error, "HTTP 502") == 0);
    CHECK(strcmp(o.body, "bad gw!") == 0);
    CHECK(strstr(o.error, "sekrit") == NULL);
    /* a bad scheme is refused at submit */
    df_http_pool *q = test_pool(0);
    df_http_request bad = {.url = "file:///etc/passwd", .user = &o, .done = on_done};
    CHECK(df_http_submit(q, &bad) == DF_ERR_ARG);
    df_http_pool_free(q);
}

/* A streamed sink that records what it was given, and the outcome. */
typedef struct {
    char data[256];
    size_t len;
    int rewinds;
    df_status err;
    int attempts;
    uint64_t offset;
    int64_t total;
    char error[256];
} sink;

static bool sink_write(void *user, const void *d, size_t n)
{
    sink *k = user;
    if (k->len + n > sizeof k->data)
        return false;
    memcpy(k->data + k->len, d, n);
    k->len += n;
    return true;
}

static bool sink_rewind(void *user, uint64_t at)
{
    sink *k = user;
    k->rewinds++;
    k->len = (size_t)at;
    return true;
}

static void on_sink_done(const df_http_result *r)
{
    sink *k = r->user;
    k->err = r->err;
    k->attempts = r->attempts;
    k->offset = r->offset;
    k->total = r->total_size;
    snprintf(k->error, sizeof k->error, "%s", r->error);
}

/* Resume from offset 4: a 206 continues the sink, a 200 rewinds it, and a
 * size over max_bytes stops at once without a retry. */
static void test_pool_stream(void)
{
    static const char *const resp[] = {
        "HTTP/1.1 206 Partial\r\nContent-Range: bytes 4-9/10\r\nContent-Length: 6\r\n"
        "Connection: close\r\n\r\n456789",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabcdefghij",
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    };
    canned c = {.n = 3, .responses = resp};
    pthread_t th;
    CHECK(canned_start(&c, &th));
    df_http_options o;
    df_http_options_default(&o);
    o.max_in_flight = 1;          /* one connection at a time, in order */
    o.backoff_base_s = 0.01;
    df_http_pool *p = df_http_pool_new(&o);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/f", c.port);
    sink k[3] = {{.len = 4}, {.len = 4}, {.len = 0}};
    memcpy(k[0].data, "0123", 4);
    memcpy(k[1].data, "0123", 4);
    for (int i = 0; i < 3; i++) {
        df_http_request rq = {.url = url, .write = sink_write, .rewind = sink_rewind,
                              .resume_from = k[i].len, .max_bytes = i == 2 ? 50 : 0,
                              .user = &k[i], .done = on_sink_done};
        CHECK(df_http_submit(p, &rq) == DF_OK);
    }
    CHECK(df_http_pool_run(p, NULL) == DF_OK);
    pthread_join(th, NULL);
    close(c.lfd);
    df_http_pool_free(p);
    CHECK(strstr(c.seen[0], "\r\nRange: bytes=4-\r\n") != NULL);
    CHECK(strstr(c.seen[1], "\r\nRange: bytes=4-\r\n") != NULL);
    CHECK(strstr(c.seen[2], "Range:") == NULL);
    CHECK(k[0].err == DF_OK && k[0].len == 10 && memcmp(k[0].data, "0123456789", 10) == 0);
    CHECK(k[0].rewinds == 0 && k[0].offset == 10 && k[0].total == 10);
    CHECK(k[1].err == DF_OK && k[1].len == 10 && memcmp(k[1].data, "abcdefghij", 10) == 0);
    CHECK(k[1].rewinds == 1 && k[1].offset == 10 && k[1].total == 10);
    CHECK(k[2].err == DF_ERR_RANGE && k[2].attempts == 1 && k[2].len == 0);
    CHECK_MSG(strstr(k[2].error, "too large") != NULL, "%s", k[2].error);
}

int main(void)
{
    test_retry_after();
    test_backoff();
    test_ratelimit();
    test_redact();
    test_pool_retries();
    test_pool_gives_up();
    test_pool_stream();
    UNIT_END();
}
