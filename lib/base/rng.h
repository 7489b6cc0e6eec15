/* rng.h - torch's CPU generator: torch.randn(shape, generator=
 * torch.Generator("cpu").manual_seed(seed), dtype=torch.float32), so that a
 * seed gives the same initial latents (and per-step noise) as diffusers with
 * a CPU generator.
 *
 * The engine is mt19937 seeded with the low 32 bits of the seed (torch keeps
 * the 64-bit seed but initialises the state from uint32). randn takes one of
 * torch's two normal paths by tensor size:
 *   n >= 16: fill with uniform floats (24-bit), then Box-Muller in blocks of
 *            16 pairing element j with j+8; a tail that is not a multiple of
 *            16 redraws 16 uniforms for the last 16 elements and transforms
 *            them again (torch's normal_fill, with the Cephes log/sincos
 *            polynomials of its AVX2 kernel, so draws are bit-identical);
 *   n <  16: one double normal per element from two 53-bit uniform doubles,
 *            the sine half cached in the generator for the next draw.
 * Tested by tests/unit/test_rng.c against ../shared/rng (torch 1.13 draws). */
#ifndef DF_RNG_H
#define DF_RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct {
    uint32_t mt[624];
    int index;                 /* next state word to temper; 624 = regenerate */
    uint64_t seed;
    bool has_next_normal;      /* torch's cached double normal (scalar path) */
    double next_normal;
} df_rng;

/* torch.Generator("cpu").manual_seed(seed). */
void df_rng_seed(df_rng *r, uint64_t seed);

/* Next raw 32-bit output of the engine (torch's generator->random()). */
uint32_t df_rng_u32(df_rng *r);

/* torch.randn(n, generator=r) for float32 (the whole tensor in one call, as
 * diffusers' randn_tensor does with one generator). */
void df_rng_randn(df_rng *r, float *out, size_t n);

/* Adapter with the scheduler's noise-callback signature (ctx is a df_rng *). */
df_status df_rng_noise_fn(void *ctx, float *out, size_t n);

#endif
