/* safetensors.h - mmap reader with strict header validation, and a writer.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, "name": {"dtype", "shape", "data_offsets": [b, e]}},
 * then the data block. The reader checks, before trusting anything: N within
 * the file and below a sane cap, the JSON parses to an object, every dtype is
 * known, shape entries are non-negative and their product times the dtype
 * size equals e - b (in size_t, with overflow checks), b <= e inside the data
 * block, and no two tensors overlap. Like the reference reader, the tensors
 * must tile the data block exactly (no holes, no trailing bytes), and duplicate
 * names are rejected. df_st_at order is data-offset order.
 * Tested by tests/unit/test_safetensors.c (including malformed headers). */
#ifndef DF_SAFETENSORS_H
#define DF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum {
    DF_DTYPE_F32, DF_DTYPE_F16, DF_DTYPE_BF16, DF_DTYPE_F64,
    DF_DTYPE_I64, DF_DTYPE_I32, DF_DTYPE_I16, DF_DTYPE_I8, DF_DTYPE_U8, DF_DTYPE_BOOL,
    DF_DTYPE_COUNT
} df_dtype;

#define DF_ST_MAX_DIMS 8

typedef struct {
    const char *name;
    df_dtype dtype;
    int ndim;                        /* 0 for a scalar (shape []) */
    int64_t shape[DF_ST_MAX_DIMS];
    size_t numel;
    const void *data;                /* points into the mapping; not aligned for F32 in general */
    size_t nbytes;
} df_st_tensor;

typedef struct df_safetensors df_safetensors;

size_t df_dtype_size(df_dtype t);
const char *df_dtype_name(df_dtype t);           /* "F32" */
df_status df_dtype_parse(const char *s, df_dtype *out);

/* Open and validate; on failure the detail (path, what is wrong) is in
 * df_last_error(). */
df_status df_st_open(const char *path, df_safetensors **out);
void df_st_close(df_safetensors *st);

/* A view: tensors that live in base's mapping under other names or shapes
 * (a single-file checkpoint's UNet under its diffusers names, a fused q/k/v
 * split into row slices). Each entry's data/nbytes must lie inside base's
 * data, its dtype, shape and numel agree; names are malloc'd. The view takes
 * the array and the names (freed on failure too), keeps base open until the
 * view is closed (df_st_close of base only drops the caller's reference), and
 * is read like a file: df_st_find, df_st_load_f32, ... Duplicate names are
 * DF_ERR_FORMAT. label stands for the path in messages. */
df_status df_st_view_new(df_safetensors *base, const char *label, df_st_tensor *tensors,
                         size_t n, df_safetensors **out);

size_t df_st_count(const df_safetensors *st);
const df_st_tensor *df_st_at(const df_safetensors *st, size_t i);   /* in file order */
const df_st_tensor *df_st_find(const df_safetensors *st, const char *name);
const char *df_st_metadata(const df_safetensors *st, const char *key); /* NULL if absent */
const char *df_st_path(const df_safetensors *st);
/* Position of `name` for df_st_at, or -1 when absent. */
long df_st_index(const df_safetensors *st, const char *name);
/* DF_OK when t has exactly this shape (ndim < 0 skips the check); otherwise
 * DF_ERR_SHAPE with the tensor name, expected and found shapes recorded. */
df_status df_st_check_shape(const df_st_tensor *t, int ndim, const int64_t *shape);

/* Convert to F32 (from F32, F16, BF16, F64, or integer types), numel floats. */
df_status df_st_to_f32(const df_st_tensor *t, float *out);
/* Convert an integer tensor (I64, I32, ...) to int64. */
df_status df_st_to_i64(const df_st_tensor *t, int64_t *out);

/* Find `name`, check that it has the given shape (ndim entries), and convert
 * to F32 into a new malloc'd buffer. DF_ERR_NOTFOUND / DF_ERR_SHAPE name the
 * tensor in df_last_error(). */
df_status df_st_load_f32(const df_safetensors *st, const char *name, int ndim,
                         const int64_t *shape, float **out);

/* Like df_st_load_f32 but without a copy when the tensor is F32 and
 * 4-byte aligned in the mapping (the usual case): *data points into the
 * mapping and *owned is NULL; otherwise *owned is a malloc'd F32 copy that
 * the caller frees (and *data == *owned). Pass ndim < 0 to skip the shape check. */
df_status df_st_view_f32(const df_safetensors *st, const char *name, int ndim,
                         const int64_t *shape, const float **data, float **owned);

/* Writer: tensors are referenced (not copied) until df_st_write returns. */
typedef struct df_st_writer df_st_writer;
df_st_writer *df_st_writer_new(void);
df_status df_st_writer_add(df_st_writer *w, const char *name, df_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);
df_status df_st_writer_meta(df_st_writer *w, const char *key, const char *value);
/* Writes to path.tmp then renames, so a crash never leaves a half file. */
df_status df_st_write(df_st_writer *w, const char *path);
void df_st_writer_free(df_st_writer *w);

/* fp16/bf16 <-> f32 conversions used by the reader, writer and kernels. */
float df_f16_to_f32(uint16_t h);
uint16_t df_f32_to_f16(float f);
float df_bf16_to_f32(uint16_t h);
uint16_t df_f32_to_bf16(float f);

#endif
