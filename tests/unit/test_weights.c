/* test_weights.c - lib/io/weights: views vs converted copies (F32, F16 fixture
 * UNet, BF16, misaligned F32), the conversion cache, copy-on-write through
 * df_weights_mut, shape/name errors, and the component-folder lookup. */
#include <string.h>
#include <unistd.h>

#include "unit.h"
#include "weights.h"

static char tmpdir[] = "/tmp/df-test-weights-XXXXXX";

static void test_fixture_unet(const char *fx)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/pipeline/unet", fx);
    df_weights *w32 = NULL, *w16 = NULL;
    CHECK_MSG(df_weights_open_dir(dir, NULL, &w32) == DF_OK, "%s", df_last_error());
    CHECK_MSG(df_weights_open_dir(dir, "fp16", &w16) == DF_OK, "%s", df_last_error());
    if (!w32 || !w16)
        goto out;
    const char *name = "conv_in.weight";
    const df_st_tensor *t = df_st_find(df_weights_file(w32), name);
    CHECK(t != NULL);
    if (!t)
        goto out;
    df_status st;
    const float *a = df_weights_get(w32, name, t->ndim, t->shape, &st);
    CHECK(st == DF_OK && a == t->data);                  /* F32: a view, no copy */
    CHECK(df_weights_private_bytes(w32) == 0);

    const float *h = df_weights_get(w16, name, t->ndim, t->shape, &st);
    CHECK(st == DF_OK && h != NULL);
    CHECK(df_weights_private_bytes(w16) == t->numel * sizeof(float));
    CHECK(df_weights_get(w16, name, -1, NULL, &st) == h); /* cached, not converted twice */
    CHECK(df_weights_private_bytes(w16) == t->numel * sizeof(float));
    const uint16_t *bits = df_st_find(df_weights_file(w16), name)->data;
    size_t bad = 0;
    for (size_t i = 0; h && i < t->numel; i++)
        if (h[i] != df_f16_to_f32(bits[i]) || df_f32_to_f16(a[i]) != bits[i])
            bad++;
    CHECK_MSG(bad == 0, "%zu of %zu F16 values differ", bad, t->numel);

    /* getf builds the name and checks the shape. */
    int64_t C = t->shape[0];
    CHECK(df_weights_getf(w32, &st, 4, (int64_t[]){C, 4, 3, 3}, "%s.weight", "conv_in") == a);
    CHECK(df_weights_getf(w32, &st, 2, (int64_t[]){C, 4}, "%s.weight", "conv_in") == NULL);
    CHECK(st == DF_ERR_SHAPE && strstr(df_last_error(), "conv_in.weight"));
    CHECK(df_weights_get(w32, "no.such.weight", -1, NULL, &st) == NULL && st == DF_ERR_NOTFOUND);
    CHECK(strstr(df_last_error(), "no.such.weight") != NULL);
    CHECK(df_weights_has(w32, name) && !df_weights_has(w32, "no.such.weight"));

    /* Copy-on-write: mut() gives a private copy; later get() sees it; the
     * mapping is untouched. */
    int nd = -1;
    int64_t shape[DF_ST_MAX_DIMS];
    float *m = df_weights_mut(w32, name, &nd, shape);
    CHECK(m != NULL && m != a && nd == t->ndim && shape[0] == t->shape[0] && shape[3] == 3);
    if (m) {
        CHECK(!memcmp(m, a, t->numel * sizeof(float)));
        float orig = a[0];
        m[0] += 1.0f;
        CHECK(df_weights_get(w32, name, -1, NULL, &st) == m);
        CHECK(a[0] == orig);
        CHECK(df_weights_mut(w32, name, NULL, NULL) == m);
    }
    CHECK(df_weights_private_bytes(w32) == t->numel * sizeof(float));
    CHECK(df_weights_mut(w32, "no.such.weight", NULL, NULL) == NULL);
out:
    df_weights_free(w32);
    df_weights_free(w16);
}

/* BF16 and a misaligned F32 tensor (hand-written file) are converted copies. */
static void test_bf16_and_misaligned(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    uint16_t bf[3] = {0x3f80, 0xc000, 0x4049};   /* 1, -2, 3.140625 */
    df_st_writer *wr = df_st_writer_new();
    CHECK(df_st_writer_add(wr, "b", DF_DTYPE_BF16, 1, (int64_t[]){3}, bf) == DF_OK);
    CHECK(df_st_write(wr, path) == DF_OK);
    df_st_writer_free(wr);
    df_weights *w = NULL;
    CHECK_MSG(df_weights_open_dir(tmpdir, NULL, &w) == DF_OK, "%s", df_last_error());
    if (w) {
        const float *v = df_weights_get(w, "b", 1, (int64_t[]){3}, NULL);
        CHECK(v && v[0] == 1.0f && v[1] == -2.0f && v[2] == 3.140625f);
        df_weights_free(w);
    }

    /* Header of 56 bytes (data starts 8-aligned), then U8 [1] at 0 and F32 [1] at 1. */
    const char *hdr = "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}";
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    FILE *fp = fopen(path, "wb");
    for (int i = 0; i < 8; i++)
        fputc((int)(padded >> (8 * i)) & 0xff, fp);
    fputs(hdr, fp);
    for (size_t i = hl; i < padded; i++)
        fputc(' ', fp);
    float x = 2.5f;
    fputc(7, fp);
    fwrite(&x, 4, 1, fp);
    fclose(fp);
    CHECK_MSG(df_weights_open_file(path, &w) == DF_OK, "%s", df_last_error());
    if (w) {
        const df_st_tensor *t = df_st_find(df_weights_file(w), "f");
        const float *v = df_weights_get(w, "f", 1, (int64_t[]){1}, NULL);
        CHECK(v && (const void *)v != t->data && v[0] == 2.5f);
        CHECK(df_weights_private_bytes(w) == 4);
        const float *u = df_weights_get(w, "u", 0, NULL, NULL);   /* wrong ndim */
        CHECK(u == NULL && strstr(df_last_error(), "[1]"));
        df_weights_free(w);
    }
    unlink(path);

    /* A folder without a weight file names the folder and the variant. */
    CHECK(df_weights_open_dir(tmpdir, "fp16", &w) == DF_ERR_NOTFOUND && w == NULL);
    CHECK(strstr(df_last_error(), tmpdir) && strstr(df_last_error(), "model.fp16.safetensors"));
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *fx = getenv("DF_FIXTURES");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/pipeline/unet/config.json", fx ? fx : "../shared/fixtures");
    if (fx || access(probe, R_OK) == 0)
        test_fixture_unet(fx ? fx : "../shared/fixtures");
    else
        fprintf(stderr, "SKIP fixture UNet: DF_FIXTURES unset and ../shared/fixtures absent\n");
    test_bf16_and_misaligned();
    rmdir(tmpdir);
    UNIT_END();
}
