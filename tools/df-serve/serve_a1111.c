/* serve_a1111.c - the AUTOMATIC1111 web UI's API, as its clients use it:
 * POST /sdapi/v1/txt2img and /sdapi/v1/img2img, GET /sdapi/v1/progress,
 * POST /sdapi/v1/interrupt, GET /sdapi/v1/sd-models, /sdapi/v1/samplers,
 * /sdapi/v1/options. Field names and defaults are A1111's
 * (modules/processing.py and modules/api/models.py: steps 50, cfg_scale 7,
 * width and height 512, seed -1, batch_size and n_iter 1, sampler "Euler",
 * denoising_strength 0.75). As in A1111, image k of a request has seed
 * seed + k (all_seeds), so each one is also df-sample --seed S+k alone.
 * A1111's other fields are accepted only at values that change nothing
 * here (restore_faces false, enable_hr false, styles [] ...): any other value
 * is a 400 naming the field, never silently ignored. Tested by
 * tests/tools/test-df-serve.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gen_params.h"
#include "jsonl.h"
#include "log.h"
#include "serve.h"

/* A1111's sampler names and ours. */
static const struct { const char *a1111, *ours, *karras; } samplers[] = {
    {"Euler a", "euler_ancestral", NULL}, {"Euler", "euler", NULL}, {"LMS", "lms", NULL},
    {"DPM++ 2M", "dpmpp_2m", "dpmpp_2m_karras"}, {"DPM++ 2M Karras", "dpmpp_2m_karras", NULL},
    {"DPM++ 2M SDE", "dpmpp_2m_sde", "dpmpp_2m_sde_karras"},
    {"DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras", NULL}, {"DDIM", "ddim", NULL},
    {"PLMS", "pndm", NULL}, {"PNDM", "pndm", NULL}, {"UniPC", "unipc", NULL},
    {"DDPM", "ddpm", NULL}};
#define N_SAMPLERS (sizeof samplers / sizeof samplers[0])

/* How a field is taken: used, or accepted only at a value that changes
 * nothing here. */
enum { F_USED, F_ANY, F_FALSY, F_ONE, F_RESIZE, F_MASKOPT };
typedef struct { const char *name; int kind; bool img2img_only; } field;
static const field fields[] = {
    {"prompt", F_USED, 0}, {"negative_prompt", F_USED, 0}, {"seed", F_USED, 0},
    {"sampler_name", F_USED, 0}, {"sampler_index", F_USED, 0}, {"scheduler", F_USED, 0},
    {"batch_size", F_USED, 0}, {"n_iter", F_USED, 0}, {"steps", F_USED, 0},
    {"cfg_scale", F_USED, 0}, {"width", F_USED, 0}, {"height", F_USED, 0},
    {"send_images", F_USED, 0}, {"eta", F_USED, 0},
    /* no effect with subseed_strength 0, hires off, no refiner, no churn,
     * or on what is saved where (this server keeps every image in --out) */
    {"subseed", F_ANY, 0}, {"do_not_save_samples", F_ANY, 0}, {"do_not_save_grid", F_ANY, 0},
    {"save_images", F_ANY, 0}, {"override_settings_restore_afterwards", F_ANY, 0},
    {"disable_extra_networks", F_ANY, 0}, {"comments", F_ANY, 0}, {"force_task_id", F_ANY, 0},
    {"refiner_switch_at", F_ANY, 0}, {"s_tmax", F_ANY, 0}, {"s_tmin", F_ANY, 0},
    {"firstphase_width", F_ANY, 0}, {"firstphase_height", F_ANY, 0}, {"hr_scale", F_ANY, 0},
    {"hr_upscaler", F_ANY, 0}, {"hr_second_pass_steps", F_ANY, 0}, {"hr_resize_x", F_ANY, 0},
    {"hr_resize_y", F_ANY, 0}, {"hr_checkpoint_name", F_ANY, 0}, {"hr_sampler_name", F_ANY, 0},
    {"hr_scheduler", F_ANY, 0}, {"hr_prompt", F_ANY, 0}, {"hr_negative_prompt", F_ANY, 0},
    {"hr_cfg", F_ANY, 0}, {"hr_distilled_cfg", F_ANY, 0},
    {"styles", F_FALSY, 0}, {"subseed_strength", F_FALSY, 0}, {"restore_faces", F_FALSY, 0},
    {"tiling", F_FALSY, 0}, {"s_min_uncond", F_FALSY, 0}, {"s_churn", F_FALSY, 0},
    {"override_settings", F_FALSY, 0}, {"refiner_checkpoint", F_FALSY, 0},
    {"enable_hr", F_FALSY, 0}, {"script_name", F_FALSY, 0}, {"script_args", F_FALSY, 0},
    {"alwayson_scripts", F_FALSY, 0}, {"infotext", F_FALSY, 0}, {"firstpass_image", F_FALSY, 0},
    {"s_noise", F_ONE, 0}, {"seed_resize_from_h", F_RESIZE, 0},
    {"seed_resize_from_w", F_RESIZE, 0},
    /* img2img */
    {"init_images", F_USED, 1}, {"mask", F_USED, 1}, {"denoising_strength", F_USED, 0},
    {"inpainting_mask_invert", F_USED, 1}, {"resize_mode", F_FALSY, 1},
    {"image_cfg_scale", F_ANY, 1}, {"inpaint_full_res_padding", F_ANY, 1},
    {"mask_round", F_ANY, 1}, {"initial_noise_multiplier", F_ONE, 1},
    {"latent_mask", F_FALSY, 1}, {"include_init_images", F_FALSY, 1},
    {"mask_blur", F_MASKOPT, 1}, {"mask_blur_x", F_MASKOPT, 1}, {"mask_blur_y", F_MASKOPT, 1},
    {"inpainting_fill", F_MASKOPT, 1}, {"inpaint_full_res", F_MASKOPT, 1}};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static bool falsy(json_t *v)
{
    return json_is_null(v) || json_is_false(v) || (json_is_number(v) && json_number_value(v) == 0)
        || (json_is_string(v) && (!*json_string_value(v) || !strcmp(json_string_value(v), "None")))
        || (json_is_array(v) && !json_array_size(v)) || (json_is_object(v) && !json_object_size(v));
}

/* Inpainting options with a mask: what diffusers' inpainting does is A1111's
 * mask_blur 0, inpainting_fill 1 ("original"), inpaint_full_res false. */
static bool maskopt_ok(const char *k, json_t *v)
{
    if (json_is_null(v))
        return true;
    if (!strcmp(k, "inpainting_fill"))
        return json_is_number(v) && json_number_value(v) == 1;
    return falsy(v);
}

static bool check_fields(json_t *o, bool img2img, bool has_mask, char **err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        const field *f = NULL;
        for (size_t i = 0; i < N_FIELDS && !f; i++)
            if (!strcmp(fields[i].name, k) && (img2img || !fields[i].img2img_only))
                f = &fields[i];
        if (!f)
            return *err = req_errf("unknown or unsupported field '%s'", k), false;
        bool ok = f->kind == F_USED || f->kind == F_ANY ||
                  (f->kind == F_FALSY && falsy(v)) ||
                  (f->kind == F_ONE && (json_is_null(v) ||
                                        (json_is_number(v) && json_number_value(v) == 1))) ||
                  (f->kind == F_RESIZE && (json_is_null(v) || (json_is_number(v) &&
                                           json_number_value(v) <= 0))) ||
                  (f->kind == F_MASKOPT && (!has_mask || maskopt_ok(k, v)));
        if (!ok) {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            *err = req_errf("field '%s' = %.40s is not supported by this server (only its "
                            "default%s)", k, s ? s : "?",
                            f->kind == F_MASKOPT ? "s for diffusers-style inpainting: "
                            "mask_blur 0, inpainting_fill 1, inpaint_full_res false" : "");
            free(s);
            return false;
        }
    }
    return true;
}

static const char *a1111_name(const char *ours)
{
    for (size_t i = 0; i < N_SAMPLERS; i++)
        if (!strcmp(samplers[i].ours, ours))
            return samplers[i].a1111;
    return ours;
}

/* sampler_name (or sampler_index), and A1111 1.9's separate scheduler. */
static bool sampler(json_t *o, serve_params *p, char **err)
{
    const char *name = NULL, *sched = NULL, *key = "sampler_name";
    if (!req_get_str(o, "sampler_name", 64, &name, err) ||
        !req_get_str(o, "scheduler", 64, &sched, err))
        return false;
    if (!name || !*name) {
        key = "sampler_index";
        if (!req_get_str(o, "sampler_index", 64, &name, err))
            return false;
    }
    if (!name || !*name)
        name = "Euler";
    const char *ours = NULL, *karras = NULL;
    for (size_t i = 0; i < N_SAMPLERS && !ours; i++)
        if (!strcasecmp(samplers[i].a1111, name) || !strcmp(samplers[i].ours, name)) {
            ours = samplers[i].ours;
            karras = samplers[i].karras;
        }
    if (!ours)
        return *err = req_errf("%s: unknown sampler '%s' (GET /sdapi/v1/samplers lists them)",
                               key, name), false;
    if (sched && *sched && strcasecmp(sched, "Automatic")) {
        if (strcasecmp(sched, "Karras") || !karras)
            return *err = req_errf("scheduler: '%s' with sampler '%s' is not supported", sched,
                                   name), false;
        ours = karras;
    }
    return req_scheduler(p, ours, key, err);
}

/* A1111 names LoRAs in the prompt as <lora:NAME:SCALE> (SCALE 1 when left
 * out). A name this server loaded (its file name without .safetensors) sets
 * that LoRA's scale for the request, the LoRAs the prompt does not name are
 * off (as in A1111), and the tags leave the prompt. A prompt without tags
 * uses the LoRAs as loaded. A name not loaded is a 400. *out: the prompt
 * without its tags (malloc'd). */
static bool lora_tags(const char *prompt, serve_params *p, char **out, char **err)
{
    size_t n = strlen(prompt);
    char *s = malloc(n + 1);
    if (!s)
        return *err = req_errf("out of memory"), false;
    size_t o = 0;
    bool any = false;
    for (size_t i = 0; i < n;) {
        const char *end = !strncmp(prompt + i, "<lora:", 6) ? strchr(prompt + i, '>') : NULL;
        if (!end) {
            s[o++] = prompt[i++];
            continue;
        }
        const char *name = prompt + i + 6;
        const char *colon = memchr(name, ':', (size_t)(end - name));
        size_t len = (size_t)((colon ? colon : end) - name);
        double scale = 1;
        char *e = NULL;
        if (colon) {
            scale = strtod(colon + 1, &e);
            if (e != end || !isfinite(scale) || fabs(scale) > 100) {
                free(s);
                return *err = req_errf("prompt: <lora:%.*s>: the scale must be a number",
                                       (int)(end - name), name), false;
            }
        }
        int k = -1;
        for (int q = 0; q < g_cfg.n_loras && k < 0; q++)
            if (strlen(g_cfg.lora_name[q]) == len && !strncmp(g_cfg.lora_name[q], name, len))
                k = q;
        if (k < 0) {
            free(s);
            return *err = req_errf("prompt: <lora:%.*s>: no such LoRA on this server (it serves "
                                   "the --lora files named in /api/info)", (int)len, name), false;
        }
        if (!any)
            for (int q = 0; q < g_cfg.n_loras; q++)
                p->lora_scales[q] = 0;
        any = true;
        p->lora_scales[k] = (float)scale;
        i = (size_t)(end - prompt) + 1;
    }
    s[o] = 0;
    *out = s;
    return true;
}

static bool params(json_t *o, bool img2img, serve_params *p, bool *send, char **err)
{
    json_t *imgs = json_object_get(o, "init_images");
    json_t *mask_v = json_object_get(o, "mask");
    bool has_mask = mask_v && !json_is_null(mask_v);
    if (!check_fields(o, img2img, has_mask, err))
        return false;
    const char *prompt = NULL, *neg = NULL, *mask = NULL;
    long long steps = 50, w = 512, h = 512, bs = 1, ni = 1, invert = 0;
    double cfg = 7.0, strength = 0.75, eta = NAN;
    if (!req_prompt(o, "prompt", &prompt, err) || !req_prompt(o, "negative_prompt", &neg, err) ||
        !req_get_int(o, "steps", 1, g_cfg.max_steps, &steps, err) ||
        !req_get_num(o, "cfg_scale", 0, 100, &cfg, err) || !req_seed(o, "seed", &p->seed, err) ||
        !req_get_int(o, "width", 1, 1 << 16, &w, err) ||
        !req_get_int(o, "height", 1, 1 << 16, &h, err) ||
        !req_get_int(o, "batch_size", 1, g_cfg.max_batch, &bs, err) ||
        !req_get_int(o, "n_iter", 1, g_cfg.max_batch, &ni, err) ||
        !req_get_num(o, "eta", 0, 1, &eta, err) ||
        !req_get_int(o, "inpainting_mask_invert", 0, 1, &invert, err) ||
        (img2img && !req_get_num(o, "denoising_strength", 0, 1, &strength, err)) ||
        !req_get_str(o, "mask", 0, &mask, err) || !sampler(o, p, err))
        return false;
    if (bs * ni > g_cfg.max_batch)
        return *err = req_errf("batch_size x n_iter is over this server's --max-batch %d",
                               g_cfg.max_batch), false;
    /* eta: what our samplers do (DDIM's 0, the ancestral samplers' 1). */
    bool ancestral = strstr(p->sched, "ancestral") || strstr(p->sched, "sde");
    if (!isnan(eta) && eta != (ancestral ? 1.0 : 0.0))
        return *err = req_errf("eta: only %d with sampler %s", ancestral ? 1 : 0,
                               a1111_name(p->sched)), false;
    json_t *sv = json_object_get(o, "send_images");
    if (sv && !json_is_null(sv) && !json_is_boolean(sv))
        return *err = req_errf("send_images must be true or false"), false;
    *send = !sv || json_is_null(sv) || json_is_true(sv);
    if (!req_check_size(w, h, "width x height", err))
        return false;
    req_lora_scales(o, "", p->lora_scales, err);   /* as loaded */
    if (!lora_tags(prompt ? prompt : "", p, &p->prompt, err))
        return false;
    p->negative = strdup(neg ? neg : "");
    p->steps = (int)steps;
    p->guidance = (float)cfg;
    p->width = (int)w;
    p->height = (int)h;
    p->batch = 1;
    p->runs = (int)(bs * ni);
    p->strength = (float)strength;
    if (!p->prompt || !p->negative)
        return *err = req_errf("out of memory"), false;
    if (!img2img)
        return true;
    if (!json_is_array(imgs) || json_array_size(imgs) != 1 ||
        !json_is_string(json_array_get(imgs, 0)))
        return *err = req_errf("init_images must be an array of one base64 image"), false;
    if ((int)(steps * strength) < 1)
        return *err = req_errf("denoising_strength %g with %lld steps runs no step "
                               "(int(steps x strength) must be at least 1)", strength, steps), false;
    if (!req_image("init_images[0]", json_string_value(json_array_get(imgs, 0)), p->width,
                   p->height, false, &p->init_rgb, err))
        return false;
    if (mask && !req_image("mask", mask, p->width, p->height, true, &p->mask, err))
        return false;
    p->edit = true;
    p->inpaint = p->mask != NULL;
    if (p->mask && invert)
        for (size_t i = 0; i < (size_t)p->width * p->height; i++)
            p->mask[i] = (uint8_t)(255 - p->mask[i]);
    return true;
}

/* A1111's "info": a JSON string with the seeds and the settings. */
static char *info_text(const serve_job *j, const char *sampler_name)
{
    const serve_params *p = &j->prm;
    json_t *o = json_object();
    json_t *prompts = json_array(), *negs = json_array(), *seeds = json_array();
    json_t *subseeds = json_array(), *texts = json_array();
    for (int k = 0; k < p->runs; k++) {
        json_array_append_new(prompts, json_string(p->prompt));
        json_array_append_new(negs, json_string(p->negative));
        json_array_append_new(seeds, json_integer((json_int_t)(p->seed + (uint64_t)k)));
        json_array_append_new(subseeds, json_integer(-1));
    }
    for (int k = 0; k < j->n_images; k++)
        json_array_append_new(texts, json_string(j->images[k].infotext ? j->images[k].infotext
                                                                         : ""));
    df_rec_set_str(o, "prompt", p->prompt);
    json_object_set_new(o, "all_prompts", prompts);
    df_rec_set_str(o, "negative_prompt", p->negative);
    json_object_set_new(o, "all_negative_prompts", negs);
    df_rec_set_int(o, "seed", (long long)p->seed);
    json_object_set_new(o, "all_seeds", seeds);
    df_rec_set_int(o, "subseed", -1);
    json_object_set_new(o, "all_subseeds", subseeds);
    df_rec_set_int(o, "subseed_strength", 0);
    df_rec_set_int(o, "width", p->width);
    df_rec_set_int(o, "height", p->height);
    df_rec_set_str(o, "sampler_name", sampler_name);
    df_rec_set_float(o, "cfg_scale", p->guidance);
    df_rec_set_int(o, "steps", p->steps);
    df_rec_set_int(o, "batch_size", p->runs);
    json_object_set_new(o, "restore_faces", json_false());
    df_rec_set_str(o, "sd_model_name", g_cfg.model_name);
    if (p->edit)
        df_rec_set_float(o, "denoising_strength", p->strength);
    df_rec_set_int(o, "index_of_first_image", 0);
    json_object_set_new(o, "infotexts", texts);
    json_object_set_new(o, "styles", json_array());
    df_rec_set_int(o, "clip_skip", 1);
    json_object_set_new(o, "is_using_inpainting_conditioning", json_false());
    df_rec_set_str(o, "version", "diffyface");
    char *s = df_rec_dumps(o);
    json_decref(o);
    return s;
}

static void generate(const serve_request *rq, serve_reply *r, bool img2img)
{
    char *err = NULL;
    bool send = true;
    json_t *o = req_parse_object(rq, &err);
    serve_job *j = o ? job_new() : NULL;
    if (o && !j)
        err = req_errf("out of memory");
    if (j && !params(o, img2img, &j->prm, &send, &err)) {
        job_release(j);
        j = NULL;
    }
    if (!j) {
        reply_error(r, 400, "%s", err ? err : "bad request");
        free(err);
        json_decref(o);
        return;
    }
    j->keep_png = send;
    r->seed = (long long)j->prm.seed;
    r->has_seed = true;
    int pos, rc = queue_submit(j, &pos);
    if (rc != 0) {
        r->retry_after = 10;
        reply_error(r, 503, rc == -1 ? "the queue is full; try again later"
                                     : "the server is shutting down");
        json_decref(o);
        job_release(j);
        return;
    }
    queue_wait(j, rq->conn_fd);
    r->pipeline_seconds = j->pipeline_seconds;
    memcpy(r->stage_seconds, j->stage_seconds, sizeof r->stage_seconds);
    r->has_stages = true;
    /* An interrupted job answers with the images it made, as A1111 does. */
    if (j->state == JOB_FAILED) {
        reply_error(r, j->error_status ? j->error_status : 500, "%s",
                    j->error ? j->error : "failed");
        json_decref(o);
        job_release(j);
        return;
    }
    const char *sname = a1111_name(j->prm.sched);
    json_t *images = json_array();
    for (int k = 0; send && k < j->n_images; k++) {
        char *s = req_base64(j->images[k].png, j->images[k].png_len);
        json_array_append_new(images, s ? json_string(s) : json_null());
        free(s);
    }
    r->images = j->n_images;
    /* "parameters": the request with A1111's defaults for what it left out,
     * and without the uploaded images (as A1111 without include_init_images). */
    json_t *pa = json_deep_copy(o);
    df_rec_set_str(pa, "prompt", j->prm.prompt);
    df_rec_set_str(pa, "negative_prompt", j->prm.negative);
    df_rec_set_int(pa, "seed", (long long)j->prm.seed);
    df_rec_set_int(pa, "steps", j->prm.steps);
    df_rec_set_float(pa, "cfg_scale", j->prm.guidance);
    df_rec_set_int(pa, "width", j->prm.width);
    df_rec_set_int(pa, "height", j->prm.height);
    df_rec_set_str(pa, "sampler_name", sname);
    if (!json_object_get(pa, "batch_size"))
        df_rec_set_int(pa, "batch_size", 1);
    if (!json_object_get(pa, "n_iter"))
        df_rec_set_int(pa, "n_iter", 1);
    if (img2img) {
        df_rec_set_float(pa, "denoising_strength", j->prm.strength);
        json_object_set_new(pa, "init_images", json_null());
        json_object_set_new(pa, "mask", json_null());
    }
    char *info = info_text(j, sname);
    json_t *a = json_object();
    json_object_set_new(a, "images", images);
    json_object_set_new(a, "parameters", pa);
    json_object_set_new(a, "info", json_string(info ? info : "{}"));
    free(info);
    if (j->state == JOB_CANCELLED)
        r->error = req_errf("interrupted");
    reply_json(r, 200, a);
    json_decref(o);
    job_drop_payload(j);
    job_release(j);
}

static void progress(serve_reply *r)
{
    job_view v;
    int queued = 0;
    bool busy = queue_running_view(&v, &queued);
    double done = 0, eta = 0;
    if (busy && v.runs > 0) {
        double within = v.stage && !strcmp(v.stage, "vae") ? 1.0
                      : v.steps ? (double)v.step / v.steps : 0;
        done = (v.run + within) / v.runs;
        double el = df_now() - v.t_start;
        eta = done > 0 ? el / done - el : 0;
    }
    json_t *st = json_object();
    json_object_set_new(st, "skipped", json_false());
    json_object_set_new(st, "interrupted", json_false());
    df_rec_set_str(st, "job", busy ? "txt2img" : "");
    df_rec_set_int(st, "job_count", queued + busy);
    df_rec_set_str(st, "job_timestamp", "0");
    df_rec_set_int(st, "job_no", busy ? v.run : 0);
    df_rec_set_int(st, "sampling_step", busy ? v.step : 0);
    df_rec_set_int(st, "sampling_steps", busy ? v.steps : 0);
    json_t *o = json_object();
    df_rec_set_num(o, "progress", round(done * 1e4) / 1e4);
    df_rec_set_num(o, "eta_relative", round(eta * 1e3) / 1e3);
    json_object_set_new(o, "state", st);
    json_object_set_new(o, "current_image", json_null());
    json_object_set_new(o, "textinfo", json_null());
    reply_json(r, 200, o);
}

static void list_samplers(serve_reply *r)
{
    json_t *a = json_array();
    for (size_t i = 0; i < N_SAMPLERS; i++) {
        if (!strcmp(samplers[i].a1111, "PNDM"))
            continue;              /* PLMS's other name, not A1111's */
        json_t *e = json_object();
        df_rec_set_str(e, "name", samplers[i].a1111);
        json_t *al = json_array();
        json_array_append_new(al, json_string(samplers[i].ours));
        json_object_set_new(e, "aliases", al);
        json_object_set_new(e, "options", json_object());
        json_array_append_new(a, e);
    }
    reply_json(r, 200, a);
}

static void sd_models(serve_reply *r)
{
    json_t *e = json_object();
    df_rec_set_str(e, "title", g_cfg.model_name);
    df_rec_set_str(e, "model_name", g_cfg.model_name);
    json_object_set_new(e, "hash", json_null());
    json_object_set_new(e, "sha256", json_null());
    df_rec_set_str(e, "filename", g_cfg.model);
    json_object_set_new(e, "config", json_null());
    json_t *a = json_array();
    json_array_append_new(a, e);
    reply_json(r, 200, a);
}

bool a1111_route(const serve_request *rq, serve_reply *r)
{
    const char *u = rq->url;
    if (strncmp(u, "/sdapi/v1/", 10))
        return false;
    u += 10;
    bool post = !strcmp(rq->method, "POST"), get = !strcmp(rq->method, "GET");
    if (!strcmp(u, "txt2img") && post) {
        generate(rq, r, false);
    } else if (!strcmp(u, "img2img") && post) {
        generate(rq, r, true);
    } else if (!strcmp(u, "progress") && get) {
        progress(r);
    } else if (!strcmp(u, "interrupt") && post) {
        queue_interrupt_running();
        reply_json(r, 200, json_object());
    } else if (!strcmp(u, "sd-models") && get) {
        sd_models(r);
    } else if (!strcmp(u, "samplers") && get) {
        list_samplers(r);
    } else if (!strcmp(u, "options") && get) {
        json_t *o = json_object();
        df_rec_set_str(o, "sd_model_checkpoint", g_cfg.model_name);
        reply_json(r, 200, o);
    } else if (!strcmp(u, "txt2img") || !strcmp(u, "img2img") || !strcmp(u, "interrupt")) {
        reply_error(r, 405, "%s %s: use POST", rq->method, rq->url);
    } else if (!strcmp(u, "progress") || !strcmp(u, "sd-models") || !strcmp(u, "samplers") ||
               !strcmp(u, "options")) {
        reply_error(r, 405, "%s %s: use GET", rq->method, rq->url);
    } else {
        reply_error(r, 404, "no such endpoint: %s %s", rq->method, rq->url);
    }
    return true;
}
