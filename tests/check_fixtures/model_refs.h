/* model_refs.h - helpers the UNet and VAE checkers share: reading reference
 * tensors as F32 with their shapes, comparing within the model tolerance
 * 1e-4 x max(1, max|ref|), and FAIL lines that carry the reason. */
#ifndef DF_CHECK_MODEL_REFS_H
#define DF_CHECK_MODEL_REFS_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "safetensors.h"

/* A reference tensor converted to F32 (data malloc'd; NULL when absent). */
typedef struct {
    float *data;
    size_t n;
    int ndim;
    int64_t shape[DF_ST_MAX_DIMS];
} cf_ref;

/* Load `name` from st into r; returns 0, or prints a FAIL line and returns 1. */
int cf_ref_get(const cf_ctx *c, const df_safetensors *st, const char *name, cf_ref *r);
void cf_ref_free(cf_ref *r);
/* FAIL line "file:tensor" with a reason; returns 1. */
int cf_ref_fail(const cf_ctx *c, const char *tensor, const char *why);
/* Compare n values of got with r within 1e-4 x max(1, max|ref|). */
int cf_ref_compare(const cf_ctx *c, const char *tensor, const float *got, const cf_ref *r);
/* FAIL lines for every tensor of the MANIFEST entry that is neither an input
 * nor a checked output (names NULL-terminated), so none passes unchecked. */
int cf_ref_unknown(const cf_ctx *c, const char *const *known);

#endif
