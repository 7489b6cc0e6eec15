/* edit_image.h - an init image and mask brought to the size img2img and
 * inpainting work at, as diffusers 0.27.2's VaeImageProcessor.preprocess
 * does with PIL images (resize_mode "default"): the whole image resized to
 * width x height with Lanczos (aspect not kept, nothing cropped), the mask
 * resized as RGB and then made grayscale with PIL's convert("L") weights.
 * Shared by df-sample and df-serve, which only load the files or bytes.
 * Tested by tests/unit/test_edit_image.c and, against diffusers, by
 * tests/tools/test-df-sample-edit.sh. */
#ifndef DF_EDIT_IMAGE_H
#define DF_EDIT_IMAGE_H

#include <stdint.h>

#include "image.h"
#include "status.h"

/* img2img's default size: each side rounded down to a multiple of m (as
 * get_default_height_width). DF_ERR_ARG when a side becomes 0. */
df_status df_edit_default_size(int iw, int ih, int m, int *w, int *h);

/* `in` at w x h: a copy when it already is, else df_image_resize (Lanczos-3
 * with Pillow's antialiasing). */
df_status df_edit_fit_image(const df_image *in, int w, int h, df_image *out);

/* The mask at w x h as gray (w*h bytes, malloc'd): resized as RGB, then
 * L = (19595 R + 38470 G + 7471 B + 32768) >> 16, PIL's ITU-R 601 weights.
 * The pipeline binarizes it (>= 128 repaint). */
df_status df_edit_fit_mask(const df_image *mask, int w, int h, uint8_t **gray);

#endif
