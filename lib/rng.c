/* rng.c - torch's CPU generator (mt19937 + torch's normal sampling), see
 * rng.h. Tested by tests/unit/test_rng.c against torch 1.13 draws in
 * ../shared/rng. */
#include "rng.h"

#include <math.h>

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

/* torch's normal_fill_16: Box-Muller on 16 uniforms, pairing j with j+8, in
 * float (theta computed in double, then rounded to float, as torch does). */
static void normal_fill_16(float *d)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];            /* [0,1) -> (0,1] for the log */
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0f * M_PI * (double)u2);
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
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
