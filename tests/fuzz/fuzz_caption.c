/* fuzz_caption.c - the OpenAI-compatible response parsing of df-caption.
 * caption_of (a chat-completions body -> caption) and describe_failure (an
 * error body -> the record's message) are static in tools/df-caption.c and
 * nothing in lib/ parses these responses, so the tool's source is included
 * with its main renamed. The input is a response body; it is read both as
 * a 200 answer and as a 4xx/5xx error page, scrubbed of a key as on_done
 * does, and the resulting record must carry "text" or "error" and
 * serialize. */
#define main df_caption_main
#include "../../tools/df-caption.c"
#undef main

#include "fuzz_util.h"

/* caption_of gained a "worth a resend" out-parameter; call whichever form
 * the tool has (only the matching association is evaluated). */
typedef char *(*caption_of4)(const char *, size_t, const char **, bool *);
typedef char *(*caption_of3)(const char *, size_t, const char **);
#define CAPTION_OF(b, n, why, again)                                         \
    _Generic(&caption_of, caption_of4 : ((caption_of4)caption_of)(b, n, why, again), \
             default : ((caption_of3)caption_of)(b, n, why))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *b = fuzz_strdup(data, size);   /* http.c NUL-terminates bodies */
    const char *why = NULL;
    json_t *rec = json_object();
    bool again = false;
    char *text = CAPTION_OF(b, size, &why, &again);
    if (text) {
        if (!text[0])
            abort();
        df_rec_set_str(rec, "text", text);
        free(text);
    } else {
        if (!why)
            abort();
        df_rec_set_str(rec, "error", why);
    }
    for (int i = 0; i < 2; i++) {
        df_http_result r = {.err = DF_ERR_NET, .status = i ? 429 : 503, .error = "",
                            .body = b, .body_len = i ? size : 0};
        char msg[512];
        describe_failure(&r, msg, sizeof msg);
        scrub_secret(msg, "sk-secret");
        if (strstr(msg, "sk-secret"))
            abort();
        df_rec_set_str(rec, "error", msg);
    }
    if (!json_object_get(rec, "error"))
        abort();
    char *s = json_dumps(rec, JSON_COMPACT);
    if (!s)
        abort();
    free(s);
    json_decref(rec);
    free(b);
    return 0;
}
