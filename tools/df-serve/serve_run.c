/* serve_run.c - one job through the pipeline, on the worker thread: the
 * LoRA scales it asks for, `runs` generations (seed + r each), and every
 * image saved under --out as df-sample saves it (the same record in the
 * "diffyface" text chunk, the same A1111 "parameters" text, lib/io/
 * gen_params), added to the gallery, and kept in memory for the answers
 * that carry base64. Tested by tests/tools/test-df-serve.sh (images equal
 * df-sample's for the same parameters). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen_params.h"
#include "image.h"
#include "jsonl.h"
#include "log.h"
#include "serve.h"

static int stage_index(const char *stage)
{
    return !stage ? -1 : !strcmp(stage, "text encoder") ? 0 : !strcmp(stage, "unet") ? 1
         : !strcmp(stage, "vae") ? 2 : -1;
}

/* The time since the current stage began goes to it. */
static void close_stage(serve_job *j)
{
    double now = df_now();
    int k = stage_index(j->stage);
    if (k >= 0)
        j->stage_seconds[k] += now - j->t_stage;
    j->t_stage = now;
}

static void on_stage(void *ctx, const char *stage)
{
    serve_job *j = ctx;
    queue_lock();
    close_stage(j);
    j->stage = stage;
    queue_unlock();
}

static void on_step(void *ctx, int i, int n, float t, const float *u, const float *l)
{
    serve_job *j = ctx;
    queue_lock();
    j->step = i + 1;
    j->steps = n;
    queue_unlock();
}

static bool should_stop(void *ctx)
{
    serve_job *j = ctx;
    return atomic_load(&j->stop);
}

/* " <lora:name:scale>..." and "name: hash, ..." for the scales of this job
 * (a LoRA at 0 is off, so it is not named). */
static void lora_text(const serve_params *p, char **prompt, char **hashes)
{
    *prompt = *hashes = NULL;
    size_t cap = 64;
    for (int i = 0; i < g_cfg.n_loras; i++)
        cap += strlen(g_cfg.lora_name[i]) * 2 + 64;
    char *a = calloc(1, cap), *b = calloc(1, cap);
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    for (int i = 0; i < g_cfg.n_loras; i++) {
        if (p->lora_scales[i] == 0)
            continue;
        char sc[32];
        df_float_str(p->lora_scales[i], sc);
        snprintf(a + strlen(a), cap - strlen(a), " <lora:%s:%s>", g_cfg.lora_name[i], sc);
        snprintf(b + strlen(b), cap - strlen(b), "%s%s: %s", *b ? ", " : "", g_cfg.lora_name[i],
                 g_cfg.lora_hash[i]);
    }
    if (*a) {
        *prompt = a;
        *hashes = b;
    } else {
        free(a);
        free(b);
    }
}

/* The "loras" field of df-sample's records: [{"file", "scale"}] of the
 * LoRAs on. */
static json_t *loras_json(const serve_params *p)
{
    json_t *a = json_array();
    for (int i = 0; i < g_cfg.n_loras; i++) {
        if (p->lora_scales[i] == 0)
            continue;
        json_t *l = json_object();
        df_rec_set_str(l, "file", g_cfg.lora_path[i]);
        df_rec_set_float(l, "scale", p->lora_scales[i]);
        json_array_append_new(a, l);
    }
    return a;
}

/* Write buf to dir/name through a temporary file, so that a crash never
 * leaves a torn PNG under its final name. */
static df_status write_file(const char *name, const uint8_t *buf, size_t n)
{
    char *tmp = NULL, *dst = NULL;
    if (asprintf(&tmp, "%s/.%s.tmp", g_cfg.out_dir, name) < 0 ||
        asprintf(&dst, "%s/%s", g_cfg.out_dir, name) < 0) {
        free(tmp);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    df_status st = DF_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        st = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
    for (size_t off = 0; st == DF_OK && off < n;) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            st = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
        else
            off += (size_t)w;
    }
    if (fd >= 0 && close(fd) != 0 && st == DF_OK)
        st = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (st == DF_OK && rename(tmp, dst) != 0)
        st = df_fail(DF_ERR_IO, "%s: %s", dst, strerror(errno));
    if (st != DF_OK)
        unlink(tmp);
    free(tmp);
    free(dst);
    return st;
}

/* One image of a finished run: record, PNG, gallery, the job's list. */
static df_status save_image(serve_job *j, const df_pipeline_output *out, uint64_t seed, int b,
                            double seconds)
{
    const serve_params *p = &j->prm;
    char name[64];
    gallery_next_name(seed, name);
    char *path = NULL;
    if (asprintf(&path, "%s/%s", g_cfg.out_dir, name) < 0)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    /* The record df-sample writes for the same image. */
    json_t *r = json_object();
    df_rec_set_str(r, "file_name", path);
    df_rec_set_str(r, "prompt", p->prompt);
    df_rec_set_str(r, "negative_prompt", p->negative ? p->negative : "");
    df_rec_set_int(r, "seed", (long long)seed);
    if (p->batch > 1)
        df_rec_set_int(r, "batch_index", b);
    df_rec_set_int(r, "steps", p->steps);
    df_rec_set_float(r, "guidance", p->guidance);
    df_rec_set_str(r, "scheduler", p->sched);
    df_rec_set_int(r, "width", p->width);
    df_rec_set_int(r, "height", p->height);
    if (p->edit)
        df_rec_set_float(r, "strength", p->strength);
    json_object_set_new(r, "loras", loras_json(p));
    df_rec_set_num(r, "seconds", round(seconds * 1000) / 1000);
    free(path);
    char *lp, *lh;
    lora_text(p, &lp, &lh);
    df_gen_text gt = {.prompt = p->prompt, .negative_prompt = p->negative, .lora_prompt = lp,
                      .lora_hashes = lh, .sampler = p->sched, .steps = p->steps,
                      .width = p->width, .height = p->height, .guidance = p->guidance,
                      .seed = seed, .strength = p->edit ? p->strength : 0};
    char *a1111 = df_gen_a1111_text(&gt);
    char *rec = df_rec_dumps(r);
    json_decref(r);
    free(lp);
    free(lh);
    df_image img = {.w = out->width, .h = out->height,
                    .px = out->rgb + (size_t)b * out->width * out->height * 3};
    uint8_t *png = NULL;
    size_t n = 0;
    df_status st = a1111 && rec ? df_gen_png_encode(&img, a1111, rec, "diffyface df-serve",
                                                     &png, &n)
                                : df_fail(DF_ERR_NOMEM, "out of memory");
    free(rec);
    if (st == DF_OK)
        st = write_file(name, png, n);
    if (st == DF_OK) {
        json_t *pj = serve_params_json(p);
        df_rec_set_int(pj, "seed", (long long)seed);
        if (p->batch > 1)
            df_rec_set_int(pj, "batch_index", b);
        st = gallery_add(name, seed, b, p->width, p->height, pj);
        json_decref(pj);
    }
    serve_image *im = NULL;
    if (st == DF_OK) {
        queue_lock();
        serve_image *grown = realloc(j->images, (size_t)(j->n_images + 1) * sizeof *grown);
        if (grown) {
            j->images = grown;
            im = &grown[j->n_images++];
            *im = (serve_image){.seed = seed, .batch_index = b, .width = p->width,
                                .height = p->height};
            snprintf(im->name, sizeof im->name, "%s", name);
            im->infotext = a1111;
            a1111 = NULL;
            if (j->keep_png) {
                im->png = png;
                im->png_len = n;
                png = NULL;
            }
        }
        queue_unlock();
        if (!grown)
            st = df_fail(DF_ERR_NOMEM, "out of memory");
    }
    free(png);
    free(a1111);
    return st;
}

static void finish(serve_job *j, job_state s, int status, const char *err)
{
    queue_lock();
    j->state = s;
    j->stage = NULL;
    j->t_end = df_now();
    j->error_status = status;
    if (err) {
        free(j->error);
        j->error = strdup(err);
    }
    queue_unlock();
}

static void run(serve_job *j)
{
    serve_params *p = &j->prm;
    for (int i = 0; i < g_cfg.n_loras; i++)
        if (df_pipeline_set_lora_scale(g_cfg.pipe, i, p->lora_scales[i]) != DF_OK) {
            finish(j, JOB_FAILED, 500, df_last_error());
            return;
        }
    df_pipeline_hooks hooks = {.ctx = j, .on_stage = on_stage, .on_step = on_step,
                               .should_stop = should_stop};
    for (int r = 0; r < p->runs; r++) {
        queue_lock();
        j->run = r;
        j->step = 0;
        queue_unlock();
        uint64_t seed = p->seed + (uint64_t)r;
        df_pipeline_params pp = {.prompt = p->prompt, .negative_prompt = p->negative,
                                 .width = p->width, .height = p->height, .steps = p->steps,
                                 .guidance = p->guidance, .scheduler = p->sched_arg,
                                 .seed = seed, .batch = p->batch, .init_image = p->init_rgb,
                                 .mask = p->mask, .strength = p->init_rgb ? p->strength : 0};
        df_pipeline_output out;
        double t0 = df_now();
        df_status st = df_pipeline_generate(g_cfg.pipe, &pp, &hooks, &out);
        double secs = df_now() - t0;
        queue_lock();
        j->pipeline_seconds += secs;
        close_stage(j);
        j->stage = NULL;
        queue_unlock();
        if (st == DF_ERR_INTERRUPTED || (st != DF_OK && atomic_load(&j->stop))) {
            finish(j, JOB_CANCELLED, 409, "cancelled");
            return;
        }
        if (st != DF_OK) {
            bool model = df_pipeline_load_failed(g_cfg.pipe);
            if (model)   /* every later request will meet it too: say so loudly */
                df_error("the model failed to load: %s", df_last_error());
            int status = model ? 500 : st == DF_ERR_UNSUPPORTED ? 501
                       : st == DF_ERR_ARG || st == DF_ERR_RANGE ? 400 : 500;
            finish(j, JOB_FAILED, status, df_last_error());
            return;
        }
        df_status sst = DF_OK;
        for (int b = 0; b < out.batch && sst == DF_OK; b++)
            sst = save_image(j, &out, seed, b, secs / out.batch);
        df_pipeline_output_free(&out);
        if (sst != DF_OK) {
            df_error("saving an image: %s", df_last_error());
            finish(j, JOB_FAILED, 500, df_last_error());
            return;
        }
    }
    finish(j, JOB_DONE, 200, NULL);
}

void run_job(serve_job *j)
{
    run(j);
    queue_lock();                  /* the uploaded pixels are done with */
    free(j->prm.init_rgb);
    free(j->prm.mask);
    j->prm.init_rgb = j->prm.mask = NULL;
    queue_unlock();
}
