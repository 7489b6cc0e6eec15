/* fuzz_http.c - the response handling of lib/io/http.c that is ours rather
 * than libcurl's. libcurl parses the status line, header framing and
 * chunked transfer coding before any of our code sees a byte; what the
 * server controls from there on is fed here without a socket:
 *  - the header callback (on_header), given the input's header block line
 *    by line as libcurl delivers it (an "HTTP/" line starts a new response),
 *    then df_http_result_header lookups on the accumulated block;
 *  - Retry-After values (df_http_parse_retry_after, as maybe_retry uses it)
 *    and Content-Range values (parse_content_range, as begin_stream does);
 *  - the body callback (on_write) past begin_body: a 2xx body buffered
 *    under max_body or streamed under max_bytes, or an error page kept up
 *    to ERR_BODY_MAX; the body arrives in chunks whose sizes the input sets.
 * Input: byte 0 = mode bits, then the header block, "\n\n", then the body.
 * The static parsers are reached by including lib/io/http.c (fuzz.mk links
 * this harness without http.o). */
#include "../../lib/io/http.c"

#include "fuzz_util.h"

static size_t sunk;

static bool sink(void *user, const void *data, size_t n)
{
    sunk += n;
    return (n & 0xff) != 0x7f;   /* sometimes refuse, as a full disk would */
}

static void headers(req *r, const char *h, size_t n)
{
    /* libcurl hands over one header line per call, CRLF included */
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && h[j] != '\n')
            j++;
        if (j < n)
            j++;
        if (on_header((char *)h + i, 1, j - i, r) != j - i)
            break;
        i = j;
    }
    df_http_result res = {.headers_priv_ = r->hdr_buf.p};
    static const char *names[] = {"Retry-After", "Content-Range", "Content-Type",
                                  "Content-Length", "Location", "X"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        const char *v = df_http_result_header(&res, names[k]);
        char vb[256];
        if (!find_header(r->hdr_buf.p ? r->hdr_buf.p : "", names[k], vb, sizeof vb))
            vb[0] = 0;
        if (!v)
            continue;
        double d;
        if (df_http_parse_retry_after(v, 784111777, &d) && !(d >= 0))
            abort();
        uint64_t start;
        int64_t total;
        if (parse_content_range(vb, &start, &total) && total != -1 && (uint64_t)total <= start)
            abort();
    }
}

static void body(req *r, uint8_t mode, const uint8_t *b, size_t n)
{
    r->began = true;    /* begin_body asks the curl handle; set its outcome */
    r->ok2xx = mode & 1;
    r->status = r->ok2xx ? 200 : 503;
    r->max_body = (mode & 2) ? 64 : 64u << 20;
    if (mode & 4) {
        r->write = sink;
        r->max_bytes = (mode & 8) ? 100 : 0;
    }
    for (size_t i = 0; i < n;) {
        size_t c = 1 + (b[i] % 37);
        if (c > n - i)
            c = n - i;
        size_t got = on_write((char *)b + i, 1, c, r);
        if (got != c)
            break;
        i += c;
    }
    if (!r->ok2xx && r->body_buf.len > ERR_BODY_MAX)
        abort();
    if (r->ok2xx && !r->write && r->body_buf.len > r->max_body)
        abort();
    if (r->write && r->max_bytes && r->offset > r->max_bytes)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    const char *h = (const char *)data + 1;
    size_t n = size - 1, hl = n;
    const char *sep = memmem(h, n, "\n\n", 2);
    if (sep)
        hl = (size_t)(sep - h) + 1;
    req r;
    memset(&r, 0, sizeof r);
    headers(&r, h, hl);
    if (sep)
        body(&r, mode, (const uint8_t *)sep + 2, n - hl - 1);
    /* the value as one string, as maybe_retry gets it */
    char *v = fuzz_strdup((const uint8_t *)h, hl);
    double d;
    (void)df_http_parse_retry_after(v, 0, &d);
    (void)df_http_parse_retry_after(v, (time_t)1 << 40, &d);
    char red[128];
    df_http_redact_url(v, red, sizeof red);
    df_http_redact_url(v, red, 1);
    free(v);
    buf_free(&r.body_buf);
    buf_free(&r.hdr_buf);
    return 0;
}
