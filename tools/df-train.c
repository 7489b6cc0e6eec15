/* df-train - LoRA fine-tuning of a Stable Diffusion 2.x UNet (and optionally
 * its text encoder) on a latent cache made by df-encode-latents.
 *
 * Flags in, lib/train/trainer.c does the work; this file prints one JSON record
 * per optimizer step on stdout (step, epoch, loss, lr per group, grad norm,
 * images/s, seconds), progress on stderr, and runs the validation prompts
 * with the sampling pipeline on each saved checkpoint. Tested by
 * tests/tools/test-df-train.sh; the numerics by tests/check-fixtures. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "log.h"
#include "memory.h"
#include "ops.h"
#include "optim.h"
#include "pipeline.h"
#include "trainer.h"

static const char usage_text[] =
    "usage: df-train --model DIR --cache DIR --out DIR --max-steps N [--epochs E]\n"
    "                [--batch-size B] [--gradient-accumulation N] [--rank R] [--alpha A]\n"
    "                [--train-text-encoder] [--unet-lr X] [--text-encoder-lr X]\n"
    "                [--lr-scheduler NAME] [--lr-warmup-steps N] [--max-grad-norm X]\n"
    "                [--snr-gamma X] [--noise-offset X] [--caption-dropout P] [--random-flip]\n"
    "                [--unet-targets LIST] [--text-targets LIST] [--use-mean]\n"
    "                [--init gaussian|kaiming] [--seed S] [--save-every N] [--keep N]\n"
    "                [--resume] [--format peft|kohya] [--gradient-checkpointing]\n"
    "                [--validation-prompt TEXT] [--validation-steps N] [-t THREADS]\n"
    "                [-q|--quiet|--progress]\n"
    "Trains a LoRA on a latent cache (df-encode-latents). Writes checkpoints and the\n"
    "final OUT/pytorch_lora_weights.safetensors; one metrics record per step on stdout.\n"
    "See df-train(1).\n"
    "\n"
    "  --model DIR              diffusers folder of the base model (SD 2.x)\n"
    "  --cache DIR              latent cache; repeat to train on several (a team's shards)\n"
    "  --out DIR                checkpoints and the final LoRA\n"
    "  --max-steps N            optimizer steps to reach (a --resume continues to N)\n"
    "  --epochs E               stop after E passes over the data as well (default: none)\n"
    "  --batch-size B           images per micro-batch (4)\n"
    "  --gradient-accumulation N  micro-batches per optimizer step (1)\n"
    "  --rank R, --alpha A      LoRA rank (8) and alpha (default: the rank, scale 1)\n"
    "  --unet-targets LIST      UNet modules with a LoRA (to_q,to_k,to_v,to_out.0)\n"
    "  --text-targets LIST      text encoder modules (q_proj,k_proj,v_proj,out_proj)\n"
    "  --train-text-encoder     also train a LoRA on the text encoder\n"
    "  --unet-lr X              UNet learning rate (1e-5)\n"
    "  --text-encoder-lr X      text-encoder learning rate (default: the UNet's)\n"
    "  --lr-scheduler NAME      constant, constant_with_warmup, linear, cosine (constant)\n"
    "  --lr-warmup-steps N      warmup steps (0)\n"
    "  --max-grad-norm X        clip the gradients' global norm (1.0; 0 disables)\n"
    "  --snr-gamma X            min-SNR loss weighting (default off; 5 is usual)\n"
    "  --noise-offset X         noise offset (0)\n"
    "  --caption-dropout P      train on the empty caption with probability P (0)\n"
    "  --random-flip            use an image's flipped cache entry half of the time\n"
    "  --use-mean               train on the posterior mean instead of a sample\n"
    "  --init NAME              LoRA initialisation: gaussian (the recipe's) or kaiming (peft's)\n"
    "  --seed S                 seed of every random draw (0)\n"
    "  --save-every N           checkpoint every N steps (and always at the end)\n"
    "  --keep N                 keep the N newest checkpoints (default all)\n"
    "  --resume                 continue from OUT's latest checkpoint\n"
    "  --format peft|kohya      key format of the final LoRA (peft)\n"
    "  --gradient-checkpointing recompute activations in the backward (less memory)\n"
    "  --validation-prompt TEXT sample this prompt with each saved LoRA (PNG beside it);\n"
    "                           repeatable\n"
    "  --validation-steps N     sampling steps for the validation images (20)\n"
    "  -t, --threads N          compute threads (default: all cores)\n"
    "  -q, --quiet, --progress  no progress / progress even when stderr is not a terminal\n";

typedef struct {
    df_train_opts t;
    const char *caches[64];
    const char *prompts[16];
    int nprompts, val_steps, threads;
    df_progress_mode pmode;
    df_progress prog;
    const char *model;
} options;

static double parse_num(const char *flag, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi))
        df_usage_error("%s: '%s' is not a number in [%g, %g]", flag, s, lo, hi);
    return v;
}

enum { O_MODEL = 256, O_CACHE, O_OUT, O_MAX_STEPS, O_EPOCHS, O_BATCH, O_ACCUM, O_RANK, O_ALPHA,
       O_UT, O_TT, O_TRAIN_TE, O_ULR, O_TLR, O_SCHED, O_WARMUP, O_MGN, O_SNR, O_NOFF, O_CDROP,
       O_FLIP, O_MEAN, O_INIT, O_SEED, O_SAVE, O_KEEP, O_RESUME, O_FORMAT, O_CKPT, O_VAL,
       O_VALSTEPS, O_QUIET, O_PROGRESS };

static void parse_args(int argc, char **argv, options *o)
{
    static const struct option lo[] = {
        {"model", 1, 0, O_MODEL}, {"cache", 1, 0, O_CACHE}, {"out", 1, 0, O_OUT},
        {"max-steps", 1, 0, O_MAX_STEPS}, {"epochs", 1, 0, O_EPOCHS},
        {"batch-size", 1, 0, O_BATCH}, {"gradient-accumulation", 1, 0, O_ACCUM},
        {"rank", 1, 0, O_RANK}, {"alpha", 1, 0, O_ALPHA}, {"unet-targets", 1, 0, O_UT},
        {"text-targets", 1, 0, O_TT}, {"train-text-encoder", 0, 0, O_TRAIN_TE},
        {"unet-lr", 1, 0, O_ULR}, {"text-encoder-lr", 1, 0, O_TLR},
        {"lr-scheduler", 1, 0, O_SCHED}, {"lr-warmup-steps", 1, 0, O_WARMUP},
        {"max-grad-norm", 1, 0, O_MGN}, {"snr-gamma", 1, 0, O_SNR},
        {"noise-offset", 1, 0, O_NOFF}, {"caption-dropout", 1, 0, O_CDROP},
        {"random-flip", 0, 0, O_FLIP}, {"use-mean", 0, 0, O_MEAN}, {"init", 1, 0, O_INIT},
        {"seed", 1, 0, O_SEED}, {"save-every", 1, 0, O_SAVE}, {"keep", 1, 0, O_KEEP},
        {"resume", 0, 0, O_RESUME}, {"format", 1, 0, O_FORMAT},
        {"gradient-checkpointing", 0, 0, O_CKPT}, {"validation-prompt", 1, 0, O_VAL},
        {"validation-steps", 1, 0, O_VALSTEPS}, {"threads", 1, 0, 't'},
        {"quiet", 0, 0, O_QUIET}, {"progress", 0, 0, O_PROGRESS}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    df_train_opts *t = &o->t;
    int nc = 0, c, have_tlr = 0, have_alpha = 0;
    while ((c = getopt_long(argc, argv, "hqt:", lo, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); exit(0);
        case O_MODEL: t->model_dir = optarg; break;
        case O_CACHE:
            if (nc == 64)
                df_usage_error("at most 64 --cache options");
            o->caches[nc++] = optarg;
            break;
        case O_OUT: t->out_dir = optarg; break;
        case O_MAX_STEPS: t->max_steps = df_parse_long_arg("--max-steps", optarg, 1, 1L << 40); break;
        case O_EPOCHS: t->epochs = df_parse_long_arg("--epochs", optarg, 1, 1L << 40); break;
        case O_BATCH: t->batch_size = (int)df_parse_long_arg("--batch-size", optarg, 1, 256); break;
        case O_ACCUM: t->accum = (int)df_parse_long_arg("--gradient-accumulation", optarg, 1, 4096); break;
        case O_RANK: t->rank = (int)df_parse_long_arg("--rank", optarg, 1, 4096); break;
        case O_ALPHA: t->alpha = (float)parse_num("--alpha", optarg, 1e-6, 1e6); have_alpha = 1; break;
        case O_UT: t->unet_targets = optarg; break;
        case O_TT: t->text_targets = optarg; break;
        case O_TRAIN_TE: t->train_text_encoder = true; break;
        case O_ULR: t->unet_lr = parse_num("--unet-lr", optarg, 0, 10); break;
        case O_TLR: t->text_lr = parse_num("--text-encoder-lr", optarg, 0, 10); have_tlr = 1; break;
        case O_SCHED: t->lr_schedule = optarg; break;
        case O_WARMUP: t->warmup_steps = df_parse_long_arg("--lr-warmup-steps", optarg, 0, 1L << 40); break;
        case O_MGN: t->max_grad_norm = parse_num("--max-grad-norm", optarg, 0, 1e9); break;
        case O_SNR: t->snr_gamma = parse_num("--snr-gamma", optarg, 0, 1e9); break;
        case O_NOFF: t->noise_offset = parse_num("--noise-offset", optarg, 0, 10); break;
        case O_CDROP: t->caption_dropout = parse_num("--caption-dropout", optarg, 0, 1); break;
        case O_FLIP: t->random_flip = true; break;
        case O_MEAN: t->use_mean = true; break;
        case O_INIT: t->init = optarg; break;
        case O_SEED: t->seed = (uint64_t)df_parse_long_arg("--seed", optarg, 0, 1L << 53); break;
        case O_SAVE: t->save_every = df_parse_long_arg("--save-every", optarg, 1, 1L << 40); break;
        case O_KEEP: t->keep_checkpoints = (int)df_parse_long_arg("--keep", optarg, 1, 1 << 20); break;
        case O_RESUME: t->resume = true; break;
        case O_FORMAT:
            if (!strcmp(optarg, "peft"))
                t->format = DF_LORA_FMT_PEFT;
            else if (!strcmp(optarg, "kohya"))
                t->format = DF_LORA_FMT_KOHYA;
            else
                df_usage_error("--format: '%s' is not peft or kohya", optarg);
            break;
        case O_CKPT: t->checkpointing = true; break;
        case O_VAL:
            if (o->nprompts == 16)
                df_usage_error("at most 16 --validation-prompt options");
            o->prompts[o->nprompts++] = optarg;
            break;
        case O_VALSTEPS: o->val_steps = (int)df_parse_long_arg("--validation-steps", optarg, 1, 1000); break;
        case 't': o->threads = (int)df_parse_long_arg("--threads", optarg, 1, 1024); break;
        case 'q':
        case O_QUIET: o->pmode = DF_PROGRESS_NEVER; break;
        case O_PROGRESS: o->pmode = DF_PROGRESS_ALWAYS; break;
        default: df_usage_error("unknown option");
        }
    }
    if (optind < argc)
        df_usage_error("unexpected argument '%s'", argv[optind]);
    if (!t->model_dir || !nc || !t->out_dir || !t->max_steps)
        df_usage_error("--model, --cache, --out and --max-steps are required");
    if (!df_lr_schedule_valid(t->lr_schedule))
        df_usage_error("--lr-scheduler: '%s' is not constant, constant_with_warmup, linear or "
                       "cosine", t->lr_schedule);
    if (strcmp(t->init, "gaussian") && strcmp(t->init, "kaiming"))
        df_usage_error("--init: '%s' is not gaussian or kaiming", t->init);
    if (!have_alpha)
        t->alpha = (float)t->rank;
    if (!have_tlr)
        t->text_lr = t->unet_lr;
    t->cache_dirs = o->caches;
    t->ncache = nc;
}

/* ------------------------------------------------------------ hooks */

static void on_start(void *ctx, long first, long max_steps, size_t entries)
{
    options *o = ctx;
    if (first > 0)
        fprintf(stderr, "%s: resuming at step %ld of %ld%s\n", df_progname(), first, max_steps,
                first >= max_steps ? ": nothing left to do" : "");
    if (first < max_steps)
        fprintf(stderr, "%s: %zu cache entries, steps %ld..%ld\n", df_progname(), entries,
                first + 1, max_steps);
    df_progress_start(&o->prog, "step", max_steps, o->pmode);
    df_progress_add(&o->prog, first, 0);
}

static void on_step(void *ctx, const df_train_metrics *m)
{
    options *o = ctx;
    json_t *r = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:i, s:f, s:f}", "step",
                          (json_int_t)m->step, "epoch", (json_int_t)m->epoch, "loss", m->loss,
                          "lr_unet", m->lr_unet, "lr_text_encoder", m->lr_text, "grad_norm",
                          m->grad_norm, "images", m->images, "images_per_s", m->images_per_s,
                          "seconds", m->seconds);
    char *s = json_dumps(r, JSON_COMPACT | JSON_REAL_PRECISION(8));
    if (s)
        printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(r);
    df_progress_add(&o->prog, 1, 0);
}

/* Validation images of a saved LoRA: <dir of the LoRA>/validation-<i>.png. */
static void on_saved(void *ctx, long step, const char *lora_path, bool final)
{
    options *o = ctx;
    if (final)
        fprintf(stderr, "%s: saved %s (step %ld)\n", df_progname(), lora_path, step);
    if (o->nprompts == 0)
        return;
    df_pipeline *p = NULL;
    df_lora_report rep = {0};
    if (df_pipeline_open(o->model, NULL, &p) || df_pipeline_add_lora(p, lora_path, 1.0f, &rep)) {
        df_warn("validation at step %ld: %s", step, df_last_error());
        df_lora_report_free(&rep);
        df_pipeline_free(p);
        return;
    }
    df_lora_report_free(&rep);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", lora_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    for (int i = 0; i < o->nprompts; i++) {
        df_pipeline_params pp = {.prompt = o->prompts[i], .steps = o->val_steps,
                                 .guidance = 7.5f, .seed = (uint64_t)i, .batch = 1};
        df_pipeline_default_size(p, &pp.width, &pp.height);
        df_pipeline_output out = {0};
        char png[4200];
        snprintf(png, sizeof png, "%s/validation-%ld-%d.png", dir, step, i);
        df_status e = df_pipeline_generate(p, &pp, NULL, &out);
        if (!e) {
            df_image img = {.w = out.width, .h = out.height, .px = out.rgb};
            const char *kv[] = {"parameters", o->prompts[i], NULL};
            e = df_image_write_png(png, &img, kv);
        }
        if (e)
            df_warn("validation image %s: %s", png, df_last_error());
        else
            fprintf(stderr, "%s: validation image %s\n", df_progname(), png);
        df_pipeline_output_free(&out);
    }
    df_pipeline_free(p);
}

int main(int argc, char **argv)
{
    df_log_init("df-train");
    options o = {.val_steps = 20, .pmode = DF_PROGRESS_AUTO};
    df_train_opts *t = &o.t;
    t->batch_size = 4, t->accum = 1, t->rank = 8, t->unet_lr = 1e-5, t->max_grad_norm = 1.0;
    t->lr_schedule = "constant", t->init = "gaussian", t->format = DF_LORA_FMT_PEFT;
    t->unet_targets = "to_q,to_k,to_v,to_out.0";
    t->text_targets = "q_proj,k_proj,v_proj,out_proj";
    parse_args(argc, argv, &o);
    o.model = t->model_dir;
    if (o.threads)
        df_ops_set_threads(o.threads);
    df_memory_keep_freed();
    df_train_hooks hk = {.ctx = &o, .on_start = on_start, .on_step = on_step,
                         .on_saved = on_saved};
    df_status s = df_train_run(t, &hk);
    df_progress_finish(&o.prog);
    if (s) {
        df_error("%s", df_last_error());
        return 1;
    }
    if (fflush(stdout) || ferror(stdout)) {
        df_error("writing the metrics to stdout failed");
        return 1;
    }
    return 0;
}
