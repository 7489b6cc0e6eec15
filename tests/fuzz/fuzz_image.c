/* fuzz_image.c - JPEG and PNG decoding (lib/io/image.c): the input is an
 * image file, probed and decoded from memory under a pixel limit (4 MP, so
 * that a header's size claims are what is tested, not the machine's memory),
 * and decoded again with JPEG DCT scaling. A decoded image must have the
 * size the probe announced. */
#include "fuzz_util.h"
#include "image.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    df_image_limits lim = {.max_pixels = 4u << 20};
    df_image_format fmt;
    int pw = 0, ph = 0;
    df_status ps = df_image_probe_mem(data, size, &fmt, &pw, &ph);
    df_image img = {0};
    if (df_image_decode_mem(data, size, &lim, &img) == DF_OK) {
        if (ps != DF_OK || img.w != pw || img.h != ph || !img.px)
            abort();
        /* touch every byte so ASan sees the buffer is as large as claimed */
        uint8_t acc = 0;
        for (size_t i = 0; i < (size_t)img.w * img.h * 3; i++)
            acc ^= img.px[i];
        sink = acc;
        df_image_free(&img);
    }
    df_image sc = {0};
    if (df_image_decode_mem_scaled(data, size, &lim, 8, 8, &sc) == DF_OK)
        df_image_free(&sc);
    return 0;
}
