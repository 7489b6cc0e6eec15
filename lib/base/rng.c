/* rng.c - torch's CPU generator (mt19937 + torch's normal sampling), see
 * rng.h. Tested by tests/unit/test_rng.c against torch 1.13 draws in
 * ../shared/rng. */
#include "rng.h"

#include <math.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

void df_rng_seed(df_rng *r, uint64_t seed)
{
    /* torch's at::mt19937(uint64 seed) initialises from the low 32 bits. */
    r->seed = seed;
    r->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < MT_N; j++)
        r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + (uint32_t)j;
    r->index = MT_N;
    r->has_next_normal = false;
    r->next_normal = 0;
}

static void mt_regenerate(df_rng *r)
{
    uint32_t *s = r->mt;
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    r->index = 0;
}

uint32_t df_rng_u32(df_rng *r)
{
    if (r->index >= MT_N)
        mt_regenerate(r);
    uint32_t y = r->mt[r->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits from one 32-bit draw. */
static float uniform_f32(df_rng *r)
{
    return (float)(df_rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): 53 bits of random64(), whose high
 * word is the first 32-bit draw. */
static double uniform_f64(df_rng *r)
{
    uint64_t hi = df_rng_u32(r), lo = df_rng_u32(r);
    uint64_t v = (hi << 32) | lo;
    return (double)(v & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1) with torch's cached second value. */
static double normal_f64(df_rng *r)
{
    if (r->has_next_normal) {
        r->has_next_normal = false;
        return r->next_normal;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double radius = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    r->next_normal = radius * sin(theta);
    r->has_next_normal = true;
    return radius * cos(theta);
}

/* torch 1.13 transforms blocks of 16 uniforms with AVX2 code (normal_fill_16_AVX2)
 * whose log and sincos are the Cephes single-precision polynomials of
 * avx_mathfun.h, compiled with fused multiply-adds. libm's logf/sinf/cosf
 * would differ from them by an ulp in ~40% of the values, so the same
 * polynomials and the same fusions are evaluated here, one lane at a time;
 * the result is bit-identical to torch on every reference draw. */

static float bits_to_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Natural log for x in (0, 1]: x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
 * log(m) by a degree-9 polynomial, e * ln 2 split in two parts. */
static float cephes_logf(float x)
{
    static const float p[9] = {7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                               -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                               2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
    if (x < bits_to_f(0x00800000u))
        x = bits_to_f(0x00800000u);                    /* smallest normal */
    int32_t ex = (int32_t)(f_to_bits(x) >> 23) - 0x7f;
    x = bits_to_f((f_to_bits(x) & ~0x7f800000u) | f_to_bits(0.5f));   /* mantissa in [0.5, 1) */
    float e = (float)ex + 1.0f;
    bool small = x < 0.707106781186547524f;
    float add = small ? x : 0.0f;
    x = x - 1.0f;
    e = e - (small ? 1.0f : 0.0f);
    x = x + add;
    float z = x * x, y = p[0];
    for (int k = 1; k < 9; k++)
        y = fmaf(y, x, p[k]);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = y - z * 0.5f;
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sin and cos for x >= 0: reduce by multiples of pi/4 (three-part pi/4),
 * then the Cephes sine and cosine polynomials on [-pi/4, pi/4]. */
static void cephes_sincosf(float x, float *s, float *c)
{
    int32_t j = (int32_t)(x * 1.27323954473516f);      /* 4/pi, truncated */
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    bool sin_poly = (j & 2) == 0;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = 2.443315711809948e-5f;
    yc = fmaf(yc, z, -1.388731625493765e-3f);
    yc = fmaf(yc, z, 4.166664568298827e-2f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = -1.9515295891e-4f;
    ys = fmaf(ys, z, 8.3321608736e-3f);
    ys = fmaf(ys, z, -1.6666654611e-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    *s = bits_to_f(f_to_bits(sin_poly ? ys : yc) ^ sign_sin);
    *c = bits_to_f(f_to_bits(sin_poly ? yc : ys) ^ sign_cos);
}

/* Box-Muller on 16 uniforms, pairing j with j+8 (theta = float(2 pi) * u2). */
static void normal_fill_16(float *d)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];            /* [0,1) -> (0,1] for the log */
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * u2, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

void df_rng_randn(df_rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
    for (size_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i);
    if (n % 16 != 0) {
        /* torch redraws the last 16 and transforms them again. */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(r);
        normal_fill_16(tail);
    }
}

df_status df_rng_noise_fn(void *ctx, float *out, size_t n)
{
    if (!ctx)
        return df_fail(DF_ERR_ARG, "rng noise: no generator");
    df_rng_randn((df_rng *)ctx, out, n);
    return DF_OK;
}
