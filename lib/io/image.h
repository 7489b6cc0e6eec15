/* image.h - decode, encode, orient, crop and resample 8-bit RGB images.
 *
 * Decoding: JPEG through libjpeg-turbo (baseline, progressive, grayscale,
 * CMYK/YCCK including Adobe's inverted CMYK; the EXIF orientation tag 1-8 is
 * applied) and PNG through libpng (1-16 bit, palette, gray, gray+alpha,
 * RGBA, tRNS, interlaced; alpha composited onto white). The format is
 * sniffed from the magic bytes, never from the file name. Every decode goes
 * through limits checked from the header before any pixel buffer is
 * allocated (decompression bombs), and any warning the codec raises
 * (premature end of data, corrupt data, CRC error) makes the image count as
 * broken: DF_ERR_FORMAT with the codec's message in df_last_error().
 *
 * Resampling is separable Lanczos-3 with the kernel widened by the scale
 * factor when downscaling (the antialiasing Pillow's Image.LANCZOS does),
 * computed in float, in the sRGB values as stored (like Pillow).
 *
 * Tested by tests/unit/test_image.c (every format written with libjpeg and
 * libpng in the test) and tests/tools/test-df-resize.sh (pixels and PSNR
 * against Pillow). */
#ifndef DF_IMAGE_H
#define DF_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* 8-bit RGB, interleaved, rows top to bottom, no padding:
 * px has h * w * 3 bytes, pixel (x, y) channel c at px[(y * w + x) * 3 + c].
 * Free with df_image_free(); a zeroed df_image is empty and free-able. */
typedef struct {
    int w, h;
    uint8_t *px;
} df_image;

/* Decoding limits. max_pixels is checked against width * height read from
 * the header, before allocating anything the size of the image. */
typedef struct {
    uint64_t max_pixels;
} df_image_limits;

#define DF_IMAGE_DEFAULT_MAX_PIXELS 100000000ull   /* 100 MP */
/* Hard ceiling on either side whatever the limits say (keeps w * h * 3
 * and every int index far from overflow). */
#define DF_IMAGE_MAX_SIDE 65500

typedef enum { DF_IMAGE_UNKNOWN = 0, DF_IMAGE_JPEG, DF_IMAGE_PNG } df_image_format;

/* Format from the first bytes (JPEG FF D8 FF, PNG's 8-byte signature). */
df_image_format df_image_sniff(const uint8_t *buf, size_t n);
const char *df_image_format_name(df_image_format f);    /* "jpeg", "png", "unknown" */

/* Header facts without decoding the pixels: format and the size after the
 * EXIF orientation is applied (w and h swapped for orientations 5-8).
 * Cheap: reads only the header. Any of the out pointers may be NULL. */
df_status df_image_probe_mem(const uint8_t *buf, size_t n, df_image_format *fmt,
                             int *w, int *h);
df_status df_image_probe_file(const char *path, df_image_format *fmt, int *w, int *h);

/* Decode into *out (which is overwritten, not freed: pass an empty image).
 * lim NULL means DF_IMAGE_DEFAULT_MAX_PIXELS. On failure *out stays empty. */
df_status df_image_decode_mem(const uint8_t *buf, size_t n, const df_image_limits *lim,
                              df_image *out);
df_status df_image_decode_file(const char *path, const df_image_limits *lim, df_image *out);

/* As df_image_decode_mem, but a JPEG may be decoded at 1/2, 1/4 or 1/8 of
 * its size by libjpeg-turbo's DCT scaling, choosing the smallest scale that
 * keeps the (oriented) result at least min_w x min_h. PNG ignores the hint.
 * Callers that resample afterwards pass twice their target size so that
 * the final resample still antialiases (see df-resize(1) for the measured
 * quality). min_w = min_h = 0 decodes at full size. */
df_status df_image_decode_mem_scaled(const uint8_t *buf, size_t n, const df_image_limits *lim,
                                     int min_w, int min_h, df_image *out);

/* Whole file into memory (free() it), with a size cap against absurd
 * inputs. A zero-byte file is DF_ERR_FORMAT ("empty file"). */
df_status df_image_read_file(const char *path, uint8_t **buf, size_t *n);

/* Encoders. quality 1..100 (libjpeg scale, 4:2:0 chroma as libjpeg's and
 * Pillow's default). The _mem variants return a malloc'ed buffer.
 * text_kv: NULL, or a NULL-terminated list key0, value0, key1, value1, ...
 * written as PNG text chunks (keys 1-79 Latin-1 characters, as PNG says).
 * Values are UTF-8: one that fits Latin-1 goes into a tEXt chunk (converted
 * to Latin-1, which is what tEXt holds), any other (CJK, emoji) into an
 * uncompressed iTXt chunk with empty language and translated keyword. */
df_status df_image_encode_jpeg_mem(const df_image *img, int quality, uint8_t **buf, size_t *n);
df_status df_image_write_jpeg(const char *path, const df_image *img, int quality);
df_status df_image_encode_png_mem(const df_image *img, const char *const *text_kv,
                                  uint8_t **buf, size_t *n);
df_status df_image_write_png(const char *path, const df_image *img, const char *const *text_kv);

/* Allocate a w x h image (contents undefined). */
df_status df_image_alloc(df_image *img, int w, int h);
void df_image_free(df_image *img);

/* Lanczos-3 resample of all of `in` to w x h (see the top of this file). */
df_status df_image_resize(const df_image *in, int w, int h, df_image *out);

/* Resample the box [x0, x1) x [y0, y1) of `in` (fractional pixel
 * coordinates, as Pillow's resize(box=...)) to w x h: a crop and a resize
 * in one pass, with the filter reading real pixels beyond the box edges. */
df_status df_image_resize_box(const df_image *in, double x0, double y0, double x1, double y1,
                              int w, int h, df_image *out);

/* Copy the rectangle at (x, y) of size w x h, which must lie inside `in`. */
df_status df_image_crop(const df_image *in, int x, int y, int w, int h, df_image *out);

/* How to bring an image to a training size.
 *  NONE:   longest side scaled to size, aspect kept (w or h < size).
 *  CENTER: the centered square of side min(w, h) resampled to size x size.
 *  PAD_*:  longest side scaled to size, then centered on a size x size
 *          white or black square. */
typedef enum {
    DF_FIT_NONE, DF_FIT_CENTER, DF_FIT_PAD_WHITE, DF_FIT_PAD_BLACK
} df_image_fit_mode;

/* Output size df_image_fit() will produce for an iw x ih input. */
void df_image_fit_size(int iw, int ih, int size, df_image_fit_mode mode, int *ow, int *oh);
df_status df_image_fit(const df_image *in, int size, df_image_fit_mode mode, df_image *out);

#endif
