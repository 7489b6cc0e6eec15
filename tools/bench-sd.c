/* bench-sd.c - times one part of Stable Diffusion 2.1 on a model folder
 * (made by mkmodel: full size, random weights) and prints one line: part,
 * size, threads, wall seconds of the fastest of REPS runs and of the first,
 * CPU seconds, GFLOP/s, peak RSS. GFLOP/s count the direct algorithm's flops
 * (the 1.61 and 4.30 TFLOP per CFG step), so with Winograd
 * convolutions they are effective rates that compare as times. One part per
 * process, so that the peak RSS is that part's alone: a pipeline loads one
 * component at a time.
 * Built to build/tools/bench-sd; run by tests/bench/bench-sd.sh. Asserts nothing.
 *
 * Usage: bench-sd MODEL_DIR te|unet|vae PIXELS THREADS [REPS]
 *   te    text encoder on 2 prompts (CFG), 77 tokens
 *   unet  one classifier-free-guidance step: one UNet forward at batch 2
 *   vae   decode of one image of PIXELS x PIXELS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "clip.h"
#include "memory.h"
#include "ops.h"
#include "unet.h"
#include "vae.h"

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *randbuf(size_t n, float scale)
{
    float *p = malloc(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; p && i < n; i++) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        p[i] = scale * ((float)((s * 0x2545F4914F6CDD1Dull) >> 40) / (1 << 24) * 2.0f - 1.0f);
    }
    return p;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench-sd: %s: %s\n", what, df_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    df_memory_keep_freed();
    if (argc < 5) {
        fprintf(stderr, "usage: bench-sd MODEL_DIR te|unet|vae PIXELS THREADS [REPS]\n");
        return 2;
    }
    const char *dir = argv[1], *part = argv[2];
    char *end;
    long px = strtol(argv[3], &end, 10), th = strtol(argv[4], &end, 10);
    long reps = argc > 5 ? strtol(argv[5], &end, 10) : 2;
    if (px < 8 || px % 8 || th < 1 || reps < 1) {
        fprintf(stderr, "bench-sd: bad PIXELS, THREADS or REPS\n");
        return 2;
    }
    df_ops_set_threads((int)th);
    char path[4096];
    int h = (int)px / 8;
    double best = 1e30, first = 0, cpu = 0, flop = 0;
    df_status st = DF_OK;
    for (long r = 0; r < reps && st == DF_OK; r++) {
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        static df_clip *clip;
        static df_unet *unet;
        static df_vae *vae;
        static float *in, *cond, *out, *ts;
        static int32_t ids[2 * 77];
        if (!strcmp(part, "te")) {
            if (!clip) {
                snprintf(path, sizeof path, "%s/text_encoder", dir);
                if (df_clip_load(path, NULL, &clip) != DF_OK)
                    return fail(path);
                for (int i = 0; i < 77; i++)   // "a photo of a face", then padding; and ""
                    ids[i] = i == 0 ? 49406 : i < 6 ? 320 + i : i == 6 ? 49407 : 0,
                    ids[77 + i] = i == 0 ? 49406 : i == 1 ? 49407 : 0;
                const df_clip_config *cf = df_clip_get_config(clip);
                out = malloc(sizeof(float) * 2 * 77 * cf->hidden_size);
                flop = 2.0 * 2 * 77 * cf->num_layers *
                       (4.0 * cf->hidden_size * cf->hidden_size +
                        2.0 * cf->hidden_size * cf->intermediate_size + 2.0 * 77 * cf->hidden_size);
            }
            if (r == 0)   // time the forwards, not the loading
                t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            st = df_clip_forward(clip, ids, 2, 77, out, NULL, NULL);
        } else if (!strcmp(part, "unet")) {
            if (!unet) {
                snprintf(path, sizeof path, "%s/unet", dir);
                if (df_unet_load(path, NULL, &unet) != DF_OK)
                    return fail(path);
                int C = df_unet_in_channels(unet), X = df_unet_cross_attention_dim(unet);
                // the CFG batch as the pipeline makes it: the same latents
                // twice, with two different text embeddings
                in = randbuf((size_t)2 * C * h * h, 1.0f);
                memcpy(in + (size_t)C * h * h, in, sizeof(float) * C * h * h);
                cond = randbuf((size_t)2 * 77 * X, 1.0f);
                out = malloc(sizeof(float) * 2 * df_unet_out_channels(unet) * h * h);
                ts = malloc(2 * sizeof(float));
                ts[0] = ts[1] = 901.0f;
                // the figures: 1.61 TFLOP per CFG step at 512 px, 4.30 at 768,
                // scaled with the latent area elsewhere (attention grows faster)
                flop = px == 512 ? 1.61e12 : px == 768 ? 4.30e12 : 0;
            }
            if (r == 0)
                t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            st = df_unet_forward(unet, in, ts, cond, 2, h, h, 77, out);
        } else if (!strcmp(part, "vae")) {
            if (!vae) {
                snprintf(path, sizeof path, "%s/vae", dir);
                if (df_vae_load(path, NULL, &vae) != DF_OK)
                    return fail(path);
                in = randbuf((size_t)df_vae_latent_channels(vae) * h * h, 5.0f);
                out = malloc(sizeof(float) * df_vae_out_channels(vae) * px * px);
                flop = px == 512 ? 2.5e12 : px == 768 ? 5.8e12 : 0;
            }
            if (r == 0)
                t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            st = df_vae_decode(vae, in, 1, h, h, out);
        } else {
            fprintf(stderr, "bench-sd: unknown part %s (te, unet, vae)\n", part);
            return 2;
        }
        double t = clock_s(CLOCK_MONOTONIC) - t0;
        cpu += clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (r == 0)
            first = t;
        best = t < best ? t : best;
    }
    // a random-weight model may overflow somewhere: that is not a timing failure
    if (st != DF_OK && st != DF_ERR_NUMERIC)
        return fail(part);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%-5s %4ldpx threads %ld: best %7.2f s  first %7.2f s  cpu/run %7.2f s  %6.1f GFLOP/s  "
           "peak RSS %6.0f MB%s\n",
           part, px, th, best, first, cpu / reps, flop ? flop / best / 1e9 : 0.0,
           ru.ru_maxrss / 1024.0, st == DF_ERR_NUMERIC ? "  (output had NaN/Inf)" : "");
    return 0;
}
