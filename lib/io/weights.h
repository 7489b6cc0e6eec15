/* weights.h - a model component's named F32 weights, loaded from a diffusers
 * folder's safetensors file.
 *
 * F32 tensors are views into the file mapping (no copy); F16/BF16 tensors are
 * converted to F32 once when first asked for. df_weights_mut gives a private
 * writable copy (copy-on-write), which is how LoRA merges into a weight
 * without touching the mapped file. Names are the diffusers/transformers
 * state-dict keys ("down_blocks.0.attentions.0.proj_in.weight").
 * Tested by tests/unit/test_weights.c. */
#ifndef DF_WEIGHTS_H
#define DF_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "safetensors.h"
#include "status.h"

typedef struct df_weights df_weights;

/* Open the weight file of a component folder (e.g. pipeline/unet): with
 * variant NULL, "diffusion_pytorch_model.safetensors" or "model.safetensors";
 * with variant "fp16", "diffusion_pytorch_model.fp16.safetensors" or
 * "model.fp16.safetensors". The error names the folder and what was missing. */
df_status df_weights_open_dir(const char *component_dir, const char *variant, df_weights **out);
df_status df_weights_open_file(const char *path, df_weights **out);
/* A table over an open file or view (df_st_view_new), which it takes over:
 * closed by df_weights_free, or now when this fails. */
df_status df_weights_open_st(df_safetensors *st, df_weights **out);
/* For a table whose names are not the file's own (a single-file checkpoint
 * read under diffusers names): fn writes the file's name for a tensor the
 * model asked for, so that "no tensor" names what is missing in the file.
 * ctx (up to 64 bytes) is copied. fn returns false when it knows no name. */
typedef bool (*df_weights_hint_fn)(const void *ctx, const char *name, char *buf, size_t cap);
void df_weights_set_hint(df_weights *w, df_weights_hint_fn fn, const void *ctx, size_t ctx_size);
void df_weights_free(df_weights *w);

/* The F32 data of `name`, checked against shape (ndim entries; pass
 * ndim < 0 to skip). On a missing tensor or a shape mismatch returns NULL and
 * records the detail (tensor name, expected and found shapes) with df_fail;
 * `*st` (when not NULL) gets the status. */
const float *df_weights_get(df_weights *w, const char *name, int ndim, const int64_t *shape,
                            df_status *st);
/* printf-style name, shape checked by the variadic list: ndim then dims.
 * Example: df_weights_getf(w, &st, 2, (int64_t[]){C, C}, "%s.to_q.weight", prefix) */
const float *df_weights_getf(df_weights *w, df_status *st, int ndim, const int64_t *shape,
                             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Writable private copy of `name` (made on first call; later get() calls
 * return the same copy). NULL if absent. */
float *df_weights_mut(df_weights *w, const char *name, int *ndim, int64_t *shape);
bool df_weights_has(const df_weights *w, const char *name);
/* Underlying file, for listing names (df_st_count / df_st_at). */
const df_safetensors *df_weights_file(const df_weights *w);
/* Bytes of private F32 copies made so far (for memory reports). */
size_t df_weights_private_bytes(const df_weights *w);

#endif
