/* serve.h - what the parts of df-serve share: the server's settings, a job
 * (one request's generation), the reply a handler builds, and each part's
 * entry points. One file per job:
 *   df-serve.c        flags, model, signals, shutdown
 *   serve_http.c      libmicrohttpd plumbing: routing, body limit, auth, one record per request
 *   serve_reply.c     the answers: JSON, the APIs' error shapes
 *   serve_request.c   request limits: JSON fields, sizes, base64, uploaded images
 *   serve_queue.c     the job queue: one generation at a time, N waiting, cancel, disconnects
 *   serve_run.c       one job through the pipeline; PNGs saved with df-sample's text
 *   serve_gallery.c   the images under --out, rebuilt from its index at start
 *   serve_openai.c    POST /v1/images/generations
 *   serve_a1111.c     /sdapi/v1/...
 *   serve_page.c      the page (GET /), its private /api/..., /images/..., /health
 *   serve_page_html.c page.html's bytes, embedded at build time
 * Tested by tests/tools/test-df-serve*.sh; the request handlers also by
 * tests/fuzz/fuzz_serve.c. */
#ifndef DF_SERVE_H
#define DF_SERVE_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline.h"

#define SERVE_MAX_LORAS 16

typedef struct {
    const char *model, *variant, *config_dir, *prediction, *out_dir;
    const char *listen;            /* "HOST:PORT" */
    char *api_key;                 /* from --api-key-env's variable, or NULL */
    int queue_max, threads, max_steps, max_batch, max_prompt_chars;
    long long max_pixels;
    size_t max_body;
    double grace;
    char model_name[256];          /* basename of --model */
    char default_sched[64];        /* short name of the model's own scheduler */
    int width, height, size_multiple;  /* the model's default size */
    bool inpaint_unet;             /* a 9-channel inpainting UNet */
    int n_loras;
    char *lora_path[SERVE_MAX_LORAS];
    char lora_name[SERVE_MAX_LORAS][256];
    char lora_hash[SERVE_MAX_LORAS][13];
    float lora_scale[SERVE_MAX_LORAS]; /* as loaded */
    df_pipeline *pipe;
} serve_config;

extern serve_config g_cfg;

/* Resolved parameters of a job: what the pipeline is given, run `runs`
 * times with seed + r (A1111's one seed per image), each of batch `batch`
 * (df-sample's --seed S --batch B for the page and OpenAI). */
typedef struct {
    char *prompt, *negative;
    char *sched_arg;               /* passed to the pipeline: NULL = the model's own */
    char sched[64];                /* short name for records */
    int steps, width, height, batch, runs;
    float guidance, strength;
    uint64_t seed;
    float lora_scales[SERVE_MAX_LORAS];
    uint8_t *init_rgb, *mask;      /* (height,width,3) and (height,width), or NULL */
    bool edit, inpaint;            /* img2img / inpainting (kept after the pixels are freed) */
} serve_params;

void serve_params_free(serve_params *p);
/* The resolved parameters as the page API and the gallery show them. */
json_t *serve_params_json(const serve_params *p);

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED } job_state;
const char *serve_state_name(job_state s);

typedef struct {
    char name[64];                 /* file under --out */
    uint64_t seed;
    int batch_index, width, height;
    char *infotext;                /* the A1111 "parameters" text of its PNG */
    uint8_t *png;                  /* kept only for jobs that answer in base64 */
    size_t png_len;
} serve_image;

typedef struct serve_job {
    char id[33];
    int refs;                      /* under the queue lock */
    job_state state;
    serve_params prm;
    bool keep_png;
    atomic_bool stop;              /* cancel, client gone, shutdown */
    const char *stage;             /* "text encoder", "unet", "vae" or NULL */
    int step, steps;               /* progress within the current run */
    int run;                       /* current run (0-based) */
    serve_image *images;
    int n_images;
    char *error;                   /* when failed */
    int error_status;              /* HTTP status for a failure */
    double t_submit, t_start, t_end, pipeline_seconds;
    /* Seconds in each pipeline stage (text encoder, unet, vae), summed over
     * the runs: a component loaded again would show in its stage. */
    double stage_seconds[3], t_stage;
    struct serve_job *next;        /* queue order */
} serve_job;

/* serve_queue.c */
void queue_start(void);
serve_job *job_new(void);          /* refs 1, owned by the caller */
void job_release(serve_job *j);
/* 0: queued (position in *pos, 0 = next); -1: queue full; -2: shutting down.
 * The queue takes its own reference. */
int queue_submit(serve_job *j, int *pos);
serve_job *queue_find(const char *id);        /* new reference or NULL */
/* Wait until the job ends. conn_fd >= 0: a client closing that socket sets
 * the job's stop flag (it costs only that job). */
void queue_wait(serve_job *j, int conn_fd);
void queue_cancel(serve_job *j);
/* Free what a finished job no longer needs once answered (its PNG bytes,
 * the uploaded images): it may stay in the table for a while. */
void job_drop_payload(serve_job *j);
bool queue_interrupt_running(void);
/* Under the lock: a snapshot for progress views. */
typedef struct {
    job_state state;
    int position, step, steps, run, runs, n_images;
    const char *stage;
    double t_start;
} job_view;
void queue_view(serve_job *j, job_view *v);
/* The running job's view (false when idle), queued count. */
bool queue_running_view(job_view *v, int *queued);
void queue_lock(void);
void queue_unlock(void);
/* Stop taking jobs, cancel the queued ones, let the running one finish
 * within grace seconds, then stop it; returns when the worker is done. */
void queue_shutdown(double grace);

/* serve_run.c: the worker's work for one job. */
void run_job(serve_job *j);

/* serve_gallery.c */
df_status gallery_open(const char *dir);
void gallery_close(void);
/* A new file name "NNNNN-SEED.png" not yet taken (the worker's alone). */
void gallery_next_name(uint64_t seed, char name[64]);
df_status gallery_add(const char *name, uint64_t seed, int batch_index, int width, int height,
                      json_t *params);
json_t *gallery_json(void);        /* {"images": [...]} newest first */
bool gallery_has(const char *name);

/* A handler's answer. */
typedef struct {
    int status;
    char *body;                    /* malloc'd */
    size_t len;
    const char *ctype;
    int retry_after;               /* > 0: a Retry-After header */
    /* for the request's record */
    long long seed;
    bool has_seed;
    char *error;
    double pipeline_seconds;
    double stage_seconds[3];       /* text encoder, unet, vae */
    bool has_stages;
    int images;
} serve_reply;

typedef struct {
    const char *method, *url;
    const char *body;
    size_t body_len;
    int conn_fd;                   /* for disconnect detection while waiting */
    const char *host;              /* Host header, for absolute URLs */
} serve_request;

/* Reply helpers (serve_reply.c). JSON replies take ownership of v. */
void reply_json(serve_reply *r, int status, json_t *v);
void reply_error(serve_reply *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* OpenAI's error shape {"error": {"message", "type", "param", "code"}}. */
void reply_openai_error(serve_reply *r, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* serve_request.c: limits on what a client sends. Each returns false with
 * a one-line reason in *err (malloc'd) naming the field. */
json_t *req_parse_object(const serve_request *rq, char **err);
bool req_check_size(long long w, long long h, const char *wname, char **err);
bool req_get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                 char **err);
bool req_get_num(json_t *o, const char *key, double lo, double hi, double *out, char **err);
bool req_get_str(json_t *o, const char *key, size_t max_chars, const char **out, char **err);
bool req_prompt(json_t *o, const char *key, const char **out, char **err);
bool req_seed(json_t *o, const char *key, uint64_t *out, char **err);
/* A scheduler name (ours) into p->sched_arg / p->sched. */
bool req_scheduler(serve_params *p, const char *name, const char *field, char **err);
/* An image in base64 (bare or a data: URL): header checked against the
 * limit before decoding, then brought to w x h. rgb (w*h*3) or gray (w*h). */
bool req_image(const char *field, const char *b64, int w, int h, bool gray, uint8_t **out,
               char **err);
/* img2img's default size for an image (its own, rounded down to multiples
 * of the model's), from its header. */
bool req_image_size(const char *field, const char *b64, int *w, int *h, char **err);
/* LoRA scales: array of numbers, one per --lora. */
bool req_lora_scales(json_t *o, const char *key, float *scales, char **err);
char *req_base64(const uint8_t *buf, size_t n);
/* Decode standard base64 (padding optional, no whitespace); NULL on error. */
uint8_t *req_unbase64(const char *s, size_t len, size_t *n);
uint64_t req_random_seed(void);
char *req_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The APIs: each returns true when it handled the path. */
bool openai_route(const serve_request *rq, serve_reply *r);
bool a1111_route(const serve_request *rq, serve_reply *r);
bool page_route(const serve_request *rq, serve_reply *r);

/* serve_http.c */
df_status http_start(void);
void http_quiesce(void);
void http_stop(void);

/* The page (serve_page_html.c, the bytes of tools/df-serve/page.html). */
extern const char serve_page_html[] __asm__("serve_page_html");
extern const char serve_page_html_end[] __asm__("serve_page_html_end");

#endif
