/* edit_image.c - init image and mask sizing for img2img and inpainting. See
 * edit_image.h. Tested by tests/unit/test_edit_image.c. */
#include "edit_image.h"

#include <stdlib.h>
#include <string.h>

df_status df_edit_default_size(int iw, int ih, int m, int *w, int *h)
{
    *w = iw - iw % m;
    *h = ih - ih % m;
    if (*w < m || *h < m)
        return df_fail(DF_ERR_ARG, "init image %dx%d is smaller than %d pixels on a side", iw, ih,
                       m);
    return DF_OK;
}

df_status df_edit_fit_image(const df_image *in, int w, int h, df_image *out)
{
    if (in->w == w && in->h == h) {
        /* Pillow returns a copy for the same size; resampling would too,
         * up to float rounding. */
        df_status st = df_image_alloc(out, w, h);
        if (st == DF_OK)
            memcpy(out->px, in->px, (size_t)w * h * 3);
        return st;
    }
    return df_image_resize(in, w, h, out);
}

df_status df_edit_fit_mask(const df_image *mask, int w, int h, uint8_t **gray)
{
    *gray = NULL;
    df_image fit = {0};
    df_status st = df_edit_fit_image(mask, w, h, &fit);
    if (st != DF_OK)
        return st;
    size_t n = (size_t)w * h;
    uint8_t *g = malloc(n);
    if (!g) {
        df_image_free(&fit);
        return df_fail(DF_ERR_NOMEM, "out of memory for the mask");
    }
    for (size_t q = 0; q < n; q++) {
        const uint8_t *p = fit.px + q * 3;
        g[q] = (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
    }
    df_image_free(&fit);
    *gray = g;
    return DF_OK;
}
