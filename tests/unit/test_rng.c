/* test_rng.c - lib/base/rng against torch: the draws in ../shared/rng
 * (torch.randn with a seeded CPU generator, torch 1.13: scalar path below 16
 * elements, the vectorised path above, tails, 64-bit seeds, and a second
 * draw continuing the first's stream), the values the rng README quotes, and
 * the C++ standard's check value for mt19937.
 * The reference directory is $DF_FIXTURES/../rng, else ../shared/rng. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "safetensors.h"
#include "unit.h"

static const char *rng_dir(void)
{
    static char buf[4096];
    const char *fx = getenv("DF_FIXTURES");
    if (fx && *fx) {
        snprintf(buf, sizeof buf, "%s/../rng", fx);
        return buf;
    }
    return "../shared/rng";
}

/* Every case of torch_cpu_randn.json; a case whose note says it continues
 * ("second draw from the same generator") keeps the previous generator. */
static void check_torch_draws(void)
{
    char jpath[4200], spath[4200];
    snprintf(jpath, sizeof jpath, "%s/torch_cpu_randn.json", rng_dir());
    snprintf(spath, sizeof spath, "%s/torch_cpu_randn.safetensors", rng_dir());
    json_error_t je;
    json_t *j = json_load_file(jpath, 0, &je);
    CHECK_MSG(j != NULL, "%s: %s", jpath, je.text);
    df_safetensors *st = NULL;
    CHECK_MSG(df_st_open(spath, &st) == DF_OK, "%s", df_last_error());
    if (!j || !st)
        return;
    json_t *cases = json_object_get(j, "cases");
    CHECK(json_array_size(cases) >= 10);
    df_rng r;
    size_t i;
    json_t *c;
    int continued = 0;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "tensor"));
        const char *note = json_string_value(json_object_get(c, "note"));
        uint64_t seed = (uint64_t)json_integer_value(json_object_get(c, "seed"));
        const df_st_tensor *t = name ? df_st_find(st, name) : NULL;
        CHECK_MSG(t != NULL, "case %zu: tensor %s missing", i, name ? name : "?");
        if (!t)
            continue;
        float *ref = malloc(t->numel * sizeof(float)), *got = malloc(t->numel * sizeof(float));
        CHECK(df_st_to_f32(t, ref) == DF_OK);
        bool cont = note && strstr(note, "same generator");
        continued += cont;
        if (!cont)
            df_rng_seed(&r, seed);
        df_rng_randn(&r, got, t->numel);
        double d = unit_max_abs_diff(got, ref, t->numel);
        size_t diff = 0;
        for (size_t k = 0; k < t->numel; k++)
            diff += got[k] != ref[k];
        /* Bit-identical: same engine, same uniforms, same polynomials. */
        CHECK_MSG(diff == 0, "%s (seed %llu, %zu values): max diff %g, %zu differ", name,
                  (unsigned long long)seed, t->numel, d, diff);
        fprintf(stderr, "%-14s n=%-6zu max|diff| %.3g, %zu of %zu not bit-identical\n", name,
                t->numel, d, diff, t->numel);
        free(ref);
        free(got);
    }
    CHECK(continued >= 1);
    df_st_close(st);
    json_decref(j);
}

int main(void)
{
    /* C++11 [rand.predef]: the 10000th output of default-seeded mt19937. */
    df_rng r;
    df_rng_seed(&r, 5489);
    uint32_t v = 0;
    for (int k = 0; k < 10000; k++)
        v = df_rng_u32(&r);
    CHECK(v == 4123659995u);

    /* torch.randn(3, generator=manual_seed(0)) = 1.5410, -0.2934, -2.1788 */
    float x[3];
    df_rng_seed(&r, 0);
    df_rng_randn(&r, x, 3);
    CHECK_NEAR(x[0], 1.5410, 1e-4);
    CHECK_NEAR(x[1], -0.2934, 1e-4);
    CHECK_NEAR(x[2], -2.1788, 1e-4);

    /* Seeds agree modulo 2^32 in the state (torch seeds mt from uint32). */
    float a[20], b[20];
    df_rng_seed(&r, 7);
    df_rng_randn(&r, a, 20);
    df_rng_seed(&r, 7 + (UINT64_C(1) << 32));
    df_rng_randn(&r, b, 20);
    CHECK(memcmp(a, b, sizeof a) == 0);

    /* The noise callback draws like df_rng_randn and refuses no generator. */
    df_rng_seed(&r, 7);
    CHECK(df_rng_noise_fn(&r, b, 20) == DF_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(df_rng_noise_fn(NULL, b, 20) == DF_ERR_ARG);

    check_torch_draws();
    UNIT_END();
}
