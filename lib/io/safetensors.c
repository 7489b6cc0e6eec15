/* safetensors.c - mmap reader with strict header validation, F16/BF16/F32
 * conversions, and an atomic writer (see safetensors.h for the format).
 *
 * Validation policy (the same as the reference Rust/Python reader, so a
 * file we accept is one torch/diffusers would accept): the header length is
 * > 0, <= DF_ST_MAX_HEADER and inside the file; the header is a JSON object
 * without duplicate keys; "__metadata__" maps strings to strings; every
 * tensor has a known dtype, at most DF_ST_MAX_DIMS non-negative dims, and
 * data_offsets [b, e] with b <= e and e - b == numel * dtype size; sorted by
 * offset, the tensors tile the data block exactly: no overlap, no hole, and
 * no trailing bytes after the last tensor.
 * Tested by tests/unit/test_safetensors.c (round trips, the real fixture
 * files, and a table of malformed headers). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor data is read with memcpy as little-endian values. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The reference reader caps headers at 100 MB; real ones are < 1 MB. */
#define DF_ST_MAX_HEADER ((uint64_t)100 << 20)

typedef struct {
    char *key, *value;
} st_meta;

struct df_safetensors {
    char *path;
    int refs;                  /* the owner's, plus one per view of this file */
    df_safetensors *base;      /* a view: the file whose mapping holds its data */
    void *map;                 /* whole file, read-only (NULL for a view) */
    size_t map_size;
    df_st_tensor *tensors;     /* in data-offset (file) order */
    size_t count;
    size_t *by_name;           /* indices into tensors, sorted by name */
    st_meta *meta;
    size_t nmeta;
};

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[DF_DTYPE_COUNT] = {
    [DF_DTYPE_F32] = {"F32", 4},  [DF_DTYPE_F16] = {"F16", 2}, [DF_DTYPE_BF16] = {"BF16", 2},
    [DF_DTYPE_F64] = {"F64", 8},  [DF_DTYPE_I64] = {"I64", 8}, [DF_DTYPE_I32] = {"I32", 4},
    [DF_DTYPE_I16] = {"I16", 2},  [DF_DTYPE_I8] = {"I8", 1},   [DF_DTYPE_U8] = {"U8", 1},
    [DF_DTYPE_BOOL] = {"BOOL", 1},
};

size_t df_dtype_size(df_dtype t)
{
    return (unsigned)t < DF_DTYPE_COUNT ? dtype_info[t].size : 0;
}

const char *df_dtype_name(df_dtype t)
{
    return (unsigned)t < DF_DTYPE_COUNT ? dtype_info[t].name : "?";
}

df_status df_dtype_parse(const char *s, df_dtype *out)
{
    for (int i = 0; i < DF_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (df_dtype)i;
            return DF_OK;
        }
    return df_fail(DF_ERR_UNSUPPORTED, "unknown dtype \"%s\"", s);
}

/* ---- half and bfloat16 ---- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float df_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in float */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* Round-to-nearest-even, with overflow to Inf, subnormals and NaN kept NaN. */
uint16_t df_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u)                       /* NaN: keep top payload, force quiet */
        return sign | 0x7e00 | (uint16_t)((x >> 13) & 0x3ff);
    if (x >= 0x477ff000u)                      /* >= 65520 rounds to Inf (and Inf) */
        return sign | 0x7c00;
    if (x < 0x38800000u) {                     /* below 2^-14: half subnormal */
        if (x <= 0x33000000u)                  /* <= 2^-25 rounds to (even) zero */
            return sign;
        uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;              /* value in units of 2^-24 is m >> shift */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = (x - 0x38000000u) >> 13, rem = x & 0x1fff;   /* rebias 127 -> 15 */
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
        r++;                                   /* a carry into the exponent is correct */
    return sign | (uint16_t)r;
}

float df_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t df_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)       /* NaN stays NaN (quiet) */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);            /* RNE; overflow rounds to Inf */
    return (uint16_t)(x >> 16);
}

/* ---- reader ---- */

static int cmp_offset(const void *a, const void *b)
{
    const df_st_tensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx)
{
    const df_st_tensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static bool json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Parse one tensor entry. `data` is the data block (size `dsize`); the
 * data pointer is set to data + b and checked against the block later. */
static df_status parse_tensor(const char *path, const char *name, json_t *v, const char *data,
                              size_t dsize, df_st_tensor *t)
{
    if (!json_is_object(v))
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": entry is not an object", path, name);
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off))
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": needs string dtype, array shape and "
                       "array data_offsets", path, name);
    if (df_dtype_parse(json_string_value(dt), &t->dtype) != DF_OK)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%s\"", path, name,
                       json_string_value(dt));
    size_t nd = json_array_size(sh);
    if (nd > DF_ST_MAX_DIMS)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": %zu dims (max %d)", path, name, nd,
                       DF_ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_u64(json_array_get(sh, i), &d))
            return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": shape[%zu] is not a non-negative "
                           "integer", path, name, i);
        t->shape[i] = (int64_t)d;
        if (d && numel > SIZE_MAX / d)
            return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": shape overflows", path, name);
        numel *= (size_t)d;
    }
    size_t esize = df_dtype_size(t->dtype);
    if (numel > SIZE_MAX / esize)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": size overflows", path, name);
    t->numel = numel;
    t->nbytes = numel * esize;
    uint64_t b, e;
    if (json_array_size(off) != 2 || !json_u64(json_array_get(off, 0), &b) ||
        !json_u64(json_array_get(off, 1), &e))
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": data_offsets must be two non-negative "
                       "integers", path, name);
    if (b > e)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": data_offsets begin %llu > end %llu",
                       path, name, (unsigned long long)b, (unsigned long long)e);
    if (e > dsize)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": data_offsets end %llu beyond the %zu-byte "
                       "data block", path, name, (unsigned long long)e, dsize);
    if (e - b != t->nbytes)
        return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\": %s shape needs %zu bytes, data_offsets "
                       "span %llu", path, name, df_dtype_name(t->dtype), t->nbytes,
                       (unsigned long long)(e - b));
    t->data = data + b;
    return DF_OK;
}

static df_status parse_metadata(df_safetensors *st, json_t *m)
{
    if (!json_is_object(m))
        return df_fail(DF_ERR_FORMAT, "%s: __metadata__ is not an object", st->path);
    st->meta = calloc(json_object_size(m) + 1, sizeof *st->meta);
    if (!st->meta)
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", st->path);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return df_fail(DF_ERR_FORMAT, "%s: __metadata__ value of \"%s\" is not a string",
                           st->path, k);
        st_meta *e = &st->meta[st->nmeta++];
        e->key = strdup(k);
        e->value = strdup(json_string_value(v));
        if (!e->key || !e->value)
            return df_fail(DF_ERR_NOMEM, "%s: out of memory", st->path);
    }
    return DF_OK;
}

/* Sorted by offset, the tensors must tile [0, dsize) exactly. */
static df_status check_tiling(df_safetensors *st, const char *data, size_t dsize)
{
    if (st->count)
        qsort(st->tensors, st->count, sizeof *st->tensors, cmp_offset);
    size_t pos = 0;
    for (size_t i = 0; i < st->count; i++) {
        const df_st_tensor *t = &st->tensors[i];
        size_t b = (size_t)((const char *)t->data - data);
        if (b < pos)
            return df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\" overlaps \"%s\"", st->path, t->name,
                           st->tensors[i - 1].name);
        if (b > pos)
            return df_fail(DF_ERR_FORMAT, "%s: %zu-byte hole before tensor \"%s\"", st->path,
                           b - pos, t->name);
        pos = b + t->nbytes;
    }
    if (pos != dsize)
        return df_fail(DF_ERR_FORMAT, "%s: %zu trailing bytes after the last tensor", st->path,
                       dsize - pos);
    return DF_OK;
}

static df_status parse_header(df_safetensors *st, const char *hdr, size_t n, const char *data,
                              size_t dsize)
{
    json_error_t jerr;
    json_t *root = json_loadb(hdr, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return df_fail(DF_ERR_FORMAT, "%s: header is not valid JSON: %s", st->path, jerr.text);
    df_status s = DF_OK;
    if (!json_is_object(root)) {
        s = df_fail(DF_ERR_FORMAT, "%s: header is not a JSON object", st->path);
        goto done;
    }
    size_t cap = json_object_size(root);
    st->tensors = calloc(cap + 1, sizeof *st->tensors);
    st->by_name = calloc(cap + 1, sizeof *st->by_name);
    if (!st->tensors || !st->by_name) {
        s = df_fail(DF_ERR_NOMEM, "%s: out of memory", st->path);
        goto done;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "__metadata__")) {
            if ((s = parse_metadata(st, v)) != DF_OK)
                goto done;
            continue;
        }
        df_st_tensor *t = &st->tensors[st->count];
        if ((s = parse_tensor(st->path, k, v, data, dsize, t)) != DF_OK)
            goto done;
        if (!(t->name = strdup(k))) {
            s = df_fail(DF_ERR_NOMEM, "%s: out of memory", st->path);
            goto done;
        }
        st->count++;
    }
    if ((s = check_tiling(st, data, dsize)) != DF_OK)
        goto done;
    for (size_t i = 0; i < st->count; i++)
        st->by_name[i] = i;
    qsort_r(st->by_name, st->count, sizeof *st->by_name, cmp_name_idx, st->tensors);
done:
    json_decref(root);
    return s;
}

static df_status map_file(df_safetensors *st)
{
    int fd = open(st->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", st->path,
                       strerror(errno));
    struct stat sb;
    df_status s = DF_OK;
    if (fstat(fd, &sb) != 0) {
        s = df_fail(DF_ERR_IO, "%s: %s", st->path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        s = df_fail(DF_ERR_FORMAT, "%s: not a regular file", st->path);
    } else if (sb.st_size < 8) {
        s = df_fail(DF_ERR_FORMAT, "%s: %lld bytes, too short for a safetensors file", st->path,
                    (long long)sb.st_size);
    } else {
        st->map_size = (size_t)sb.st_size;
        void *p = mmap(NULL, st->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            s = df_fail(DF_ERR_IO, "%s: mmap: %s", st->path, strerror(errno));
        else
            st->map = p;
    }
    close(fd);
    return s;
}

df_status df_st_open(const char *path, df_safetensors **out)
{
    *out = NULL;
    df_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    st->refs = 1;
    df_status s = map_file(st);
    if (s == DF_OK) {
        const unsigned char *p = st->map;
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | p[i];
        if (n == 0)
            s = df_fail(DF_ERR_FORMAT, "%s: header length is 0", st->path);
        else if (n > DF_ST_MAX_HEADER)
            s = df_fail(DF_ERR_FORMAT, "%s: header length %llu exceeds the %llu-byte limit",
                        st->path, (unsigned long long)n, (unsigned long long)DF_ST_MAX_HEADER);
        else if (n > st->map_size - 8)
            s = df_fail(DF_ERR_FORMAT, "%s: header length %llu beyond the end of the %zu-byte file",
                        st->path, (unsigned long long)n, st->map_size);
        else
            s = parse_header(st, (const char *)p + 8, (size_t)n, (const char *)p + 8 + n,
                             st->map_size - 8 - (size_t)n);
    }
    if (s != DF_OK) {
        df_st_close(st);
        return s;
    }
    *out = st;
    return DF_OK;
}

/* A view's tensors are one component of a larger file (the UNet of a
 * single-file checkpoint): when the component goes, its pages should leave
 * the process's memory as a folder's unmapped file would. The mapping is
 * private and read-only, so dropping pages loses nothing: another view of
 * the same bytes faults them in again from the file. */
static void release_view_pages(const df_safetensors *v)
{
    long pg = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; pg > 0 && i < v->count; i++) {
        uintptr_t b = (uintptr_t)v->tensors[i].data, e = b + v->tensors[i].nbytes;
        uintptr_t lo = (b + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1), hi = e & ~((uintptr_t)pg - 1);
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

void df_st_close(df_safetensors *st)
{
    /* Views of a file keep it open: the last close unmaps. */
    if (!st || __atomic_sub_fetch(&st->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    if (st->base)
        release_view_pages(st);
    df_st_close(st->base);
    if (st->map)
        munmap(st->map, st->map_size);
    for (size_t i = 0; i < st->count; i++)
        free((char *)st->tensors[i].name);
    for (size_t i = 0; i < st->nmeta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st->tensors);
    free(st->by_name);
    free(st->path);
    free(st);
}

df_status df_st_view_new(df_safetensors *base, const char *label, df_st_tensor *tensors,
                         size_t n, df_safetensors **out)
{
    *out = NULL;
    df_safetensors *v = calloc(1, sizeof *v);
    size_t *by_name = calloc(n + 1, sizeof *by_name);
    char *path = strdup(label);
    if (!v || !by_name || !path) {
        for (size_t i = 0; i < n; i++)
            free((char *)tensors[i].name);
        free(tensors);
        free(v);
        free(by_name);
        free(path);
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
    }
    v->path = path;
    v->refs = 1;
    v->tensors = tensors;
    v->count = n;
    v->by_name = by_name;
    for (size_t i = 0; i < n; i++)
        by_name[i] = i;
    if (n)
        qsort_r(by_name, n, sizeof *by_name, cmp_name_idx, tensors);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(tensors[by_name[i - 1]].name, tensors[by_name[i]].name)) {
            df_status s = df_fail(DF_ERR_FORMAT, "%s: tensor \"%s\" twice", label,
                                  tensors[by_name[i]].name);
            df_st_close(v);
            return s;
        }
    __atomic_add_fetch(&base->refs, 1, __ATOMIC_ACQ_REL);
    v->base = base;
    *out = v;
    return DF_OK;
}

size_t df_st_count(const df_safetensors *st)
{
    return st->count;
}

const df_st_tensor *df_st_at(const df_safetensors *st, size_t i)
{
    return i < st->count ? &st->tensors[i] : NULL;
}

long df_st_index(const df_safetensors *st, const char *name)
{
    size_t lo = 0, hi = st->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->tensors[st->by_name[mid]].name);
        if (c == 0)
            return (long)st->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

const df_st_tensor *df_st_find(const df_safetensors *st, const char *name)
{
    long i = df_st_index(st, name);
    return i < 0 ? NULL : &st->tensors[i];
}

const char *df_st_metadata(const df_safetensors *st, const char *key)
{
    for (size_t i = 0; i < st->nmeta; i++)
        if (!strcmp(st->meta[i].key, key))
            return st->meta[i].value;
    return NULL;
}

const char *df_st_path(const df_safetensors *st)
{
    return st->path;
}

/* ---- conversions ---- */

/* Element i of an unaligned little-endian buffer (the mapping gives no
 * alignment guarantee for a tensor's start). */
#define DEF_LOAD(NAME, T) \
    static inline T NAME(const void *p, size_t i) \
    { T v; memcpy(&v, (const char *)p + i * sizeof(T), sizeof(T)); return v; }
DEF_LOAD(ld_u16, uint16_t)
DEF_LOAD(ld_f64, double)
DEF_LOAD(ld_i64, int64_t)
DEF_LOAD(ld_i32, int32_t)
DEF_LOAD(ld_i16, int16_t)
DEF_LOAD(ld_i8, int8_t)
DEF_LOAD(ld_u8, uint8_t)

df_status df_st_to_f32(const df_st_tensor *t, float *out)
{
    size_t n = t->numel;
    const void *p = t->data;
    switch (t->dtype) {
    case DF_DTYPE_F32:  if (n) memcpy(out, p, n * 4); break;
    case DF_DTYPE_F16:  for (size_t i = 0; i < n; i++) out[i] = df_f16_to_f32(ld_u16(p, i)); break;
    case DF_DTYPE_BF16: for (size_t i = 0; i < n; i++) out[i] = df_bf16_to_f32(ld_u16(p, i)); break;
    case DF_DTYPE_F64:  for (size_t i = 0; i < n; i++) out[i] = (float)ld_f64(p, i); break;
    case DF_DTYPE_I64:  for (size_t i = 0; i < n; i++) out[i] = (float)ld_i64(p, i); break;
    case DF_DTYPE_I32:  for (size_t i = 0; i < n; i++) out[i] = (float)ld_i32(p, i); break;
    case DF_DTYPE_I16:  for (size_t i = 0; i < n; i++) out[i] = (float)ld_i16(p, i); break;
    case DF_DTYPE_I8:   for (size_t i = 0; i < n; i++) out[i] = (float)ld_i8(p, i); break;
    case DF_DTYPE_U8:   for (size_t i = 0; i < n; i++) out[i] = (float)ld_u8(p, i); break;
    case DF_DTYPE_BOOL: for (size_t i = 0; i < n; i++) out[i] = ld_u8(p, i) ? 1.0f : 0.0f; break;
    default: return df_fail(DF_ERR_UNSUPPORTED, "tensor \"%s\": dtype not convertible", t->name);
    }
    return DF_OK;
}

df_status df_st_to_i64(const df_st_tensor *t, int64_t *out)
{
    size_t n = t->numel;
    const void *p = t->data;
    switch (t->dtype) {
    case DF_DTYPE_I64:  if (n) memcpy(out, p, n * 8); break;
    case DF_DTYPE_I32:  for (size_t i = 0; i < n; i++) out[i] = ld_i32(p, i); break;
    case DF_DTYPE_I16:  for (size_t i = 0; i < n; i++) out[i] = ld_i16(p, i); break;
    case DF_DTYPE_I8:   for (size_t i = 0; i < n; i++) out[i] = ld_i8(p, i); break;
    case DF_DTYPE_U8:   for (size_t i = 0; i < n; i++) out[i] = ld_u8(p, i); break;
    case DF_DTYPE_BOOL: for (size_t i = 0; i < n; i++) out[i] = ld_u8(p, i) != 0; break;
    default:
        return df_fail(DF_ERR_SHAPE, "tensor \"%s\": %s is not an integer dtype", t->name,
                       df_dtype_name(t->dtype));
    }
    return DF_OK;
}

/* "[2, 3]" into buf. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
    return buf;
}

df_status df_st_check_shape(const df_st_tensor *t, int ndim, const int64_t *shape)
{
    if (ndim < 0)
        return DF_OK;
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (ok)
        return DF_OK;
    char want[160], got[160];
    return df_fail(DF_ERR_SHAPE, "tensor \"%s\": expected shape %s, found %s", t->name,
                   shape_str(want, sizeof want, ndim, shape),
                   shape_str(got, sizeof got, t->ndim, t->shape));
}

static df_status find_checked(const df_safetensors *st, const char *name, int ndim,
                              const int64_t *shape, const df_st_tensor **t)
{
    *t = df_st_find(st, name);
    if (!*t)
        return df_fail(DF_ERR_NOTFOUND, "%s: no tensor \"%s\"", st->path, name);
    return df_st_check_shape(*t, ndim, shape);
}

static df_status copy_f32(const df_st_tensor *t, float **out)
{
    /* A 1-byte dtype widened to 4 bytes can overflow where its span did not. */
    if (t->numel > SIZE_MAX / sizeof(float))
        return df_fail(DF_ERR_NOMEM, "tensor \"%s\": too large", t->name);
    float *buf = malloc(t->numel ? t->numel * sizeof(float) : 1);
    if (!buf)
        return df_fail(DF_ERR_NOMEM, "tensor \"%s\": out of memory for %zu floats", t->name,
                       t->numel);
    df_status s = df_st_to_f32(t, buf);
    if (s != DF_OK) {
        free(buf);
        return s;
    }
    *out = buf;
    return DF_OK;
}

df_status df_st_load_f32(const df_safetensors *st, const char *name, int ndim,
                         const int64_t *shape, float **out)
{
    *out = NULL;
    const df_st_tensor *t;
    df_status s = find_checked(st, name, ndim, shape, &t);
    return s != DF_OK ? s : copy_f32(t, out);
}

df_status df_st_view_f32(const df_safetensors *st, const char *name, int ndim,
                         const int64_t *shape, const float **data, float **owned)
{
    *data = NULL;
    *owned = NULL;
    const df_st_tensor *t;
    df_status s = find_checked(st, name, ndim, shape, &t);
    if (s != DF_OK)
        return s;
    if (t->dtype == DF_DTYPE_F32 && ((uintptr_t)t->data % _Alignof(float)) == 0) {
        *data = t->data;
        return DF_OK;
    }
    if ((s = copy_f32(t, owned)) == DF_OK)
        *data = *owned;
    return s;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    df_dtype dtype;
    int ndim;
    int64_t shape[DF_ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} wr_tensor;

struct df_st_writer {
    wr_tensor *t;
    size_t n, cap;
    json_t *meta;     /* object, insertion order kept by jansson */
};

df_st_writer *df_st_writer_new(void)
{
    df_st_writer *w = calloc(1, sizeof *w);
    if (w && !(w->meta = json_object())) {
        free(w);
        w = NULL;
    }
    return w;
}

void df_st_writer_free(df_st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    json_decref(w->meta);
    free(w);
}

df_status df_st_writer_add(df_st_writer *w, const char *name, df_dtype dtype, int ndim,
                           const int64_t *shape, const void *data)
{
    if ((unsigned)dtype >= DF_DTYPE_COUNT || ndim < 0 || ndim > DF_ST_MAX_DIMS)
        return df_fail(DF_ERR_ARG, "tensor \"%s\": bad dtype or ndim %d", name, ndim);
    if (!strcmp(name, "__metadata__"))
        return df_fail(DF_ERR_ARG, "\"__metadata__\" is not a tensor name");
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return df_fail(DF_ERR_ARG, "tensor \"%s\" added twice", name);
    size_t nbytes = df_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return df_fail(DF_ERR_ARG, "tensor \"%s\": negative dim", name);
        if (shape[i] && nbytes > SIZE_MAX / (uint64_t)shape[i])
            return df_fail(DF_ERR_NOMEM, "tensor \"%s\": size overflows", name);
        nbytes *= (size_t)shape[i];
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        wr_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return df_fail(DF_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    wr_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return df_fail(DF_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim)
        memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->nbytes = nbytes;
    t->data = data;
    w->n++;
    return DF_OK;
}

df_status df_st_writer_meta(df_st_writer *w, const char *key, const char *value)
{
    json_t *v = json_string(value);
    if (!v || json_object_set_new(w->meta, key, v) != 0)
        return df_fail(DF_ERR_ARG, "metadata \"%s\": not valid UTF-8", key);
    return DF_OK;
}

/* The reference writer's order: larger dtypes first (its enum order
 * reversed), then by name; this keeps every tensor naturally aligned. */
static int dtype_rank(df_dtype t)
{
    static const int rank[DF_DTYPE_COUNT] = {
        [DF_DTYPE_BOOL] = 0, [DF_DTYPE_U8] = 1, [DF_DTYPE_I8] = 2, [DF_DTYPE_I16] = 3,
        [DF_DTYPE_F16] = 4, [DF_DTYPE_BF16] = 5, [DF_DTYPE_I32] = 6, [DF_DTYPE_F32] = 7,
        [DF_DTYPE_F64] = 8, [DF_DTYPE_I64] = 9,
    };
    return rank[t];
}

static int cmp_write_order(const void *a, const void *b)
{
    const wr_tensor *x = a, *y = b;
    int rx = dtype_rank(x->dtype), ry = dtype_rank(y->dtype);
    if (rx != ry)
        return ry - rx;
    return strcmp(x->name, y->name);
}

/* Header JSON, padded with spaces to a multiple of 8; *len gets its size. */
static df_status build_header(df_st_writer *w, char **out, size_t *len)
{
    json_t *root = json_object();
    if (!root)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    if (json_object_size(w->meta))
        json_object_set(root, "__metadata__", w->meta);
    size_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        wr_tensor *t = &w->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", df_dtype_name(t->dtype),
                              "shape", shape, "data_offsets", (json_int_t)off,
                              (json_int_t)(off + t->nbytes));
        if (!e || json_object_set_new(root, t->name, e) != 0) {
            json_decref(root);
            return df_fail(DF_ERR_ARG, "tensor \"%s\": cannot encode header entry", t->name);
        }
        off += t->nbytes;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s)
        return df_fail(DF_ERR_NOMEM, "out of memory for the header");
    size_t n = strlen(s), padded = (n + 7) / 8 * 8;
    char *buf = realloc(s, padded);
    if (!buf) {
        free(s);
        return df_fail(DF_ERR_NOMEM, "out of memory for the header");
    }
    memset(buf + n, ' ', padded - n);
    *out = buf;
    *len = padded;
    return DF_OK;
}

static bool write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        c += k;
        n -= (size_t)k;
    }
    return true;
}

df_status df_st_write(df_st_writer *w, const char *path)
{
    if (w->n)   // qsort must not get NULL, even for 0 elements
        qsort(w->t, w->n, sizeof *w->t, cmp_write_order);
    char *hdr = NULL;
    size_t hlen = 0;
    df_status s = build_header(w, &hdr, &hlen);
    if (s != DF_OK)
        return s;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(hdr);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        s = df_fail(DF_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    bool ok = write_all(fd, len8, 8) && write_all(fd, hdr, hlen);
    for (size_t i = 0; ok && i < w->n; i++)
        ok = write_all(fd, w->t[i].data, w->t[i].nbytes);
    if (!ok || fsync(fd) != 0) {
        s = df_fail(DF_ERR_IO, "%s: write: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        s = df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    free(tmp);
    free(hdr);
    return s;
}
