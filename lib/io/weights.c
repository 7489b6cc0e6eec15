/* weights.c - name -> F32 tensor table over one mapped safetensors file.
 *
 * Each tensor of the file has one slot (same index as df_st_at). A slot's
 * private F32 copy is made lazily: on the first get() of a non-F32 or
 * misaligned tensor (conversion cache), or on df_weights_mut (copy-on-write).
 * Once a copy exists every get() returns it, so a LoRA merged through mut()
 * is what the model sees. A mutex guards the lazy fills, so concurrent
 * get() calls are safe; the returned pointers stay valid until free.
 * Tested by tests/unit/test_weights.c. */
#include "weights.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct df_weights {
    df_safetensors *st;
    float **copy;              /* per tensor: private F32 copy or NULL */
    size_t private_bytes;
    pthread_mutex_t lock;
    df_weights_hint_fn hint;   /* names a missing tensor as the file would */
    _Alignas(16) unsigned char hint_ctx[64];
    size_t hint_ctx_size;
};

df_status df_weights_open_st(df_safetensors *st, df_weights **out)
{
    *out = NULL;
    df_weights *w = calloc(1, sizeof *w);
    if (w)
        w->copy = calloc(df_st_count(st) + 1, sizeof *w->copy);
    if (!w || !w->copy) {
        df_status s = df_fail(DF_ERR_NOMEM, "%s: out of memory", df_st_path(st));
        free(w);
        df_st_close(st);
        return s;
    }
    w->st = st;
    pthread_mutex_init(&w->lock, NULL);
    *out = w;
    return DF_OK;
}

df_status df_weights_open_file(const char *path, df_weights **out)
{
    *out = NULL;
    df_safetensors *st;
    df_status s = df_st_open(path, &st);
    return s == DF_OK ? df_weights_open_st(st, out) : s;
}

void df_weights_set_hint(df_weights *w, df_weights_hint_fn fn, const void *ctx, size_t ctx_size)
{
    w->hint = fn;
    w->hint_ctx_size = ctx_size < sizeof w->hint_ctx ? ctx_size : sizeof w->hint_ctx;
    memcpy(w->hint_ctx, ctx, w->hint_ctx_size);
}

/* "no tensor" for name, with the hint's name of it in the file when there is one. */
static df_status missing(const df_weights *w, const char *name)
{
    char other[512];
    if (w->hint && w->hint(w->hint_ctx, name, other, sizeof other))
        return df_fail(DF_ERR_NOTFOUND, "%s: no tensor \"%s\" (for %s)", df_st_path(w->st),
                       other, name);
    return df_fail(DF_ERR_NOTFOUND, "%s: no tensor \"%s\"", df_st_path(w->st), name);
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

df_status df_weights_open_dir(const char *component_dir, const char *variant, df_weights **out)
{
    *out = NULL;
    static const char *const stems[] = {"diffusion_pytorch_model", "model"};
    char path[4096];
    for (size_t i = 0; i < sizeof stems / sizeof *stems; i++) {
        int n = variant ? snprintf(path, sizeof path, "%s/%s.%s.safetensors", component_dir,
                                   stems[i], variant)
                        : snprintf(path, sizeof path, "%s/%s.safetensors", component_dir, stems[i]);
        if (n < 0 || (size_t)n >= sizeof path)
            return df_fail(DF_ERR_ARG, "%s: path too long", component_dir);
        if (is_file(path))
            return df_weights_open_file(path, out);
    }
    const char *v = variant ? variant : "", *dot = variant ? "." : "";
    return df_fail(DF_ERR_NOTFOUND, "%s: no diffusion_pytorch_model%s%s.safetensors or "
                   "model%s%s.safetensors", component_dir, dot, v, dot, v);
}

void df_weights_free(df_weights *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < df_st_count(w->st); i++)
        free(w->copy[i]);
    free(w->copy);
    pthread_mutex_destroy(&w->lock);
    df_st_close(w->st);
    free(w);
}

/* Drop the mapped pages wholly inside a tensor whose data now lives in a
 * private F32 copy (an F16 file converted, a LoRA-merged weight): they would
 * otherwise stay resident beside the copy (1.7 GB for the SD 2.1 UNet's F16
 * file). The mapping is read-only and private, so the kernel simply re-reads
 * the file should anything touch those pages again. */
static void release_pages(const df_st_tensor *t)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0 || t->nbytes == 0)
        return;
    uintptr_t b = (uintptr_t)t->data, e = b + t->nbytes;
    uintptr_t lo = (b + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1), hi = e & ~((uintptr_t)pg - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Make slot i's private F32 copy if it has none. Caller holds the lock. */
static df_status ensure_copy(df_weights *w, long i)
{
    if (w->copy[i])
        return DF_OK;
    const df_st_tensor *t = df_st_at(w->st, (size_t)i);
    float *buf;
    df_status s = df_st_load_f32(w->st, t->name, -1, NULL, &buf);
    if (s != DF_OK)
        return s;
    w->copy[i] = buf;
    w->private_bytes += t->numel * sizeof(float);
    release_pages(t);
    return DF_OK;
}

static bool is_float_dtype(df_dtype t)
{
    return t == DF_DTYPE_F32 || t == DF_DTYPE_F16 || t == DF_DTYPE_BF16 || t == DF_DTYPE_F64;
}

const float *df_weights_get(df_weights *w, const char *name, int ndim, const int64_t *shape,
                            df_status *st)
{
    df_status s = DF_OK;
    const float *out = NULL;
    long i = df_st_index(w->st, name);
    if (i < 0) {
        s = missing(w, name);
        goto done;
    }
    const df_st_tensor *t = df_st_at(w->st, (size_t)i);
    if ((s = df_st_check_shape(t, ndim, shape)) != DF_OK)
        goto done;
    if (!is_float_dtype(t->dtype)) {   /* an integer "weight" is a broken file, not a value */
        s = df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": dtype %s is not a floating-point type",
                    df_st_path(w->st), name, df_dtype_name(t->dtype));
        goto done;
    }
    pthread_mutex_lock(&w->lock);
    if (!w->copy[i] && t->dtype == DF_DTYPE_F32 && (uintptr_t)t->data % _Alignof(float) == 0)
        out = t->data;         /* the usual case: a view into the mapping */
    else if ((s = ensure_copy(w, i)) == DF_OK)
        out = w->copy[i];
    pthread_mutex_unlock(&w->lock);
done:
    if (st)
        *st = s;
    return out;
}

const float *df_weights_getf(df_weights *w, df_status *st, int ndim, const int64_t *shape,
                             const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) {
        df_status s = df_fail(DF_ERR_ARG, "tensor name too long (%d bytes)", n);
        if (st)
            *st = s;
        return NULL;
    }
    return df_weights_get(w, name, ndim, shape, st);
}

float *df_weights_mut(df_weights *w, const char *name, int *ndim, int64_t *shape)
{
    long i = df_st_index(w->st, name);
    if (i < 0) {
        missing(w, name);
        return NULL;
    }
    const df_st_tensor *t = df_st_at(w->st, (size_t)i);
    pthread_mutex_lock(&w->lock);
    df_status s = ensure_copy(w, i);
    float *out = s == DF_OK ? w->copy[i] : NULL;
    pthread_mutex_unlock(&w->lock);
    if (out && ndim)
        *ndim = t->ndim;
    if (out && shape)
        memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    return out;
}

bool df_weights_has(const df_weights *w, const char *name)
{
    return df_st_index(w->st, name) >= 0;
}

const df_safetensors *df_weights_file(const df_weights *w)
{
    return w->st;
}

size_t df_weights_private_bytes(const df_weights *w)
{
    /* A plain read: callers ask for reports after loading, not during. */
    return w->private_bytes;
}
