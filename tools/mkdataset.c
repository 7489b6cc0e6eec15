/* mkdataset.c - writes a small synthetic captioned dataset of cartoon faces,
 * so that the training pipeline can be run without downloading anything
 * (`make demo`, pipelines/demo.mk) and tested without Python
 * (tests/tools/test-pipeline-train.sh, tests/tools/test-demo.sh).
 *
 * Each image is drawn from the seed and its index: a background colour,
 * shoulders, short or long hair of some colour, a face, eyes, a smiling or
 * straight mouth, sometimes glasses; its caption names what was drawn
 * ("a portrait of a smiling person with long red hair and glasses, blue
 * background"), so that a LoRA has something to learn from the words.
 * Output: OUT_DIR/NNNN.png and OUT_DIR/metadata.jsonl (file_name, text,
 * width, height, source "synthetic"), the ImageFolder layout the df-
 * tools read; metadata.jsonl is written last, through a rename, so that its
 * presence means the dataset is complete. Built to build/tools/mkdataset
 * (not a df- tool).
 *
 * Usage: mkdataset [--count N] [--size PX] [--seed S] OUT_DIR */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"

static const char usage[] = "usage: mkdataset [--count N] [--size PX] [--seed S] OUT_DIR\n";

typedef struct { const char *name; uint8_t rgb[3]; } colour;

static const colour backgrounds[] = {
    {"blue", {60, 110, 200}}, {"green", {70, 160, 80}}, {"red", {190, 60, 60}},
    {"yellow", {220, 200, 70}}, {"purple", {130, 80, 170}}, {"grey", {140, 140, 140}}};
static const colour hairs[] = {
    {"black", {25, 20, 20}}, {"brown", {100, 60, 30}}, {"blond", {225, 190, 110}},
    {"red", {170, 60, 20}}, {"white", {235, 235, 230}}};
static const uint8_t skins[][3] = {{240, 205, 180}, {200, 150, 110}, {120, 80, 55}};
static const uint8_t shirts[][3] = {{30, 30, 90}, {200, 200, 200}, {90, 30, 30}, {40, 90, 60}};

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

static uint64_t rng_state;

static uint32_t next_u32(void)   // xorshift64*
{
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static int pick(int n) { return (int)(next_u32() % (uint32_t)n); }

/* ---------------------------------------------------------------- drawing */

static void put(df_image *im, int x, int y, const uint8_t *c)
{
    if (x >= 0 && y >= 0 && x < im->w && y < im->h)
        memcpy(im->px + ((size_t)y * im->w + x) * 3, c, 3);
}

/* A filled ellipse centred at (cx, cy) with radii rx, ry (in pixels). */
static void ellipse(df_image *im, double cx, double cy, double rx, double ry, const uint8_t *c)
{
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            double dx = (x + 0.5 - cx) / rx, dy = (y + 0.5 - cy) / ry;
            if (dx * dx + dy * dy <= 1.0)
                put(im, x, y, c);
        }
}

/* An ellipse's outline of the given thickness; lower_only draws its bottom
 * half (a smile). */
static void ring(df_image *im, double cx, double cy, double rx, double ry, double t,
                 int lower_only, const uint8_t *c)
{
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            double px = x + 0.5 - cx, py = y + 0.5 - cy;
            double o = (px / (rx + t / 2)) * (px / (rx + t / 2)) + (py / (ry + t / 2)) * (py / (ry + t / 2));
            double i = (px / (rx - t / 2)) * (px / (rx - t / 2)) + (py / (ry - t / 2)) * (py / (ry - t / 2));
            if (o <= 1.0 && i >= 1.0 && (!lower_only || py > 0))
                put(im, x, y, c);
        }
}

static void rect(df_image *im, double x0, double y0, double x1, double y1, const uint8_t *c)
{
    for (int y = (int)y0; y < (int)(y1 + 0.5); y++)
        for (int x = (int)x0; x < (int)(x1 + 0.5); x++)
            put(im, x, y, c);
}

/* One face of side s; writes its caption into text. */
static void draw_face(df_image *im, char *text, size_t cap)
{
    const double s = im->w;
    const colour *bg = &backgrounds[pick(N_OF(backgrounds))];
    const colour *hair = &hairs[pick(N_OF(hairs))];
    const uint8_t *skin = skins[pick(N_OF(skins))], *shirt = shirts[pick(N_OF(shirts))];
    int long_hair = pick(2), smiling = pick(2), glasses = pick(3) == 0;
    // horizontal jitter of a few pixels: not every face at the same spot
    double cx = s / 2 + (pick(5) - 2) * s / 64, cy = s * 0.5;
    static const uint8_t dark[3] = {20, 20, 25}, lips[3] = {150, 40, 50}, frame[3] = {15, 15, 15};

    for (int y = 0; y < im->h; y++)   // background with a soft vertical gradient
        for (int x = 0; x < im->w; x++) {
            uint8_t c[3];
            for (int k = 0; k < 3; k++) {
                int v = bg->rgb[k] + (int)(30.0 * y / s) - 15;
                c[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
            put(im, x, y, c);
        }
    ellipse(im, cx, s * 1.05, s * 0.42, s * 0.25, shirt);                    // shoulders
    if (long_hair)
        rect(im, cx - s * 0.30, cy - s * 0.05, cx + s * 0.30, cy + s * 0.38, hair->rgb);
    ellipse(im, cx, cy - s * 0.07, s * 0.29, s * 0.31, hair->rgb);           // hair
    ellipse(im, cx, cy + s * 0.03, s * 0.22, s * 0.28, skin);                // face
    for (int e = -1; e <= 1; e += 2) {
        ellipse(im, cx + e * s * 0.09, cy - s * 0.01, s * 0.03, s * 0.03, dark);
        if (glasses)
            ring(im, cx + e * s * 0.09, cy - s * 0.01, s * 0.07, s * 0.06, s * 0.025, 0, frame);
    }
    if (glasses)
        rect(im, cx - s * 0.03, cy - s * 0.02, cx + s * 0.03, cy - s * 0.005, frame);
    if (smiling)
        ring(im, cx, cy + s * 0.11, s * 0.09, s * 0.06, s * 0.03, 1, lips);
    else
        rect(im, cx - s * 0.07, cy + s * 0.15, cx + s * 0.07, cy + s * 0.175, lips);
    snprintf(text, cap, "a portrait of a %s person with %s %s hair%s, %s background",
             smiling ? "smiling" : "serious", long_hair ? "long" : "short", hair->name,
             glasses ? " and glasses" : "", bg->name);
}

/* ---------------------------------------------------------------- main */

static long number(const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "mkdataset: %s: '%s' is not a whole number in [%ld, %ld]\n%s", flag, s,
                lo, hi, usage);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"count", required_argument, 0, 'n'},
                                       {"size", required_argument, 0, 's'},
                                       {"seed", required_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    long count = 32, size = 64, seed = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 'n')
            count = number("--count", optarg, 1, 100000);
        else if (c == 's')
            size = number("--size", optarg, 16, 2048);
        else if (c == 'r')
            seed = number("--seed", optarg, 0, 1L << 53);
        else if (c == 'h')
            return fputs(usage, stdout), 0;
        else
            return fputs(usage, stderr), 2;
    }
    if (argc - optind != 1)
        return fputs(usage, stderr), 2;
    const char *dir = argv[optind];
    if (mkdir(dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "mkdataset: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char path[4096], tmp[4200], text[256], name[32];
    snprintf(path, sizeof path, "%s/metadata.jsonl", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *meta = fopen(tmp, "w");
    if (!meta) {
        fprintf(stderr, "mkdataset: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    df_image im = {0};
    if (df_image_alloc(&im, (int)size, (int)size)) {
        fprintf(stderr, "mkdataset: out of memory\n");
        return 1;
    }
    for (long i = 0; i < count; i++) {
        // each image from (seed, index) alone: --count 8 is a prefix of --count 32
        rng_state = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ ((uint64_t)seed << 1 | 1);
        for (int k = 0; k < 4; k++)
            next_u32();
        draw_face(&im, text, sizeof text);
        snprintf(name, sizeof name, "%04ld.png", i);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (df_image_write_png(path, &im, NULL)) {
            fprintf(stderr, "mkdataset: %s: cannot write\n", path);
            return 1;
        }
        json_t *r = json_pack("{s:s, s:s, s:I, s:I, s:s}", "file_name", name, "text", text,
                              "width", (json_int_t)size, "height", (json_int_t)size, "source",
                              "synthetic");
        char *line = r ? json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (!line || fprintf(meta, "%s\n", line) < 0) {
            fprintf(stderr, "mkdataset: %s: write failed\n", tmp);
            return 1;
        }
        free(line);
        json_decref(r);
    }
    df_image_free(&im);
    snprintf(path, sizeof path, "%s/metadata.jsonl", dir);
    if (fclose(meta) || rename(tmp, path)) {
        fprintf(stderr, "mkdataset: %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(stderr, "mkdataset: wrote %ld images (%ldx%ld) and %s\n", count, size, size, path);
    return 0;
}
