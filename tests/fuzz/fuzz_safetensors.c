/* fuzz_safetensors.c - the safetensors reader (lib/io/safetensors.c): the
 * input is a whole file, opened with df_st_open from a temp file (there is
 * no from-memory entry point); an accepted file has every tensor looked up
 * and converted, so that any offset the validation let through is read. */
#include "fuzz_util.h"
#include "safetensors.h"
#include "status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("in.safetensors", data, size);
    df_safetensors *st = NULL;
    if (df_st_open(path, &st) != DF_OK)
        return 0;
    (void)df_st_metadata(st, "format");
    for (size_t i = 0; i < df_st_count(st); i++) {
        const df_st_tensor *t = df_st_at(st, i);
        if (df_st_find(st, t->name) != t || df_st_index(st, t->name) != (long)i)
            abort();
        (void)df_st_check_shape(t, t->ndim, t->shape);
        if (t->numel > (1u << 20))
            continue;
        float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
        int64_t *q = malloc((t->numel ? t->numel : 1) * sizeof *q);
        if (f && q) {
            (void)df_st_to_f32(t, f);
            (void)df_st_to_i64(t, q);
        }
        free(f);
        free(q);
        const float *v;
        float *owned = NULL;
        if (df_st_view_f32(st, t->name, -1, NULL, &v, &owned) == DF_OK)
            free(owned);
    }
    df_st_close(st);
    return 0;
}
