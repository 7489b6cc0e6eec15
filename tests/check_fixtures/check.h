/* check.h - the fixture checker's shared pieces.
 *
 * tests/check-fixtures DIR reads DIR/refs/MANIFEST.json and checks every
 * listed reference with the checker for its kind (chosen from the file's
 * path: refs/tokenizer_cases.jsonl, refs/unet.safetensors, refs/schedulers/...).
 * Checkers read every size from the model configs and the reference tensors'
 * shapes, never from constants, so other fixture sets of this layout work.
 * Each checked tensor prints one line:
 *     PASS refs/unet.safetensors:out max_abs 1.2e-06 max_rel 3.1e-06
 * and the exit status is 1 if any line is FAIL. */
#ifndef DF_CHECK_FIXTURES_H
#define DF_CHECK_FIXTURES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *root;        /* fixture set directory (holds pipeline/, lora/, refs/) */
    json_t *manifest;        /* the whole MANIFEST.json */
    json_t *entry;           /* this file's entry in manifest["files"] */
    const char *file;        /* entry["file"], e.g. "refs/unet.safetensors" */
} cf_ctx;

/* A checker checks one manifest entry and returns the number of FAIL lines
 * it printed. Each kind is implemented in its own file; main.c holds weak
 * fallbacks that report FAIL "no checker" so a missing one never passes. */
int cf_check_tokenizer(const cf_ctx *c);       /* refs/tokenizer_cases.jsonl */
int cf_check_text_encoder(const cf_ctx *c);    /* refs/text_encoder.safetensors */
int cf_check_vae(const cf_ctx *c);             /* refs/vae.safetensors */
int cf_check_unet(const cf_ctx *c);            /* refs/unet.safetensors */
int cf_check_scheduler(const cf_ctx *c);       /* refs/schedulers/<name>_<v|eps>.safetensors */
int cf_check_pipeline(const cf_ctx *c);        /* refs/pipeline_*.safetensors */
int cf_check_pipeline_png(const cf_ctx *c);    /* refs/pipeline_*.png */
int cf_check_lora_inference(const cf_ctx *c);  /* refs/lora_inference.safetensors */
int cf_check_train(const cf_ctx *c);           /* refs/train_lora_*.safetensors */

/* Print one result line. name is "file:tensor". */
void cf_line(const char *verdict, const char *name, double max_abs, double max_rel,
             const char *note);

/* Compare n floats; PASS when max|got-ref| <= tol_abs + tol_rel_max * max|ref|
 * (tol_rel_max scales with the reference's magnitude; NaN always fails).
 * Prints the line and returns 1 on FAIL, 0 on PASS. max_rel is
 * max|got-ref| / max(max|ref|, tiny). */
int cf_compare(const char *file, const char *tensor, const float *got, const float *ref,
               size_t n, double tol_abs, double tol_rel_max);

/* Path under the fixture root, in a static rotating buffer. */
const char *cf_path(const cf_ctx *c, const char *rel);

#endif
