/* gen_params.h - how a generated image is described: the floats of its
 * record as the user gave them, the record line, AUTOMATIC1111's
 * "parameters" text and the PNG text chunks. Shared by df-sample and
 * df-serve, so that an image says the same thing whichever wrote it.
 * Tested by tests/unit/test_gen_params.c, and through the PNG text that
 * tests/tools/test-df-sample.sh and test-df-serve.sh read back. */
#ifndef DF_GEN_PARAMS_H
#define DF_GEN_PARAMS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "status.h"

/* The shortest decimal that reads back as f ("0.8", not 0.800000012). */
void df_float_str(float f, char buf[32]);

/* Set rec[key] to the double nearest df_float_str(f), so that the record
 * prints the float as the user wrote it (with df_rec_dumps). */
void df_rec_set_float(json_t *rec, const char *key, float f);

/* The record as one compact line (no newline), keys in order, every real at
 * the fewest digits that keep all of the record's reals exact (jansson's
 * default 17 digits would print 0.8 as 0.80000000000000004). free() it;
 * NULL when out of memory. */
char *df_rec_dumps(const json_t *rec);

/* df_rec_dumps plus a newline, written in one piece to fd under a
 * process-wide lock, so records of concurrent threads never interleave. */
df_status df_rec_write_line(int fd, const json_t *rec);

/* A LoRA's name in A1111's <lora:name:scale>: the file's basename without
 * ".safetensors". */
void df_gen_lora_name(const char *path, char *buf, size_t cap);

/* The first 12 hex digits of the file's sha256 (A1111's "Lora hashes"). */
df_status df_gen_file_hash12(const char *path, char out[13]);

/* What A1111's "parameters" text says about one image. */
typedef struct {
    const char *prompt, *negative_prompt;   /* NULL reads as "" */
    const char *lora_prompt;    /* " <lora:name:scale>..." after the prompt, or NULL */
    const char *lora_hashes;    /* "name: hash12, ..." or NULL */
    const char *sampler;        /* our short scheduler name */
    int steps, width, height;
    float guidance;
    uint64_t seed;
    float strength;             /* img2img/inpainting denoising strength; 0: text to image */
} df_gen_text;

/* "PROMPT<loras>\nNegative prompt: NEG\nSteps: N, Sampler: S, CFG scale: G,
 * Seed: S, Size: WxH[, Denoising strength: D][, Lora hashes: "..."]".
 * New string (free it), NULL when out of memory. */
char *df_gen_a1111_text(const df_gen_text *g);

/* The PNG as df-sample writes it: text chunks "parameters" (the A1111
 * text), "diffyface" (the image's record, JSON) and "Software". */
df_status df_gen_png_encode(const df_image *img, const char *a1111, const char *record_json,
                            const char *software, uint8_t **buf, size_t *n);
df_status df_gen_png_write(const char *path, const df_image *img, const char *a1111,
                           const char *record_json, const char *software);

#endif
