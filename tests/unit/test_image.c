/* test_image.c - lib/io/image: every decoder path on images this test writes
 * itself with libjpeg and libpng (baseline, progressive, grayscale, CMYK
 * with and without Adobe inversion, YCCK, EXIF orientations 1-8 in both
 * byte orders; PNG 1/4/8/16-bit, palette + tRNS, gray + alpha, RGBA,
 * interlaced), broken inputs (truncated, corrupt, CRC errors, zero bytes,
 * a progressive JPEG with 631 scans (CPU bomb),
 * not an image, headers claiming 100000 x 100000), encoders, and the
 * resampler's properties (constants stay constant, identity, mirror
 * symmetry, antialiasing of a 1-pixel checkerboard, crops, pads).
 * Expected values come from the formats' definitions, not from this code. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>
#include <unistd.h>
#include <zlib.h>

#include "image.h"
#include "unit.h"

/* ---------------------------------------------------------------- writers */

typedef struct {
    J_COLOR_SPACE in_cs, jpeg_cs;
    int comps;
    bool progressive, no_adobe, full_chroma;
    const jpeg_scan_info *scans;  /* a custom progressive scan script */
    int nscans;
    const uint8_t *app1;
    size_t app1_len;
} jopt;

static uint8_t *write_jpeg(const uint8_t *px, int w, int h, const jopt *o, size_t *n)
{
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    unsigned char *buf = NULL;
    unsigned long size = 0;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, &buf, &size);
    ci.image_width = w;
    ci.image_height = h;
    ci.input_components = o->comps;
    ci.in_color_space = o->in_cs;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 100, TRUE);
    if (o->jpeg_cs != JCS_UNKNOWN)
        jpeg_set_colorspace(&ci, o->jpeg_cs);
    if (o->no_adobe)
        ci.write_Adobe_marker = FALSE;
    if (o->full_chroma)
        for (int c = 0; c < ci.num_components; c++)
            ci.comp_info[c].h_samp_factor = ci.comp_info[c].v_samp_factor = 1;
    if (o->progressive)
        jpeg_simple_progression(&ci);
    if (o->scans) {
        ci.scan_info = o->scans;
        ci.num_scans = o->nscans;
    }
    jpeg_start_compress(&ci, TRUE);
    if (o->app1)
        jpeg_write_marker(&ci, JPEG_APP0 + 1, o->app1, (unsigned)o->app1_len);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)px + (size_t)ci.next_scanline * w * o->comps;
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    *n = size;
    return buf;
}

typedef struct { uint8_t *p; size_t n, cap; } mbuf;

static void mbuf_write(png_structp png, png_bytep d, size_t len)
{
    mbuf *b = png_get_io_ptr(png);
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, len);
    b->n += len;
}
static void mbuf_flush(png_structp png) { (void)png; }

typedef struct {
    int bit_depth, color_type, interlace;
    const png_color *pal;
    int npal;
    const png_byte *trans;        /* palette alpha */
    int ntrans;
    const png_color_16 *trans_color;
    const char *text_key;         /* adds a tEXt chunk after IDAT when set */
} popt;

/* rows: raw rows in PNG sample layout (16-bit big-endian), rowbytes each. */
static uint8_t *write_png(int w, int h, const uint8_t *rows, size_t rowbytes, const popt *o, size_t *n)
{
    mbuf b = { 0 };
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_set_write_fn(png, &b, mbuf_write, mbuf_flush);
    png_set_IHDR(png, info, w, h, o->bit_depth, o->color_type, o->interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (o->pal)
        png_set_PLTE(png, info, o->pal, o->npal);
    if (o->trans || o->trans_color)
        png_set_tRNS(png, info, o->trans, o->ntrans, o->trans_color);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++)
            png_write_row(png, rows + (size_t)y * rowbytes);
    if (o->text_key) {
        png_text t = { .compression = PNG_TEXT_COMPRESSION_NONE, .key = (char *)o->text_key,
                       .text = "value", .text_length = 5 };
        png_set_text(png, info, &t, 1);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *n = b.n;
    return b.p;
}

/* ---------------------------------------------------------------- helpers */

static double psnr(const df_image *a, const df_image *b)
{
    if (a->w != b->w || a->h != b->h)
        return 0;
    double se = 0;
    size_t n = (size_t)a->w * a->h * 3;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a->px[i] - b->px[i];
        se += d * d;
    }
    return se == 0 ? 999 : 10 * log10(255.0 * 255.0 / (se / n));
}

static const uint8_t *pix(const df_image *im, int x, int y) { return im->px + ((size_t)y * im->w + x) * 3; }

static bool near_rgb(const uint8_t *p, int r, int g, int b, int tol)
{
    return abs(p[0] - r) <= tol && abs(p[1] - g) <= tol && abs(p[2] - b) <= tol;
}

/* A smooth, colorful test picture (JPEG-friendly). */
static uint8_t *gradient(int w, int h)
{
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = px + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(255 * x / (w - 1));
            p[1] = (uint8_t)(255 * y / (h - 1));
            p[2] = (uint8_t)(128 + 100 * sin(x * 0.05 + y * 0.03));
        }
    return px;
}

/* ---------------------------------------------------------------- JPEG */

static void test_jpeg_basic(void)
{
    int w = 96, h = 64;
    uint8_t *src = gradient(w, h);
    df_image ref = { w, h, src };
    for (int prog = 0; prog < 2; prog++) {
        jopt o = { .in_cs = JCS_RGB, .comps = 3, .progressive = prog, .full_chroma = true };
        size_t n;
        uint8_t *jpg = write_jpeg(src, w, h, &o, &n);
        df_image im;
        CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK);
        CHECK(im.w == w && im.h == h);
        double p = psnr(&im, &ref);
        CHECK_MSG(p > 40, "q100 4:4:4 %s JPEG PSNR %.1f dB", prog ? "progressive" : "baseline", p);
        df_image_format f;
        int pw, ph;
        CHECK(df_image_probe_mem(jpg, n, &f, &pw, &ph) == DF_OK && f == DF_IMAGE_JPEG && pw == w && ph == h);

        /* Truncation anywhere in the entropy data is an error, never a
         * half-grey picture. */
        df_image bad = { 0 };
        CHECK(df_image_decode_mem(jpg, n / 2, NULL, &bad) == DF_ERR_FORMAT && !bad.px);
        CHECK(strstr(df_last_error(), "jpeg") != NULL);
        CHECK(df_image_decode_mem(jpg, n - 2, NULL, &bad) == DF_ERR_FORMAT);   /* no EOI */
        /* A header-only prefix: the decoder runs out of data. */
        CHECK(df_image_decode_mem(jpg, 200, NULL, &bad) == DF_ERR_FORMAT);
        /* Limits: 6144 pixels refused at a 6000-pixel limit. */
        df_image_limits lim = { 6000 };
        CHECK(df_image_decode_mem(jpg, n, &lim, &bad) == DF_ERR_RANGE && !bad.px);
        lim.max_pixels = 6144;
        CHECK(df_image_decode_mem(jpg, n, &lim, &bad) == DF_OK);
        df_image_free(&bad);
        free(jpg);
        df_image_free(&im);
    }

    /* Corrupt entropy data (a run of bytes overwritten mid-stream): the
     * decoder's "corrupt data" warning makes it an error. */
    jopt o = { .in_cs = JCS_RGB, .comps = 3 };
    size_t n;
    uint8_t *jpg = write_jpeg(src, w, h, &o, &n);
    for (size_t i = n / 2; i < n / 2 + 40; i++)
        jpg[i] = (uint8_t)(i * 37);
    jpg[n / 2] = 0xFF;
    jpg[n / 2 + 1] = 0xD5;   /* an unexpected RST marker */
    df_image bad;
    CHECK(df_image_decode_mem(jpg, n, NULL, &bad) == DF_ERR_FORMAT);
    free(jpg);
    free(src);
}

static void test_jpeg_gray_cmyk(void)
{
    int w = 32, h = 32;
    /* grayscale: R = G = B = the stored value */
    uint8_t *g = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++)
        g[i] = 77;
    jopt og = { .in_cs = JCS_GRAYSCALE, .comps = 1 };
    size_t n;
    uint8_t *jpg = write_jpeg(g, w, h, &og, &n);
    df_image im;
    CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK && im.w == w);
    CHECK(near_rgb(pix(&im, 5, 5), 77, 77, 77, 1));
    df_image_free(&im);
    free(jpg);
    free(g);

    /* CMYK: left half stored (C,M,Y,K) = (255, 128, 0, 200), right half
     * (0, 255, 64, 255). With Adobe's inverted convention R = C*K/255:
     * left (200, 100, 0), right (0, 255, 64). Without the Adobe marker,
     * R = (255-C)(255-K)/255: left (0, 27, 55), right (0, 0, 0). YCCK is
     * always written with the Adobe marker. */
    uint8_t *cmyk = malloc((size_t)w * h * 4);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = cmyk + ((size_t)y * w + x) * 4;
            const uint8_t l[4] = { 255, 128, 0, 200 }, r[4] = { 0, 255, 64, 255 };
            memcpy(p, x < w / 2 ? l : r, 4);
        }
    for (int v = 0; v < 3; v++) {
        jopt oc = { .in_cs = JCS_CMYK, .comps = 4, .jpeg_cs = v == 2 ? JCS_YCCK : JCS_CMYK,
                    .no_adobe = v == 1 };
        jpg = write_jpeg(cmyk, w, h, &oc, &n);
        CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK && im.w == w && im.h == h);
        if (v != 1) {
            CHECK_MSG(near_rgb(pix(&im, 4, 16), 200, 100, 0, 3), "v%d left %d %d %d", v,
                      pix(&im, 4, 16)[0], pix(&im, 4, 16)[1], pix(&im, 4, 16)[2]);
            CHECK(near_rgb(pix(&im, 28, 16), 0, 255, 64, 3));
        } else {
            CHECK_MSG(near_rgb(pix(&im, 4, 16), 0, 27, 55, 3), "plain CMYK left %d %d %d",
                      pix(&im, 4, 16)[0], pix(&im, 4, 16)[1], pix(&im, 4, 16)[2]);
            CHECK(near_rgb(pix(&im, 28, 16), 0, 0, 0, 3));
        }
        df_image_free(&im);
        free(jpg);
    }
    free(cmyk);
}

/* APP1 "Exif\0\0" + TIFF with IFD0 = { Make "ABC", Orientation o }. */
static size_t make_exif(uint8_t *b, int o, bool le)
{
    uint8_t *t = b + 6;
    memcpy(b, "Exif\0\0", 6);
#define W16(p, v) do { if (le) { (p)[0] = (v) & 0xFF; (p)[1] = (v) >> 8; } \
                       else { (p)[0] = (v) >> 8; (p)[1] = (v) & 0xFF; } } while (0)
#define W32(p, v) do { if (le) { W16(p, (v) & 0xFFFF); W16((p) + 2, (v) >> 16); } \
                       else { W16(p, (v) >> 16); W16((p) + 2, (v) & 0xFFFF); } } while (0)
    memset(t, 0, 8 + 2 + 24 + 4);
    t[0] = t[1] = le ? 'I' : 'M';
    W16(t + 2, 42);
    W32(t + 4, 8);
    W16(t + 8, 2);
    W16(t + 10, 0x010F); W16(t + 12, 2); W32(t + 14, 4); memcpy(t + 18, "ABC", 4);
    W16(t + 22, 0x0112); W16(t + 24, 3); W32(t + 26, 1); W16(t + 30, o);
#undef W16
#undef W32
    return 6 + 8 + 2 + 24 + 4;
}

static void test_exif(void)
{
    /* 64 x 32, quadrants: TL red, TR green, BL blue, BR white (aligned to
     * 16 x 16 MCUs so colors stay clean). */
    int w = 64, h = 32;
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            static const uint8_t q[4][3] = { { 255, 0, 0 }, { 0, 255, 0 }, { 0, 0, 255 }, { 255, 255, 255 } };
            memcpy(px + ((size_t)y * w + x) * 3, q[(y >= h / 2) * 2 + (x >= w / 2)], 3);
        }
    /* Where the stored top-left and top-right corners appear on screen
     * (0 TL, 1 TR, 2 BL, 3 BR), per the EXIF/TIFF orientation table. */
    static const int tl_at[9] = { 0, 0, 1, 3, 2, 0, 1, 3, 2 };
    static const int tr_at[9] = { 0, 1, 0, 2, 3, 2, 3, 1, 0 };
    for (int le = 0; le < 2; le++)
        for (int o = 1; o <= 8; o++) {
            uint8_t app1[64];
            jopt jo = { .in_cs = JCS_RGB, .comps = 3, .app1 = app1, .app1_len = make_exif(app1, o, le) };
            size_t n;
            uint8_t *jpg = write_jpeg(px, w, h, &jo, &n);
            df_image im;
            CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK);
            bool swap = o >= 5;
            CHECK_MSG(im.w == (swap ? h : w) && im.h == (swap ? w : h), "o=%d %dx%d", o, im.w, im.h);
            int pw, ph;
            CHECK(df_image_probe_mem(jpg, n, NULL, &pw, &ph) == DF_OK && pw == im.w && ph == im.h);
            int cx[4] = { 2, im.w - 3, 2, im.w - 3 }, cy[4] = { 2, 2, im.h - 3, im.h - 3 };
            const uint8_t *a = pix(&im, cx[tl_at[o]], cy[tl_at[o]]);
            const uint8_t *b = pix(&im, cx[tr_at[o]], cy[tr_at[o]]);
            CHECK_MSG(near_rgb(a, 255, 0, 0, 12), "o=%d le=%d: red corner %d %d %d", o, le, a[0], a[1], a[2]);
            CHECK_MSG(near_rgb(b, 0, 255, 0, 12), "o=%d le=%d: green corner %d %d %d", o, le, b[0], b[1], b[2]);
            df_image_free(&im);
            free(jpg);
        }
    /* A malformed EXIF block (IFD offset beyond the segment, a cut entry)
     * is ignored: orientation 1. */
    uint8_t app1[64];
    size_t len = make_exif(app1, 6, true);
    app1[6 + 4] = 200;                       /* IFD0 offset out of range */
    jopt jo = { .in_cs = JCS_RGB, .comps = 3, .app1 = app1, .app1_len = len };
    size_t n;
    uint8_t *jpg = write_jpeg(px, w, h, &jo, &n);
    df_image im;
    CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK && im.w == w && im.h == h);
    df_image_free(&im);
    free(jpg);
    len = make_exif(app1, 6, true);
    jo.app1_len = 6 + 8 + 2 + 12 + 6;        /* the orientation entry cut in half */
    jpg = write_jpeg(px, w, h, &jo, &n);
    CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_OK && im.w == w && im.h == h);
    df_image_free(&im);
    free(jpg);
    free(px);
}

/* Progressive grayscale scan script: DC, then each AC coefficient k in
 * 1..bands alone, first at Al = 9 and refined down to Al = 0 (10 scans per
 * coefficient). Valid JPEG, but bands = 63 gives 631 scans. */
static int scan_script(jpeg_scan_info *s, int bands)
{
    int n = 0;
    s[n++] = (jpeg_scan_info){ .comps_in_scan = 1, .Ss = 0, .Se = 0, .Ah = 0, .Al = 0 };
    for (int k = 1; k <= 63; k++) {
        if (k > bands) {   /* the rest in one scan, so every coefficient is sent */
            s[n++] = (jpeg_scan_info){ .comps_in_scan = 1, .Ss = k, .Se = 63, .Ah = 0, .Al = 0 };
            break;
        }
        s[n++] = (jpeg_scan_info){ .comps_in_scan = 1, .Ss = k, .Se = k, .Ah = 0, .Al = 9 };
        for (int al = 8; al >= 0; al--)
            s[n++] = (jpeg_scan_info){ .comps_in_scan = 1, .Ss = k, .Se = k, .Ah = al + 1, .Al = al };
    }
    return n;
}

static void test_scan_bomb(void)
{
    static jpeg_scan_info scans[700];
    int w = 16, h = 16;
    uint8_t g[16 * 16];
    for (int i = 0; i < w * h; i++)
        g[i] = (uint8_t)(i * 3);
    for (int bands = 5; bands <= 63; bands += 58) {
        int ns = scan_script(scans, bands);
        jopt o = { .in_cs = JCS_GRAYSCALE, .comps = 1, .scans = scans, .nscans = ns };
        size_t n;
        uint8_t *jpg = write_jpeg(g, w, h, &o, &n);
        df_image im;
        df_status st = df_image_decode_mem(jpg, n, NULL, &im);
        if (ns <= 500) {
            CHECK_MSG(st == DF_OK, "%d scans: %s", ns, df_last_error());
            CHECK(st || near_rgb(pix(&im, 7, 3), 165, 165, 165, 3));   /* g[3 * 16 + 7] */
            df_image_free(&im);
        } else {
            CHECK_MSG(st == DF_ERR_FORMAT && strstr(df_last_error(), "scans"), "%d scans: %s", ns,
                      df_last_error());
        }
        free(jpg);
    }
}

static void test_dct_scaling(void)
{
    int w = 512, h = 384;
    uint8_t *src = gradient(w, h);
    jopt o = { .in_cs = JCS_RGB, .comps = 3 };
    size_t n;
    uint8_t *jpg = write_jpeg(src, w, h, &o, &n);
    df_image full, small, a, b;
    CHECK(df_image_decode_mem(jpg, n, NULL, &full) == DF_OK);
    /* at least 128 x 96: 1/4 scale exactly */
    CHECK(df_image_decode_mem_scaled(jpg, n, NULL, 128, 96, &small) == DF_OK);
    CHECK_MSG(small.w == 128 && small.h == 96, "%dx%d", small.w, small.h);
    CHECK(df_image_resize(&full, 64, 48, &a) == DF_OK);
    CHECK(df_image_resize(&small, 64, 48, &b) == DF_OK);
    double p = psnr(&a, &b);
    CHECK_MSG(p > 35, "DCT-scaled decode then resize vs full decode then resize: %.1f dB", p);
    fprintf(stderr, "dct-scaled 1/4 + Lanczos vs full decode + Lanczos: PSNR %.1f dB\n", p);
    df_image_free(&full); df_image_free(&small); df_image_free(&a); df_image_free(&b);
    free(jpg);
    free(src);
}

/* ---------------------------------------------------------------- PNG */

static void test_png_formats(void)
{
    enum { W = 9, H = 7 };   /* odd sizes exercise interlace passes and bit packing */
    uint8_t rows[H * W * 8];
    df_image im;
    size_t n;
    uint8_t *png;

    /* 8-bit RGB, plain and interlaced: exact */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = rows + (y * W + x) * 3;
            p[0] = (uint8_t)(x * 25); p[1] = (uint8_t)(y * 30); p[2] = (uint8_t)(x * y);
        }
    for (int il = 0; il < 2; il++) {
        popt o = { .bit_depth = 8, .color_type = PNG_COLOR_TYPE_RGB, .interlace = il ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE };
        png = write_png(W, H, rows, W * 3, &o, &n);
        CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK && im.w == W && im.h == H);
        CHECK(im.px && !memcmp(im.px, rows, W * H * 3));
        df_image_free(&im);
        free(png);
    }

    /* 16-bit RGB: v = 257 k + 100 reads as k (v * 255 / 65535 rounded) */
    for (int i = 0; i < W * H * 3; i++) {
        unsigned v = 257u * (unsigned)(i % 256) + 100;
        rows[2 * i] = (uint8_t)(v >> 8);
        rows[2 * i + 1] = (uint8_t)v;
    }
    popt o16 = { .bit_depth = 16, .color_type = PNG_COLOR_TYPE_RGB, .interlace = PNG_INTERLACE_NONE };
    png = write_png(W, H, rows, W * 6, &o16, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    bool ok = true;
    for (int i = 0; i < W * H * 3; i++)
        ok &= im.px[i] == i % 256;
    CHECK(ok);
    df_image_free(&im);
    free(png);

    /* Palette + tRNS: alpha composited onto white, c a/255 + 255 (1 - a/255). */
    png_color pal[4] = { { 255, 0, 0 }, { 0, 255, 0 }, { 0, 0, 255 }, { 10, 20, 30 } };
    png_byte trans[3] = { 255, 0, 128 };
    for (int i = 0; i < W * H; i++)
        rows[i] = (uint8_t)(i % 4);
    popt op = { .bit_depth = 8, .color_type = PNG_COLOR_TYPE_PALETTE, .pal = pal, .npal = 4,
                .trans = trans, .ntrans = 3 };
    png = write_png(W, H, rows, W, &op, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    CHECK(near_rgb(im.px + 0, 255, 0, 0, 0));                /* opaque red */
    CHECK(near_rgb(im.px + 3, 255, 255, 255, 0));            /* fully transparent */
    CHECK(near_rgb(im.px + 6, 127, 127, 255, 0));            /* 50% blue: 255*127/255 */
    CHECK(near_rgb(im.px + 9, 10, 20, 30, 0));               /* no tRNS entry: opaque */
    df_image_free(&im);
    free(png);

    /* 1-bit and 4-bit gray: 1 -> 255, 4-bit v -> 17 v */
    memset(rows, 0, sizeof rows);
    for (int y = 0; y < H; y++)
        rows[y * 2] = 0xA0;                                   /* pixels 1,0,1,0,0,... */
    popt o1 = { .bit_depth = 1, .color_type = PNG_COLOR_TYPE_GRAY, .interlace = 0 };
    png = write_png(W, H, rows, 2, &o1, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    CHECK(near_rgb(pix(&im, 0, 3), 255, 255, 255, 0) && near_rgb(pix(&im, 1, 3), 0, 0, 0, 0));
    CHECK(near_rgb(pix(&im, 2, 3), 255, 255, 255, 0) && near_rgb(pix(&im, 8, 3), 0, 0, 0, 0));
    df_image_free(&im);
    free(png);
    for (int y = 0; y < H; y++)
        for (int b = 0; b < 5; b++)
            rows[y * 5 + b] = (uint8_t)((2 * b) << 4 | (2 * b + 1));   /* 0,1,2,...,9 */
    popt o4 = { .bit_depth = 4, .color_type = PNG_COLOR_TYPE_GRAY, .interlace = 0 };
    png = write_png(W, H, rows, 5, &o4, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    ok = true;
    for (int x = 0; x < W; x++)
        ok &= near_rgb(pix(&im, x, 6), 17 * x, 17 * x, 17 * x, 0);
    CHECK(ok);
    df_image_free(&im);
    free(png);

    /* 8-bit gray with a tRNS gray value: that value becomes white */
    for (int i = 0; i < W * H; i++)
        rows[i] = i % 2 ? 60 : 90;
    png_color_16 tc = { .gray = 60 };
    popt ogt = { .bit_depth = 8, .color_type = PNG_COLOR_TYPE_GRAY, .trans_color = &tc };
    png = write_png(W, H, rows, W, &ogt, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    CHECK(near_rgb(im.px, 90, 90, 90, 0) && near_rgb(im.px + 3, 255, 255, 255, 0));
    df_image_free(&im);
    free(png);

    /* gray + alpha 8-bit: (100, a=51) -> 100*51/255 + 255*204/255 = 224 */
    for (int i = 0; i < W * H; i++) {
        rows[2 * i] = 100;
        rows[2 * i + 1] = 51;
    }
    popt oga = { .bit_depth = 8, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .interlace = 0 };
    png = write_png(W, H, rows, W * 2, &oga, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    CHECK_MSG(near_rgb(im.px, 224, 224, 224, 0), "%d", im.px[0]);
    df_image_free(&im);
    free(png);

    /* RGBA 16-bit interlaced: (0x8080, 0, 0xFFFF, alpha 0x0000 / 0xFFFF) */
    for (int i = 0; i < W * H; i++) {
        uint8_t *p = rows + 8 * i;
        p[0] = p[1] = 0x80; p[2] = p[3] = 0; p[4] = p[5] = 0xFF;
        p[6] = p[7] = i % 2 ? 0xFF : 0x00;
    }
    popt orgba = { .bit_depth = 16, .color_type = PNG_COLOR_TYPE_RGB_ALPHA, .interlace = PNG_INTERLACE_ADAM7 };
    png = write_png(W, H, rows, W * 8, &orgba, &n);
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    CHECK(near_rgb(im.px, 255, 255, 255, 0) && near_rgb(im.px + 3, 128, 0, 255, 0));
    df_image_free(&im);
    free(png);
}

/* Recompute the CRC of the chunk starting at offset off (length field). */
static void fix_crc(uint8_t *p, size_t off)
{
    uint32_t len = (uint32_t)p[off] << 24 | p[off + 1] << 16 | p[off + 2] << 8 | p[off + 3];
    uint32_t c = (uint32_t)crc32(0, p + off + 4, len + 4);
    uint8_t *q = p + off + 8 + len;
    q[0] = c >> 24; q[1] = c >> 16; q[2] = c >> 8; q[3] = c;
}

static size_t find_chunk(const uint8_t *p, size_t n, const char *type)
{
    for (size_t i = 8; i + 8 <= n;) {
        uint32_t len = (uint32_t)p[i] << 24 | p[i + 1] << 16 | p[i + 2] << 8 | p[i + 3];
        if (!memcmp(p + i + 4, type, 4))
            return i;
        i += 12 + (size_t)len;
    }
    return 0;
}

static void test_png_broken(void)
{
    enum { W = 40, H = 30 };
    uint8_t rows[W * H * 3];
    for (int i = 0; i < W * H * 3; i++)
        rows[i] = (uint8_t)(i * 7);
    popt o = { .bit_depth = 8, .color_type = PNG_COLOR_TYPE_RGB, .text_key = "Comment" };
    size_t n;
    uint8_t *png = write_png(W, H, rows, W * 3, &o, &n);
    df_image im = { 0 };
    CHECK(df_image_decode_mem(png, n, NULL, &im) == DF_OK);
    df_image_free(&im);

    uint8_t *bad = malloc(n);
    /* truncated in IDAT, before IEND, and a signature only */
    CHECK(df_image_decode_mem(png, n / 2, NULL, &im) == DF_ERR_FORMAT && !im.px);
    CHECK(df_image_decode_mem(png, n - 12, NULL, &im) == DF_ERR_FORMAT);
    CHECK(df_image_decode_mem(png, 8, NULL, &im) == DF_ERR_FORMAT);
    /* CRC error in IDAT (critical) and in tEXt (ancillary, which libpng
     * would only warn about) */
    size_t idat = find_chunk(png, n, "IDAT"), text = find_chunk(png, n, "tEXt");
    CHECK(idat && text);
    memcpy(bad, png, n);
    bad[idat + 8 + 5] ^= 0x55;
    CHECK(df_image_decode_mem(bad, n, NULL, &im) == DF_ERR_FORMAT);
    memcpy(bad, png, n);
    bad[text + 8 + 2] ^= 0x01;
    CHECK(df_image_decode_mem(bad, n, NULL, &im) == DF_ERR_FORMAT);
    CHECK_MSG(strstr(df_last_error(), "CRC") != NULL, "%s", df_last_error());
    /* corrupt deflate data with a valid CRC */
    memcpy(bad, png, n);
    for (int i = 0; i < 16; i++)
        bad[idat + 8 + 2 + i] = 0xFF;
    fix_crc(bad, idat);
    CHECK(df_image_decode_mem(bad, n, NULL, &im) == DF_ERR_FORMAT);

    /* IHDR claiming 100000 x 100000 (valid CRC, 40 x 30 worth of data):
     * refused from the header, as too large, not as truncated. */
    memcpy(bad, png, n);
    uint8_t *ihdr = bad + 8 + 8;
    ihdr[0] = 0; ihdr[1] = 0x01; ihdr[2] = 0x86; ihdr[3] = 0xA0;   /* 100000 */
    memcpy(ihdr + 4, ihdr, 4);
    fix_crc(bad, 8);
    CHECK_MSG(df_image_decode_mem(bad, n, NULL, &im) == DF_ERR_RANGE && !im.px, "%s", df_last_error());
    int pw, ph;
    CHECK(df_image_probe_mem(bad, n, NULL, &pw, &ph) == DF_OK && pw == 100000 && ph == 100000);
    free(bad);
    free(png);

    /* A real JPEG whose SOF0 is patched to claim 65000 x 65000: refused
     * from the header as too large, not reported as truncated data. */
    uint8_t *g = gradient(16, 16);
    jopt jo = { .in_cs = JCS_RGB, .comps = 3 };
    uint8_t *jpg = write_jpeg(g, 16, 16, &jo, &n);
    size_t sof = 0;
    for (size_t i = 2; i + 9 < n && !sof; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0)
            sof = i;
    CHECK(sof > 0);
    jpg[sof + 5] = jpg[sof + 7] = 0xFD;   /* height, width = 0xFDE8 = 65000 */
    jpg[sof + 6] = jpg[sof + 8] = 0xE8;
    CHECK(df_image_decode_mem(jpg, n, NULL, &im) == DF_ERR_RANGE && !im.px);
    CHECK(df_image_probe_mem(jpg, n, NULL, &pw, &ph) == DF_OK && pw == 65000 && ph == 65000);
    free(jpg);
    free(g);

    /* nothing, not an image, magic only */
    static const uint8_t text_bytes[] = "hello, I am not an image";
    static const uint8_t magic[] = { 0xFF, 0xD8, 0xFF, 0xE0, 0x00 };
    CHECK(df_image_decode_mem(text_bytes, 0, NULL, &im) == DF_ERR_FORMAT);
    CHECK(df_image_decode_mem(text_bytes, sizeof text_bytes, NULL, &im) == DF_ERR_FORMAT);
    CHECK(df_image_decode_mem(magic, sizeof magic, NULL, &im) == DF_ERR_FORMAT && !im.px);
    CHECK(df_image_sniff(magic, sizeof magic) == DF_IMAGE_JPEG);
    CHECK(df_image_decode_file("/nonexistent/x.png", NULL, &im) == DF_ERR_NOTFOUND);
}

static void test_encoders(void)
{
    int w = 50, h = 40;
    uint8_t *px = gradient(w, h);
    df_image src = { w, h, px }, im;
    const char *kv[] = { "prompt", "a face", "seed", "42", NULL };
    uint8_t *buf;
    size_t n;
    CHECK(df_image_encode_png_mem(&src, kv, &buf, &n) == DF_OK);
    CHECK(df_image_decode_mem(buf, n, NULL, &im) == DF_OK && !memcmp(im.px, px, (size_t)w * h * 3));
    df_image_free(&im);
    /* the tEXt chunk holds key NUL value */
    bool found = false;
    for (size_t i = 0; i + 20 < n; i++)
        if (!memcmp(buf + i, "tEXtprompt\0a face", 17))
            found = true;
    CHECK(found);
    free(buf);
    /* Text beyond Latin-1 (CJK, emoji) goes into iTXt (UTF-8, uncompressed,
     * empty language and translated keyword); Latin-1 text stays tEXt, in
     * Latin-1 as PNG defines it; ASCII is unchanged. */
    const char *ukv[] = { "parameters", "\xe7\x8c\xab \xf0\x9f\x98\x80", "ascii", "plain",
                          "latin", "caf\xc3\xa9", NULL };
    CHECK(df_image_encode_png_mem(&src, ukv, &buf, &n) == DF_OK);
    static const char itxt[] = "iTXtparameters\0\0\0\0\0\xe7\x8c\xab \xf0\x9f\x98\x80";
    static const char ascii[] = "tEXtascii\0plain", latin[] = "tEXtlatin\0caf\xe9";
    bool fi = false, fa = false, fl = false, ft = false;
    for (size_t i = 0; i + 40 < n; i++) {
        fi |= !memcmp(buf + i, itxt, sizeof itxt - 1);
        fa |= !memcmp(buf + i, ascii, sizeof ascii - 1);
        fl |= !memcmp(buf + i, latin, sizeof latin - 1);
        ft |= !memcmp(buf + i, "tEXtparameters", 14);
    }
    CHECK(fi && fa && fl && !ft);
    free(buf);
    const char *badkv[] = { "", "x", NULL };
    CHECK(df_image_encode_png_mem(&src, badkv, &buf, &n) == DF_ERR_ARG);

    CHECK(df_image_encode_jpeg_mem(&src, 95, &buf, &n) == DF_OK);
    CHECK(df_image_sniff(buf, n) == DF_IMAGE_JPEG);
    CHECK(df_image_decode_mem(buf, n, NULL, &im) == DF_OK);
    double p = psnr(&im, &src);
    CHECK_MSG(p > 33, "q95 PSNR %.1f", p);
    df_image_free(&im);
    free(buf);
    CHECK(df_image_encode_jpeg_mem(&src, 0, &buf, &n) == DF_ERR_ARG);

    char path[] = "/tmp/df-test-image-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(df_image_write_png(path, &src, NULL) == DF_OK);
    CHECK(df_image_decode_file(path, NULL, &im) == DF_OK && im.w == w && !memcmp(im.px, px, (size_t)w * h * 3));
    df_image_free(&im);
    CHECK(df_image_write_jpeg(path, &src, 90) == DF_OK);
    df_image_format f;
    int pw, ph;
    CHECK(df_image_probe_file(path, &f, &pw, &ph) == DF_OK && f == DF_IMAGE_JPEG && pw == w && ph == h);
    unlink(path);
    CHECK(df_image_write_png("/nonexistent/dir/x.png", &src, NULL) == DF_ERR_IO);
    free(px);
}

/* ---------------------------------------------------------------- resampling */

static void test_resize(void)
{
    df_image a, b, c;
    /* a constant image stays exactly constant, up and down */
    CHECK(df_image_alloc(&a, 37, 23) == DF_OK);
    memset(a.px, 0, (size_t)37 * 23 * 3);
    for (int i = 0; i < 37 * 23; i++) {
        a.px[3 * i] = 200; a.px[3 * i + 1] = 13; a.px[3 * i + 2] = 255;
    }
    int sizes[][2] = { { 10, 7 }, { 80, 61 }, { 1, 1 }, { 37, 5 } };
    for (int s = 0; s < 4; s++) {
        CHECK(df_image_resize(&a, sizes[s][0], sizes[s][1], &b) == DF_OK);
        bool ok = b.w == sizes[s][0] && b.h == sizes[s][1];
        for (int i = 0; ok && i < b.w * b.h; i++)
            ok = near_rgb(b.px + 3 * i, 200, 13, 255, 0);
        CHECK_MSG(ok, "constant image resized to %dx%d", sizes[s][0], sizes[s][1]);
        df_image_free(&b);
    }
    df_image_free(&a);

    /* same size: every weight but the center one is sinc at an integer */
    uint8_t *g = gradient(41, 29);
    df_image gi = { 41, 29, g };
    CHECK(df_image_resize(&gi, 41, 29, &b) == DF_OK && !memcmp(b.px, g, (size_t)41 * 29 * 3));
    df_image_free(&b);

    /* mirror symmetry: resize(mirror(x)) == mirror(resize(x)) (within 1
     * for float summation order) */
    df_image m;
    df_image_alloc(&m, 41, 29);
    for (int y = 0; y < 29; y++)
        for (int x = 0; x < 41; x++)
            memcpy(m.px + ((size_t)y * 41 + x) * 3, pix(&gi, 40 - x, y), 3);
    CHECK(df_image_resize(&gi, 17, 11, &b) == DF_OK && df_image_resize(&m, 17, 11, &c) == DF_OK);
    int maxd = 0;
    for (int y = 0; y < 11; y++)
        for (int x = 0; x < 17; x++)
            for (int k = 0; k < 3; k++) {
                int d = abs(pix(&b, x, y)[k] - pix(&c, 16 - x, y)[k]);
                maxd = d > maxd ? d : maxd;
            }
    CHECK_MSG(maxd <= 1, "mirror asymmetry %d", maxd);
    df_image_free(&b); df_image_free(&c); df_image_free(&m);
    free(g);

    /* antialiasing: a 1-pixel checkerboard halved is flat grey (a kernel
     * not widened by the scale would alias it into stripes) */
    df_image_alloc(&a, 64, 64);
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 64; x++)
            memset(a.px + ((size_t)y * 64 + x) * 3, (x + y) % 2 ? 255 : 0, 3);
    CHECK(df_image_resize(&a, 32, 32, &b) == DF_OK);
    int lo = 255, hi = 0;
    for (int i = 0; i < 32 * 32 * 3; i++) {
        lo = b.px[i] < lo ? b.px[i] : lo;
        hi = b.px[i] > hi ? b.px[i] : hi;
    }
    CHECK_MSG(lo >= 124 && hi <= 131, "checkerboard /2 range %d..%d", lo, hi);
    df_image_free(&a); df_image_free(&b);
    CHECK(df_image_resize(&a, 10, 10, &b) == DF_ERR_ARG);   /* empty input */
}

/* Reference: the same filter written the slow way, in double, one output
 * pixel at a time (Pillow's definition: center (i + 0.5) * scale, support
 * 3 * max(scale, 1), weights normalized, edges clamped to the image). */
static double ref_lanczos(double x)
{
    x = fabs(x);
    if (x < 1e-12) return 1;
    if (x >= 3) return 0;
    return 3 * sin(M_PI * x) * sin(M_PI * x / 3) / (M_PI * M_PI * x * x);
}

static int ref_weights(int in, double b0, double b1, int out, int i, double *w, int *lo)
{
    double scale = (b1 - b0) / out, fs = scale < 1 ? 1 : scale, sup = 3 * fs;
    double c = b0 + (i + 0.5) * scale, sum = 0;
    int a = (int)floor(c - sup + 0.5), b = (int)floor(c + sup + 0.5);
    if (a < 0) a = 0;
    if (b > in) b = in;
    for (int k = a; k < b; k++)
        sum += w[k - a] = ref_lanczos((k + 0.5 - c) / fs);
    for (int k = a; k < b; k++)
        w[k - a] /= sum;
    *lo = a;
    return b - a;
}

static void test_resize_reference(void)
{
    int W = 53, H = 41;
    df_image a;
    df_image_alloc(&a, W, H);
    for (int i = 0; i < W * H * 3; i++)
        a.px[i] = (uint8_t)((i * 7919u) % 251 ^ (i / 3 % 7) * 30);   /* rough, full range */
    struct { double x0, y0, x1, y1; int w, h; } cases[] = {
        { 0, 0, 53, 41, 23, 37 }, { 0, 0, 53, 41, 100, 20 }, { 0, 0, 53, 41, 7, 5 },
        { 6, 0, 47, 41, 30, 30 }, { 2.5, 3.5, 50.5, 40, 16, 12 },
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        df_image b;
        CHECK(df_image_resize_box(&a, cases[t].x0, cases[t].y0, cases[t].x1, cases[t].y1,
                                  cases[t].w, cases[t].h, &b) == DF_OK);
        int maxd = 0;
        double wx[64], wy[64];
        for (int y = 0; y < b.h; y++) {
            int ly, ny = ref_weights(H, cases[t].y0, cases[t].y1, b.h, y, wy, &ly);
            for (int x = 0; x < b.w; x++) {
                int lx, nx = ref_weights(W, cases[t].x0, cases[t].x1, b.w, x, wx, &lx);
                for (int c = 0; c < 3; c++) {
                    double v = 0;
                    for (int j = 0; j < ny; j++)
                        for (int i = 0; i < nx; i++)
                            v += wy[j] * wx[i] * pix(&a, lx + i, ly + j)[c];
                    int r = v < 0 ? 0 : v > 255 ? 255 : (int)floor(v + 0.5);
                    int d = abs(r - pix(&b, x, y)[c]);
                    maxd = d > maxd ? d : maxd;
                }
            }
        }
        CHECK_MSG(maxd <= 1, "case %zu: max difference to the double reference %d", t, maxd);
        df_image_free(&b);
    }
    df_image_free(&a);
}

static void test_fit(void)
{
    /* 300 x 200: columns 0-49 red, 50-249 green, 250-299 blue */
    df_image a, b;
    df_image_alloc(&a, 300, 200);
    for (int y = 0; y < 200; y++)
        for (int x = 0; x < 300; x++) {
            uint8_t *p = a.px + ((size_t)y * 300 + x) * 3;
            p[0] = x < 50 ? 255 : 0; p[1] = x >= 50 && x < 250 ? 255 : 0; p[2] = x >= 250 ? 255 : 0;
        }
    int ow, oh;
    df_image_fit_size(300, 200, 100, DF_FIT_CENTER, &ow, &oh);
    CHECK(ow == 100 && oh == 100);
    CHECK(df_image_fit(&a, 100, DF_FIT_CENTER, &b) == DF_OK && b.w == 100 && b.h == 100);
    bool ok = true;   /* the center square is all green, away from the box edges */
    for (int y = 0; y < 100; y++)
        for (int x = 4; x < 96; x++)
            ok &= near_rgb(pix(&b, x, y), 0, 255, 0, 2);
    CHECK(ok);
    df_image_free(&b);

    df_image_fit_size(300, 200, 150, DF_FIT_NONE, &ow, &oh);
    CHECK(ow == 150 && oh == 100);
    CHECK(df_image_fit(&a, 150, DF_FIT_NONE, &b) == DF_OK && b.w == 150 && b.h == 100);
    CHECK(near_rgb(pix(&b, 10, 50), 255, 0, 0, 2) && near_rgb(pix(&b, 140, 50), 0, 0, 255, 2));
    df_image_free(&b);

    /* pad: 150 x 100 content centered on 150 x 150, rows 0-24 and 125-149 background */
    for (int black = 0; black < 2; black++) {
        CHECK(df_image_fit(&a, 150, black ? DF_FIT_PAD_BLACK : DF_FIT_PAD_WHITE, &b) == DF_OK);
        int bg = black ? 0 : 255;
        CHECK(b.w == 150 && b.h == 150);
        CHECK(near_rgb(pix(&b, 75, 0), bg, bg, bg, 0) && near_rgb(pix(&b, 75, 24), bg, bg, bg, 0));
        CHECK(near_rgb(pix(&b, 75, 149), bg, bg, bg, 0) && near_rgb(pix(&b, 75, 125), bg, bg, bg, 0));
        CHECK(near_rgb(pix(&b, 75, 75), 0, 255, 0, 1) && near_rgb(pix(&b, 5, 30), 255, 0, 0, 2));
        df_image_free(&b);
    }

    /* crop */
    CHECK(df_image_crop(&a, 40, 10, 20, 5, &b) == DF_OK && b.w == 20 && b.h == 5);
    CHECK(near_rgb(pix(&b, 9, 2), 255, 0, 0, 0) && near_rgb(pix(&b, 10, 2), 0, 255, 0, 0));
    df_image_free(&b);
    CHECK(df_image_crop(&a, 290, 0, 20, 5, &b) == DF_ERR_ARG && !b.px);
    CHECK(df_image_resize_box(&a, -1, 0, 10, 10, 5, 5, &b) == DF_ERR_ARG);
    df_image_free(&a);
}

int main(void)
{
    test_jpeg_basic();
    test_jpeg_gray_cmyk();
    test_exif();
    test_scan_bomb();
    test_dct_scaling();
    test_png_formats();
    test_png_broken();
    test_encoders();
    test_resize();
    test_resize_reference();
    test_fit();
    UNIT_END();
}
