/* test_edit_image.c - img2img/inpainting input sizing (lib/io/edit_image):
 * default sizes, same-size copies, resizes equal to df_image_resize, and the
 * mask's grayscale against values Pillow 9.4's convert("L") gives. */
#include <string.h>

#include "edit_image.h"
#include "unit.h"

static void test_default_size(void)
{
    int w, h;
    CHECK(df_edit_default_size(72, 68, 8, &w, &h) == DF_OK && w == 72 && h == 64);
    CHECK(df_edit_default_size(64, 64, 8, &w, &h) == DF_OK && w == 64 && h == 64);
    CHECK(df_edit_default_size(7, 64, 8, &w, &h) == DF_ERR_ARG);
}

static void test_gray(void)
{
    /* Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) */
    static const struct { uint8_t rgb[3], l; } cases[] = {
        {{255, 0, 0}, 76}, {{0, 255, 0}, 150}, {{0, 0, 255}, 29}, {{10, 200, 30}, 124},
        {{128, 128, 128}, 128}, {{255, 255, 255}, 255}, {{1, 2, 3}, 2}, {{77, 190, 201}, 157}};
    size_t n = sizeof cases / sizeof cases[0];
    df_image m = {0};
    CHECK(df_image_alloc(&m, (int)n, 1) == DF_OK);
    for (size_t i = 0; i < n; i++)
        memcpy(m.px + 3 * i, cases[i].rgb, 3);
    uint8_t *g = NULL;
    CHECK(df_edit_fit_mask(&m, (int)n, 1, &g) == DF_OK);
    for (size_t i = 0; g && i < n; i++)
        CHECK_MSG(g[i] == cases[i].l, "case %zu: %d, Pillow %d", i, g[i], cases[i].l);
    free(g);
    df_image_free(&m);
}

static void test_fit(void)
{
    df_image in = {0}, a = {0}, b = {0};
    CHECK(df_image_alloc(&in, 20, 12) == DF_OK);
    for (int i = 0; i < 20 * 12 * 3; i++)
        in.px[i] = (uint8_t)(i * 37 % 251);
    CHECK(df_edit_fit_image(&in, 20, 12, &a) == DF_OK);
    CHECK(a.w == 20 && a.h == 12 && !memcmp(a.px, in.px, 20 * 12 * 3));
    df_image_free(&a);
    CHECK(df_edit_fit_image(&in, 16, 8, &a) == DF_OK);
    CHECK(df_image_resize(&in, 16, 8, &b) == DF_OK);
    CHECK(a.w == 16 && a.h == 8 && !memcmp(a.px, b.px, 16 * 8 * 3));
    /* a resized mask is the resized RGB made gray */
    uint8_t *g = NULL;
    CHECK(df_edit_fit_mask(&in, 16, 8, &g) == DF_OK);
    for (int q = 0; g && q < 16 * 8; q++) {
        const uint8_t *p = b.px + 3 * q;
        CHECK(g[q] == (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16));
    }
    free(g);
    df_image_free(&a);
    df_image_free(&b);
    df_image_free(&in);
}

int main(void)
{
    test_default_size();
    test_gray();
    test_fit();
    UNIT_END();
}
