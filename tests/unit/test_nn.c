/* test_nn.c - lib/models/nn pieces that the fixture checkers reach only at small
 * sizes: the banded nearest-upsample + 3x3 conv against the whole-map
 * composition of the reference ops (several bands, exact 2x and the
 * skip-sized 2H-1 case, one image and a batch), the downsampler's output
 * sizes, and the checked size arithmetic. */
#include <stdlib.h>

#include "nn.h"
#include "ops.h"
#include "unit.h"

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) * (1.0 / (1 << 24)) * 2.0 - 1.0);
    }
}

static void check_upsample(int B, int C, int H, int W, int OH, int OW)
{
    size_t nx = (size_t)B * C * H * W, ny = (size_t)B * C * OH * OW;
    float *x = malloc(nx * 4), *w = malloc((size_t)C * C * 9 * 4), *bias = malloc(C * 4),
          *up = malloc(ny * 4), *ref = malloc(ny * 4), *got = malloc(ny * 4),
          *scratch = malloc(df_nn_upsample_scratch(C, OH, OW) * 4);
    fill(x, nx, 1);
    fill(w, (size_t)C * C * 9, 2);
    fill(bias, C, 3);
    df_conv2d_geom g = {.K = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1};
    df_upsample_nearest_forward(up, x, B, C, H, W, OH, OW);
    df_conv2d_forward_ref(ref, up, w, bias, B, C, OH, OW, C, &g);
    df_nn_lin conv = {w, bias};
    df_nn_upsample_forward(&conv, got, scratch, x, B, C, H, W, OH, OW);
    double d = unit_max_abs_diff(got, ref, ny);
    CHECK_MSG(d < 1e-5, "upsample B=%d C=%d %dx%d -> %dx%d: max diff %g", B, C, H, W, OH, OW, d);
    fprintf(stderr, "upsample+conv B=%d C=%d %dx%d -> %dx%d: max diff %g\n", B, C, H, W, OH, OW, d);
    free(x), free(w), free(bias), free(up), free(ref), free(got), free(scratch);
}

int main(void)
{
    check_upsample(1, 3, 2, 3, 4, 6);                               // one band
    check_upsample(2, 5, 70, 9, 140, 18);                           // three bands, batch
    check_upsample(1, 4, 33, 5, 65, 9);                             // 2H-1 (skip size), 2 bands
    check_upsample(1, 2, DF_NN_UP_BAND / 2, 3, DF_NN_UP_BAND, 6);   // exactly one full band
    int OH, OW;
    df_nn_downsample_size(1, 9, 8, &OH, &OW);                       // UNet: ceil(H/2)
    CHECK(OH == 5 && OW == 4);
    df_nn_downsample_size(0, 9, 8, &OH, &OW);                       // VAE: floor(H/2)
    CHECK(OH == 4 && OW == 4);
    df_nn_downsample_size(0, 1, 2, &OH, &OW);                       // too small for the VAE
    CHECK(OH == 0 && OW == 1);
    size_t r = 0;
    CHECK(df_nn_mul((size_t)1 << 40, (size_t)1 << 20, &r) && r == (size_t)1 << 60);
    CHECK(!df_nn_mul((size_t)1 << 40, (size_t)1 << 30, &r));
    r = SIZE_MAX - 1;
    CHECK(!df_nn_add(&r, 2));
    UNIT_END();
}
