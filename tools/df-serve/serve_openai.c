/* serve_openai.c - OpenAI's Images API: POST /v1/images/generations with
 * prompt, n, size "WxH", response_format "b64_json" or "url" (a URL of
 * /images/NAME.png on this server), model (absent or this server's model),
 * user, and the extensions negative_prompt, steps, guidance, seed,
 * scheduler. n images are one batch of n with one seed, as df-sample's
 * --batch. Errors in OpenAI's shape. GET /v1/models lists the one model.
 * Tested by tests/tools/test-df-serve.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonl.h"
#include "serve.h"

static const char *const fields[] = {
    "prompt", "n", "size", "response_format", "model", "user", "quality", "style",
    "negative_prompt", "steps", "guidance", "seed", "scheduler", NULL};

static bool params(json_t *o, serve_params *p, bool *b64, const char **bad, char **err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = false;
        for (const char *const *f = fields; *f && !ok; f++)
            ok = !strcmp(*f, k);
        if (!ok)
            return *bad = k, *err = req_errf("unknown field '%s'", k), false;
    }
    const char *prompt = NULL, *neg = NULL, *size = NULL, *fmt = NULL, *model = NULL, *sched = NULL;
    const char *user = NULL, *quality = NULL, *style = NULL;
    long long n = 1, steps = 20;
    double g = 7.5;
#define CHECK_FIELD(call, name) if (!(call)) return *bad = name, false
    CHECK_FIELD(req_prompt(o, "prompt", &prompt, err), "prompt");
    CHECK_FIELD(req_prompt(o, "negative_prompt", &neg, err), "negative_prompt");
    CHECK_FIELD(req_get_str(o, "size", 32, &size, err), "size");
    CHECK_FIELD(req_get_str(o, "response_format", 32, &fmt, err), "response_format");
    CHECK_FIELD(req_get_str(o, "model", 256, &model, err), "model");
    CHECK_FIELD(req_get_str(o, "user", 256, &user, err), "user");
    CHECK_FIELD(req_get_str(o, "quality", 32, &quality, err), "quality");
    CHECK_FIELD(req_get_str(o, "style", 32, &style, err), "style");
    CHECK_FIELD(req_get_str(o, "scheduler", 64, &sched, err), "scheduler");
    CHECK_FIELD(req_get_int(o, "n", 1, g_cfg.max_batch, &n, err), "n");
    CHECK_FIELD(req_get_int(o, "steps", 1, g_cfg.max_steps, &steps, err), "steps");
    CHECK_FIELD(req_get_num(o, "guidance", 0, 100, &g, err), "guidance");
    CHECK_FIELD(req_seed(o, "seed", &p->seed, err), "seed");
    if (!prompt)
        return *bad = "prompt", *err = req_errf("prompt is required"), false;
    if (model && strcmp(model, g_cfg.model_name))
        return *bad = "model", *err = req_errf("model: this server serves only '%s'",
                                              g_cfg.model_name), false;
    /* Options that would change the image and that a diffusion model of
     * this kind does not have: refused unless at their defaults. */
    if (quality && strcmp(quality, "standard"))
        return *bad = "quality", *err = req_errf("quality: only 'standard'"), false;
    if (style)
        return *bad = "style", *err = req_errf("style is not supported"), false;
    *b64 = false;
    if (fmt && strcmp(fmt, "url") && strcmp(fmt, "b64_json"))
        return *bad = "response_format",
               *err = req_errf("response_format must be 'url' or 'b64_json'"), false;
    *b64 = fmt && !strcmp(fmt, "b64_json");
    long long w = g_cfg.width, h = g_cfg.height;
    if (size) {
        char *end;
        w = strtoll(size, &end, 10);
        if (end == size || (*end != 'x' && *end != 'X'))
            return *bad = "size", *err = req_errf("size must be 'WIDTHxHEIGHT'"), false;
        const char *hs = end + 1;
        h = strtoll(hs, &end, 10);
        if (end == hs || *end)
            return *bad = "size", *err = req_errf("size must be 'WIDTHxHEIGHT'"), false;
    }
    CHECK_FIELD(req_check_size(w, h, "size", err), "size");
    CHECK_FIELD(req_scheduler(p, sched, "scheduler", err), "scheduler");
#undef CHECK_FIELD
    req_lora_scales(o, "", p->lora_scales, err);   /* as loaded */
    p->prompt = strdup(prompt);
    p->negative = strdup(neg ? neg : "");
    p->steps = (int)steps;
    p->guidance = (float)g;
    p->width = (int)w;
    p->height = (int)h;
    p->batch = (int)n;
    p->runs = 1;
    return p->prompt && p->negative ? true : (*err = req_errf("out of memory"), false);
}

static void generations(const serve_request *rq, serve_reply *r)
{
    char *err = NULL;
    const char *bad = NULL;
    bool b64 = false;
    json_t *o = req_parse_object(rq, &err);
    serve_job *j = o ? job_new() : NULL;
    if (o && !j)
        err = req_errf("out of memory");
    if (j && !params(o, &j->prm, &b64, &bad, &err)) {
        job_release(j);
        j = NULL;
    }
    if (!j) {
        reply_openai_error(r, 400, bad, "%s", err ? err : "bad request");
        free(err);
        json_decref(o);
        return;
    }
    json_decref(o);
    j->keep_png = b64;
    r->seed = (long long)j->prm.seed;
    r->has_seed = true;
    int pos, rc = queue_submit(j, &pos);
    if (rc != 0) {
        r->retry_after = 10;
        reply_openai_error(r, 503, NULL, rc == -1 ? "the queue is full; try again later"
                                                  : "the server is shutting down");
        job_release(j);
        return;
    }
    queue_wait(j, rq->conn_fd);
    r->pipeline_seconds = j->pipeline_seconds;
    memcpy(r->stage_seconds, j->stage_seconds, sizeof r->stage_seconds);
    r->has_stages = true;
    if (j->state != JOB_DONE) {
        int status = j->state == JOB_CANCELLED ? 409 : j->error_status ? j->error_status : 500;
        reply_openai_error(r, status, NULL, "%s", j->error ? j->error : "failed");
        job_release(j);
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < j->n_images; i++) {
        serve_image *im = &j->images[i];
        json_t *e = json_object();
        if (b64) {
            char *s = req_base64(im->png, im->png_len);
            json_object_set_new(e, "b64_json", s ? json_string(s) : json_null());
            free(s);
        } else {
            char *url = NULL;
            if (asprintf(&url, "http://%s/images/%s", rq->host ? rq->host : g_cfg.listen,
                         im->name) >= 0)
                df_rec_set_str(e, "url", url);
            free(url);
        }
        json_array_append_new(data, e);
    }
    r->images = j->n_images;
    json_t *a = json_object();
    df_rec_set_int(a, "created", (long long)time(NULL));
    json_object_set_new(a, "data", data);
    reply_json(r, 200, a);
    job_drop_payload(j);
    job_release(j);
}

static void models(serve_reply *r)
{
    json_t *m = json_object();
    df_rec_set_str(m, "id", g_cfg.model_name);
    df_rec_set_str(m, "object", "model");
    df_rec_set_int(m, "created", 0);
    df_rec_set_str(m, "owned_by", "diffyface");
    json_t *d = json_array();
    json_array_append_new(d, m);
    json_t *o = json_object();
    df_rec_set_str(o, "object", "list");
    json_object_set_new(o, "data", d);
    reply_json(r, 200, o);
}

bool openai_route(const serve_request *rq, serve_reply *r)
{
    if (!strcmp(rq->url, "/v1/images/generations")) {
        if (strcmp(rq->method, "POST"))
            reply_openai_error(r, 405, NULL, "use POST");
        else
            generations(rq, r);
        return true;
    }
    if (!strcmp(rq->url, "/v1/models") && !strcmp(rq->method, "GET")) {
        models(r);
        return true;
    }
    return false;
}
