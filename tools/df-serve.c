/* df-serve - keeps a Stable Diffusion model loaded and serves a web page,
 * OpenAI's Images API and the AUTOMATIC1111 API over HTTP, one generation
 * at a time with a queue behind it. This file: flags, the model (opened,
 * LoRAs checked, every component loaded once by a tiny warm-up generation
 * and kept), signals and shutdown. The parts are in tools/df-serve/ (see
 * serve.h). Tested by tests/tools/test-df-serve*.sh; timed by
 * tests/bench/bench-serve.sh. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen_params.h"
#include "jsonl.h"
#include "log.h"
#include "lora.h"
#include "memory.h"
#include "ops.h"
#include "pipeline.h"
#include "scheduler.h"
#include "serve.h"

serve_config g_cfg;

static const char usage_text[] =
    "usage: df-serve --model MODEL [--lora FILE[:SCALE]]... [--listen HOST:PORT] [--queue N]\n"
    "                [--out DIR] [-t THREADS] [--api-key-env VAR] [--grace S]\n"
    "                [--variant fp16] [--config DIR] [--prediction v|epsilon]\n"
    "                [--max-body BYTES] [--max-pixels N] [--max-steps N] [--max-batch N]\n"
    "                [--max-prompt-chars N]\n"
    "Keeps a Stable Diffusion 2.x model loaded and serves a web page, OpenAI's Images API\n"
    "and the AUTOMATIC1111 API. One record per request on stdout. See df-serve(1).\n"
    "\n"
    "  --model MODEL          diffusers folder or single-file .safetensors checkpoint\n"
    "  --variant fp16         use the *.fp16.safetensors weight files of a folder\n"
    "  --config DIR           single file: the diffusers folder whose configs to use\n"
    "  --prediction v|epsilon single file: what the UNet predicts\n"
    "  --lora FILE[:SCALE]    merge a LoRA (scale 1 by default); repeatable\n"
    "  --listen HOST:PORT     address to listen on (127.0.0.1:7860; port 0: any free one)\n"
    "  --queue N              requests that may wait behind the running one (8)\n"
    "  --out DIR              where images are saved and listed (df-serve-images)\n"
    "  -t, --threads N        compute threads (default: all cores)\n"
    "  --api-key-env VAR      every request needs 'Authorization: Bearer $VAR'\n"
    "  --grace S              on SIGTERM/SIGINT, let the running job finish this long (30)\n"
    "  --max-body BYTES       largest request body (20971520)\n"
    "  --max-pixels N         largest width x height (1048576)\n"
    "  --max-steps N          most steps (150)\n"
    "  --max-batch N          most images per request (8)\n"
    "  --max-prompt-chars N   longest prompt (2000 characters)\n"
    "  -h, --help             this help\n";

enum { O_MODEL = 256, O_VARIANT, O_CONFIG, O_PRED, O_LORA, O_LISTEN, O_QUEUE, O_OUT, O_KEY,
       O_GRACE, O_BODY, O_PIXELS, O_STEPS, O_BATCH, O_PROMPT };

static void parse_args(int argc, char **argv, const char **loras, int *nl)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL}, {"variant", required_argument, 0, O_VARIANT},
        {"config", required_argument, 0, O_CONFIG}, {"prediction", required_argument, 0, O_PRED},
        {"lora", required_argument, 0, O_LORA}, {"listen", required_argument, 0, O_LISTEN},
        {"queue", required_argument, 0, O_QUEUE}, {"out", required_argument, 0, O_OUT},
        {"threads", required_argument, 0, 't'}, {"api-key-env", required_argument, 0, O_KEY},
        {"grace", required_argument, 0, O_GRACE}, {"max-body", required_argument, 0, O_BODY},
        {"max-pixels", required_argument, 0, O_PIXELS},
        {"max-steps", required_argument, 0, O_STEPS}, {"max-batch", required_argument, 0, O_BATCH},
        {"max-prompt-chars", required_argument, 0, O_PROMPT}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *key_env = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "ht:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); exit(0);
        case O_MODEL: g_cfg.model = optarg; break;
        case O_VARIANT: g_cfg.variant = optarg; break;
        case O_CONFIG: g_cfg.config_dir = optarg; break;
        case O_PRED: g_cfg.prediction = optarg; break;
        case O_LORA:
            if (*nl == SERVE_MAX_LORAS)
                df_usage_error("at most %d --lora options", SERVE_MAX_LORAS);
            loras[(*nl)++] = optarg;
            break;
        case O_LISTEN: g_cfg.listen = optarg; break;
        case O_QUEUE: g_cfg.queue_max = (int)df_parse_long_arg("--queue", optarg, 0, 10000); break;
        case O_OUT: g_cfg.out_dir = optarg; break;
        case 't': g_cfg.threads = (int)df_parse_long_arg("--threads", optarg, 1, 1024); break;
        case O_KEY: key_env = optarg; break;
        case O_GRACE: g_cfg.grace = (double)df_parse_long_arg("--grace", optarg, 0, 86400); break;
        case O_BODY: g_cfg.max_body = (size_t)df_parse_long_arg("--max-body", optarg, 1024, 1L << 30); break;
        case O_PIXELS: g_cfg.max_pixels = df_parse_long_arg("--max-pixels", optarg, 64, 1L << 28); break;
        case O_STEPS: g_cfg.max_steps = (int)df_parse_long_arg("--max-steps", optarg, 1, 1000); break;
        case O_BATCH: g_cfg.max_batch = (int)df_parse_long_arg("--max-batch", optarg, 1, 64); break;
        case O_PROMPT:
            g_cfg.max_prompt_chars = (int)df_parse_long_arg("--max-prompt-chars", optarg, 1, 1 << 20);
            break;
        default: df_usage_error("unknown option");
        }
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s'", argv[optind]);
    if (!g_cfg.model)
        df_usage_error("--model MODEL is required");
    if (g_cfg.variant && strcmp(g_cfg.variant, "fp16"))
        df_usage_error("--variant: only 'fp16' is known");
    if (g_cfg.prediction && strcmp(g_cfg.prediction, "v") && strcmp(g_cfg.prediction, "epsilon"))
        df_usage_error("--prediction: 'v' or 'epsilon'");
    if (key_env) {
        const char *k = getenv(key_env);
        if (!k || !*k)
            df_usage_error("--api-key-env %s: the variable is not set or empty", key_env);
        g_cfg.api_key = strdup(k);
    }
}

static void open_model(const char **loras, int nl)
{
    df_pipeline_open_opts oo = {.variant = g_cfg.variant, .config_dir = g_cfg.config_dir,
                                .prediction = g_cfg.prediction};
    if (df_pipeline_open_model(g_cfg.model, &oo, &g_cfg.pipe) != DF_OK) {
        df_error("%s", df_last_error());
        exit(1);
    }
    const char *notes = df_pipeline_notes(g_cfg.pipe);
    while (notes && *notes) {
        const char *nlp = strchr(notes, '\n');
        int len = nlp ? (int)(nlp - notes) : (int)strlen(notes);
        df_warn("%.*s", len, notes);
        notes += len + (nlp != NULL);
    }
    for (int i = 0; i < nl; i++) {
        char *path;
        float scale;
        if (df_lora_parse_arg(loras[i], &path, &scale) != DF_OK)
            df_usage_error("--lora: %s", df_last_error());
        df_lora_report rep;
        if (df_pipeline_add_lora(g_cfg.pipe, path, scale, &rep) != DF_OK) {
            df_error("%s", df_last_error());
            exit(1);
        }
        if (rep.n_applied != rep.n_tensors)
            df_warn("%s: %s format, only %zu of %zu tensors applied", path, rep.format,
                    rep.n_applied, rep.n_tensors);
        df_lora_report_free(&rep);
        if (df_gen_file_hash12(path, g_cfg.lora_hash[i]) != DF_OK) {
            df_error("%s", df_last_error());
            exit(1);
        }
        df_gen_lora_name(path, g_cfg.lora_name[i], sizeof g_cfg.lora_name[i]);
        g_cfg.lora_path[i] = path;
        g_cfg.lora_scale[i] = scale;
    }
    g_cfg.n_loras = nl;
    const char *b = g_cfg.model + strlen(g_cfg.model);
    while (b > g_cfg.model && b[-1] == '/')
        b--;
    const char *e = b;
    while (b > g_cfg.model && b[-1] != '/')
        b--;
    snprintf(g_cfg.model_name, sizeof g_cfg.model_name, "%.*s", (int)(e - b), b);
    df_pipeline_default_size(g_cfg.pipe, &g_cfg.width, &g_cfg.height);
    /* in_channels 9: stable-diffusion-2-inpainting's UNet (latents, mask,
     * masked-image latents), which the page offers for masks only. */
    char *cfg = NULL;
    json_t *uc = NULL;
    long long in_ch = 0;
    if (asprintf(&cfg, "%s/unet/config.json", g_cfg.config_dir ? g_cfg.config_dir : g_cfg.model) >= 0
        && access(cfg, R_OK) == 0 && df_json_load_file(cfg, &uc) == DF_OK)
        df_rec_int(uc, "in_channels", &in_ch);
    g_cfg.inpaint_unet = in_ch == 9;
    json_decref(uc);
    free(cfg);
    g_cfg.size_multiple = df_pipeline_size_multiple(g_cfg.pipe);
}

/* Load every component now (a one-step image of 8 x 8 latents without
 * guidance), so that a broken model fails at start and the first request
 * waits for nothing but its own work; and name the default scheduler. */
static void warm_up(void)
{
    int m = g_cfg.size_multiple;
    df_pipeline_params pp = {.prompt = "", .width = 8 * m, .height = 8 * m, .steps = 1,
                             .guidance = 1.0f, .batch = 1, .seed = 0};
    df_pipeline_output out;
    double t0 = df_now();
    if (df_pipeline_generate(g_cfg.pipe, &pp, NULL, &out) != DF_OK) {
        df_error("cannot load the model: %s", df_last_error());
        exit(1);
    }
    df_scheduler *s = NULL;
    if (df_scheduler_create(NULL, df_pipeline_scheduler_config(g_cfg.pipe), NULL, &s) != DF_OK)
        s = NULL;
    snprintf(g_cfg.default_sched, sizeof g_cfg.default_sched, "%s",
             s ? df_scheduler_short_name(s) : out.scheduler);
    df_scheduler_free(s);
    df_pipeline_output_free(&out);
    fprintf(stderr, "%s: %s loaded in %.1f s\n", df_progname(), g_cfg.model_name, df_now() - t0);
}

int main(int argc, char **argv)
{
    df_log_init(argv[0]);
    df_memory_keep_freed();
    if (fcntl(1, F_GETFD) < 0) {   /* a closed stdout would be the next file opened */
        df_error("stdout: %s", strerror(errno));
        return 1;
    }
    g_cfg = (serve_config){.listen = "127.0.0.1:7860", .queue_max = 8, .out_dir = "df-serve-images",
                           .grace = 30, .max_body = 20u << 20, .max_pixels = 1 << 20,
                           .max_steps = 150, .max_batch = 8, .max_prompt_chars = 2000};
    const char *loras[SERVE_MAX_LORAS];
    int nl = 0;
    parse_args(argc, argv, loras, &nl);
    if (g_cfg.threads)
        df_ops_set_threads(g_cfg.threads);
    open_model(loras, nl);   /* first: a bad --model leaves no --out folder behind */
    struct stat sb;
    if ((mkdir(g_cfg.out_dir, 0777) != 0 && errno != EEXIST) || stat(g_cfg.out_dir, &sb) != 0 ||
        !S_ISDIR(sb.st_mode)) {
        df_error("--out %s: %s", g_cfg.out_dir, errno ? strerror(errno) : "not a directory");
        return 1;
    }
    if (gallery_open(g_cfg.out_dir) != DF_OK) {
        df_error("%s", df_last_error());
        return 1;
    }
    df_pipeline_keep_loaded(g_cfg.pipe, true);
    warm_up();

    /* Signals go to this thread alone (sigwait below): the worker and the
     * connection threads inherit the blocked mask. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    queue_start();
    if (http_start() != DF_OK) {
        df_error("%s", df_last_error());
        queue_shutdown(0);
        return 1;
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "%s: %s: stopping (running job: up to %.0f s)\n", df_progname(),
            sig == SIGINT ? "SIGINT" : "SIGTERM", g_cfg.grace);
    http_quiesce();                /* no new connections */
    queue_shutdown(g_cfg.grace);
    http_stop();                   /* waiting handlers have their answers by now */
    gallery_close();
    df_pipeline_free(g_cfg.pipe);
    for (int i = 0; i < g_cfg.n_loras; i++)
        free(g_cfg.lora_path[i]);
    free(g_cfg.api_key);
    fprintf(stderr, "%s: stopped\n", df_progname());
    return 0;
}
