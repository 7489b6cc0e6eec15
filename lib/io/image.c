/* image.c - JPEG (libjpeg-turbo) and PNG (libpng) decoding and encoding to
 * and from 8-bit RGB, EXIF orientation, header probing and pixel limits.
 * Resampling and crops live in image_resize.c.
 *
 * Both codecs report errors by longjmp. Every allocation that must survive
 * a longjmp is held in a volatile pointer (C11 7.13.2.1: other automatic
 * variables changed after setjmp are indeterminate afterwards) and freed on
 * the error path; the codec structs are destroyed there too.
 *
 * Tested by tests/unit/test_image.c and tests/tools/test-df-resize.sh. */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>

/* A progressive JPEG may carry thousands of tiny scans, each making the
 * decoder walk the whole coefficient buffer: a CPU bomb in a few KB. Real
 * encoders write about 10; libjpeg-turbo's TurboJPEG API suggests 500. */
#define JPEG_MAX_SCANS 500
/* Files above this are not images we want to train on. */
#define MAX_FILE_BYTES (1ull << 30)

static const uint8_t png_magic[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };

df_image_format df_image_sniff(const uint8_t *buf, size_t n)
{
    if (n >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return DF_IMAGE_JPEG;
    if (n >= 8 && !memcmp(buf, png_magic, 8))
        return DF_IMAGE_PNG;
    return DF_IMAGE_UNKNOWN;
}

const char *df_image_format_name(df_image_format f)
{
    return f == DF_IMAGE_JPEG ? "jpeg" : f == DF_IMAGE_PNG ? "png" : "unknown";
}

df_status df_image_alloc(df_image *img, int w, int h)
{
    img->w = img->h = 0;
    img->px = NULL;
    if (w <= 0 || h <= 0 || w > DF_IMAGE_MAX_SIDE || h > DF_IMAGE_MAX_SIDE)
        return df_fail(DF_ERR_RANGE, "image size %dx%d out of range", w, h);
    size_t n = (size_t)w * (size_t)h * 3;   /* < 2^34: no overflow in 64-bit size_t */
    img->px = malloc(n);
    if (!img->px)
        return df_fail(DF_ERR_NOMEM, "cannot allocate a %dx%d image", w, h);
    img->w = w;
    img->h = h;
    return DF_OK;
}

void df_image_free(df_image *img)
{
    if (!img)
        return;
    free(img->px);
    img->px = NULL;
    img->w = img->h = 0;
}

/* The size check every decoder runs on header values before allocating. */
static df_status check_size(const char *fmt, uint64_t w, uint64_t h, const df_image_limits *lim)
{
    uint64_t maxp = lim && lim->max_pixels ? lim->max_pixels : DF_IMAGE_DEFAULT_MAX_PIXELS;
    if (w == 0 || h == 0)
        return df_fail(DF_ERR_FORMAT, "%s: zero image size %llux%llu", fmt,
                       (unsigned long long)w, (unsigned long long)h);
    if (w > DF_IMAGE_MAX_SIDE || h > DF_IMAGE_MAX_SIDE || w * h > maxp)
        return df_fail(DF_ERR_RANGE, "%s: image too large: %llux%llu exceeds the limit of %llu pixels",
                       fmt, (unsigned long long)w, (unsigned long long)h, (unsigned long long)maxp);
    return DF_OK;
}

/* ---------------------------------------------------------------- EXIF */

static unsigned rd16(const uint8_t *p, bool le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }
static uint32_t rd32(const uint8_t *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Orientation tag (0x0112) of IFD0 in an APP1 payload "Exif\0\0" + TIFF.
 * Anything malformed or out of range reads as 1 (as stored), like Pillow:
 * a broken EXIF block does not make the pixels broken. */
static int exif_orientation(const uint8_t *p, size_t n)
{
    if (n < 6 + 8 || memcmp(p, "Exif\0\0", 6))
        return 1;
    p += 6;
    n -= 6;
    bool le;
    if (p[0] == 'I' && p[1] == 'I')
        le = true;
    else if (p[0] == 'M' && p[1] == 'M')
        le = false;
    else
        return 1;
    if (rd16(p + 2, le) != 42)
        return 1;
    size_t ifd = rd32(p + 4, le);
    if (ifd < 8 || ifd > n - 2)
        return 1;
    size_t count = rd16(p + ifd, le);
    for (size_t i = 0; i < count; i++) {
        size_t e = ifd + 2 + 12 * i;
        if (e > n - 12)
            break;
        if (rd16(p + e, le) != 0x0112)
            continue;
        unsigned type = rd16(p + e + 2, le);      /* 3 = SHORT */
        uint32_t cnt = rd32(p + e + 4, le);
        unsigned v = rd16(p + e + 8, le);         /* a single SHORT sits left-justified */
        return type == 3 && cnt >= 1 && v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Apply orientation o (1-8) to *img, replacing its pixels. out(x, y) takes
 * src(sx, sy); orientations 5-8 swap width and height. */
static df_status apply_orientation(df_image *img, int o)
{
    if (o <= 1 || o > 8)
        return DF_OK;
    int W = img->w, H = img->h;
    bool swap = o >= 5;
    df_image out;
    df_status st = df_image_alloc(&out, swap ? H : W, swap ? W : H);
    if (st)
        return st;
    for (int y = 0; y < out.h; y++) {
        for (int x = 0; x < out.w; x++) {
            int sx, sy;
            switch (o) {
            case 2:  sx = W - 1 - x; sy = y;         break;   /* mirror horizontal */
            case 3:  sx = W - 1 - x; sy = H - 1 - y; break;   /* rotate 180 */
            case 4:  sx = x;         sy = H - 1 - y; break;   /* mirror vertical */
            case 5:  sx = y;         sy = x;         break;   /* transpose */
            case 6:  sx = y;         sy = H - 1 - x; break;   /* rotate 90 clockwise */
            case 7:  sx = W - 1 - y; sy = H - 1 - x; break;   /* transverse */
            default: sx = W - 1 - y; sy = x;         break;   /* 8: rotate 90 counter-clockwise */
            }
            const uint8_t *s = img->px + ((size_t)sy * W + sx) * 3;
            uint8_t *d = out.px + ((size_t)y * out.w + x) * 3;
            d[0] = s[0]; d[1] = s[1]; d[2] = s[2];
        }
    }
    df_image_free(img);
    *img = out;
    return DF_OK;
}

/* ---------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr c)
{
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings (level -1: premature end, corrupt data, extraneous bytes) mean
 * the decoder invented pixels: the image is broken. Trace messages
 * (level >= 0) are ignored. Leaving by longjmp here is what TurboJPEG's
 * "stop on warning" does. */
static void jpeg_on_message(j_common_ptr c, int level)
{
    if (level < 0)
        jpeg_on_error(c);
}

static void jpeg_on_progress(j_common_ptr c)
{
    j_decompress_ptr d = (j_decompress_ptr)c;
    if (c->is_decompressor && d->progressive_mode && d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_err *e = (jpeg_err *)c->err;
        snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

static void jpeg_err_init(j_common_ptr c, jpeg_err *e)
{
    c->err = jpeg_std_error(&e->pub);
    e->pub.error_exit = jpeg_on_error;
    e->pub.emit_message = jpeg_on_message;
    e->msg[0] = 0;
}

static int jpeg_find_orientation(j_decompress_ptr ci)
{
    for (jpeg_saved_marker_ptr m = ci->marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1) {
            int o = exif_orientation(m->data, m->data_length);
            if (o != 1)
                return o;
        }
    return 1;
}

/* CMYK samples to RGB in place (4 bytes in, 3 out, so forward is safe).
 * Adobe's encoders store inverted CMYK (255 = no ink): with the Adobe
 * marker, R = C * K / 255; without it, R = (255 - C) * (255 - K) / 255. */
static void cmyk_to_rgb(uint8_t *px, size_t npix, bool inverted)
{
    for (size_t i = 0; i < npix; i++) {
        int c = px[4 * i], m = px[4 * i + 1], y = px[4 * i + 2], k = px[4 * i + 3];
        if (!inverted) {
            c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k;
        }
        px[3 * i + 0] = (uint8_t)((c * k + 127) / 255);
        px[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
        px[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
    }
}

/* DCT scale denominator (1, 2, 4, 8) that keeps the decoded image at least
 * min_w x min_h in its stored orientation. */
static int jpeg_pick_denom(int w, int h, int min_w, int min_h)
{
    int d = 1;
    if (min_w <= 0 && min_h <= 0)
        return 1;                   /* no hint: full size */
    while (d < 8 && (w + 2 * d - 1) / (2 * d) >= min_w && (h + 2 * d - 1) / (2 * d) >= min_h)
        d *= 2;
    return d;
}

/* Decode (or, with out NULL, only read the header of) a JPEG. *ow, *oh get
 * the oriented full size. */
static df_status jpeg_decode(const uint8_t *buf, size_t n, const df_image_limits *lim,
                             int min_w, int min_h, df_image *out, int *ow, int *oh)
{
    struct jpeg_decompress_struct ci;
    struct jpeg_progress_mgr prog = { .progress_monitor = jpeg_on_progress };
    jpeg_err je;
    uint8_t *volatile px = NULL;

    jpeg_err_init((j_common_ptr)&ci, &je);
    if (setjmp(je.jb)) {
        jpeg_destroy_decompress(&ci);
        free(px);
        return df_fail(DF_ERR_FORMAT, "jpeg: %s", je.msg);
    }
    jpeg_create_decompress(&ci);
    ci.progress = &prog;
    jpeg_mem_src(&ci, buf, (unsigned long)n);
    jpeg_save_markers(&ci, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&ci, TRUE);

    int o = jpeg_find_orientation(&ci);
    int W = (int)ci.image_width, H = (int)ci.image_height;   /* <= 65500 by format */
    if (ow) *ow = o >= 5 ? H : W;
    if (oh) *oh = o >= 5 ? W : H;
    df_status st = out ? check_size("jpeg", ci.image_width, ci.image_height, lim) : DF_OK;
    if (st || !out) {
        jpeg_destroy_decompress(&ci);
        return st;
    }

    bool cmyk = ci.jpeg_color_space == JCS_CMYK || ci.jpeg_color_space == JCS_YCCK;
    if (!cmyk && ci.num_components != 1 && ci.num_components != 3) {
        jpeg_destroy_decompress(&ci);
        return df_fail(DF_ERR_UNSUPPORTED, "jpeg: %d color components", ci.num_components);
    }
    ci.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    ci.scale_num = 1;
    /* min sizes are given in displayed orientation; swap back for storage */
    ci.scale_denom = (unsigned)jpeg_pick_denom(W, H, o >= 5 ? min_h : min_w, o >= 5 ? min_w : min_h);
    jpeg_start_decompress(&ci);

    size_t w = ci.output_width, h = ci.output_height, nc = (size_t)ci.output_components;
    px = malloc(w * h * nc);   /* w, h <= 65500, nc <= 4: no overflow */
    if (!px) {
        jpeg_destroy_decompress(&ci);
        return df_fail(DF_ERR_NOMEM, "jpeg: cannot allocate %zux%zu", w, h);
    }
    while (ci.output_scanline < ci.output_height) {
        JSAMPROW row = px + (size_t)ci.output_scanline * w * nc;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    jpeg_finish_decompress(&ci);
    bool adobe = ci.saw_Adobe_marker;
    jpeg_destroy_decompress(&ci);

    if (cmyk)
        cmyk_to_rgb(px, w * h, adobe);
    out->px = px;
    out->w = (int)w;
    out->h = (int)h;
    st = apply_orientation(out, o);
    if (st)
        df_image_free(out);
    return st;
}

/* ---------------------------------------------------------------- PNG */

typedef struct {
    const uint8_t *p;
    size_t n, off;
    char msg[256];
    bool warned;
} png_src;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

/* libpng warns and goes on (for example after an ancillary chunk's CRC
 * error). Remember the first warning: the image then counts as broken. */
static void png_on_warning(png_structp png, png_const_charp msg)
{
    png_src *s = png_get_error_ptr(png);
    if (!s->warned)
        snprintf(s->msg, sizeof s->msg, "%s", msg);
    s->warned = true;
}

static void png_read_mem(png_structp png, png_bytep dst, size_t len)
{
    png_src *s = png_get_io_ptr(png);
    if (len > s->n - s->off)
        png_error(png, "premature end of data");
    memcpy(dst, s->p + s->off, len);
    s->off += len;
}

/* RGBA rows to RGB composited onto white, in place (4 bytes in, 3 out). */
static void rgba_on_white(uint8_t *px, size_t npix)
{
    for (size_t i = 0; i < npix; i++) {
        const uint8_t *s = px + 4 * i;
        int a = s[3];
        uint8_t r = s[0], g = s[1], b = s[2];
        px[3 * i + 0] = (uint8_t)((r * a + 255 * (255 - a) + 127) / 255);
        px[3 * i + 1] = (uint8_t)((g * a + 255 * (255 - a) + 127) / 255);
        px[3 * i + 2] = (uint8_t)((b * a + 255 * (255 - a) + 127) / 255);
    }
}

/* Ask libpng for 8-bit RGBA whatever the file holds. */
static void png_setup_transforms(png_structp png, png_infop info)
{
    int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
    if (bd == 16)
        png_set_scale_16(png);                 /* rounds v * 255 / 65535 */
    if (ct == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    else if (!(ct & PNG_COLOR_MASK_ALPHA))
        png_set_add_alpha(png, 0xFF, PNG_FILLER_AFTER);
    if (!(ct & PNG_COLOR_MASK_COLOR))
        png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

static df_status png_decode(const uint8_t *buf, size_t n, const df_image_limits *lim,
                            df_image *out, int *ow, int *oh)
{
    png_src src = { .p = buf, .n = n };
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile px = NULL;
    png_bytep *volatile rows = NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return df_fail(DF_ERR_NOMEM, "png: cannot create decoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(px);
        free(rows);
        return df_fail(DF_ERR_FORMAT, "png: %s", src.msg);
    }
    png_set_read_fn(png, &src, png_read_mem);
    /* Benign errors (extra compressed data, ancillary CRC) are errors here;
     * ancillary chunks other than tRNS are skipped unread, but their CRC is
     * still checked, and zTXt/iCCP are never inflated (no zlib bombs). */
    png_set_benign_errors(png, 0);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
    /* libpng's own size limit off: check_size() judges, with a clearer message */
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    png_read_info(png, info);

    png_uint_32 W = png_get_image_width(png, info), H = png_get_image_height(png, info);
    if (ow) *ow = (int)W;
    if (oh) *oh = (int)H;
    df_status st = out ? check_size("png", W, H, lim) : DF_OK;
    if (st || !out) {
        png_destroy_read_struct(&png, &info, NULL);
        return st;
    }
    png_setup_transforms(png, info);
    if (png_get_rowbytes(png, info) != (size_t)W * 4)
        png_error(png, "unexpected row size after transforms");

    px = malloc((size_t)W * H * 4);
    rows = malloc(H * sizeof *rows);
    if (!px || !rows)
        png_error(png, "out of memory");
    for (size_t y = 0; y < H; y++)
        rows[y] = px + y * W * 4;
    png_read_image(png, rows);
    png_read_end(png, NULL);          /* checks the chunks after IDAT, to IEND */
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    if (src.warned) {
        free(px);
        return df_fail(DF_ERR_FORMAT, "png: %s", src.msg);
    }
    rgba_on_white(px, (size_t)W * H);
    out->px = px;
    out->w = (int)W;
    out->h = (int)H;
    return DF_OK;
}

/* ---------------------------------------------------------------- entry points */

static df_status decode_any(const uint8_t *buf, size_t n, const df_image_limits *lim,
                            int min_w, int min_h, df_image *out, df_image_format *fmt,
                            int *ow, int *oh)
{
    if (out) {
        out->w = out->h = 0;
        out->px = NULL;
    }
    df_image_format f = df_image_sniff(buf, n);
    if (fmt)
        *fmt = f;
    if (n == 0)
        return df_fail(DF_ERR_FORMAT, "empty file");
    if (f == DF_IMAGE_JPEG)
        return jpeg_decode(buf, n, lim, min_w, min_h, out, ow, oh);
    if (f == DF_IMAGE_PNG)
        return png_decode(buf, n, lim, out, ow, oh);
    return df_fail(DF_ERR_FORMAT, "not a JPEG or PNG image");
}

df_status df_image_probe_mem(const uint8_t *buf, size_t n, df_image_format *fmt, int *w, int *h)
{
    /* no size limit on a probe: the caller wants the size to judge it */
    int ow = 0, oh = 0;
    df_status st = decode_any(buf, n, NULL, 0, 0, NULL, fmt, &ow, &oh);
    if (w) *w = ow;
    if (h) *h = oh;
    return st;
}

df_status df_image_decode_mem(const uint8_t *buf, size_t n, const df_image_limits *lim, df_image *out)
{
    return decode_any(buf, n, lim, 0, 0, out, NULL, NULL, NULL);
}

df_status df_image_decode_mem_scaled(const uint8_t *buf, size_t n, const df_image_limits *lim,
                                     int min_w, int min_h, df_image *out)
{
    return decode_any(buf, n, lim, min_w, min_h, out, NULL, NULL, NULL);
}

df_status df_image_read_file(const char *path, uint8_t **buf, size_t *n)
{
    *buf = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return df_fail(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return df_fail(DF_ERR_IO, "%s: not a regular file", path);
    }
    if ((unsigned long long)sb.st_size > MAX_FILE_BYTES) {
        close(fd);
        return df_fail(DF_ERR_RANGE, "%s: file too large (%lld bytes)", path, (long long)sb.st_size);
    }
    if (sb.st_size == 0) {
        close(fd);
        return df_fail(DF_ERR_FORMAT, "%s: empty file", path);
    }
    size_t size = (size_t)sb.st_size, got = 0;
    uint8_t *p = malloc(size);
    if (!p) {
        close(fd);
        return df_fail(DF_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, size);
    }
    while (got < size) {
        ssize_t r = read(fd, p + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(p);
            close(fd);
            return df_fail(DF_ERR_IO, "%s: read: %s", path, r < 0 ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    *buf = p;
    *n = size;
    return DF_OK;
}

df_status df_image_decode_file(const char *path, const df_image_limits *lim, df_image *out)
{
    uint8_t *buf;
    size_t n;
    out->w = out->h = 0;
    out->px = NULL;
    df_status st = df_image_read_file(path, &buf, &n);
    if (st)
        return st;
    st = df_image_decode_mem(buf, n, lim, out);
    free(buf);
    if (st)
        return df_fail(st, "%s: %s", path, df_last_error());
    return DF_OK;
}

df_status df_image_probe_file(const char *path, df_image_format *fmt, int *w, int *h)
{
    uint8_t *buf;
    size_t n;
    df_status st = df_image_read_file(path, &buf, &n);
    if (st)
        return st;
    st = df_image_probe_mem(buf, n, fmt, w, h);
    free(buf);
    if (st)
        return df_fail(st, "%s: %s", path, df_last_error());
    return DF_OK;
}

/* ---------------------------------------------------------------- encoders */

/* A growing memory buffer both encoders write into. Ours, rather than
 * jpeg_mem_dest's, so that the error path can always free it. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} membuf;

static bool membuf_reserve(membuf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return true;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return false;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

typedef struct {
    struct jpeg_destination_mgr pub;
    membuf *mb;
    uint8_t chunk[65536];
} jpeg_dest;

static void jdest_init(j_compress_ptr c) { (void)c; }

static boolean jdest_empty(j_compress_ptr c)
{
    jpeg_dest *d = (jpeg_dest *)c->dest;
    if (!membuf_reserve(d->mb, sizeof d->chunk))
        ERREXIT1(c, JERR_OUT_OF_MEMORY, 0);
    memcpy(d->mb->p + d->mb->len, d->chunk, sizeof d->chunk);
    d->mb->len += sizeof d->chunk;
    d->pub.next_output_byte = d->chunk;
    d->pub.free_in_buffer = sizeof d->chunk;
    return TRUE;
}

static void jdest_term(j_compress_ptr c)
{
    jpeg_dest *d = (jpeg_dest *)c->dest;
    size_t n = sizeof d->chunk - d->pub.free_in_buffer;
    if (!membuf_reserve(d->mb, n))
        ERREXIT1(c, JERR_OUT_OF_MEMORY, 0);
    memcpy(d->mb->p + d->mb->len, d->chunk, n);
    d->mb->len += n;
}

static df_status check_image(const df_image *img)
{
    if (!img || !img->px || img->w <= 0 || img->h <= 0 || img->w > DF_IMAGE_MAX_SIDE ||
        img->h > DF_IMAGE_MAX_SIDE)
        return df_fail(DF_ERR_ARG, "encode: empty or invalid image");
    return DF_OK;
}

df_status df_image_encode_jpeg_mem(const df_image *img, int quality, uint8_t **buf, size_t *n)
{
    *buf = NULL;
    *n = 0;
    if (check_image(img))
        return DF_ERR_ARG;
    if (quality < 1 || quality > 100)
        return df_fail(DF_ERR_ARG, "jpeg quality %d outside 1..100", quality);
    struct jpeg_compress_struct ci;
    jpeg_err je;
    membuf mb = { 0 };
    membuf *volatile mbp = &mb;
    jpeg_dest *volatile dest = malloc(sizeof *dest);
    if (!dest)
        return df_fail(DF_ERR_NOMEM, "jpeg: out of memory");

    jpeg_err_init((j_common_ptr)&ci, &je);
    if (setjmp(je.jb)) {
        jpeg_destroy_compress(&ci);
        free(mbp->p);
        free(dest);
        return df_fail(DF_ERR_FORMAT, "jpeg encode: %s", je.msg);
    }
    jpeg_create_compress(&ci);
    dest->mb = mbp;
    dest->pub = (struct jpeg_destination_mgr){
        .next_output_byte = dest->chunk, .free_in_buffer = sizeof dest->chunk,
        .init_destination = jdest_init, .empty_output_buffer = jdest_empty,
        .term_destination = jdest_term,
    };
    ci.dest = &dest->pub;
    ci.image_width = (JDIMENSION)img->w;
    ci.image_height = (JDIMENSION)img->h;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, quality, TRUE);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = img->px + (size_t)ci.next_scanline * img->w * 3;
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(dest);
    *buf = mb.p;
    *n = mb.len;
    return DF_OK;
}

static void png_write_mem(png_structp png, png_bytep data, size_t len)
{
    membuf *b = png_get_io_ptr(png);
    if (!membuf_reserve(b, len))
        png_error(png, "out of memory");
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void png_flush_mem(png_structp png) { (void)png; }

static size_t count_text(const char *const *kv)
{
    size_t n = 0;
    while (kv && kv[2 * n] && kv[2 * n + 1])
        n++;
    return n;
}

/* Largest code point of UTF-8 text, or -1 when s is not valid UTF-8. */
static long utf8_max_code(const unsigned char *s)
{
    long max = 0;
    while (*s) {
        unsigned c = *s++;
        int more = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
                 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        if (more < 0)
            return -1;
        long cp = more == 0 ? (long)c : (long)(c & (0x3F >> more));
        for (int k = 0; k < more; k++, s++) {
            if ((*s & 0xC0) != 0x80)
                return -1;
            cp = cp << 6 | (*s & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1;
        if (cp > max)
            max = cp;
    }
    return max;
}

/* A PNG text value: tEXt holds Latin-1 (as PNG defines it), iTXt UTF-8.
 * ASCII is written as tEXt unchanged; UTF-8 whose characters all fit
 * Latin-1 is converted to it for tEXt (*latin, malloc'd); other UTF-8 (CJK,
 * emoji) goes into iTXt. Bytes that are not UTF-8 are taken as Latin-1
 * already. Returns false when out of memory. */
static bool png_text_form(const char *v, bool *itxt, char **latin)
{
    *itxt = false;
    *latin = NULL;
    long max = utf8_max_code((const unsigned char *)v);
    if (max < 0x80)                   /* ASCII, or not UTF-8 */
        return true;
    if (max > 0xFF) {
        *itxt = true;
        return true;
    }
    char *o = malloc(strlen(v) + 1);
    if (!o)
        return false;
    size_t j = 0;
    /* Every character is below 0x100: ASCII or a two-byte C2/C3 sequence. */
    for (const unsigned char *p = (const unsigned char *)v; *p;) {
        if (*p < 0x80) {
            o[j++] = (char)*p++;
        } else {
            o[j++] = (char)((p[0] & 0x03) << 6 | (p[1] & 0x3F));
            p += 2;
        }
    }
    o[j] = '\0';
    *latin = o;
    return true;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

df_status df_image_encode_png_mem(const df_image *img, const char *const *text_kv,
                                  uint8_t **buf, size_t *n)
{
    *buf = NULL;
    *n = 0;
    if (check_image(img))
        return DF_ERR_ARG;
    const volatile size_t ntext = count_text(text_kv);   /* read after setjmp */
    for (size_t i = 0; i < ntext; i++) {
        size_t kl = strlen(text_kv[2 * i]);
        if (kl < 1 || kl > 79)
            return df_fail(DF_ERR_ARG, "png: tEXt key must have 1-79 characters");
    }
    /* Decided before setjmp: these are not changed after it. */
    char **latin = ntext ? calloc(ntext, sizeof *latin) : NULL;
    bool *itxt = ntext ? calloc(ntext, sizeof *itxt) : NULL;
    bool ok = !ntext || (latin && itxt);
    for (size_t i = 0; ok && i < ntext; i++)
        ok = png_text_form(text_kv[2 * i + 1], &itxt[i], &latin[i]);
    if (!ok) {
        free_strs(latin, ntext);
        free(itxt);
        return df_fail(DF_ERR_NOMEM, "png: out of memory");
    }
    png_src err = { 0 };
    membuf mb = { 0 };
    membuf *volatile mbp = &mb;
    png_textp volatile text = NULL;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(png ? &png : NULL, NULL);
        free_strs(latin, ntext);
        free(itxt);
        return df_fail(DF_ERR_NOMEM, "png: cannot create encoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(mbp->p);
        free(text);
        free_strs(latin, ntext);
        free(itxt);
        return df_fail(DF_ERR_FORMAT, "png encode: %s", err.msg);
    }
    png_set_write_fn(png, mbp, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (ntext) {
        text = calloc(ntext, sizeof *text);
        if (!text)
            png_error(png, "out of memory");
        for (size_t i = 0; i < ntext; i++) {
            text[i].key = (png_charp)text_kv[2 * i];
            text[i].text = (png_charp)(latin[i] ? latin[i] : text_kv[2 * i + 1]);
            if (itxt[i]) {
                text[i].compression = PNG_ITXT_COMPRESSION_NONE;
                text[i].itxt_length = strlen(text[i].text);
                text[i].lang = (png_charp)"";
                text[i].lang_key = (png_charp)"";
            } else {
                text[i].compression = PNG_TEXT_COMPRESSION_NONE;
                text[i].text_length = strlen(text[i].text);
            }
        }
        png_set_text(png, info, text, (int)ntext);
    }
    png_write_info(png, info);
    for (int y = 0; y < img->h; y++)
        png_write_row(png, img->px + (size_t)y * img->w * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(text);
    free_strs(latin, ntext);
    free(itxt);
    *buf = mb.p;
    *n = mb.len;
    return DF_OK;
}

static df_status write_whole(const char *path, const uint8_t *buf, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    size_t w = fwrite(buf, 1, n, fp);
    int e = errno;
    if (fclose(fp) != 0 || w != n) {
        if (w == n)
            e = errno;
        return df_fail(DF_ERR_IO, "%s: write: %s", path, strerror(e));
    }
    return DF_OK;
}

df_status df_image_write_jpeg(const char *path, const df_image *img, int quality)
{
    uint8_t *buf;
    size_t n;
    df_status st = df_image_encode_jpeg_mem(img, quality, &buf, &n);
    if (st)
        return st;
    st = write_whole(path, buf, n);
    free(buf);
    return st;
}

df_status df_image_write_png(const char *path, const df_image *img, const char *const *text_kv)
{
    uint8_t *buf;
    size_t n;
    df_status st = df_image_encode_png_mem(img, text_kv, &buf, &n);
    if (st)
        return st;
    st = write_whole(path, buf, n);
    free(buf);
    return st;
}
