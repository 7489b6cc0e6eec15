/* serve_page.c - the web page and its private API (the contract in
 * df-serve(1), "PAGE API"): GET / (tools/df-serve/page.html, embedded at
 * build time), GET /api/info, POST /api/jobs (202, the page polls),
 * GET /api/jobs/ID, POST /api/jobs/ID/cancel, GET /api/gallery,
 * GET /images/NAME.png, and GET /health. Tested by
 * tests/tools/test-df-serve.sh. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen_params.h"
#include "jsonl.h"
#include "scheduler.h"
#include "serve.h"

static bool is(const serve_request *rq, const char *method, const char *url)
{
    return !strcmp(rq->method, method) && !strcmp(rq->url, url);
}

static void info(serve_reply *r)
{
    json_t *o = json_object();
    df_rec_set_str(o, "model", g_cfg.model_name);
    json_t *s = json_array();
    for (const char *const *n = df_scheduler_names(); *n; n++) {
        df_scheduler *sc;          /* aliases (euler_a) name another entry */
        if (df_scheduler_create(*n, NULL, NULL, &sc) != DF_OK)
            continue;
        if (!strcmp(df_scheduler_short_name(sc), *n))
            json_array_append_new(s, json_string(*n));
        df_scheduler_free(sc);
    }
    json_object_set_new(o, "schedulers", s);
    df_rec_set_str(o, "scheduler", g_cfg.default_sched);
    df_rec_set_int(o, "width", g_cfg.width);
    df_rec_set_int(o, "height", g_cfg.height);
    df_rec_set_int(o, "size_multiple", g_cfg.size_multiple);
    df_rec_set_int(o, "max_pixels", g_cfg.max_pixels);
    df_rec_set_int(o, "max_steps", g_cfg.max_steps);
    df_rec_set_int(o, "max_batch", g_cfg.max_batch);
    df_rec_set_int(o, "max_prompt_chars", g_cfg.max_prompt_chars);
    df_rec_set_int(o, "steps", 20);
    df_rec_set_float(o, "guidance", 7.5f);
    json_t *l = json_array();
    for (int i = 0; i < g_cfg.n_loras; i++) {
        json_t *e = json_object();
        df_rec_set_str(e, "name", g_cfg.lora_name[i]);
        df_rec_set_float(e, "scale", g_cfg.lora_scale[i]);
        json_array_append_new(l, e);
    }
    json_object_set_new(o, "loras", l);
    /* A UNet with more than the latent channels' inputs is an inpainting one. */
    json_object_set_new(o, "inpaint_unet", json_boolean(g_cfg.inpaint_unet));
    reply_json(r, 200, o);
}

static const char *const job_fields[] = {
    "prompt", "negative_prompt", "steps", "guidance", "scheduler", "seed", "width", "height",
    "batch", "lora_scales", "init_image", "mask", "strength", NULL};

static bool known(const char *const *list, const char *k)
{
    for (; *list; list++)
        if (!strcmp(*list, k))
            return true;
    return false;
}

/* The body of POST /api/jobs into p; false with *err naming the field. */
static bool page_params(json_t *o, serve_params *p, char **err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
        if (!known(job_fields, k))
            return *err = req_errf("unknown field '%s'", k), false;
    const char *prompt = NULL, *neg = NULL, *sched = NULL, *init = NULL, *mask = NULL;
    long long steps = 20, w = g_cfg.width, h = g_cfg.height, batch = 1;
    double g = 7.5, strength = NAN;
    if (!req_prompt(o, "prompt", &prompt, err) || !req_prompt(o, "negative_prompt", &neg, err) ||
        !req_get_str(o, "scheduler", 64, &sched, err) ||
        !req_get_int(o, "steps", 1, g_cfg.max_steps, &steps, err) ||
        !req_get_num(o, "guidance", 0, 100, &g, err) || !req_seed(o, "seed", &p->seed, err) ||
        !req_get_int(o, "width", 1, 1 << 16, &w, err) ||
        !req_get_int(o, "height", 1, 1 << 16, &h, err) ||
        !req_get_int(o, "batch", 1, g_cfg.max_batch, &batch, err) ||
        !req_lora_scales(o, "lora_scales", p->lora_scales, err) ||
        !req_get_str(o, "init_image", 0, &init, err) || !req_get_str(o, "mask", 0, &mask, err) ||
        !req_get_num(o, "strength", 0, 1, &strength, err))
        return false;
    if (!prompt)
        return *err = req_errf("prompt is required"), false;
    /* As df-sample: img2img without a size keeps the image's own (rounded
     * down to multiples of 8), inpainting takes the model's; strength 0.8
     * for img2img and 1 for inpainting unless given. */
    if (init && !mask && !json_object_get(o, "width") && !json_object_get(o, "height")) {
        int iw, ih;
        if (!req_image_size("init_image", init, &iw, &ih, err))
            return false;
        w = iw;
        h = ih;
    }
    if (isnan(strength))
        strength = mask ? 1.0 : 0.8;
    if (!init && json_object_get(o, "strength") && !json_is_null(json_object_get(o, "strength")))
        return *err = req_errf("strength needs an init_image"), false;
    if (!req_check_size(w, h, "width x height", err) || !req_scheduler(p, sched, "scheduler", err))
        return false;
    if (mask && !init)
        return *err = req_errf("mask needs an init_image"), false;
    if (init && (int)(steps * strength) < 1)
        return *err = req_errf("strength %g with %lld steps runs no step (int(steps x strength) "
                               "must be at least 1)", strength, steps), false;
    p->prompt = strdup(prompt);
    p->negative = strdup(neg ? neg : "");
    p->steps = (int)steps;
    p->guidance = (float)g;
    p->width = (int)w;
    p->height = (int)h;
    p->batch = (int)batch;
    p->runs = 1;
    p->strength = (float)strength;
    if (init && !req_image("init_image", init, p->width, p->height, false, &p->init_rgb, err))
        return false;
    if (mask && !req_image("mask", mask, p->width, p->height, true, &p->mask, err))
        return false;
    p->edit = init != NULL;
    p->inpaint = mask != NULL;
    return p->prompt && p->negative ? true : (*err = req_errf("out of memory"), false);
}

static void submit(const serve_request *rq, serve_reply *r)
{
    char *err = NULL;
    json_t *o = req_parse_object(rq, &err);
    serve_job *j = o ? job_new() : NULL;
    if (o && !j)
        err = req_errf("out of memory");
    if (j && !page_params(o, &j->prm, &err)) {
        job_release(j);
        j = NULL;
    }
    json_decref(o);
    if (!j) {
        reply_error(r, 400, "%s", err ? err : "bad request");
        free(err);
        return;
    }
    r->seed = (long long)j->prm.seed;
    r->has_seed = true;
    int pos = 0, rc = queue_submit(j, &pos);
    if (rc == 0) {
        json_t *a = json_object();
        df_rec_set_str(a, "id", j->id);
        df_rec_set_int(a, "position", pos);
        reply_json(r, 202, a);
    } else {
        r->retry_after = 10;
        reply_error(r, 503, rc == -1 ? "the queue is full; try again later"
                                     : "the server is shutting down");
    }
    job_release(j);
}

static json_t *images_json(const serve_job *j)
{
    json_t *a = json_array();
    for (int i = 0; i < j->n_images; i++) {
        const serve_image *im = &j->images[i];
        json_t *e = json_object();
        char url[96];
        snprintf(url, sizeof url, "/images/%s", im->name);
        df_rec_set_str(e, "url", url);
        df_rec_set_int(e, "seed", (long long)im->seed);
        if (j->prm.batch > 1)
            df_rec_set_int(e, "batch_index", im->batch_index);
        df_rec_set_int(e, "width", im->width);
        df_rec_set_int(e, "height", im->height);
        json_array_append_new(a, e);
    }
    return a;
}

static void job_status(serve_job *j, serve_reply *r)
{
    job_view v;
    queue_view(j, &v);
    json_t *o = json_object();
    df_rec_set_str(o, "id", j->id);
    df_rec_set_str(o, "state", serve_state_name(v.state));
    if (v.state == JOB_QUEUED)
        df_rec_set_int(o, "position", v.position);
    if (v.state == JOB_RUNNING && v.stage)
        df_rec_set_str(o, "stage", v.stage);
    df_rec_set_int(o, "step", v.step);
    df_rec_set_int(o, "steps", v.steps ? v.steps : j->prm.steps);
    df_rec_set_int(o, "seed", (long long)j->prm.seed);
    json_object_set_new(o, "params", serve_params_json(&j->prm));
    queue_lock();                  /* the images list grows on the worker */
    json_object_set_new(o, "images", images_json(j));
    if (j->error && v.state != JOB_DONE)
        df_rec_set_str(o, "error", j->error);
    queue_unlock();
    reply_json(r, 200, o);
}

static void jobs_path(const serve_request *rq, serve_reply *r)
{
    const char *id = rq->url + strlen("/api/jobs/");
    const char *slash = strchr(id, '/');
    char key[40];
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    bool cancel = slash && !strcmp(slash, "/cancel");
    if (n == 0 || n >= sizeof key || (slash && !cancel)) {
        reply_error(r, 404, "no such endpoint: %s %s", rq->method, rq->url);
        return;
    }
    if (strcmp(rq->method, cancel ? "POST" : "GET")) {
        reply_error(r, 405, "%s %s: use %s", rq->method, rq->url, cancel ? "POST" : "GET");
        return;
    }
    memcpy(key, id, n);
    key[n] = 0;
    serve_job *j = queue_find(key);
    if (!j) {
        reply_error(r, 404, "no job '%s' (finished jobs are kept for a while only)", key);
        return;
    }
    if (cancel) {
        queue_cancel(j);
        job_view v;
        queue_view(j, &v);
        json_t *o = json_object();
        df_rec_set_str(o, "id", j->id);
        df_rec_set_str(o, "state", serve_state_name(v.state));
        reply_json(r, 200, o);
    } else {
        job_status(j, r);
    }
    job_release(j);
}

/* Only files the gallery lists, read whole (a PNG of a few MB at most). */
static void image_file(const serve_request *rq, serve_reply *r)
{
    const char *name = rq->url + strlen("/images/");
    if (!gallery_has(name)) {
        reply_error(r, 404, "no image '%.80s'", name);
        return;
    }
    char *path = NULL;
    if (asprintf(&path, "%s/%s", g_cfg.out_dir, name) < 0) {
        reply_error(r, 500, "out of memory");
        return;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > (1 << 30)) {
        if (fd >= 0)
            close(fd);
        reply_error(r, 404, "no image '%s'", name);
        return;
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)sb.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)sb.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    if (!buf || got != (size_t)sb.st_size) {
        free(buf);
        reply_error(r, 500, "cannot read image '%s'", name);
        return;
    }
    free(r->body);
    r->body = buf;
    r->len = got;
    r->status = 200;
    r->ctype = "image/png";
}

static void health(serve_reply *r)
{
    job_view v;
    int queued = 0;
    bool busy = queue_running_view(&v, &queued);
    json_t *o = json_object();
    df_rec_set_str(o, "status", "ok");
    df_rec_set_str(o, "model", g_cfg.model_name);
    json_object_set_new(o, "busy", json_boolean(busy));
    df_rec_set_int(o, "queued", queued);
    df_rec_set_int(o, "queue_max", g_cfg.queue_max);
    reply_json(r, 200, o);
}

bool page_route(const serve_request *rq, serve_reply *r)
{
    if (is(rq, "GET", "/") || is(rq, "GET", "/index.html")) {
        size_t n = (size_t)(serve_page_html_end - serve_page_html);
        r->body = malloc(n + 1);
        if (!r->body) {
            reply_error(r, 500, "out of memory");
            return true;
        }
        memcpy(r->body, serve_page_html, n);
        r->len = n;
        r->status = 200;
        r->ctype = "text/html; charset=utf-8";
    } else if (is(rq, "GET", "/health")) {
        health(r);
    } else if (is(rq, "GET", "/api/info")) {
        info(r);
    } else if (is(rq, "POST", "/api/jobs")) {
        submit(rq, r);
    } else if (!strncmp(rq->url, "/api/jobs/", 10)) {
        jobs_path(rq, r);
    } else if (is(rq, "GET", "/api/gallery")) {
        reply_json(r, 200, gallery_json());
    } else if (!strcmp(rq->method, "GET") && !strncmp(rq->url, "/images/", 8)) {
        image_file(rq, r);
    } else {
        return false;
    }
    return true;
}
