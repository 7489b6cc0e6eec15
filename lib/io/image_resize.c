/* image_resize.c - separable Lanczos-3 resampling, crops and the fit modes
 * (center crop, pad, longest side) of lib/io/image.h.
 *
 * The filter follows Pillow's Image.LANCZOS: output sample i of n covering
 * the input interval [in0, in1) is centered at in0 + (i + 0.5) * scale with
 * scale = (in1 - in0) / n; when downscaling the kernel is stretched by
 * scale (support 3 * scale input pixels), which is what antialiases; the
 * weights of each output sample are normalized to sum 1. Unlike Pillow the
 * intermediate is float, not 8-bit, so the result is slightly more exact.
 *
 * Each output row is produced by a vertical pass (input rows -> one float
 * row of the needed input columns) followed at once by a horizontal pass
 * (that row -> output pixels): one row of scratch memory. The vertical inner
 * loop runs over contiguous samples, which the compiler vectorizes (-O3,
 * see the Makefile), and adds two taps per sweep of the row; the horizontal
 * pass handles a pixel as one 4-float vector.
 *
 * Tested by tests/unit/test_image.c (a double-precision reference written
 * the slow way, constant images, symmetry, antialiasing, crops) and
 * tests/tools/test-df-resize.sh (PSNR against Pillow's LANCZOS). */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Per output sample: the first input index and the weights of n inputs. */
typedef struct {
    int n_out;
    int taps;         /* weights stored per output sample (max over samples) */
    int *first;       /* (n_out) */
    int *count;       /* (n_out) */
    float *w;         /* (n_out, taps) */
} coeffs;

static double lanczos3(double x)
{
    x = fabs(x);
    if (x < 1e-12)
        return 1.0;
    if (x >= 3.0)
        return 0.0;
    double px = M_PI * x;
    return 3.0 * sin(px) * sin(px / 3.0) / (px * px);
}

static void coeffs_free(coeffs *c)
{
    free(c->first);
    free(c->count);
    free(c->w);
    memset(c, 0, sizeof *c);
}

/* Weights for resampling [in0, in1) of an axis of in_size samples to
 * out_size samples. */
static df_status coeffs_make(int in_size, double in0, double in1, int out_size, coeffs *c)
{
    memset(c, 0, sizeof *c);
    double scale = (in1 - in0) / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;       /* kernel stretch */
    double support = 3.0 * fscale;
    int taps = (int)ceil(support) * 2 + 1;
    c->n_out = out_size;
    c->taps = taps;
    c->first = malloc((size_t)out_size * sizeof *c->first);
    c->count = malloc((size_t)out_size * sizeof *c->count);
    c->w = calloc((size_t)out_size * taps, sizeof *c->w);
    if (!c->first || !c->count || !c->w) {
        coeffs_free(c);
        return df_fail(DF_ERR_NOMEM, "resize: cannot allocate filter weights");
    }
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale;
        int lo = (int)floor(center - support + 0.5);
        int hi = (int)floor(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        if (hi - lo > taps) hi = lo + taps;
        if (hi <= lo) {                  /* box entirely outside: nearest edge pixel */
            lo = center < 0 ? 0 : in_size - 1;
            hi = lo + 1;
        }
        float *w = c->w + (size_t)i * taps;
        double sum = 0.0;
        for (int k = 0; k < hi - lo; k++) {
            double v = lanczos3((lo + k + 0.5 - center) / fscale);
            w[k] = (float)v;
            sum += v;
        }
        for (int k = 0; k < hi - lo; k++)
            w[k] = sum != 0.0 ? (float)(w[k] / sum) : 1.0f / (float)(hi - lo);
        c->first[i] = lo;
        c->count[i] = hi - lo;
    }
    return DF_OK;
}

static uint8_t to_u8(float v)
{
    if (!(v > 0.0f))        /* also catches NaN */
        return 0;
    if (v >= 255.0f)
        return 255;
    return (uint8_t)(v + 0.5f);
}

// in (H, W, 3) u8 rows; acc (ncols * 3) floats for input columns [c0, c0 + ncols)
// acc = sum_k w[k] * in[first + k][c0 .. c0 + ncols), two taps per sweep
// (acc += w[k] in[k] + w[k+1] in[k+1]): half the loads and stores of acc
static void vertical_pass(const df_image *in, int c0, int ncols, int first, int count,
                          const float *w, float *acc)
{
    size_t n = (size_t)ncols * 3, stride = (size_t)in->w * 3;
    const uint8_t *r0 = in->px + ((size_t)first * in->w + c0) * 3;
    int k;
    if (count >= 2) {
        const uint8_t *r1 = r0 + stride;
        for (size_t x = 0; x < n; x++)
            acc[x] = w[0] * (float)r0[x] + w[1] * (float)r1[x];
        k = 2;
    } else {
        for (size_t x = 0; x < n; x++)
            acc[x] = w[0] * (float)r0[x];
        k = 1;
    }
    for (; k + 1 < count; k += 2) {
        const uint8_t *ra = r0 + k * stride, *rb = ra + stride;
        float wa = w[k], wb = w[k + 1];
        for (size_t x = 0; x < n; x++)
            acc[x] += wa * (float)ra[x] + wb * (float)rb[x];
    }
    if (k < count) {
        const uint8_t *ra = r0 + k * stride;
        float wa = w[k];
        for (size_t x = 0; x < n; x++)
            acc[x] += wa * (float)ra[x];
    }
}

/* Four floats as one value: GCC and Clang lower arithmetic on it to one
 * SSE/NEON instruction (or to scalar code where there is none). An RGB
 * pixel plus an unused lane is one v4f, so one tap of the horizontal pass
 * is one multiply and one add instead of three of each. */
typedef float v4f __attribute__((vector_size(16)));

// acc (ncols, 3) -> acc4 (ncols, 4), the unused lane 0
static void widen_rgb(const float *acc, int ncols, float *acc4)
{
    for (int x = 0; x < ncols; x++) {
        acc4[4 * x + 0] = acc[3 * x + 0];
        acc4[4 * x + 1] = acc[3 * x + 1];
        acc4[4 * x + 2] = acc[3 * x + 2];
        acc4[4 * x + 3] = 0.0f;
    }
}

// acc4 (ncols, 4) floats starting at input column c0; out (cx->n_out, 3) u8
// out[i] = sum_k w[i][k] * acc4[first[i] + k], each channel summed in k order
static void horizontal_pass(const float *acc4, int c0, const coeffs *cx, uint8_t *out)
{
    for (int i = 0; i < cx->n_out; i++) {
        const float *s = acc4 + (size_t)(cx->first[i] - c0) * 4;
        const float *w = cx->w + (size_t)i * cx->taps;
        const int n = cx->count[i];
        v4f sum = { 0.0f, 0.0f, 0.0f, 0.0f }, x0, x1;
        int k = 0;
        for (; k + 2 <= n; k += 2) {              /* unrolled by two, same order */
            memcpy(&x0, s + 4 * k, sizeof x0);    /* unaligned loads */
            memcpy(&x1, s + 4 * k + 4, sizeof x1);
            sum += w[k] * x0;
            sum += w[k + 1] * x1;
        }
        if (k < n) {
            memcpy(&x0, s + 4 * k, sizeof x0);
            sum += w[k] * x0;
        }
        out[3 * i + 0] = to_u8(sum[0]);
        out[3 * i + 1] = to_u8(sum[1]);
        out[3 * i + 2] = to_u8(sum[2]);
    }
}

df_status df_image_resize_box(const df_image *in, double x0, double y0, double x1, double y1,
                              int w, int h, df_image *out)
{
    out->w = out->h = 0;
    out->px = NULL;
    if (!in || !in->px || in->w <= 0 || in->h <= 0)
        return df_fail(DF_ERR_ARG, "resize: empty input image");
    if (!(x0 >= 0 && y0 >= 0 && x1 <= in->w && y1 <= in->h && x1 > x0 && y1 > y0))
        return df_fail(DF_ERR_ARG, "resize: box (%g,%g)-(%g,%g) not inside %dx%d",
                       x0, y0, x1, y1, in->w, in->h);
    coeffs cx, cy;
    df_status st = coeffs_make(in->w, x0, x1, w, &cx);
    if (st)
        return st;
    if ((st = coeffs_make(in->h, y0, y1, h, &cy))) {
        coeffs_free(&cx);
        return st;
    }
    /* Only the input columns some output pixel reads take part. */
    int c0 = cx.first[0], c1 = cx.first[w - 1] + cx.count[w - 1];
    for (int i = 0; i < w; i++) {
        if (cx.first[i] < c0) c0 = cx.first[i];
        if (cx.first[i] + cx.count[i] > c1) c1 = cx.first[i] + cx.count[i];
    }
    size_t ncols = (size_t)(c1 - c0);
    float *acc = malloc(ncols * 7 * sizeof *acc);     /* (ncols, 3), then acc4 (ncols, 4) */
    if (!acc || (st = df_image_alloc(out, w, h))) {
        free(acc);
        coeffs_free(&cx);
        coeffs_free(&cy);
        return st ? st : df_fail(DF_ERR_NOMEM, "resize: out of memory");
    }
    for (int y = 0; y < h; y++) {
        float *acc4 = acc + ncols * 3;
        vertical_pass(in, c0, c1 - c0, cy.first[y], cy.count[y], cy.w + (size_t)y * cy.taps, acc);
        widen_rgb(acc, c1 - c0, acc4);
        horizontal_pass(acc4, c0, &cx, out->px + (size_t)y * w * 3);
    }
    free(acc);
    coeffs_free(&cx);
    coeffs_free(&cy);
    return DF_OK;
}

df_status df_image_resize(const df_image *in, int w, int h, df_image *out)
{
    if (!in || in->w <= 0 || in->h <= 0) {
        out->w = out->h = 0;
        out->px = NULL;
        return df_fail(DF_ERR_ARG, "resize: empty input image");
    }
    return df_image_resize_box(in, 0, 0, in->w, in->h, w, h, out);
}

df_status df_image_crop(const df_image *in, int x, int y, int w, int h, df_image *out)
{
    out->w = out->h = 0;
    out->px = NULL;
    if (!in || !in->px || x < 0 || y < 0 || w <= 0 || h <= 0 || x > in->w - w || y > in->h - h)
        return df_fail(DF_ERR_ARG, "crop: %dx%d at (%d,%d) not inside the image", w, h, x, y);
    df_status st = df_image_alloc(out, w, h);
    if (st)
        return st;
    for (int r = 0; r < h; r++)
        memcpy(out->px + (size_t)r * w * 3, in->px + ((size_t)(y + r) * in->w + x) * 3, (size_t)w * 3);
    return DF_OK;
}

/* Longest side to `size`, the other rounded, at least 1. */
static void longest_side(int iw, int ih, int size, int *ow, int *oh)
{
    if (iw >= ih) {
        *ow = size;
        *oh = (int)lround((double)ih * size / iw);
    } else {
        *oh = size;
        *ow = (int)lround((double)iw * size / ih);
    }
    if (*ow < 1) *ow = 1;
    if (*oh < 1) *oh = 1;
}

void df_image_fit_size(int iw, int ih, int size, df_image_fit_mode mode, int *ow, int *oh)
{
    if (mode == DF_FIT_NONE)
        longest_side(iw, ih, size, ow, oh);
    else
        *ow = *oh = size;
}

/* Pad: the scaled image centered on a size x size square of color bg. */
static df_status fit_pad(const df_image *in, int size, uint8_t bg, df_image *out)
{
    int sw, sh;
    longest_side(in->w, in->h, size, &sw, &sh);
    df_image scaled;
    df_status st = df_image_resize(in, sw, sh, &scaled);
    if (st)
        return st;
    if ((st = df_image_alloc(out, size, size))) {
        df_image_free(&scaled);
        return st;
    }
    memset(out->px, bg, (size_t)size * size * 3);
    int ox = (size - sw) / 2, oy = (size - sh) / 2;
    for (int r = 0; r < sh; r++)
        memcpy(out->px + ((size_t)(oy + r) * size + ox) * 3, scaled.px + (size_t)r * sw * 3,
               (size_t)sw * 3);
    df_image_free(&scaled);
    return DF_OK;
}

df_status df_image_fit(const df_image *in, int size, df_image_fit_mode mode, df_image *out)
{
    out->w = out->h = 0;
    out->px = NULL;
    if (size <= 0 || size > DF_IMAGE_MAX_SIDE)
        return df_fail(DF_ERR_ARG, "fit: size %d out of range", size);
    if (!in || !in->px || in->w <= 0 || in->h <= 0)
        return df_fail(DF_ERR_ARG, "fit: empty input image");
    switch (mode) {
    case DF_FIT_CENTER: {
        /* The centered square, as a fractional box when the difference
         * is odd, so that the crop stays exactly centered. */
        double s = in->w < in->h ? in->w : in->h;
        double x0 = (in->w - s) / 2, y0 = (in->h - s) / 2;
        return df_image_resize_box(in, x0, y0, x0 + s, y0 + s, size, size, out);
    }
    case DF_FIT_PAD_WHITE:
        return fit_pad(in, size, 255, out);
    case DF_FIT_PAD_BLACK:
        return fit_pad(in, size, 0, out);
    case DF_FIT_NONE:
    default: {
        int w, h;
        longest_side(in->w, in->h, size, &w, &h);
        return df_image_resize(in, w, h, out);
    }
    }
}
