/* bench-train.c - times LoRA training steps on a model folder (made by
 * mkmodel: full-size SD 2.1, random weights) and prints one line: latent
 * size, batch, threads, checkpointing, seconds per step (fastest of REPS
 * after the first, and the first), images/s, peak RSS and the graph's peak
 * activation bytes. A step is what df-train runs: text encoder and UNet
 * forwards with a rank-R LoRA on both (the recipe's targets), the v-loss,
 * both backwards; the optimizer step is left out (a few ms). One
 * configuration per process, so that the peak RSS is its own.
 * Built to build/tools/bench-train; run by tests/bench/bench-train.sh.
 * Asserts nothing.
 *
 * Usage: bench-train MODEL_DIR LATENT_SIDE BATCH THREADS CKPT(0|1) [REPS [RANK]] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "clip.h"
#include "clip_train.h"
#include "lora_params.h"
#include "memory.h"
#include "ops.h"
#include "rng.h"
#include "scheduler.h"
#include "train_step.h"
#include "unet.h"
#include "unet_train.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench-train: %s: %s\n", what, df_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    df_memory_keep_freed();
    if (argc < 6) {
        fprintf(stderr, "usage: bench-train MODEL_DIR LATENT_SIDE BATCH THREADS CKPT [REPS [RANK]]\n");
        return 2;
    }
    const char *dir = argv[1];
    int side = atoi(argv[2]), B = atoi(argv[3]), threads = atoi(argv[4]), ckpt = atoi(argv[5]);
    int reps = argc > 6 ? atoi(argv[6]) : 2, rank = argc > 7 ? atoi(argv[7]) : 8;
    if (side < 8 || B < 1 || threads < 1 || reps < 1 || rank < 1)
        return fprintf(stderr, "bench-train: bad arguments\n"), 2;
    df_ops_set_threads(threads);
    char path[4096];
    df_unet *u;
    df_clip *te;
    df_scheduler *sched;
    snprintf(path, sizeof path, "%s/unet", dir);
    if (df_unet_load(path, NULL, &u))
        return fail(path);
    snprintf(path, sizeof path, "%s/text_encoder", dir);
    if (df_clip_load(path, NULL, &te))
        return fail(path);
    if (df_scheduler_load(dir, "ddpm", NULL, &sched))
        return fail("scheduler");
    static const char *const ut[] = {"to_q", "to_k", "to_v", "to_out.0"};
    static const char *const tt[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    df_lora_set set;
    df_rng rng;
    df_rng_seed(&rng, 1);
    if (df_lora_set_create(&set, df_unet_weights(u), ut, 4, df_clip_weights(te), tt, 4, rank,
                           (float)rank) ||
        df_lora_set_init(&set, "gaussian", &rng))
        return fail("LoRA");
    for (size_t i = 0; i < set.nfloats; i++)   // B nonzero too, as after some training
        set.params[i] += 1e-3f;
    df_unet_train *ut_;
    df_clip_train *ct;
    if (df_unet_train_create(u, &set, ckpt != 0, &ut_) || df_clip_train_create(te, &set, &ct))
        return fail("training graph");
    int C = df_unet_in_channels(u), T = 77, D = df_clip_get_config(te)->hidden_size;
    size_t n = (size_t)B * C * side * side;
    float *lat = malloc(n * sizeof *lat), *noise = malloc(n * sizeof *noise);
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    int64_t *t = malloc((size_t)B * sizeof *t);
    if (!lat || !noise || !ids || !t)
        return fail("buffers");
    df_rng_randn(&rng, lat, n);
    df_rng_randn(&rng, noise, n);
    for (int i = 0; i < B * T; i++)
        ids[i] = i % T < 12 ? 320 + (int)(df_rng_u32(&rng) % 40000) : (i % T == 12 ? 49407 : 0);
    for (int i = 0; i < B; i++)
        t[i] = 100 + 400 * i;
    df_train_model tm = {.unet = ut_, .text = ct, .sched = sched};
    df_train_batch b = {.B = B, .C = C, .h = side, .w = side, .T = T, .D = D, .latents = lat,
                        .noise = noise, .timesteps = t, .ids = ids};
    double first = 0, best = 1e30;
    for (int r = 0; r < reps; r++) {
        df_lora_set_zero_grad(&set);
        float loss;
        double t0 = now();
        if (df_train_step(&tm, &b, 1.0f, &loss, NULL))
            return fail("step");
        double dt = now() - t0;
        if (r == 0)
            first = dt;
        if (r > 0 || reps == 1)
            best = dt < best ? dt : best;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("train %3dx%-3d (%4d px) batch %d threads %d ckpt %d: %7.2f s/step (first %.2f), "
           "%.3f images/s, peak RSS %.2f GB, activations %.2f GB\n",
           side, side, side * 8, B, threads, ckpt, best, first, B / best,
           ru.ru_maxrss / 1048576.0, df_unet_train_peak_bytes(ut_) / 1e9);
    df_unet_train_free(ut_);
    df_clip_train_free(ct);
    df_lora_set_free(&set);
    df_scheduler_free(sched);
    df_clip_free(te);
    df_unet_free(u);
    free(lat), free(noise), free(ids), free(t);
    return 0;
}
