/* test_safetensors.c - lib/io/safetensors: F16/BF16 conversions against a
 * nearest-neighbour reference, writer/reader round trip of every dtype, the
 * real fixture files (F32 vs F16 UNet, kohya .alpha scalars), and a table of
 * malformed headers that must each fail cleanly with a message. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "unit.h"

static char tmpdir[] = "/tmp/df-test-st-XXXXXX";

/* ---- conversions ---- */

static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Is h the correctly rounded (nearest, ties to even) half of x? Checked by
 * comparing with both neighbours of h, which is independent of how the
 * converter computes it. */
static int is_nearest_f16(float x, uint16_t h)
{
    double v = df_f16_to_f32(h), d = fabs((double)x - v);
    if (isinf(v))   /* overflow: x must be at least halfway past 65504 */
        return fabs((double)x) >= 65520.0 && (!signbit(v) == !signbit(x));
    for (int k = -1; k <= 1; k += 2) {
        uint16_t mag = h & 0x7fff, nb;
        if (mag == 0 && k < 0)
            nb = (uint16_t)((h ^ 0x8000) | 1);   /* across zero */
        else
            nb = (uint16_t)((h & 0x8000) | (mag + k));
        if ((nb & 0x7c00) == 0x7c00)
            continue;
        double dn = fabs((double)x - df_f16_to_f32(nb));
        if (dn < d || (dn == d && (nb & 1) == 0 && (h & 1) == 1))
            return 0;
    }
    return 1;
}

static int is_nearest_bf16(float x, uint16_t h)
{
    double v = df_bf16_to_f32(h), d = fabs((double)x - v);
    if (isinf(v)) {   /* overflow: |x| at least halfway past the largest bfloat16 */
        uint32_t u;
        memcpy(&u, &x, 4);
        return (u & 0x7fffffffu) >= 0x7f7f8000u;
    }
    for (int k = -1; k <= 1; k += 2) {
        uint16_t mag = h & 0x7fff;
        if (mag == 0 && k < 0)
            continue;
        uint16_t nb = (uint16_t)((h & 0x8000) | (mag + k));
        if ((nb & 0x7f80) == 0x7f80)
            continue;
        double dn = fabs((double)x - df_bf16_to_f32(nb));
        if (dn < d || (dn == d && (nb & 1) == 0 && (h & 1) == 1))
            return 0;
    }
    return 1;
}

static void test_conversions(void)
{
    /* Every half and bfloat16 survives f -> f32 -> f exactly (NaN stays NaN). */
    int bad16 = 0, badb = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = df_f16_to_f32((uint16_t)h);
        if (isnan(f) ? !isnan(df_f16_to_f32(df_f32_to_f16(f))) : df_f32_to_f16(f) != h)
            bad16++;
        float g = df_bf16_to_f32((uint16_t)h);
        if (isnan(g) ? !isnan(df_bf16_to_f32(df_f32_to_bf16(g))) : df_f32_to_bf16(g) != h)
            badb++;
    }
    CHECK_MSG(bad16 == 0, "%d halves do not round-trip", bad16);
    CHECK_MSG(badb == 0, "%d bfloat16 do not round-trip", badb);

    /* Known values. */
    CHECK(df_f16_to_f32(0x3c00) == 1.0f && df_f16_to_f32(0xc000) == -2.0f);
    CHECK(df_f16_to_f32(0x7bff) == 65504.0f && df_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(isinf(df_f16_to_f32(0x7c00)) && isnan(df_f16_to_f32(0x7e00)));
    CHECK(df_f32_to_f16(65519.0f) == 0x7bff && df_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(df_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);            /* tie -> even */
    CHECK(df_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);        /* tie -> even (up) */
    CHECK(df_f32_to_f16(0x1p-25f) == 0 && df_f32_to_f16(0x1.000002p-25f) == 1);
    CHECK(df_f32_to_f16(3 * 0x1p-25f) == 2);                    /* subnormal tie -> even */
    CHECK(df_f32_to_f16(-0.0f) == 0x8000 && df_f32_to_f16(1e-30f) == 0);
    CHECK(df_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && df_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
    CHECK(df_f32_to_bf16(u2f(0x7f7fffff)) == 0x7f80);           /* rounds to Inf */
    CHECK(isnan(df_bf16_to_f32(df_f32_to_bf16(u2f(0x7f800001)))));  /* low-payload NaN kept */

    /* Random floats (every exponent, random mantissa) are rounded to the nearest. */
    uint32_t seed = 12345;
    int wrong16 = 0, wrongb = 0;
    for (int i = 0; i < 2000000; i++) {
        seed = seed * 1664525u + 1013904223u;
        uint32_t u = seed;
        if ((u & 0x7f800000u) == 0x7f800000u)
            continue;
        float x = u2f(u);
        if (fabsf(x) < 65536.0f && !is_nearest_f16(x, df_f32_to_f16(x)))
            wrong16++;
        if (!is_nearest_bf16(x, df_f32_to_bf16(x)))
            wrongb++;
    }
    CHECK_MSG(wrong16 == 0, "%d floats not rounded to the nearest half", wrong16);
    CHECK_MSG(wrongb == 0, "%d floats not rounded to the nearest bfloat16", wrongb);
}

/* ---- round trip ---- */

static void test_round_trip(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
    float f32[6] = {1.5f, -2.25f, 3e-8f, 65504.0f, -0.0f, 7.0f};
    uint16_t f16[4] = {0x3c00, 0x8001, 0x7bff, 0x7c00}, bf16[3] = {0x3f80, 0xc2f7, 0x0001};
    double f64[2] = {1e300, -3.5};
    int64_t i64[3] = {INT64_MIN, -1, INT64_MAX};
    int32_t i32[2] = {-7, 1 << 30};
    int16_t i16[2] = {-32768, 12};
    int8_t i8[3] = {-128, 0, 127};
    uint8_t u8[2] = {0, 255}, b8[3] = {1, 0, 1};
    float alpha = 4.0f;
    struct { const char *name; df_dtype dt; int nd; int64_t shape[3]; const void *data; } in[] = {
        {"z.f32", DF_DTYPE_F32, 2, {2, 3}, f32},   {"a.f16", DF_DTYPE_F16, 1, {4}, f16},
        {"bf", DF_DTYPE_BF16, 3, {1, 3, 1}, bf16}, {"f64", DF_DTYPE_F64, 1, {2}, f64},
        {"i64", DF_DTYPE_I64, 1, {3}, i64},        {"i32", DF_DTYPE_I32, 2, {1, 2}, i32},
        {"i16", DF_DTYPE_I16, 1, {2}, i16},        {"i8", DF_DTYPE_I8, 1, {3}, i8},
        {"u8", DF_DTYPE_U8, 1, {2}, u8},           {"bool", DF_DTYPE_BOOL, 1, {3}, b8},
        {"lora.alpha", DF_DTYPE_F32, 0, {0}, &alpha}, {"empty", DF_DTYPE_F32, 2, {0, 5}, f32},
    };
    size_t n = sizeof in / sizeof *in;
    df_st_writer *w = df_st_writer_new();
    CHECK(df_st_writer_meta(w, "format", "pt") == DF_OK);
    CHECK(df_st_writer_meta(w, "note", "héllo \"quoted\"") == DF_OK);
    for (size_t i = 0; i < n; i++)
        CHECK(df_st_writer_add(w, in[i].name, in[i].dt, in[i].nd, in[i].shape, in[i].data) == DF_OK);
    CHECK(df_st_writer_add(w, "i8", DF_DTYPE_I8, 1, (int64_t[]){3}, i8) == DF_ERR_ARG);
    CHECK(df_st_writer_add(w, "__metadata__", DF_DTYPE_I8, 1, (int64_t[]){3}, i8) == DF_ERR_ARG);
    CHECK(df_st_write(w, path) == DF_OK);
    df_st_writer_free(w);

    /* Header: 8-byte padded length, "__metadata__" first. */
    FILE *fp = fopen(path, "rb");
    unsigned char len8[8];
    char head[17] = {0};
    CHECK(fp && fread(len8, 1, 8, fp) == 8 && fread(head, 1, 16, fp) == 16);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    CHECK(hlen % 8 == 0);
    CHECK(!strcmp(head, "{\"__metadata__\":"));
    if (fp)
        fclose(fp);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0);   /* renamed away */

    df_safetensors *st;
    CHECK(df_st_open(path, &st) == DF_OK);
    if (!st)
        return;
    CHECK(df_st_count(st) == n);
    CHECK(!strcmp(df_st_metadata(st, "format"), "pt"));
    CHECK(!strcmp(df_st_metadata(st, "note"), "héllo \"quoted\""));
    CHECK(df_st_metadata(st, "absent") == NULL);
    for (size_t i = 0; i < n; i++) {
        const df_st_tensor *t = df_st_find(st, in[i].name);
        CHECK_MSG(t != NULL, "%s missing", in[i].name);
        if (!t)
            continue;
        CHECK(t->dtype == in[i].dt && t->ndim == in[i].nd);
        size_t numel = 1;
        for (int d = 0; d < in[i].nd; d++) {
            CHECK(t->shape[d] == in[i].shape[d]);
            numel *= (size_t)in[i].shape[d];
        }
        CHECK(t->numel == numel && t->nbytes == numel * df_dtype_size(in[i].dt));
        CHECK_MSG(numel == 0 || !memcmp(t->data, in[i].data, t->nbytes), "%s bytes differ",
                  in[i].name);
    }
    /* File order: larger dtypes first, then by name, so every tensor is aligned. */
    static const char *const order[] = {"i64", "f64", "empty", "lora.alpha", "z.f32", "i32",
                                        "bf", "a.f16", "i16", "i8", "u8", "bool"};
    for (size_t i = 0; i < n; i++) {
        const df_st_tensor *t = df_st_at(st, i);
        CHECK_MSG(!strcmp(t->name, order[i]), "position %zu: %s, expected %s", i, t->name, order[i]);
        CHECK(df_st_index(st, t->name) == (long)i);
        CHECK((uintptr_t)t->data % df_dtype_size(t->dtype) == 0);
    }
    CHECK(df_st_at(st, n) == NULL && df_st_index(st, "nope") == -1);

    /* Conversions from the file. */
    float *out;
    CHECK(df_st_load_f32(st, "a.f16", 1, (int64_t[]){4}, &out) == DF_OK);
    CHECK(out[0] == 1.0f && out[1] == -0x1p-24f && out[2] == 65504.0f && isinf(out[3]));
    free(out);
    CHECK(df_st_load_f32(st, "bf", 3, (int64_t[]){1, 3, 1}, &out) == DF_OK);
    CHECK(out[0] == 1.0f && out[1] == -123.5f);
    free(out);
    CHECK(df_st_load_f32(st, "i8", -1, NULL, &out) == DF_OK);
    CHECK(out[0] == -128.0f && out[2] == 127.0f);
    free(out);
    CHECK(df_st_load_f32(st, "bool", -1, NULL, &out) == DF_OK);
    CHECK(out[0] == 1.0f && out[1] == 0.0f);
    free(out);
    CHECK(df_st_load_f32(st, "empty", 2, (int64_t[]){0, 5}, &out) == DF_OK);
    free(out);
    int64_t iv[3];
    CHECK(df_st_to_i64(df_st_find(st, "i64"), iv) == DF_OK && iv[0] == INT64_MIN && iv[2] == INT64_MAX);
    CHECK(df_st_to_i64(df_st_find(st, "i16"), iv) == DF_OK && iv[0] == -32768 && iv[1] == 12);
    CHECK(df_st_to_i64(df_st_find(st, "u8"), iv) == DF_OK && iv[1] == 255);
    CHECK(df_st_to_i64(df_st_find(st, "z.f32"), iv) == DF_ERR_SHAPE);

    const float *view;
    float *owned;
    CHECK(df_st_view_f32(st, "z.f32", 2, (int64_t[]){2, 3}, &view, &owned) == DF_OK);
    CHECK(owned == NULL && view == df_st_find(st, "z.f32")->data && view[1] == -2.25f);
    CHECK(df_st_view_f32(st, "lora.alpha", 0, NULL, &view, &owned) == DF_OK && view[0] == 4.0f);
    CHECK(df_st_view_f32(st, "a.f16", -1, NULL, &view, &owned) == DF_OK);
    CHECK(owned != NULL && view == owned && view[0] == 1.0f);
    free(owned);
    CHECK(df_st_view_f32(st, "z.f32", 2, (int64_t[]){3, 2}, &view, &owned) == DF_ERR_SHAPE);
    CHECK(strstr(df_last_error(), "z.f32") && strstr(df_last_error(), "[3, 2]") &&
          strstr(df_last_error(), "[2, 3]"));
    CHECK(df_st_load_f32(st, "nope", -1, NULL, &out) == DF_ERR_NOTFOUND && out == NULL);
    CHECK(strstr(df_last_error(), "nope") != NULL);
    df_st_close(st);
}

/* ---- fixtures ---- */

static const char *fixtures_dir(void)
{
    const char *d = getenv("DF_FIXTURES");
    return d ? d : "../shared/fixtures";
}

static void test_fixtures(void)
{
    char p32[1024], p16[1024], pk[1024];
    const char *fx = fixtures_dir();
    snprintf(p32, sizeof p32, "%s/pipeline/unet/diffusion_pytorch_model.safetensors", fx);
    snprintf(p16, sizeof p16, "%s/pipeline/unet/diffusion_pytorch_model.fp16.safetensors", fx);
    snprintf(pk, sizeof pk, "%s/lora/kohya_lora.safetensors", fx);
    if (access(p32, R_OK) != 0 && !getenv("DF_FIXTURES")) {
        fprintf(stderr, "SKIP fixtures: %s not found and DF_FIXTURES unset\n", p32);
        return;
    }
    df_safetensors *a = NULL, *b = NULL, *k = NULL;
    CHECK_MSG(df_st_open(p32, &a) == DF_OK, "%s", df_last_error());
    CHECK_MSG(df_st_open(p16, &b) == DF_OK, "%s", df_last_error());
    CHECK_MSG(df_st_open(pk, &k) == DF_OK, "%s", df_last_error());
    if (!a || !b || !k)
        goto out;
    CHECK(df_st_metadata(a, "format") && !strcmp(df_st_metadata(a, "format"), "pt"));
    CHECK(df_st_count(a) > 100 && df_st_count(a) == df_st_count(b));
    /* The F16 file is the F32 one rounded by torch (round-to-nearest-even):
     * our rounding must give the same bits, and the upcast must differ from
     * F32 by at most half an F16 ulp. */
    size_t mism = 0, total = 0;
    double maxdiff = 0, maxrel = 0;
    for (size_t i = 0; i < df_st_count(a); i++) {
        const df_st_tensor *t = df_st_at(a, i), *h = df_st_find(b, t->name);
        CHECK_MSG(h != NULL, "%s missing in F16 file", t->name);
        if (!h)
            continue;
        CHECK(t->dtype == DF_DTYPE_F32 && h->dtype == DF_DTYPE_F16 && h->numel == t->numel);
        const float *v32;
        float *own32, *v16;
        CHECK(df_st_view_f32(a, t->name, t->ndim, t->shape, &v32, &own32) == DF_OK);
        CHECK(own32 == NULL);   /* the real writer keeps F32 aligned: a view, no copy */
        CHECK(df_st_load_f32(b, t->name, t->ndim, t->shape, &v16) == DF_OK);
        const uint16_t *hb = h->data;   /* aligned: F16 after F32 in the real writer's order */
        for (size_t j = 0; j < t->numel; j++) {
            if (df_f32_to_f16(v32[j]) != hb[j])
                mism++;
            double d = fabs((double)v32[j] - v16[j]);
            double ulp = fabs(v16[j]) < 0x1p-14 ? 0x1p-24 : ldexp(1.0, ilogb(v16[j]) - 10);
            if (d > maxdiff)
                maxdiff = d;
            if (d / ulp > maxrel)
                maxrel = d / ulp;
        }
        total += t->numel;
        free(own32);
        free(v16);
    }
    fprintf(stderr, "unet F16 vs F32: %zu values, %zu rounding mismatches, max |diff| %.3g, "
            "max %.3f F16 ulp\n", total, mism, maxdiff, maxrel);
    CHECK(total > 100000 && mism == 0 && maxrel <= 0.5);

    /* kohya: every module has a 0-dim F32 .alpha = 4 (rank 4, alpha 4). */
    size_t alphas = 0;
    for (size_t i = 0; i < df_st_count(k); i++) {
        const df_st_tensor *t = df_st_at(k, i);
        size_t L = strlen(t->name);
        if (L > 6 && !strcmp(t->name + L - 6, ".alpha")) {
            alphas++;
            float v = NAN;
            CHECK(t->ndim == 0 && t->numel == 1 && t->dtype == DF_DTYPE_F32);
            CHECK(df_st_to_f32(t, &v) == DF_OK && v == 4.0f);
        }
    }
    CHECK(alphas > 0 && alphas * 3 == df_st_count(k));
out:
    df_st_close(a);
    df_st_close(b);
    df_st_close(k);
}

/* ---- malformed headers ---- */

/* Write: declared header length (or the real one when hlen < 0), header
 * text, and `dlen` data bytes. */
static void write_raw(const char *path, long long hlen, const char *hdr, size_t dlen)
{
    FILE *fp = fopen(path, "wb");
    uint64_t n = hlen < 0 ? strlen(hdr) : (uint64_t)hlen;
    if (hlen == -2)
        n = UINT64_MAX;
    for (int i = 0; i < 8; i++)
        fputc((int)(n >> (8 * i)) & 0xff, fp);
    fputs(hdr, fp);
    for (size_t i = 0; i < dlen; i++)
        fputc((int)i, fp);
    fclose(fp);
}

static void test_malformed(void)
{
    static const struct {
        const char *what;
        long long hlen;      /* -1: the real length, -2: 2^64-1 */
        const char *hdr;
        size_t dlen;
        const char *msg;     /* expected in the error */
    } cases[] = {
        {"header beyond file", 1000, "{}", 0, "beyond the end"},
        {"length 0", 0, "{}", 0, "length is 0"},
        {"huge length", -2, "{}", 0, "exceeds"},
        {"200 MB length", 200LL << 20, "{}", 0, "exceeds"},
        {"not JSON", -1, "{\"a\": ", 0, "not valid JSON"},
        {"garbage header", -1, "\x01\x02garbage", 0, "not valid JSON"},
        {"JSON array", -1, "[1, 2]", 0, "not a JSON object"},
        {"entry not object", -1, "{\"t\": 3}", 0, "not an object"},
        {"unknown dtype", -1, "{\"t\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "unknown dtype"},
        {"missing dtype", -1, "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype"},
        {"negative shape", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
         4, "shape[0]"},
        {"float shape", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
         4, "shape[0]"},
        {"huge shape", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,"
         "4611686018427387904],\"data_offsets\":[0,4]}}", 4, "overflows"},
        {"huge numel*size", -1, "{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
         "\"data_offsets\":[0,8]}}", 8, "overflows"},
        {"too many dims", -1, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
         "\"data_offsets\":[0,1]}}", 1, "dims"},
        {"shape*dtype != span", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
         8, "needs 8 bytes"},
        {"offsets out of range", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],"
         "\"data_offsets\":[0,8]}}", 4, "beyond"},
        {"begin > end", -1, "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
         "begin"},
        {"negative offset", -1, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}",
         4, "data_offsets"},
        {"one offset", -1, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
         "data_offsets"},
        {"overlap", -1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
        {"same range twice", -1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "overlaps"},
        {"hole", -1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole"},
        {"trailing garbage", -1, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         9, "trailing"},
        {"duplicate names", -1, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "duplicate"},
        {"non-string metadata", -1, "{\"__metadata__\":{\"format\":1}}", 0, "not a string"},
        {"metadata not object", -1, "{\"__metadata__\":[\"pt\"]}", 0, "not an object"},
    };
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_raw(path, cases[i].hlen, cases[i].hdr, cases[i].dlen);
        df_clear_error();
        df_safetensors *st = (df_safetensors *)&st;   /* must be reset to NULL */
        df_status s = df_st_open(path, &st);
        CHECK_MSG(s != DF_OK && st == NULL, "%s: accepted", cases[i].what);
        CHECK_MSG(strstr(df_last_error(), cases[i].msg) && strstr(df_last_error(), path),
                  "%s: message \"%s\" lacks \"%s\"", cases[i].what, df_last_error(), cases[i].msg);
        if (s == DF_OK)
            df_st_close(st);
    }
    /* Short file, missing file. */
    FILE *fp = fopen(path, "wb");
    fputs("abc", fp);
    fclose(fp);
    df_safetensors *st;
    CHECK(df_st_open(path, &st) == DF_ERR_FORMAT && strstr(df_last_error(), "too short"));
    CHECK(df_st_open("/nonexistent/x.safetensors", &st) == DF_ERR_NOTFOUND);
    /* Accepted edge cases: no tensors; spaces padding the header; zero-size tensor. */
    write_raw(path, -1, "{}      ", 0);
    CHECK(df_st_open(path, &st) == DF_OK && df_st_count(st) == 0);
    df_st_close(st);
    write_raw(path, -1, "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
              "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}  ", 1);
    CHECK_MSG(df_st_open(path, &st) == DF_OK, "%s", df_last_error());
    if (st) {
        CHECK(df_st_count(st) == 2 && df_st_find(st, "s")->ndim == 0);
        df_st_close(st);
    }
    unlink(path);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_conversions();
    test_round_trip();
    test_fixtures();
    test_malformed();
    char p[300];
    snprintf(p, sizeof p, "%s/rt.safetensors", tmpdir);
    unlink(p);
    rmdir(tmpdir);
    /* A file with no tensors: written and read back (UBSan saw qsort get
     * NULL for 0 elements; found by tests/fuzz/fuzz_lora.c). */
    {
        const char *empty = "/tmp/df_test_st_empty.safetensors";
        df_st_writer *w = df_st_writer_new();
        CHECK(df_st_write(w, empty) == DF_OK);
        df_st_writer_free(w);
        df_safetensors *st = NULL;
        CHECK(df_st_open(empty, &st) == DF_OK && df_st_count(st) == 0);
        df_st_close(st);
        unlink(empty);
    }
    UNIT_END();
}
