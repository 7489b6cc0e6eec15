/* df-sample - text to image with Stable Diffusion 2.x (+ LoRAs) on the CPU.
 *
 * Prompts come from -p (one job) or, without -p, as JSON Lines records on
 * stdin (each may set prompt, negative_prompt, seed, steps, guidance,
 * scheduler, width, height, batch, init_image, mask, strength). With an init
 * image (and a mask) the job is img2img (inpainting); the files are only
 * loaded and sized here (lib/io/edit_image.h), the pipeline does the rest.
 * Each image is written as a PNG with its generation parameters in text
 * chunks, and described by one record on stdout. A prompt that fails (bad
 * field, NaN during sampling) gives a record with "error"; the run goes on.
 * Tested by tests/tools/test-df-sample.sh and test-df-sample-edit.sh. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gen_params.h"
#include "edit_image.h"
#include "image.h"
#include "jsonl.h"
#include "log.h"
#include "lora.h"
#include "memory.h"
#include "ops.h"
#include "pipeline.h"
#include "safetensors.h"
#include "scheduler.h"

static const char usage_text[] =
    "usage: df-sample --model DIR|FILE [-p PROMPT] [-n NEGATIVE] [--lora FILE[:SCALE]]...\n"
    "                 [--steps N] [--guidance G] [--scheduler NAME] [--seed S]\n"
    "                 [--width W] [--height H] [--batch N] [--out DIR] [-t THREADS]\n"
    "                 [--latents FILE] [--save-latents FILE] [--variant fp16]\n"
    "                 [--config DIR] [--prediction v|epsilon]\n"
    "                 [--init-image FILE [--mask FILE] [--strength S]]\n"
    "                 [--keep-models] [--strict] [--quiet|--progress]\n"
    "Generates images from text with a Stable Diffusion 2.x diffusers folder.\n"
    "Without -p, reads prompt records (JSON Lines) on stdin. Writes PNGs under --out\n"
    "and one record per image on stdout. See df-sample(1).\n"
    "\n"
    "  --model DIR            diffusers folder (model_index.json, unet/, vae/, ...)\n"
    "  --model FILE           single-file checkpoint (original SD layout, .safetensors)\n"
    "  --variant fp16         use the *.fp16.safetensors weight files\n"
    "  --config DIR           with --model FILE: configs and tokenizer of this diffusers\n"
    "                         folder instead of the built-in SD 2.1 ones\n"
    "  --prediction v|epsilon with --model FILE: the UNet's prediction type (default: v\n"
    "                         for sample_size 96, the 768 px models, else epsilon)\n"
    "  --lora FILE[:SCALE]    merge a LoRA (PEFT, diffusers or kohya keys); repeatable\n"
    "  -p, --prompt TEXT      prompt (else JSONL records on stdin)\n"
    "  -n, --negative-prompt TEXT   negative prompt (default \"\")\n"
    "  --steps N              inference steps (50)\n"
    "  --guidance G           classifier-free guidance scale (7.5; <= 1 disables CFG)\n"
    "  --scheduler NAME       ddim, ddpm, pndm, euler, euler_ancestral, lms, dpmpp_2m,\n"
    "                         dpmpp_2m_karras, unipc, ... (default: the model's own)\n"
    "  --seed S               torch CPU generator seed (default: random, recorded)\n"
    "  --width W, --height H  image size, multiples of 8 (default: the model's)\n"
    "  --batch N              images per prompt (1)\n"
    "  --out DIR              where PNGs go (\".\")\n"
    "  -t, --threads N        compute threads (default: all cores)\n"
    "  --latents FILE         initial latents: safetensors with one F32 [N,4,h,w] tensor\n"
    "  --save-latents FILE    write the final latents (before the VAE) as safetensors\n"
    "  --init-image FILE      img2img: start from this image (JPEG/PNG), resized to the\n"
    "                         output size (default: its own, rounded down to 8)\n"
    "  --mask FILE            inpainting: white (>= 128 gray) is repainted, black kept;\n"
    "                         same size as the init image (output: the model's size)\n"
    "  --strength S           share of the schedule run, 0 < S <= 1 (0.8; 1 with --mask)\n"
    "  --keep-models          keep models loaded between prompts (faster, more memory)\n"
    "  --strict               exit 1 if any prompt failed\n"
    "  --quiet, --progress    no progress / progress even when stderr is not a terminal\n"
    "  -h, --help             this help\n";

typedef struct {
    const char *model, *variant, *prompt, *negative, *scheduler, *out_dir;
    const char *config_dir, *prediction;   /* single-file models */
    const char *latents_file, *save_latents;
    const char *init_image, *mask;   /* img2img / inpainting inputs (records may override) */
    float strength;                  /* 0: not given (0.8 for img2img, 1 for inpainting) */
    int steps, width, height, batch, threads;
    float guidance;
    unsigned long long seed;
    int have_seed, strict, keep;
    int given;                    /* bits: 1 --width, 2 --height, 4 --batch given */
    df_progress_mode progress;
    json_t *loras;                /* [{"file":..., "scale":...}] for the records */
    char *lora_prompt;            /* " <lora:name:scale>..." for the parameters chunk */
    char *lora_hashes;            /* "name: hash12, ..." */
} options;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { (void)sig; interrupted = 1; }

/* Append printf output to a malloc'd string (*s may be NULL). */
static void append(char **s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(char **s, const char *fmt, ...)
{
    char *add, *cat;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&add, fmt, ap);
    va_end(ap);
    if (n < 0 || asprintf(&cat, "%s%s", *s ? *s : "", add) < 0) {
        df_error("out of memory");
        exit(1);
    }
    free(add);
    free(*s);
    *s = cat;
}

static float parse_float(const char *opt, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !isfinite(v))
        df_usage_error("%s: '%s' is not a number", opt, s);
    return (float)v;
}

static unsigned long long parse_seed(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || s[0] == '-')
        df_usage_error("--seed: '%s' is not a non-negative whole number", s);
    return v;
}

static unsigned long long random_seed(void)
{
    unsigned long long s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1)
        s = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
    if (f)
        fclose(f);
    return s & 0xffffffffffffULL;   /* keep it readable */
}

/* The strength a job uses: the record's, --strength, or diffusers' default
 * (0.8 for img2img, 1 for inpainting). */
static float strength_of(const options *o, const json_t *rec)
{
    double d;
    if (rec && df_rec_num(rec, "strength", &d))
        return (float)d;
    if (o->strength != 0.0f)
        return o->strength;
    int inpaint = o->mask || (rec && df_rec_str(rec, "mask"));
    return inpaint ? 1.0f : 0.8f;
}

/* diffusers' int(steps * strength), strength read as the decimal given. */
static int init_steps(int steps, float strength)
{
    char buf[32];
    df_float_str(strength, buf);
    return (int)(steps * strtod(buf, NULL));
}

enum { O_MODEL = 256, O_VARIANT, O_LORA, O_STEPS, O_GUIDANCE, O_SCHED, O_SEED, O_WIDTH,
       O_HEIGHT, O_BATCH, O_OUT, O_LATENTS, O_SAVE, O_KEEP, O_STRICT, O_QUIET, O_PROGRESS,
       O_INIT, O_MASK, O_STRENGTH,
       O_CONFIG, O_PREDICTION };

static void parse_args(int argc, char **argv, options *o, df_pipeline **pipe)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL}, {"variant", required_argument, 0, O_VARIANT},
        {"lora", required_argument, 0, O_LORA}, {"prompt", required_argument, 0, 'p'},
        {"negative-prompt", required_argument, 0, 'n'}, {"steps", required_argument, 0, O_STEPS},
        {"guidance", required_argument, 0, O_GUIDANCE}, {"scheduler", required_argument, 0, O_SCHED},
        {"seed", required_argument, 0, O_SEED}, {"width", required_argument, 0, O_WIDTH},
        {"height", required_argument, 0, O_HEIGHT}, {"batch", required_argument, 0, O_BATCH},
        {"out", required_argument, 0, O_OUT}, {"threads", required_argument, 0, 't'},
        {"latents", required_argument, 0, O_LATENTS}, {"save-latents", required_argument, 0, O_SAVE},
        {"init-image", required_argument, 0, O_INIT}, {"mask", required_argument, 0, O_MASK},
        {"strength", required_argument, 0, O_STRENGTH},
        {"keep-models", no_argument, 0, O_KEEP}, {"strict", no_argument, 0, O_STRICT},
        {"quiet", no_argument, 0, O_QUIET}, {"progress", no_argument, 0, O_PROGRESS},
        {"config", required_argument, 0, O_CONFIG},
        {"prediction", required_argument, 0, O_PREDICTION},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *loras[64];
    int nl = 0, c;
    while ((c = getopt_long(argc, argv, "hp:n:t:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); exit(0);
        case O_MODEL: o->model = optarg; break;
        case O_VARIANT: o->variant = optarg; break;
        case O_CONFIG: o->config_dir = optarg; break;
        case O_PREDICTION: o->prediction = optarg; break;
        case O_LORA:
            if (nl == 64)
                df_usage_error("at most 64 --lora options");
            loras[nl++] = optarg;
            break;
        case 'p': o->prompt = optarg; break;
        case 'n': o->negative = optarg; break;
        case O_STEPS: o->steps = (int)df_parse_long_arg("--steps", optarg, 1, 1000); break;
        case O_GUIDANCE: o->guidance = parse_float("--guidance", optarg); break;
        case O_SCHED: o->scheduler = optarg; break;
        case O_SEED: o->seed = parse_seed(optarg); o->have_seed = 1; break;
        case O_WIDTH: o->width = (int)df_parse_long_arg("--width", optarg, 8, 8192); o->given |= 1; break;
        case O_HEIGHT: o->height = (int)df_parse_long_arg("--height", optarg, 8, 8192); o->given |= 2; break;
        case O_BATCH: o->batch = (int)df_parse_long_arg("--batch", optarg, 1, 64); o->given |= 4; break;
        case O_OUT: o->out_dir = optarg; break;
        case 't': o->threads = (int)df_parse_long_arg("--threads", optarg, 1, 1024); break;
        case O_LATENTS: o->latents_file = optarg; break;
        case O_SAVE: o->save_latents = optarg; break;
        case O_INIT: o->init_image = optarg; break;
        case O_MASK: o->mask = optarg; break;
        case O_STRENGTH:
            o->strength = parse_float("--strength", optarg);
            if (!(o->strength > 0.0f && o->strength <= 1.0f))
                df_usage_error("--strength: '%s' is outside (0, 1]", optarg);
            break;
        case O_KEEP: o->keep = 1; break;
        case O_STRICT: o->strict = 1; break;
        case O_QUIET: o->progress = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: o->progress = DF_PROGRESS_ALWAYS; break;
        default: df_usage_error("unknown option");
        }
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->model)
        df_usage_error("--model DIR is required");
    if (o->mask && !o->init_image)
        df_usage_error("--mask needs --init-image");
    if (o->strength != 0.0f && !o->init_image)
        df_usage_error("--strength needs --init-image");
    if (o->init_image && o->latents_file)
        df_usage_error("--latents and --init-image do not go together");
    if (o->init_image && o->prompt && init_steps(o->steps, strength_of(o, NULL)) < 1)
        df_usage_error("--strength %g with --steps %d runs no step (int(steps * strength) = 0)",
                       (double)strength_of(o, NULL), o->steps);
    if (o->variant && strcmp(o->variant, "fp16"))
        df_usage_error("--variant: only 'fp16' is known");
    if (o->prediction && strcmp(o->prediction, "v") && strcmp(o->prediction, "epsilon"))
        df_usage_error("--prediction: 'v' or 'epsilon'");
    struct stat msb;
    bool found = stat(o->model, &msb) == 0, is_dir = found && S_ISDIR(msb.st_mode);
    if (found && !is_dir && o->variant)
        df_usage_error("--variant is for diffusers folders (a single file has its dtype inside)");
    if (is_dir && (o->config_dir || o->prediction))
        df_usage_error("--config and --prediction are for single-file models (--model FILE)");
    if (o->scheduler) {
        df_scheduler *s;
        if (df_scheduler_create(o->scheduler, NULL, NULL, &s) != DF_OK)
            df_usage_error("--scheduler: %s", df_last_error());
        df_scheduler_free(s);
    }
    /* Before anything is loaded: a run that cannot write fails at once. */
    struct stat sb;
    if (mkdir(o->out_dir, 0777) != 0 && errno != EEXIST) {
        df_error("--out %s: %s", o->out_dir, strerror(errno));
        exit(1);
    }
    if (stat(o->out_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        df_error("--out %s: not a directory", o->out_dir);
        exit(1);
    }
    df_pipeline_open_opts oo = {.variant = o->variant, .config_dir = o->config_dir,
                                .prediction = o->prediction};
    if (df_pipeline_open_model(o->model, &oo, pipe) != DF_OK) {
        df_error("%s", df_last_error());
        exit(1);
    }
    const char *notes = df_pipeline_notes(*pipe);
    while (notes && *notes) {
        const char *nl = strchr(notes, '\n');
        int len = nl ? (int)(nl - notes) : (int)strlen(notes);
        df_warn("%.*s", len, notes);
        notes += len + (nl != NULL);
    }
    int m = df_pipeline_size_multiple(*pipe);
    if (o->width % m)
        df_usage_error("--width %d is not a multiple of %d", o->width, m);
    if (o->height % m)
        df_usage_error("--height %d is not a multiple of %d", o->height, m);
    o->loras = json_array();
    for (int i = 0; i < nl; i++) {
        char *path;
        float scale;
        if (df_lora_parse_arg(loras[i], &path, &scale) != DF_OK)
            df_usage_error("--lora: %s", df_last_error());
        df_lora_report rep;
        if (df_pipeline_add_lora(*pipe, path, scale, &rep) != DF_OK) {
            df_error("%s", df_last_error());
            exit(1);
        }
        /* Say what matched: a silent non-match is the usual LoRA surprise.
         * A complete match is information (--quiet drops it), a partial one
         * a warning with every tensor left over. */
        char sc[32], name[256], hash[13];
        df_float_str(scale, sc);
        if (rep.n_applied == rep.n_tensors) {
            if (o->progress != DF_PROGRESS_NEVER)
                fprintf(stderr, "%s: %s: %s format, all %zu tensors applied (%zu UNet and %zu "
                        "text-encoder weights changed, scale %s)\n", df_progname(), path,
                        rep.format, rep.n_tensors, rep.n_unet_pairs, rep.n_te_pairs, sc);
        } else {
            df_warn("%s: %s format, only %zu of %zu tensors applied (%zu UNet and %zu "
                    "text-encoder weights changed, scale %s)", path, rep.format, rep.n_applied,
                    rep.n_tensors, rep.n_unet_pairs, rep.n_te_pairs, sc);
        }
        for (size_t k = 0; k < rep.n_unmatched; k++)
            df_warn("%s: tensor matched nothing: %s", path, rep.unmatched[k]);
        if (df_gen_file_hash12(path, hash) != DF_OK) {
            df_error("%s", df_last_error());
            exit(1);
        }
        df_gen_lora_name(path, name, sizeof name);
        append(&o->lora_prompt, " <lora:%s:%s>", name, sc);
        append(&o->lora_hashes, "%s%s: %s", o->lora_hashes ? ", " : "", name, hash);
        json_t *l = json_object();
        df_rec_set_str(l, "file", path);
        df_rec_set_float(l, "scale", scale);
        json_array_append_new(o->loras, l);
        df_lora_report_free(&rep);
        free(path);
    }
}

/* "3 tensors" or "F16 [1,4,8,8]": what a --latents file holds. */
static void describe_tensors(const df_safetensors *st, char *buf, size_t cap)
{
    if (df_st_count(st) != 1) {
        snprintf(buf, cap, "%zu tensors", df_st_count(st));
        return;
    }
    const df_st_tensor *t = df_st_at(st, 0);
    size_t o = (size_t)snprintf(buf, cap, "%s [", df_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* Initial latents from --latents: one F32 tensor [N,C,h,w], N and the
 * image size (h*m, w*m) within what --batch, --width and --height accept. */
static float *read_latents(const char *path, int C, int m, int *N, int *h, int *w)
{
    df_safetensors *st;
    if (df_st_open(path, &st) != DF_OK) {
        df_error("%s", df_last_error());
        exit(1);
    }
    const df_st_tensor *t = df_st_count(st) == 1 ? df_st_at(st, 0) : NULL;
    if (!t || t->dtype != DF_DTYPE_F32 || t->ndim != 4 || t->shape[1] != C ||
        t->shape[0] < 1 || t->shape[0] > 64 || t->shape[2] < 1 || t->shape[2] > 8192 / m ||
        t->shape[3] < 1 || t->shape[3] > 8192 / m) {
        char found[160];
        describe_tensors(st, found, sizeof found);
        df_error("%s: want exactly one F32 tensor of shape [N,%d,h,w] (N <= 64, h and w "
                 "from 1 to %d); found %s", path, C, 8192 / m, found);
        exit(1);
    }
    float *v = malloc(t->numel * sizeof *v);
    if (!v || df_st_to_f32(t, v) != DF_OK) {
        df_error("%s: %s", path, df_last_error());
        exit(1);
    }
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i])) {
            df_error("%s: non-finite value (NaN or Inf) at element %zu", path, i);
            exit(1);
        }
    *N = (int)t->shape[0];
    *h = (int)t->shape[2];
    *w = (int)t->shape[3];
    df_st_close(st);
    return v;
}

typedef struct {
    df_progress prog;
    df_progress_mode mode;
    const char *label;
} step_progress;

static void on_stage(void *ctx, const char *stage)
{
    step_progress *sp = ctx;
    if (sp->mode == DF_PROGRESS_ALWAYS || (sp->mode == DF_PROGRESS_AUTO && isatty(2)))
        fprintf(stderr, "%s: %s: %s\n", df_progname(), sp->label, stage);
}

static void on_step(void *ctx, int i, int n, float t, const float *u, const float *l)
{
    step_progress *sp = ctx;
    if (i == 0)
        df_progress_start(&sp->prog, "step", n, sp->mode);
    df_progress_add(&sp->prog, 1, 0);
    if (i + 1 == n)
        df_progress_finish(&sp->prog);
}

/* "out/00012-1234.png" not yet taken. */
static char *next_png_name(const char *dir, unsigned long long seed, int *counter)
{
    char *path = NULL;
    for (;;) {
        free(path);
        if (asprintf(&path, "%s/%05d-%llu.png", dir, (*counter)++, seed) < 0)
            return NULL;
        if (access(path, F_OK) != 0)
            return path;
    }
}

static df_status save_latents(const char *path, const float *lat, int N, int C, int h, int w)
{
    df_st_writer *wr = df_st_writer_new();
    if (!wr)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    df_st_writer_add(wr, "latents", DF_DTYPE_F32, 4, (int64_t[]){N, C, h, w}, lat);
    df_st_writer_meta(wr, "format", "pt");
    df_status st = df_st_write(wr, path);
    df_st_writer_free(wr);
    return st;
}

/* FILE for the first image, FILE-<k> (before the extension) for later ones. */
static char *numbered(const char *path, int k)
{
    char *s;
    if (k == 0)
        return strdup(path);
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash))
        dot = path + strlen(path);
    if (asprintf(&s, "%.*s-%d%s", (int)(dot - path), path, k, dot) < 0)
        return NULL;
    return s;
}

typedef struct {
    options *o;
    df_pipeline *pipe;
    const float *init;          /* --latents */
    int init_n, init_h, init_w;
    int png_counter, latents_counter;
    long failed, images;
} run_state;

static void fail_record(run_state *rs, json_t *rec, const char *fmt, const char *detail)
{
    df_rec_set_error(rec, fmt, detail);
    df_error("%s", df_rec_str(rec, "error"));
    rs->failed++;
    if (df_rec_write_line(1, rec) != DF_OK) {
        df_error("stdout: %s", df_last_error());
        exit(1);
    }
}

/* A record field that is present must have the right type and range: a
 * typo'd value silently replaced by the default is the worst outcome. */
static int check_fields(const json_t *rec, char **err)
{
    static const char *const strs[] = {"prompt", "negative_prompt", "scheduler", "init_image",
                                       "mask"};
    static const struct { const char *key; long long lo, hi; } ints[] = {
        {"steps", 1, 1000}, {"width", 8, 8192}, {"height", 8, 8192}, {"batch", 1, 64},
        {"seed", 0, LLONG_MAX}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        json_t *v = json_object_get(rec, strs[i]);
        if (v && !json_is_string(v))
            return asprintf(err, "\"%s\" must be a string", strs[i]), 0;
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        json_t *v = json_object_get(rec, ints[i].key);
        if (v && (!json_is_integer(v) || json_integer_value(v) < ints[i].lo ||
                  json_integer_value(v) > ints[i].hi))
            return asprintf(err, "\"%s\" must be a whole number from %lld to %lld", ints[i].key,
                            ints[i].lo, ints[i].hi), 0;
    }
    json_t *g = json_object_get(rec, "guidance");
    if (g && (!json_is_number(g) || !isfinite(json_number_value(g))))
        return asprintf(err, "\"guidance\" must be a number"), 0;
    json_t *sv = json_object_get(rec, "strength");
    if (sv && (!json_is_number(sv) || !(json_number_value(sv) > 0) || json_number_value(sv) > 1))
        return asprintf(err, "\"strength\" must be a number in (0, 1]"), 0;
    return 1;
}

/* An img2img/inpainting job's pixels, at its output size. */
typedef struct {
    df_image init;
    uint8_t *mask;
} edit_bufs;

static void edit_bufs_free(edit_bufs *eb)
{
    df_image_free(&eb->init);
    free(eb->mask);
    eb->mask = NULL;
}

/* Decode the job's init image and mask (the record's, else the options'),
 * bring them to the output size as diffusers' image processor does (lib/io/
 * edit_image.h) and point pp at them; the record says what was used. A
 * job without an init image is left alone. 0 with *err on failure. */
static int edit_inputs(run_state *rs, json_t *rec, df_pipeline_params *pp, edit_bufs *eb,
                       char **err)
{
    options *o = rs->o;
    const char *ip = df_rec_str(rec, "init_image"), *mp = df_rec_str(rec, "mask");
    ip = ip ? ip : o->init_image;
    mp = mp ? mp : o->mask;
    if (!ip) {
        if (mp || json_object_get(rec, "strength"))
            return asprintf(err, "\"mask\" and \"strength\" need an init image"), 0;
        return 1;
    }
    df_image_limits lim = {DF_IMAGE_DEFAULT_MAX_PIXELS};
    df_image src = {0}, msrc = {0};
    if (df_image_decode_file(ip, &lim, &src) != DF_OK)
        return asprintf(err, "init image %s: %s", ip, df_last_error()), 0;
    if (mp && df_image_decode_file(mp, &lim, &msrc) != DF_OK) {
        df_image_free(&src);
        return asprintf(err, "mask %s: %s", mp, df_last_error()), 0;
    }
    int ok = 1;
    if (mp && (msrc.w != src.w || msrc.h != src.h))
        ok = (asprintf(err, "mask %s is %dx%d, the init image %s %dx%d: they must be the same size",
                      mp, msrc.w, msrc.h, ip, src.w, src.h), 0);
    /* img2img's default size is the image's own, rounded down to a multiple
     * of 8 (diffusers' img2img takes no size); inpainting's the model's. */
    int dw, dh, m = df_pipeline_size_multiple(rs->pipe);
    if (ok && !mp) {
        if (df_edit_default_size(src.w, src.h, m, &dw, &dh) != DF_OK)
            ok = (asprintf(err, "init image %s: %s", ip, df_last_error()), 0);
        if (ok && !(o->given & 1) && !json_object_get(rec, "width"))
            pp->width = dw;
        if (ok && !(o->given & 2) && !json_object_get(rec, "height"))
            pp->height = dh;
    }
    if (ok && (pp->width % m || pp->height % m))
        ok = (asprintf(err, "width and height must be multiples of %d (got %dx%d)", m, pp->width,
                      pp->height), 0);
    if (ok && df_edit_fit_image(&src, pp->width, pp->height, &eb->init) != DF_OK)
        ok = (asprintf(err, "init image %s: %s", ip, df_last_error()), 0);
    if (ok && mp && df_edit_fit_mask(&msrc, pp->width, pp->height, &eb->mask) != DF_OK)
        ok = (asprintf(err, "mask %s: %s", mp, df_last_error()), 0);
    df_image_free(&src);
    df_image_free(&msrc);
    if (!ok) {
        edit_bufs_free(eb);
        return 0;
    }
    pp->init_image = eb->init.px;
    pp->mask = eb->mask;
    pp->strength = strength_of(o, rec);
    df_rec_set_str(rec, "init_image", ip);
    if (mp)
        df_rec_set_str(rec, "mask", mp);
    df_rec_set_float(rec, "strength", pp->strength);
    return 1;
}

/* Fill params from options overridden by the record's fields. */
static int params_from(run_state *rs, json_t *rec, df_pipeline_params *pp, char **err)
{
    if (!check_fields(rec, err))
        return 0;
    options *o = rs->o;
    pp->prompt = o->prompt;
    pp->negative_prompt = o->negative;
    pp->steps = o->steps;
    pp->guidance = o->guidance;
    pp->scheduler = o->scheduler;
    pp->width = o->width;
    pp->height = o->height;
    pp->batch = o->batch;
    pp->seed = o->have_seed ? o->seed : random_seed();
    const char *s;
    long long v;
    double d;
    if ((s = df_rec_str(rec, "prompt")))
        pp->prompt = s;
    if ((s = df_rec_str(rec, "negative_prompt")))
        pp->negative_prompt = s;
    if ((s = df_rec_str(rec, "scheduler")))
        pp->scheduler = s;
    if (df_rec_int(rec, "seed", &v))
        pp->seed = (uint64_t)v;
    if (df_rec_int(rec, "steps", &v))
        pp->steps = (int)(v < 1 || v > 1000 ? 0 : v);
    if (df_rec_num(rec, "guidance", &d))
        pp->guidance = (float)d;
    if (df_rec_int(rec, "width", &v))
        pp->width = (int)(v < 8 || v > 8192 ? 0 : v);
    if (df_rec_int(rec, "height", &v))
        pp->height = (int)(v < 8 || v > 8192 ? 0 : v);
    if (df_rec_int(rec, "batch", &v))
        pp->batch = (int)(v < 1 || v > 64 ? 0 : v);
    if (!pp->prompt)
        return asprintf(err, "record has no \"prompt\""), 0;
    if (pp->steps == 0 || pp->width == 0 || pp->height == 0 || pp->batch == 0)
        return asprintf(err, "steps, width, height or batch out of range"), 0;
    if (rs->init) {
        int m = df_pipeline_size_multiple(rs->pipe);
        if (pp->width != rs->init_w * m || pp->height != rs->init_h * m || pp->batch != rs->init_n)
            return asprintf(err, "--latents holds [%d,4,%d,%d]: size/batch must be %dx%d x %d",
                            rs->init_n, rs->init_h, rs->init_w, rs->init_w * m,
                            rs->init_h * m, rs->init_n), 0;
        pp->init_latents = rs->init;
    }
    return 1;
}

/* The short name of the scheduler a run used ("ddim", "dpmpp_2m_karras"), one
 * naming for the model's default, a class name and a short alias alike. */
static void scheduler_name(const df_pipeline *pipe, const df_pipeline_params *pp,
                           const df_pipeline_output *out, char *buf, size_t cap)
{
    df_scheduler *s;
    if (df_scheduler_create(pp->scheduler, df_pipeline_scheduler_config(pipe), NULL, &s) == DF_OK) {
        snprintf(buf, cap, "%s", df_scheduler_short_name(s));
        df_scheduler_free(s);
    } else {   /* not expected: the same config just built it */
        snprintf(buf, cap, "%s", pp->scheduler ? pp->scheduler : out->scheduler);
    }
}

static void write_image(run_state *rs, json_t *rec, const df_pipeline_params *pp,
                        const df_pipeline_output *out, const char *sched, int b, double seconds)
{
    options *o = rs->o;
    df_image img = {.w = out->width, .h = out->height,
                    .px = out->rgb + (size_t)b * out->width * out->height * 3};
    char *path = next_png_name(o->out_dir, pp->seed, &rs->png_counter);
    json_t *r = json_deep_copy(rec);
    df_rec_set_str(r, "file_name", path ? path : "");
    df_rec_set_str(r, "prompt", pp->prompt);
    df_rec_set_str(r, "negative_prompt", pp->negative_prompt ? pp->negative_prompt : "");
    df_rec_set_int(r, "seed", (long long)pp->seed);
    if (pp->batch > 1)
        df_rec_set_int(r, "batch_index", b);
    df_rec_set_int(r, "steps", pp->steps);
    df_rec_set_float(r, "guidance", pp->guidance);
    df_rec_set_str(r, "scheduler", sched);
    df_rec_set_int(r, "width", pp->width);
    df_rec_set_int(r, "height", pp->height);
    json_object_set(r, "loras", o->loras);
    /* Milliseconds: more digits are noise, and would print every real long. */
    df_rec_set_num(r, "seconds", round(seconds * 1000) / 1000);
    char *params = df_rec_dumps(r);
    /* A1111's form: LoRAs as <lora:name:scale> after the prompt and a
     * "Lora hashes" field, so tools that read these files see them. */
    df_gen_text gt = {.prompt = pp->prompt, .negative_prompt = pp->negative_prompt,
                      .lora_prompt = o->lora_prompt, .lora_hashes = o->lora_hashes,
                      .sampler = sched, .steps = pp->steps, .width = pp->width,
                      .height = pp->height, .guidance = pp->guidance, .seed = pp->seed,
                      .strength = pp->strength};
    char *a1111 = df_gen_a1111_text(&gt);
    if (!path || df_gen_png_write(path, &img, a1111, params, "diffyface df-sample") != DF_OK) {
        json_object_del(r, "file_name");
        fail_record(rs, r, "cannot write PNG: %s", df_last_error());
    } else {
        rs->images++;
        if (df_rec_write_line(1, r) != DF_OK) {
            df_error("stdout: %s", df_last_error());
            exit(1);
        }
    }
    json_decref(r);
    free(params);
    free(a1111);
    free(path);
}

static void run_one(run_state *rs, json_t *rec)
{
    if (df_rec_str(rec, "error")) {   /* a bad input line: pass on, counted */
        fail_record(rs, rec, "%s", df_rec_str(rec, "error"));
        return;
    }
    df_pipeline_params pp = {0};
    char *err = NULL;
    if (!params_from(rs, rec, &pp, &err)) {
        fail_record(rs, rec, "%s", err ? err : "bad record");
        free(err);
        return;
    }
    edit_bufs eb = {0};
    if (!edit_inputs(rs, rec, &pp, &eb, &err)) {
        fail_record(rs, rec, "%s", err ? err : "bad record");
        free(err);
        return;
    }
    step_progress sp = {.mode = rs->o->progress, .label = pp.prompt};
    df_pipeline_hooks hooks = {.ctx = &sp, .on_step = on_step, .on_stage = on_stage};
    df_pipeline_output out;
    double t0 = df_now();
    df_status st = df_pipeline_generate(rs->pipe, &pp, &hooks, &out);
    edit_bufs_free(&eb);   /* pp.strength stays for the text chunk; the pixels are done */
    pp.init_image = pp.mask = NULL;
    if (st != DF_OK && df_pipeline_load_failed(rs->pipe)) {
        df_error("%s", df_last_error());   /* the model is broken: every prompt would fail */
        exit(1);
    }
    if (st != DF_OK) {
        fail_record(rs, rec, "%s", df_last_error());
        return;
    }
    if (out.prompt_tokens > (size_t)out.max_tokens)
        df_warn("prompt is %zu tokens; truncated to %d as diffusers does: \"%.60s...\"",
                out.prompt_tokens, out.max_tokens, pp.prompt);
    if (out.negative_tokens > (size_t)out.max_tokens)
        df_warn("negative prompt is %zu tokens; truncated to %d", out.negative_tokens,
                out.max_tokens);
    double secs = df_now() - t0;
    if (rs->o->save_latents) {
        char *path = numbered(rs->o->save_latents, rs->latents_counter++);
        if (!path || save_latents(path, out.latents, out.batch, out.C, out.h, out.w) != DF_OK) {
            /* An output asked for and not written is a failed record. */
            fail_record(rs, rec, "--save-latents: %s", path ? df_last_error() : "out of memory");
            free(path);
            df_pipeline_output_free(&out);
            return;
        }
        df_rec_set_str(rec, "latents_file", path);
        free(path);
    }
    char sched[64];
    scheduler_name(rs->pipe, &pp, &out, sched, sizeof sched);
    for (int b = 0; b < out.batch; b++)
        write_image(rs, rec, &pp, &out, sched, b, secs / out.batch);
    df_pipeline_output_free(&out);
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    df_memory_keep_freed();
    /* With fd 1 closed, the next open() (a weight file, a PNG) would get it
     * and records would be written into that file. */
    if (fcntl(1, F_GETFD) < 0) {
        df_error("stdout: %s", strerror(errno));
        return 1;
    }
    options o = {.steps = 50, .guidance = 7.5f, .batch = 1, .out_dir = ".",
                 .progress = DF_PROGRESS_AUTO};
    df_pipeline *pipe;
    parse_args(argc, argv, &o, &pipe);
    if (o.threads)
        df_ops_set_threads(o.threads);
    df_pipeline_keep_loaded(pipe, o.keep);
    int dw, dh;
    df_pipeline_default_size(pipe, &dw, &dh);
    if (!o.width)
        o.width = dw;
    if (!o.height)
        o.height = dh;
    run_state rs = {.o = &o, .pipe = pipe};
    int input_failed = 0;
    if (o.latents_file) {
        int m = df_pipeline_size_multiple(pipe);
        float *init = read_latents(o.latents_file, df_pipeline_latent_channels(pipe), m,
                                   &rs.init_n, &rs.init_h, &rs.init_w);
        rs.init = init;
        if (((o.given & 1) && o.width != rs.init_w * m) ||
            ((o.given & 2) && o.height != rs.init_h * m) || ((o.given & 4) && o.batch != rs.init_n))
            df_usage_error("--latents %s holds [%d,C,%d,%d]: --width %d --height %d --batch %d "
                           "do not fit", o.latents_file, rs.init_n, rs.init_h, rs.init_w,
                           o.width, o.height, o.batch);
        o.width = rs.init_w * m;
        o.height = rs.init_h * m;
        o.batch = rs.init_n;
    }
    if (o.init_image) {
        json_t *probe = json_object();
        df_pipeline_params pp = {.width = o.width, .height = o.height};
        edit_bufs eb = {0};
        char *err = NULL;
        if (!edit_inputs(&rs, probe, &pp, &eb, &err)) {
            df_error("%s", err ? err : "out of memory");
            exit(1);
        }
        edit_bufs_free(&eb);
        json_decref(probe);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (o.prompt) {
        json_t *rec = json_object();
        run_one(&rs, rec);
        json_decref(rec);
    } else {
        if (isatty(0))
            df_warn("reading prompt records from the terminal (use -p for one prompt)");
        df_jsonl_reader r;
        df_jsonl_reader_init(&r, stdin);
        json_t *rec;
        df_status st;
        while (!interrupted && (st = df_jsonl_next(&r, &rec)) == DF_OK && rec) {
            run_one(&rs, rec);
            json_decref(rec);
        }
        df_jsonl_reader_free(&r);
        if (!interrupted && st != DF_OK) {
            df_error("stdin: %s", df_last_error());
            input_failed = 1;
        }
    }
    free((float *)rs.init);
    json_decref(o.loras);
    free(o.lora_prompt);
    free(o.lora_hashes);
    df_pipeline_free(pipe);
    if (interrupted)
        df_error("interrupted; %ld images written", rs.images);
    if (rs.failed)
        df_error("%ld prompts failed, %ld images written", rs.failed, rs.images);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        df_error("stdout: write error");
        return 1;
    }
    return interrupted || input_failed || (o.strict && rs.failed) ? 1 : 0;
}
