/* ops_winograd.c - 3x3, stride 1, pad 1 convolution by Winograd's minimal
 * filtering F(m x m, 3x3), m = 2 or 4 (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016), the convolution of most of the UNet
 * and the VAE.
 *
 * Why: the direct convolution (im2col GEMM in ops.c) spends 9 multiply-adds
 * per input channel on each output. F(2x2, 3x3) turns each 4x4 input tile d
 * into V = B^T d B and each filter g into U = G g G^T; the 2x2 outputs of a
 * tile are A^T M A with M[xi] = sum over channels of U[xi] * V[xi] for the
 * 16 positions xi: 16 GEMMs (OC x C) @ (C x tiles) on ops.c's GEMM, 4
 * multiply-adds per output and channel, 2.25 times fewer than direct. Its
 * transforms only add, subtract and halve, so the result stays within a few
 * float roundings of the direct sum. F(4x4, 3x3) takes 6x6 tiles to 4x4
 * outputs with 36 GEMMs: 2.25 multiply-adds per output and channel, 4 times
 * fewer than direct, but its transforms multiply by up to 8 and divide by 6,
 * so it rounds about 6 times more (see its section). It takes the large
 * images, where it was 1.3-1.55x faster than F(2x2, 3x3); below 40x40 its
 * GEMMs have too few columns (tiles) to run at speed.
 *
 * Layout: tiles are numbered over the whole batch, tile row r = b*TH + ty,
 * tile t = r*TW + tx (TH = ceil(OH/m), TW = ceil(W/m)); tiles over the bottom
 * or right edge read zeros and write nothing. Columns are padded by 1 on
 * both sides; rows by 0 or 1 at the top and the bottom, so that a band of
 * rows cut from a larger image (the UNet's upsampler works in bands) takes
 * the same path: the output has OH = H - 2 + pad_t + pad_b rows. The tile
 * rows are done in chunks so that the transformed inputs V (nxi, C, tiles)
 * and products M (nxi, OC, tiles) stay under chunk_bytes whatever the image
 * size (nxi = (m + 2)^2 matrices).
 * Tested against the reference convolution by tests/unit/test_ops.c (each
 * tile size forced on, at odd sizes, AVX-512 and portable paths) and,
 * through the models, by tests/check-fixtures (run with each forced too). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include <immintrin.h>

#include "ops_internal.h"

/* Bytes of V and M together per chunk (at least 1024 tiles, see
 * df_conv2d_winograd): they stream through memory once either way, so
 * chunks only bound the scratch. Tests set it small to exercise the
 * chunking. */
static size_t chunk_bytes = 32 << 20;
static int chunk_min_tiles = 1024;

void df_ops_winograd_set_chunks(size_t bytes, int min_tiles)
{
    chunk_bytes = bytes ? bytes : 32 << 20;
    chunk_min_tiles = min_tiles > 0 ? min_tiles : 1024;
}

/* The scratch of one call (U, V and M: up to ~250 MB at UNet level 3 of a
 * 768 px image) is kept for the next: fresh pages from the kernel arrive
 * zeroed one page fault at a time, which measured up to a third of the
 * convolution at that size. One block, grown as needed, handed to one call
 * at a time (a concurrent call gets its own); df_ops_release_scratch()
 * gives it back. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static float *pool;
static size_t pool_floats;

static float *scratch_get(size_t n, int *pooled)
{
    *pooled = 0;
    if (pthread_mutex_trylock(&pool_lock) != 0)
        return malloc(sizeof(float) * n);
    if (pool_floats < n) {
        free(pool);
        pool = malloc(sizeof(float) * n);
        pool_floats = pool ? n : 0;
    }
    if (!pool) {
        pthread_mutex_unlock(&pool_lock);
        return NULL;
    }
    *pooled = 1;
    return pool;
}

static void scratch_put(float *p, int pooled)
{
    if (pooled)
        pthread_mutex_unlock(&pool_lock);
    else
        free(p);
}

void df_ops_release_scratch(void)
{
    pthread_mutex_lock(&pool_lock);
    free(pool);
    pool = NULL, pool_floats = 0;
    pthread_mutex_unlock(&pool_lock);
}

typedef struct wino_tile wino_tile;

typedef struct {
    float *out;
    const float *inp, *weight, *bias;
    int B, C, H, W, OC, TH, TW;
    int m, nxi;        // outputs per tile side (2 or 4) and matrices ((m + 2)^2)
    const wino_tile *k;   // the transforms of this tile size (see the passes)
    int pad_t, OH;     // rows of padding on top (0 or 1), output rows
    int r0, r1;        // tile rows of this chunk
    size_t tc;         // tiles in this chunk: (r1 - r0) * TW
    float *U;          // (nxi, OC, C)
    float *V;          // (nxi, C, tc), each in the GEMM's packed layout
    size_t ustride, vsize, mstride;   // floats from one xi's matrix to the next (see spaced)
    float *M;          // (nxi, OC, tc)
} wino_job;

/* The 16 matrices of U, V and M are written (and M read) 16 at a time, one
 * value to each: were they a multiple of 4 KiB apart, as the SD sizes make
 * them, all 16 would fall into the same L1 set and evict each other on every
 * access (measured: the filter transform took two thirds of a 16x16
 * convolution). n floats rounded up to 4 KiB, plus one cache line, so that
 * matrix xi starts xi lines further into the sets. */
static size_t spaced(size_t n)
{
    return (n + 1023) / 1024 * 1024 + 16;
}

/* --------------------------------------------------------------- filters */

/* One filter g (3x3) into u = G g G^T (4x4, row-major),
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. */
static void filter_one(const float *g, float *u)
{
    float t[4][3];
    for (int j = 0; j < 3; j++) {   // G g: down each column of g
        t[0][j] = g[j];
        t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
        t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
        t[3][j] = g[6 + j];
    }
    for (int i = 0; i < 4; i++) {   // (G g) G^T: along each row
        u[4 * i + 0] = t[i][0];
        u[4 * i + 1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
        u[4 * i + 2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
        u[4 * i + 3] = t[i][2];
    }
}

/* The same for filters f..f+n (n <= 16) at once, lane l holding filter f+l:
 * their 9 taps are gathered 9 floats apart, and each u[i][k] is a run of
 * consecutive filters in U[xi], one store. Same operations in the same
 * order as filter_one, so the same bits. Scalar, the transform took as long
 * as the 16 GEMMs at 16x16 images (it grows with OC x C, not the image). */
__attribute__((target("avx512f"))) static void filter_16(const wino_job *J, size_t f, int n)
{
    const __m512i idx = _mm512_set_epi32(135, 126, 117, 108, 99, 90, 81, 72, 63, 54, 45, 36, 27,
                                         18, 9, 0);
    const __m512 half = _mm512_set1_ps(0.5f);
    __mmask16 m = (__mmask16)((1u << n) - 1);
    const float *g = J->weight + f * 9;
    __m512 gv[9], t[4][3];
    for (int j = 0; j < 9; j++)
        gv[j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, g + j, 4);
    for (int j = 0; j < 3; j++) {
        t[0][j] = gv[j];
        t[1][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(gv[j], gv[3 + j]), gv[6 + j]));
        t[2][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(gv[j], gv[3 + j]), gv[6 + j]));
        t[3][j] = gv[6 + j];
    }
    for (int i = 0; i < 4; i++) {
        __m512 u1 = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(t[i][0], t[i][1]), t[i][2]));
        __m512 u2 = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(t[i][0], t[i][1]), t[i][2]));
        float *row = J->U + (size_t)(i * 4) * J->ustride + f;
        _mm512_mask_storeu_ps(row, m, t[i][0]);
        _mm512_mask_storeu_ps(row + J->ustride, m, u1);
        _mm512_mask_storeu_ps(row + 2 * J->ustride, m, u2);
        _mm512_mask_storeu_ps(row + 3 * J->ustride, m, t[i][2]);
    }
}

/* ---------------------------------------------------------------- inputs */

/* V = B^T d B for one 4x4 tile d, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 * written to v[xi * vstride]. */
static void input_tile(float d[4][4], float *v, size_t vstride)
{
    // v: this tile's place in V[0]; the 16 matrices are vstride apart
    float t[4][4];
    for (int j = 0; j < 4; j++) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) {
        v[(size_t)(i * 4 + 0) * vstride] = t[i][0] - t[i][2];
        v[(size_t)(i * 4 + 1) * vstride] = t[i][1] + t[i][2];
        v[(size_t)(i * 4 + 2) * vstride] = t[i][2] - t[i][1];
        v[(size_t)(i * 4 + 3) * vstride] = t[i][1] - t[i][3];
    }
}

/* img (H, W) at (y, x), 0 in the padding around it. */
static inline float pixel(const wino_job *J, const float *img, int y, int x)
{
    return y >= 0 && y < J->H && x >= 0 && x < J->W ? img[(size_t)y * J->W + x] : 0.0f;
}

/* The tiles of tile row ty of channel c (image img (H, W)), which are tiles
 * t0.. of the chunk, into V: portable version. */
static void input_row_c(const wino_job *J, const float *img, int ty, int c, int t0)
{
    for (int tx = 0; tx < J->TW; tx++) {
        float d[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int y = 2 * ty - J->pad_t + i, x = 2 * tx - 1 + j;
                d[i][j] = pixel(J, img, y, x);
            }
        input_tile(d, J->V + df_ops_gemm_packed_index(J->C, (int)J->tc, c, t0 + tx), J->vsize);
    }
}

/* Lanes l of a 16-float load at column s that fall inside [0, W). */
static __mmask16 cols_in(int s, int W)
{
    int lo = s < 0 ? -s : 0, hi = W - s < 16 ? W - s : 16;
    if (hi <= lo)
        return 0;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* Masked load of row[s .. s+16), zeros outside [0, W); no lane outside is
 * read, so s may be -1 (the left padding). */
__attribute__((target("avx512f"))) static inline __m512 load_cols(const float *row, int s, int W)
{
    __mmask16 m = cols_in(s, W);
    return m ? _mm512_maskz_loadu_ps(m, (const float *)((uintptr_t)row + (intptr_t)s * 4))
             : _mm512_setzero_ps();
}

/* The same for 16 tiles at a time: tile tx+l reads columns 2(tx+l)-1+j, so
 * column j of the 16 tiles is every other float from 2tx-1+j, split out of
 * two or three loads by permutes. */
/* Store the first n lanes of x as row c, columns t.. of the packed matrix
 * v: a run of 16 columns may cross into the next strip of 64, which lies
 * elsewhere. */
__attribute__((target("avx512f"))) static inline void store_packed(const wino_job *J, float *v,
                                                                   int c, int t, int n, __m512 x)
{
    __mmask16 all = (__mmask16)((1u << n) - 1);
    int n1 = 64 - t % 64;
    _mm512_mask_storeu_ps(v + df_ops_gemm_packed_index(J->C, (int)J->tc, c, t),
                          n1 >= n ? all : (__mmask16)((1u << n1) - 1), x);
    if (n1 < n) {   // lane n1 goes to the start of the next strip
        float *next = v + df_ops_gemm_packed_index(J->C, (int)J->tc, c, t + n1);
        _mm512_mask_storeu_ps(next - n1, all & (__mmask16) ~((1u << n1) - 1), x);
    }
}

__attribute__((target("avx512f"))) static void input_row_avx512(const wino_job *J,
                                                                const float *img, int ty, int c,
                                                                int t0)
{
    const __m512i even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    int W = J->W;
    for (int tx = 0; tx < J->TW; tx += 16) {
        __m512 d[4][4];
        for (int i = 0; i < 4; i++) {
            int y = 2 * ty - J->pad_t + i;
            if (y < 0 || y >= J->H) {
                for (int j = 0; j < 4; j++)
                    d[i][j] = _mm512_setzero_ps();
                continue;
            }
            const float *row = img + (size_t)y * W;
            int s = 2 * tx - 1;
            __m512 a = load_cols(row, s, W), b = load_cols(row, s + 16, W);
            __m512 c = load_cols(row, s + 32, W);
            // a2, b2: the same columns moved on by two
            __m512 a2 = _mm512_castsi512_ps(
                _mm512_alignr_epi32(_mm512_castps_si512(b), _mm512_castps_si512(a), 2));
            __m512 b2 = _mm512_castsi512_ps(
                _mm512_alignr_epi32(_mm512_castps_si512(c), _mm512_castps_si512(b), 2));
            d[i][0] = _mm512_permutex2var_ps(a, even, b);
            d[i][1] = _mm512_permutex2var_ps(a, odd, b);
            d[i][2] = _mm512_permutex2var_ps(a2, even, b2);
            d[i][3] = _mm512_permutex2var_ps(a2, odd, b2);
        }
        int n = J->TW - tx < 16 ? J->TW - tx : 16;
        for (int i = 0; i < 4; i++) {
            // column i of B^T d, in place of column i of d
            __m512 t0 = _mm512_sub_ps(d[0][i], d[2][i]), t1 = _mm512_add_ps(d[1][i], d[2][i]);
            __m512 t2 = _mm512_sub_ps(d[2][i], d[1][i]), t3 = _mm512_sub_ps(d[1][i], d[3][i]);
            d[0][i] = t0, d[1][i] = t1, d[2][i] = t2, d[3][i] = t3;
        }
        float *v = J->V;
        for (int r = 0; r < 4; r++) {   // row r of (B^T d) B
            __m512 row[4] = {_mm512_sub_ps(d[r][0], d[r][2]), _mm512_add_ps(d[r][1], d[r][2]),
                             _mm512_sub_ps(d[r][2], d[r][1]), _mm512_sub_ps(d[r][1], d[r][3])};
            for (int k = 0; k < 4; k++)
                store_packed(J, v + (size_t)(r * 4 + k) * J->vsize, c, t0 + tx, n, row[k]);
        }
    }
}

/* --------------------------------------------------------------- outputs */

/* The 2x2 outputs of one tile, A^T M A with A^T = [1 1 1 0; 0 1 -1 -1]:
 * rows first (s = A^T M, 2x4), then columns. */
static void output_row_c(const wino_job *J, const float *m, size_t mstride, float bias, float *img,
                         int ty)
{
    for (int tx = 0; tx < J->TW; tx++) {
        float s[2][4], y[2][2];
        for (int j = 0; j < 4; j++) {
            float m0 = m[(size_t)j * mstride + tx], m1 = m[(size_t)(4 + j) * mstride + tx];
            float m2 = m[(size_t)(8 + j) * mstride + tx], m3 = m[(size_t)(12 + j) * mstride + tx];
            s[0][j] = m0 + m1 + m2;
            s[1][j] = m1 - m2 - m3;
        }
        for (int i = 0; i < 2; i++) {
            y[i][0] = s[i][0] + s[i][1] + s[i][2] + bias;
            y[i][1] = s[i][1] - s[i][2] - s[i][3] + bias;
        }
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                if (2 * ty + i < J->OH && 2 * tx + j < J->W)
                    img[(size_t)(2 * ty + i) * J->W + 2 * tx + j] = y[i][j];
    }
}

__attribute__((target("avx512f"))) static void output_row_avx512(const wino_job *J,
                                                                 const float *m, size_t mstride,
                                                                 float bias, float *img, int ty)
{
    // interleave two rows of 16 tile outputs into 32 columns
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    __m512 vb = _mm512_set1_ps(bias);
    for (int tx = 0; tx < J->TW; tx += 16) {
        __mmask16 k = J->TW - tx >= 16 ? 0xFFFF : (__mmask16)((1u << (J->TW - tx)) - 1);
        __m512 s[2][4];
        for (int j = 0; j < 4; j++) {
            __m512 m0 = _mm512_maskz_loadu_ps(k, m + (size_t)j * mstride + tx);
            __m512 m1 = _mm512_maskz_loadu_ps(k, m + (size_t)(4 + j) * mstride + tx);
            __m512 m2 = _mm512_maskz_loadu_ps(k, m + (size_t)(8 + j) * mstride + tx);
            __m512 m3 = _mm512_maskz_loadu_ps(k, m + (size_t)(12 + j) * mstride + tx);
            s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        for (int i = 0; i < 2; i++) {
            int y = 2 * ty + i;
            if (y >= J->OH)
                break;
            __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]), vb);
            __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]), vb);
            float *row = img + (size_t)y * J->W;
            _mm512_mask_storeu_ps(row + 2 * tx, cols_in(2 * tx, J->W),
                                  _mm512_permutex2var_ps(y0, lo, y1));
            _mm512_mask_storeu_ps(row + 2 * tx + 16, cols_in(2 * tx + 16, J->W),
                                  _mm512_permutex2var_ps(y0, hi, y1));
        }
    }
}

/* ------------------------------------------------------ F(4x4, 3x3) */

/* The larger tiles: 6x6 inputs give 4x4 outputs, 36 GEMMs for 16 outputs
 * per channel where F(2x2, 3x3) spends 64 on the same 16 outputs: 1.78x
 * fewer flops again, 4x fewer than the direct product. Its transforms
 * (interpolation points 0, +-1, +-2 and infinity) multiply by up to 8 and
 * divide by 6, 12 and 24, so it rounds more: against the reference
 * convolution with 320-2560 channels, the largest error measured 3.7-4.6e-6
 * of the largest output (rms 1.2e-6 relative) where F(2x2) gives 2.3-3.1e-7
 * (rms 2e-7); the models' references tolerate 1e-4. Most of it is the
 * float rounding of U, V and the channel sums themselves, which wider
 * transforms would not remove. Each transform is a 1-D transform
 * applied to the columns, then to the rows, in a float version (portable
 * path) and a 16-lane version (AVX-512: lane l holds filter or tile l).
 *
 * Filters, G (6x3):  [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
 *                     1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 * Inputs, B^T (6x6): [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
 *                     0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 * Outputs, A^T (4x6): [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1] */

static void g4_1d(float g0, float g1, float g2, float t[6])
{
    float c = g0 + g2, a = (0.25f * g0 + g2) * (1.0f / 6), b = g1 * (1.0f / 12);
    t[0] = 0.25f * g0;
    t[1] = (c + g1) * (-1.0f / 6);
    t[2] = (c - g1) * (-1.0f / 6);
    t[3] = a + b;
    t[4] = a - b;
    t[5] = g2;
}

static void bt4_1d(const float d[6], float r[6])
{
    r[0] = 4.0f * (d[0] - d[2]) + (d[4] - d[2]);
    r[1] = (d[3] + d[4]) - 4.0f * (d[1] + d[2]);
    r[2] = 4.0f * (d[1] - d[2]) + (d[4] - d[3]);
    r[3] = 2.0f * (d[3] - d[1]) + (d[4] - d[2]);
    r[4] = 2.0f * (d[1] - d[3]) + (d[4] - d[2]);
    r[5] = 4.0f * (d[1] - d[3]) + (d[5] - d[3]);
}

static void at4_1d(const float m[6], float y[4])
{
    float a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], d = m[3] - m[4];
    y[0] = m[0] + a + c;
    y[1] = b + 2.0f * d;
    y[2] = a + 4.0f * c;
    y[3] = (b + 8.0f * d) + m[5];
}

/* One filter g (3x3) into u = G g G^T (6x6, row-major). */
static void filter4_one(const float *g, float *u)
{
    float t[6][3], col[6];
    for (int j = 0; j < 3; j++) {
        g4_1d(g[j], g[3 + j], g[6 + j], col);
        for (int i = 0; i < 6; i++)
            t[i][j] = col[i];
    }
    for (int i = 0; i < 6; i++)
        g4_1d(t[i][0], t[i][1], t[i][2], u + 6 * i);
}

#define V16 __m512
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define MUL _mm512_mul_ps
#define SET1 _mm512_set1_ps

__attribute__((target("avx512f"))) static inline void g4_1d_16(V16 g0, V16 g1, V16 g2, V16 t[6])
{
    V16 c = ADD(g0, g2), a = MUL(ADD(MUL(SET1(0.25f), g0), g2), SET1(1.0f / 6));
    V16 b = MUL(g1, SET1(1.0f / 12));
    t[0] = MUL(SET1(0.25f), g0);
    t[1] = MUL(ADD(c, g1), SET1(-1.0f / 6));
    t[2] = MUL(SUB(c, g1), SET1(-1.0f / 6));
    t[3] = ADD(a, b);
    t[4] = SUB(a, b);
    t[5] = g2;
}

__attribute__((target("avx512f"))) static inline void bt4_1d_16(const V16 d[6], V16 r[6])
{
    V16 four = SET1(4.0f), two = SET1(2.0f), e = SUB(d[4], d[2]);
    r[0] = ADD(MUL(four, SUB(d[0], d[2])), e);
    r[1] = SUB(ADD(d[3], d[4]), MUL(four, ADD(d[1], d[2])));
    r[2] = ADD(MUL(four, SUB(d[1], d[2])), SUB(d[4], d[3]));
    r[3] = ADD(MUL(two, SUB(d[3], d[1])), e);
    r[4] = ADD(MUL(two, SUB(d[1], d[3])), e);
    r[5] = ADD(MUL(four, SUB(d[1], d[3])), SUB(d[5], d[3]));
}

__attribute__((target("avx512f"))) static inline void at4_1d_16(const V16 m[6], V16 y[4])
{
    V16 a = ADD(m[1], m[2]), b = SUB(m[1], m[2]), c = ADD(m[3], m[4]), d = SUB(m[3], m[4]);
    y[0] = ADD(ADD(m[0], a), c);
    y[1] = ADD(b, MUL(SET1(2.0f), d));
    y[2] = ADD(a, MUL(SET1(4.0f), c));
    y[3] = ADD(ADD(b, MUL(SET1(8.0f), d)), m[5]);
}

/* Filters f..f+n (n <= 16) at once, lane l holding filter f+l (see filter_16). */
__attribute__((target("avx512f"))) static void filter4_16(const wino_job *J, size_t f, int n)
{
    const __m512i idx = _mm512_set_epi32(135, 126, 117, 108, 99, 90, 81, 72, 63, 54, 45, 36, 27,
                                         18, 9, 0);
    __mmask16 k = (__mmask16)((1u << n) - 1);
    const float *g = J->weight + f * 9;
    V16 gv[9], t[6][3], col[6], u[6];
    for (int j = 0; j < 9; j++)
        gv[j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, g + j, 4);
    for (int j = 0; j < 3; j++) {
        g4_1d_16(gv[j], gv[3 + j], gv[6 + j], col);
        for (int i = 0; i < 6; i++)
            t[i][j] = col[i];
    }
    for (int i = 0; i < 6; i++) {
        g4_1d_16(t[i][0], t[i][1], t[i][2], u);
        for (int j = 0; j < 6; j++)
            _mm512_mask_storeu_ps(J->U + (size_t)(i * 6 + j) * J->ustride + f, k, u[j]);
    }
}

/* The tiles of tile row ty of channel c into V: portable version. */
static void input4_row_c(const wino_job *J, const float *img, int ty, int c, int t0)
{
    for (int tx = 0; tx < J->TW; tx++) {
        float d[6][6], t[6][6], col[6], r[6];
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 6; j++) {
                int y = 4 * ty - J->pad_t + i, x = 4 * tx - 1 + j;
                d[i][j] = pixel(J, img, y, x);
            }
        for (int j = 0; j < 6; j++) {   // B^T d, a column at a time
            for (int i = 0; i < 6; i++)
                col[i] = d[i][j];
            bt4_1d(col, r);
            for (int i = 0; i < 6; i++)
                t[i][j] = r[i];
        }
        float *v = J->V + df_ops_gemm_packed_index(J->C, (int)J->tc, c, t0 + tx);
        for (int i = 0; i < 6; i++) {   // (B^T d) B, a row at a time
            bt4_1d(t[i], r);
            for (int j = 0; j < 6; j++)
                v[(size_t)(i * 6 + j) * J->vsize] = r[j];
        }
    }
}

/* row[s + 4l] for lanes l < 16, zeros outside [0, W): four masked loads,
 * every fourth float of each pair picked out by a permute. */
__attribute__((target("avx512f"))) static inline V16 every4th(const float *row, int s, int W)
{
    const __m512i idx = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    V16 lo = _mm512_permutex2var_ps(load_cols(row, s, W), idx, load_cols(row, s + 16, W));
    V16 hi = _mm512_permutex2var_ps(load_cols(row, s + 32, W), idx, load_cols(row, s + 48, W));
    return _mm512_mask_blend_ps(0xFF00, lo, hi);
}

/* 16 tiles at a time: tile tx+l reads columns 4(tx+l)-1+j, j < 6. */
__attribute__((target("avx512f"))) static void input4_row_avx512(const wino_job *J,
                                                                 const float *img, int ty, int c,
                                                                 int t0)
{
    int W = J->W;
    for (int tx = 0; tx < J->TW; tx += 16) {
        V16 t[6][6], d[6], r[6];
        for (int j = 0; j < 6; j++) {   // B^T d, a column at a time
            for (int i = 0; i < 6; i++) {
                int y = 4 * ty - J->pad_t + i;
                d[i] = y >= 0 && y < J->H ? every4th(img + (size_t)y * W, 4 * tx - 1 + j, W)
                                          : _mm512_setzero_ps();
            }
            bt4_1d_16(d, r);
            for (int i = 0; i < 6; i++)
                t[i][j] = r[i];
        }
        int n = J->TW - tx < 16 ? J->TW - tx : 16;
        for (int i = 0; i < 6; i++) {   // (B^T d) B, a row at a time
            bt4_1d_16(t[i], r);
            for (int j = 0; j < 6; j++)
                store_packed(J, J->V + (size_t)(i * 6 + j) * J->vsize, c, t0 + tx, n, r[j]);
        }
    }
}

/* The 4x4 outputs of the tiles of one tile row, A^T M A: portable version. */
static void output4_row_c(const wino_job *J, const float *m, size_t mstride, float bias, float *img,
                          int ty)
{
    for (int tx = 0; tx < J->TW; tx++) {
        float s[4][6], col[6], y[4];
        for (int j = 0; j < 6; j++) {   // A^T M, a column at a time
            for (int i = 0; i < 6; i++)
                col[i] = m[(size_t)(i * 6 + j) * mstride + tx];
            at4_1d(col, y);
            for (int i = 0; i < 4; i++)
                s[i][j] = y[i];
        }
        for (int i = 0; i < 4 && 4 * ty + i < J->OH; i++) {   // (A^T M) A, a row at a time
            at4_1d(s[i], y);
            for (int j = 0; j < 4; j++)
                if (4 * tx + j < J->W)
                    img[(size_t)(4 * ty + i) * J->W + 4 * tx + j] = y[j] + bias;
        }
    }
}

__attribute__((target("avx512f"))) static void output4_row_avx512(const wino_job *J,
                                                                  const float *m, size_t mstride,
                                                                  float bias, float *img, int ty)
{
    // y[0..3] (lane l: tile l's column j) to 64 columns 4l + j: pairs of
    // floats first, then pairs of pairs
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i plo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i phi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    V16 vb = SET1(bias);
    for (int tx = 0; tx < J->TW; tx += 16) {
        __mmask16 k = J->TW - tx >= 16 ? 0xFFFF : (__mmask16)((1u << (J->TW - tx)) - 1);
        V16 s[4][6], col[6], y[4];
        for (int j = 0; j < 6; j++) {   // A^T M, a column at a time
            for (int i = 0; i < 6; i++)
                col[i] = _mm512_maskz_loadu_ps(k, m + (size_t)(i * 6 + j) * mstride + tx);
            at4_1d_16(col, y);
            for (int i = 0; i < 4; i++)
                s[i][j] = y[i];
        }
        for (int i = 0; i < 4 && 4 * ty + i < J->OH; i++) {   // (A^T M) A, a row at a time
            at4_1d_16(s[i], y);
            for (int j = 0; j < 4; j++)
                y[j] = ADD(y[j], vb);
            __m512d p01[2] = {_mm512_castps_pd(_mm512_permutex2var_ps(y[0], lo, y[1])),
                              _mm512_castps_pd(_mm512_permutex2var_ps(y[0], hi, y[1]))};
            __m512d p23[2] = {_mm512_castps_pd(_mm512_permutex2var_ps(y[2], lo, y[3])),
                              _mm512_castps_pd(_mm512_permutex2var_ps(y[2], hi, y[3]))};
            float *row = img + (size_t)(4 * ty + i) * J->W + 4 * tx;
            for (int q = 0; q < 4; q++) {   // columns 16q.. of the 64
                __m512d x = _mm512_permutex2var_pd(p01[q / 2], q % 2 ? phi : plo, p23[q / 2]);
                _mm512_mask_storeu_ps(row + 16 * q, cols_in(4 * tx + 16 * q, J->W),
                                      _mm512_castpd_ps(x));
            }
        }
    }
}

#undef V16
#undef ADD
#undef SUB
#undef MUL
#undef SET1

/* ------------------------------------------------------------ the passes */

/* The transforms of one tile size, portable and AVX-512 ([df_ops_simd() == 1]). */
struct wino_tile {
    void (*filter_one)(const float *g, float *u);   // u: the nxi values, row-major
    void (*filter_16)(const wino_job *J, size_t f, int n);
    void (*input_row[2])(const wino_job *J, const float *img, int ty, int c, int t0);
    void (*output_row[2])(const wino_job *J, const float *m, size_t mstride, float bias,
                          float *img, int ty);
};
static const wino_tile tile2 = {filter_one, filter_16, {input_row_c, input_row_avx512},
                                {output_row_c, output_row_avx512}};
static const wino_tile tile4 = {filter4_one, filter4_16, {input4_row_c, input4_row_avx512},
                                {output4_row_c, output4_row_avx512}};

/* U[xi] (OC, C) = (G g G^T)[xi] for every filter g of weight (OC, C, 3, 3). */
static void filter_task(void *ctx, int tid, int nt)
{
    wino_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->OC * J->C, 1, tid, nt, &lo, &hi);
    if (df_ops_simd() == 1) {
        for (int f = lo; f < hi; f += 16)
            J->k->filter_16(J, (size_t)f, hi - f < 16 ? hi - f : 16);
        return;
    }
    for (size_t f = (size_t)lo; f < (size_t)hi; f++) {
        float u[36];
        J->k->filter_one(J->weight + f * 9, u);
        for (int xi = 0; xi < J->nxi; xi++)
            J->U[(size_t)xi * J->ustride + f] = u[xi];
    }
}

/* V (nxi, C, tc) for this chunk's tile rows, channels shared among threads. */
static void input_task(void *ctx, int tid, int nt)
{
    wino_job *J = ctx;
    int lo, hi;
    df_ops_split_range(J->C, 1, tid, nt, &lo, &hi);
    for (int c = lo; c < hi; c++)
        for (int r = J->r0; r < J->r1; r++) {
            int b = r / J->TH, ty = r % J->TH, t0 = (r - J->r0) * J->TW;
            const float *img = J->inp + ((size_t)b * J->C + c) * J->H * J->W;
            J->k->input_row[df_ops_simd() == 1](J, img, ty, c, t0);
        }
}

/* Outputs of this chunk's tile rows from M (nxi, OC, tc), output channels
 * shared among threads. */
static void output_task(void *ctx, int tid, int nt)
{
    wino_job *J = ctx;
    size_t mstride = J->mstride;
    int lo, hi;
    df_ops_split_range(J->OC, 1, tid, nt, &lo, &hi);
    for (int oc = lo; oc < hi; oc++)
        for (int r = J->r0; r < J->r1; r++) {
            int b = r / J->TH, ty = r % J->TH;
            float *img = J->out + ((size_t)b * J->OC + oc) * J->OH * J->W;
            const float *m = J->M + oc * J->tc + (size_t)(r - J->r0) * J->TW;
            float bias = J->bias ? J->bias[oc] : 0.0f;
            J->k->output_row[df_ops_simd() == 1](J, m, mstride, bias, img, ty);
        }
}

/* ------------------------------------------------------------------ entry */

/* F(2x2, 3x3) measured against the im2col path on SD shapes (2 threads,
 * interleaved runs; tools/bench-ops has them): 1.5x at 96x96 (320
 * channels), 1.9x at 48x48 (640), 1.9x at 24x24, 1.8x at 16x16 and 1.3x at
 * 12x12 (1280-2560), but 0.9x at 8x8, where the 16 GEMMs have a few dozen
 * columns each. Few channels make the GEMMs short: the direct path.
 * F(4x4, 3x3) against F(2x2, 3x3): 1.46x at 96x96 (320 channels, batch 2),
 * 1.55x at 48x48 (640), 1.39x at 48x48 (1280, batch 1), 1.26-1.40x on the
 * VAE's 96x96 to 384x384 images, but 0.95x at 24x24 (640) and 0.66x at
 * 24x24 (1280), where the tiles are 4 times fewer than F(2x2)'s. */
int df_conv2d_winograd_pays(int C, int OH, int OW, int OC)
{
    if (OH < 12 || OW < 12 || C < 32 || OC < 32)
        return 0;
    return OH >= 40 && OW >= 40 ? 4 : 2;
}

int df_conv2d_winograd(float *out, const float *inp, const float *weight, const float *bias, int B,
                       int C, int H, int W, int OC, int pad_t, int pad_b, int m)
{
    int OH = H - 2 + pad_t + pad_b;
    if (OH <= 0 || (m != 2 && m != 4))
        return -1;
    int nxi = (m + 2) * (m + 2);
    wino_job J = {.out = out, .inp = inp, .weight = weight, .bias = bias, .B = B, .C = C,
                  .H = H, .W = W, .OC = OC, .TH = (OH + m - 1) / m, .TW = (W + m - 1) / m,
                  .m = m, .nxi = nxi, .k = m == 4 ? &tile4 : &tile2, .pad_t = pad_t,
                  .OH = OH};
    int rows = B * J.TH;
    size_t per_row = (size_t)nxi * (C + OC) * J.TW * sizeof(float);
    // at least ~1024 tiles a chunk, whatever the bytes: the GEMMs of a
    // chunk have one column per tile, and a few hundred run far below speed
    // (C=2560 at 24x24 made chunks of 132 tiles: 150 against 240 GFLOP/s)
    int rc = (int)(chunk_bytes / per_row), least = (chunk_min_tiles + J.TW - 1) / J.TW;
    rc = rc < least ? least : rc > rows ? rows : rc;
    // U, then V (its rows padded to whole strips of 64 tiles, as the packed
    // layout has them), then M, in one block
    J.ustride = spaced((size_t)OC * C);
    size_t vmax = spaced((size_t)C * (((size_t)rc * J.TW + 63) / 64 * 64));
    size_t mmax = spaced((size_t)OC * rc * J.TW);
    int pooled;
    float *block = scratch_get(nxi * (J.ustride + vmax + mmax), &pooled);
    int ok = block != NULL;
    J.U = block, J.V = block + nxi * J.ustride, J.M = J.V + nxi * vmax;
    if (ok) {
        int nt = df_ops_threads_for(40.0 * OC * C);
        df_ops_run_parallel(filter_task, &J, nt);
    }
    for (int r0 = 0; ok && r0 < rows; r0 += rc) {
        J.r0 = r0, J.r1 = r0 + rc < rows ? r0 + rc : rows;
        J.tc = (size_t)(J.r1 - J.r0) * J.TW;
        J.vsize = spaced((size_t)C * ((J.tc + 63) / 64 * 64));
        J.mstride = spaced((size_t)OC * J.tc);
        df_ops_run_parallel(input_task, &J, df_ops_threads_for(2.0 * nxi * C * J.tc));
        for (int xi = 0; ok && xi < nxi; xi++)
            ok = df_ops_gemm_packed(OC, (int)J.tc, C, J.U + xi * J.ustride, (size_t)C,
                                    J.V + xi * J.vsize, J.M + xi * J.mstride, J.tc) == 0;
        if (ok)
            df_ops_run_parallel(output_task, &J, df_ops_threads_for(1.5 * nxi * OC * J.tc));
    }
    if (block)
        scratch_put(block, pooled);
    return ok ? 0 : -1;
}
