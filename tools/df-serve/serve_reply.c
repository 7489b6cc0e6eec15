/* serve_reply.c - the answers handlers build: JSON bodies, the page's and
 * A1111's one-line {"error": "..."} and OpenAI's {"error": {"message",
 * "type", "param", "code"}}, each error also kept for the request's record.
 * No HTTP here, so that tests/fuzz/fuzz_serve.c can run the handlers.
 * Tested by tests/tools/test-df-serve-limits.sh. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen_params.h"
#include "jsonl.h"
#include "serve.h"

void reply_json(serve_reply *r, int status, json_t *v)
{
    r->status = status;
    r->ctype = "application/json";
    free(r->body);
    r->body = v ? df_rec_dumps(v) : NULL;
    r->len = r->body ? strlen(r->body) : 0;
    json_decref(v);
    if (!r->body && status < 500) {   /* out of memory while dumping */
        r->status = 500;
        r->body = strdup("{\"error\":\"out of memory\"}");
        r->len = r->body ? strlen(r->body) : 0;
    }
}

static char *vfmt(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    return s;
}

void reply_error(serve_reply *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vfmt(fmt, ap);
    va_end(ap);
    json_t *o = json_object();
    df_rec_set_str(o, "error", msg ? msg : "error");
    free(r->error);
    r->error = msg;
    reply_json(r, status, o);
}

void reply_openai_error(serve_reply *r, int status, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vfmt(fmt, ap);
    va_end(ap);
    json_t *e = json_object();
    df_rec_set_str(e, "message", msg ? msg : "error");
    df_rec_set_str(e, "type", status >= 500 ? "server_error" : "invalid_request_error");
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    free(r->error);
    r->error = msg;
    reply_json(r, status, o);
}
