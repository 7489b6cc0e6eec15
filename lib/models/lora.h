/* lora.h - load LoRA files and merge them into model weights.
 *
 * Three key formats are recognized, all for the same math
 *     W' = W + scale * (alpha / r) * up @ down      (peft: up = lora_B, down = lora_A)
 * - PEFT:      unet.<module>.lora_A.weight / .lora_B.weight, text_encoder.<module>...
 *              (optionally base_model.model. prefixes and adapter names); no alpha -> alpha = r
 * - diffusers: unet.<module>.lora.down.weight / .lora.up.weight,
 *              text_encoder.<module>.lora_linear_layer.down.weight / .up.weight,
 *              the older attn-processor form <...>.processor.to_q_lora.down.weight;
 *              no alpha -> alpha = r (what diffusers does)
 * - kohya:     lora_unet_<module with . -> _>.lora_down.weight / .lora_up.weight / .alpha,
 *              lora_te_<module ...>; names are resolved against the model's own weight
 *              names, since "_" -> "." is ambiguous.
 * <module> is the diffusers/transformers module path, the weight is <module>.weight.
 * Linear weights (out,in) and conv weights (out,in,kh,kw) with 1x1 up are merged.
 *
 * Every tensor of the file is accounted for: applied, or listed as unmatched
 * (a silent non-match is the most common complaint about other tools).
 * Tested by tests/unit/test_lora.c and, through df-sample and the fixture
 * checker, against diffusers' LoRA outputs. */
#ifndef DF_LORA_H
#define DF_LORA_H

#include <stddef.h>

#include "status.h"
#include "weights.h"

typedef struct {
    size_t n_tensors;        /* tensors in the file */
    size_t n_applied;        /* tensors used (down, up and alpha of merged pairs) */
    size_t n_pairs;          /* weights changed */
    size_t n_unet_pairs, n_te_pairs;
    const char *format;      /* "peft", "diffusers", "kohya" or "mixed" */
    char **unmatched;        /* names of tensors that matched nothing (n_tensors - n_applied) */
    size_t n_unmatched;
} df_lora_report;

/* Merge the LoRA in `path` with user scale `scale` into unet and/or
 * text_encoder weights (either may be NULL: its tensors then count as
 * unmatched). A shape that cannot belong to the target weight (a LoRA for
 * another architecture) fails with DF_ERR_SHAPE naming both tensors, before
 * anything is changed. */
df_status df_lora_apply(const char *path, float scale, df_weights *unet,
                        df_weights *text_encoder, df_lora_report *rep);
void df_lora_report_free(df_lora_report *rep);

/* Everything df_lora_apply checks and reports (names, shapes, finite values,
 * counts), without changing or copying any weight: for validating a LoRA
 * before its model is loaded for use. */
df_status df_lora_check(const char *path, df_weights *unet, df_weights *text_encoder,
                        df_lora_report *rep);

/* Parse "file.safetensors[:scale]" as df-sample's --lora takes it. The
 * returned path is malloc'd. A trailing ":x" is a scale only if x parses as
 * a finite number, so paths with colons still work; but when "FILE:x" is not
 * a file and FILE is, x is a bad scale (DF_ERR_ARG naming x). */
df_status df_lora_parse_arg(const char *arg, char **path, float *scale);

#endif
