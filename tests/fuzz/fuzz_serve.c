/* fuzz_serve.c - what df-serve does with a request's bytes before any
 * generation: the handlers of the page API, OpenAI's and A1111's, run on
 * the input as a body (JSON, fields, limits, sizes, base64, uploaded images
 * decoded under the limit, A1111's <lora:...> tags), or as a job id or image
 * name in the URL. The queue takes nothing (--queue 0: every job that gets
 * through the checks is answered 503), so no model is needed. fuzz.mk links
 * the handlers' sources (tools/df-serve/serve_{reply,request,queue,page,
 * openai,a1111}.c); the parts that need HTTP, files or the pipeline are
 * stubbed here. Input: byte 0 picks the endpoint, the rest is the body (or
 * the URL tail). Built and run by tests/fuzz/fuzz.mk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "serve.h"

serve_config g_cfg;
const char serve_page_html[] = "<html></html>";
const char serve_page_html_end[] = "";

void run_job(serve_job *j) { (void)j; }
df_status gallery_open(const char *dir) { return DF_OK; }
void gallery_close(void) {}
void gallery_next_name(uint64_t seed, char name[64]) { snprintf(name, 64, "0-%llu.png", (unsigned long long)seed); }
df_status gallery_add(const char *name, uint64_t seed, int b, int w, int h, json_t *p) { return DF_OK; }
json_t *gallery_json(void) { return json_pack("{s:[]}", "images"); }
bool gallery_has(const char *name) { return false; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_cfg.model) {
        g_cfg = (serve_config){.model = "/nonexistent", .out_dir = "/nonexistent", .listen = "x:1",
                               .queue_max = 0, .max_steps = 50, .max_batch = 4,
                               .max_prompt_chars = 200, .max_pixels = 64 * 64, .max_body = 1 << 20,
                               .width = 32, .height = 32, .size_multiple = 8, .n_loras = 1,
                               .lora_scale = {0.5f}, .default_sched = "ddim"};
        snprintf(g_cfg.model_name, sizeof g_cfg.model_name, "model");
        snprintf(g_cfg.lora_name[0], sizeof g_cfg.lora_name[0], "style");
        snprintf(g_cfg.lora_hash[0], sizeof g_cfg.lora_hash[0], "0123456789ab");
    }
    if (size < 1)
        return 0;
    static const char *const routes[][2] = {
        {"POST", "/api/jobs"}, {"POST", "/v1/images/generations"}, {"POST", "/sdapi/v1/txt2img"},
        {"POST", "/sdapi/v1/img2img"}, {"GET", "/api/jobs/"}, {"GET", "/images/"},
        {"POST", "/api/jobs/"}, {"GET", "/sdapi/v1/progress"}};
    const char *const *rt = routes[data[0] % (sizeof routes / sizeof routes[0])];
    char *body = malloc(size);
    memcpy(body, data + 1, size - 1);
    body[size - 1] = 0;
    char *url = NULL;
    bool tail = rt[1][strlen(rt[1]) - 1] == '/';
    if (asprintf(&url, "%s%.200s", rt[1], tail ? body : "") < 0)
        abort();
    serve_request rq = {.method = rt[0], .url = url, .body = body, .body_len = size - 1,
                        .conn_fd = -1, .host = "127.0.0.1:1"};
    serve_reply r = {0};
    if (!page_route(&rq, &r) && !openai_route(&rq, &r) && !a1111_route(&rq, &r))
        reply_error(&r, 404, "no such endpoint");
    /* Every answer is a status and, for JSON, a parseable body. */
    if (r.status < 200 || r.status > 599)
        abort();
    if (r.ctype && !strcmp(r.ctype, "application/json")) {
        json_t *v = json_loadb(r.body, r.len, 0, NULL);
        if (!v)
            abort();
        json_decref(v);
    }
    free(r.body);
    free(r.error);
    free(url);
    free(body);
    return 0;
}
