/* test_scheduler.c - lib/models/scheduler: config errors name their cause, the SD
 * 2.1 schedule's known values, step formulas against values computed by hand
 * (in double) on tiny trained_betas schedules, add_noise / get_velocity, and
 * the calling contract (order, sizes, noise source). The full diffusers
 * traces are checked by tests/check-fixtures (refs/schedulers/). */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scheduler.h"
#include "unit.h"

static json_t *cfg(const char *text)
{
    json_t *j = NULL;
    CHECK_MSG(df_scheduler_parse_config(text, &j) == DF_OK, "%s", df_last_error());
    return j;
}

/* create must fail with status st and a message containing needle. */
static void expect_fail(const char *name, const char *text, const char *pred, df_status st,
                        const char *needle)
{
    json_t *c = text ? cfg(text) : NULL;
    df_scheduler *s = (df_scheduler *)1;
    df_status got = df_scheduler_create(name, c, pred, &s);
    CHECK_MSG(got == st, "%s %s: status %d, want %d (%s)", name ? name : "(config)",
              text ? text : "", got, st, df_last_error());
    CHECK(s == NULL);
    CHECK_MSG(strstr(df_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              df_last_error(), needle);
    json_decref(c);
}

static const char *SD21 =
    "{\"_class_name\": \"DDIMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, "
    "\"num_train_timesteps\": 1000, \"prediction_type\": \"v_prediction\", "
    "\"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, "
    "\"trained_betas\": null, \"lambda_min_clipped\": -Infinity}";

static void test_errors(void)
{
    expect_fail("heun", SD21, NULL, DF_ERR_NOTFOUND, "unknown scheduler \"heun\"");
    expect_fail(NULL, "{\"beta_start\": 0.1}", NULL, DF_ERR_FORMAT, "_class_name");
    expect_fail("ddim", "{\"beta_schedule\": \"cosine\"}", NULL, DF_ERR_UNSUPPORTED,
                "beta_schedule \"cosine\"");
    expect_fail("ddim", "{\"num_train_timesteps\": \"1000\"}", NULL, DF_ERR_FORMAT,
                "\"num_train_timesteps\" must be a number");
    expect_fail("ddim", "{\"num_train_timesteps\": 10.5}", NULL, DF_ERR_RANGE,
                "num_train_timesteps");
    expect_fail("euler", "{\"timestep_spacing\": \"sideways\"}", NULL, DF_ERR_UNSUPPORTED,
                "timestep_spacing \"sideways\"");
    expect_fail("ddim", "{\"thresholding\": true}", NULL, DF_ERR_UNSUPPORTED, "thresholding");
    expect_fail("ddim", "{\"clip_sample\": 1}", NULL, DF_ERR_FORMAT, "\"clip_sample\"");
    expect_fail("ddim", SD21, "x0", DF_ERR_UNSUPPORTED, "prediction_type \"x0\"");
    expect_fail("PNDMScheduler", "{\"skip_prk_steps\": false}", NULL, DF_ERR_UNSUPPORTED,
                "skip_prk_steps");
    expect_fail("ddim", "{\"num_train_timesteps\": 2, \"trained_betas\": [0.5]}", NULL,
                DF_ERR_FORMAT, "trained_betas");
    expect_fail("ddim", "{\"num_train_timesteps\": 2, \"trained_betas\": [0.5, 1.5]}", NULL,
                DF_ERR_RANGE, "beta[1]");

    json_t *arr = json_array();
    df_scheduler *s;
    CHECK(df_scheduler_create("ddim", arr, NULL, &s) == DF_ERR_FORMAT);
    json_decref(arr);

    json_t *bad;
    CHECK(df_scheduler_parse_config("{\"a\": ", &bad) == DF_ERR_FORMAT);
    /* bare NaN / Infinity become null; inside strings they stay text */
    CHECK(df_scheduler_parse_config("{\"a\": NaN, \"b\": [-Infinity, Infinity], "
                                    "\"c\": \"NaN \\\" Infinity\"}", &bad) == DF_OK);
    if (bad) {
        CHECK(json_is_null(json_object_get(bad, "a")));
        CHECK(json_is_null(json_array_get(json_object_get(bad, "b"), 1)));
        CHECK(!strcmp(json_string_value(json_object_get(bad, "c")), "NaN \" Infinity"));
        json_decref(bad);
    }
    CHECK(df_scheduler_load_config("/nonexistent/scheduler_config.json", &bad) == DF_ERR_NOTFOUND);
    CHECK(strstr(df_last_error(), "/nonexistent/scheduler_config.json") != NULL);

    /* A model folder whose config has an unknown class: the error names the file. */
    char dir[] = "/tmp/df-test-sched-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char sub[64], path[128];
    snprintf(sub, sizeof sub, "%s/scheduler", dir);
    snprintf(path, sizeof path, "%s/scheduler_config.json", sub);
    CHECK(mkdir(sub, 0700) == 0);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"_class_name\": \"HeunDiscreteScheduler\", \"x\": NaN}", f);
        fclose(f);
    }
    CHECK(df_scheduler_load(dir, NULL, NULL, &s) == DF_ERR_NOTFOUND);
    CHECK(strstr(df_last_error(), path) && strstr(df_last_error(), "HeunDiscreteScheduler"));
    CHECK(df_scheduler_load(dir, "ddim", NULL, &s) == DF_OK);   /* NaN read as null */
    df_scheduler_free(s);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
}

/* SD 2.1's schedule: documented values (betas 0.00085 .. 0.012, DDIM leading
 * + steps_offset 1 gives 951 .. 1, Euler's sigma_max 14.6146). */
static void test_sd21(void)
{
    json_t *c = cfg(SD21);
    df_scheduler *s;
    CHECK(df_scheduler_create(NULL, c, NULL, &s) == DF_OK);
    CHECK(!strcmp(df_scheduler_class_name(s), "DDIMScheduler"));
    CHECK(df_scheduler_prediction(s) == DF_PRED_V);
    CHECK_NEAR(df_scheduler_betas(s)[0], 0.00085, 1e-9);
    CHECK_NEAR(df_scheduler_betas(s)[999], 0.012, 1e-9);
    CHECK_NEAR(df_scheduler_alphas_cumprod(s)[999], 0.004660096, 1e-8);
    CHECK(df_scheduler_set_timesteps(s, 20) == DF_OK);
    CHECK(df_scheduler_count(s) == 20 && df_scheduler_timesteps_are_int(s));
    CHECK(df_scheduler_timestep_int(s, 0) == 951 && df_scheduler_timestep_int(s, 19) == 1);
    CHECK(df_scheduler_init_noise_sigma(s) == 1.0f);
    CHECK(df_scheduler_set_timesteps(s, 0) == DF_ERR_RANGE);
    CHECK(df_scheduler_set_timesteps(s, 1001) == DF_ERR_RANGE);
    df_scheduler_free(s);

    CHECK(df_scheduler_create("euler", c, "epsilon", &s) == DF_OK);
    CHECK(df_scheduler_prediction(s) == DF_PRED_EPSILON);
    CHECK(df_scheduler_set_timesteps(s, 25) == DF_OK);
    CHECK(!df_scheduler_timesteps_are_int(s));
    CHECK(df_scheduler_timestep(s, 0) == 999.0f && df_scheduler_timestep(s, 24) == 0.0f);
    size_t ns;
    const float *sig = df_scheduler_sigmas(s, &ns);
    CHECK(sig && ns == 26 && sig[25] == 0.0f);
    CHECK_NEAR(df_scheduler_init_noise_sigma(s), 14.6146, 1e-4);
    /* scale_model_input divides by sqrt(sigma^2 + 1) */
    float x[2] = {1.0f, -2.0f}, y[2];
    CHECK(df_scheduler_scale_model_input(s, 0, x, y, 2) == DF_OK);
    CHECK_NEAR(y[0], 1.0 / sqrt((double)sig[0] * sig[0] + 1), 1e-6);
    CHECK(df_scheduler_scale_model_input(s, 25, x, y, 2) == DF_ERR_ARG);
    df_scheduler_free(s);

    /* PNDM (skip_prk_steps) evaluates the model once more than steps. */
    CHECK(df_scheduler_create("pndm", c, NULL, &s) == DF_OK);
    CHECK(df_scheduler_set_timesteps(s, 10) == DF_OK);
    CHECK(df_scheduler_count(s) == 11);
    CHECK(df_scheduler_timestep_int(s, 1) == df_scheduler_timestep_int(s, 2));
    df_scheduler_free(s);
    json_decref(c);
}

/* DDIM on betas [0.1, 0.2, 0.3, 0.4] (alphas_cumprod 0.9, 0.72, 0.504, 0.3024),
 * 2 steps leading: timesteps 2, 0. */
static void test_ddim_by_hand(void)
{
    json_t *c = cfg("{\"num_train_timesteps\": 4, \"trained_betas\": [0.1, 0.2, 0.3, 0.4], "
                    "\"set_alpha_to_one\": false, \"clip_sample\": false}");
    df_scheduler *s;
    CHECK(df_scheduler_create("ddim", c, "epsilon", &s) == DF_OK);
    CHECK_NEAR(df_scheduler_alphas_cumprod(s)[3], 0.3024, 1e-7);
    CHECK(df_scheduler_set_timesteps(s, 2) == DF_OK);
    CHECK(df_scheduler_timestep_int(s, 0) == 2 && df_scheduler_timestep_int(s, 1) == 0);
    float x[1] = {1.0f}, e[1] = {0.5f}, out[1];
    CHECK(df_scheduler_step(s, 1, e, x, out, 1, NULL, NULL) == DF_ERR_ARG);   /* out of order */
    CHECK(df_scheduler_step(s, 0, e, x, out, 1, NULL, NULL) == DF_OK);
    double a = 0.504, ap = 0.9;
    double x0 = (1.0 - sqrt(1 - a) * 0.5) / sqrt(a);
    CHECK_NEAR(df_scheduler_pred_original(s)[0], x0, 1e-6);
    CHECK_NEAR(out[0], sqrt(ap) * x0 + sqrt(1 - ap) * 0.5, 1e-6);
    /* last step: previous alpha is alphas_cumprod[0] (set_alpha_to_one false) */
    float x2[1] = {out[0]}, out2[1];
    CHECK(df_scheduler_step(s, 1, e, x2, out2, 2, NULL, NULL) == DF_ERR_SHAPE);
    CHECK(df_scheduler_step(s, 1, e, x2, out2, 1, NULL, NULL) == DF_OK);
    double x0b = (x2[0] - sqrt(1 - 0.9) * 0.5) / sqrt(0.9);
    CHECK_NEAR(out2[0], sqrt(0.9) * x0b + sqrt(1 - 0.9) * 0.5, 1e-6);
    df_scheduler_free(s);

    /* v-prediction and clip_sample: x0 = sqrt(a) x - sqrt(1-a) v, clipped to 0.25 */
    json_object_set_new(c, "clip_sample", json_true());
    json_object_set_new(c, "clip_sample_range", json_real(0.25));
    CHECK(df_scheduler_create("ddim", c, "v_prediction", &s) == DF_OK);
    CHECK(df_scheduler_set_timesteps(s, 2) == DF_OK);
    float xv[2] = {1.0f, -0.1f}, v[2] = {0.5f, 0.0f}, ov[2];
    CHECK(df_scheduler_step(s, 0, v, xv, ov, 2, NULL, NULL) == DF_OK);
    double x00 = fmin(0.25, sqrt(a) * 1.0 - sqrt(1 - a) * 0.5);
    double x01 = fmax(-0.25, sqrt(a) * -0.1);
    CHECK_NEAR(df_scheduler_pred_original(s)[0], x00, 1e-6);
    CHECK_NEAR(df_scheduler_pred_original(s)[1], x01, 1e-6);
    double eps0 = sqrt(a) * 0.5 + sqrt(1 - a) * 1.0;
    CHECK_NEAR(ov[0], sqrt(ap) * x00 + sqrt(1 - ap) * eps0, 1e-6);
    df_scheduler_free(s);
    json_decref(c);
}

static df_status const_noise(void *ctx, float *out, size_t n)
{
    int *calls = ctx;
    (*calls)++;
    for (size_t k = 0; k < n; k++)
        out[k] = 2.0f;
    return DF_OK;
}

/* DDPM draws noise for t > 0 only and needs a source for it. */
static void test_ddpm_noise(void)
{
    json_t *c = cfg("{\"num_train_timesteps\": 4, \"trained_betas\": [0.1, 0.2, 0.3, 0.4], "
                    "\"clip_sample\": false}");
    df_scheduler *s;
    CHECK(df_scheduler_create("ddpm", c, "epsilon", &s) == DF_OK);
    CHECK(df_scheduler_set_timesteps(s, 2) == DF_OK);
    float x[1] = {1.0f}, e[1] = {0.5f}, out[1];
    CHECK(df_scheduler_step(s, 0, e, x, out, 1, NULL, NULL) == DF_ERR_ARG);
    CHECK(strstr(df_last_error(), "noise") != NULL);
    CHECK(df_scheduler_set_timesteps(s, 2) == DF_OK);
    int calls = 0;
    CHECK(df_scheduler_step(s, 0, e, x, out, 1, const_noise, &calls) == DF_OK);
    CHECK(calls == 1);
    /* t = 2, prev 0: a = 0.504, ap = 0.9, alpha_t = a/ap, beta_t = 1 - alpha_t */
    double a = 0.504, ap = 0.9, at = a / ap, bt = 1 - at;
    double x0 = (1.0 - sqrt(1 - a) * 0.5) / sqrt(a);
    double mean = sqrt(ap) * bt / (1 - a) * x0 + sqrt(at) * (1 - ap) / (1 - a) * 1.0;
    double var = (1 - ap) / (1 - a) * bt;
    CHECK_NEAR(out[0], mean + sqrt(var) * 2.0, 1e-6);
    CHECK(df_scheduler_step(s, 1, e, out, out, 1, const_noise, &calls) == DF_OK);
    CHECK(calls == 1);   /* t = 0 draws nothing */
    df_scheduler_free(s);
    json_decref(c);
}

/* DPM-Solver++ with final sigma 0 ends on a first-order step that lands
 * exactly on the data prediction x0 = (x - sigma_t eps) / alpha_t. */
static void test_dpm_final_step(void)
{
    json_t *c = cfg(SD21);
    df_scheduler *s;
    CHECK(df_scheduler_create("dpmpp_2m", c, "epsilon", &s) == DF_OK);
    CHECK(df_scheduler_set_timesteps(s, 5) == DF_OK);
    size_t ns;
    const float *sig = df_scheduler_sigmas(s, &ns);
    CHECK(ns == 6 && sig[5] == 0.0f);
    float x[4] = {1, -1, 0.5f, 2}, e[4] = {0.1f, 0.2f, -0.3f, 0.4f};
    for (int i = 0; i < 5; i++) {
        float before[4];
        memcpy(before, x, sizeof x);
        CHECK(df_scheduler_step(s, i, e, x, x, 4, NULL, NULL) == DF_OK);
        if (i == 4) {
            double alpha = 1 / sqrt((double)sig[4] * sig[4] + 1), sigma = sig[4] * alpha;
            for (int k = 0; k < 4; k++)
                CHECK_NEAR(x[k], (before[k] - sigma * e[k]) / alpha, 1e-5);
        }
    }
    CHECK(df_scheduler_pred_original(s) == NULL);   /* diffusers' DPM step does not return it */
    df_scheduler_free(s);

    /* The SDE variant draws every step and refuses to run without a source. */
    CHECK(df_scheduler_create("dpmpp_2m_sde_karras", c, NULL, &s) == DF_OK);
    CHECK(df_scheduler_set_timesteps(s, 5) == DF_OK);
    CHECK(df_scheduler_step(s, 0, e, x, x, 4, NULL, NULL) == DF_ERR_ARG);
    df_scheduler_free(s);
    json_decref(c);
}

/* add_noise / get_velocity on betas [0.5, 0.75]: alphas_cumprod 0.5, 0.125. */
static void test_forward_process(void)
{
    json_t *c = cfg("{\"num_train_timesteps\": 2, \"trained_betas\": [0.5, 0.75]}");
    df_scheduler *s;
    CHECK(df_scheduler_create("ddpm", c, NULL, &s) == DF_OK);
    float x0[4] = {2, 4, 2, 4}, n[4] = {-1, 1, -1, 1}, out[4];
    int64_t t[2] = {1, 0};
    CHECK(df_scheduler_add_noise(s, x0, n, t, 2, 2, out) == DF_OK);
    CHECK_NEAR(out[0], sqrt(0.125) * 2 - sqrt(0.875), 1e-6);   /* -0.2283077 */
    CHECK_NEAR(out[1], sqrt(0.125) * 4 + sqrt(0.875), 1e-6);
    CHECK_NEAR(out[2], sqrt(0.5) * 2 - sqrt(0.5), 1e-6);
    CHECK(df_scheduler_get_velocity(s, x0, n, t, 2, 2, out) == DF_OK);
    CHECK_NEAR(out[0], -sqrt(0.125) - sqrt(0.875) * 2, 1e-6);  /* -2.2243831 */
    CHECK_NEAR(out[3], sqrt(0.5) - sqrt(0.5) * 4, 1e-6);
    int64_t bad[2] = {2, 0};
    CHECK(df_scheduler_add_noise(s, x0, n, bad, 2, 2, out) == DF_ERR_RANGE);
    CHECK(df_scheduler_get_velocity(s, x0, n, bad, 2, 2, out) == DF_ERR_RANGE);
    df_scheduler_free(s);
    json_decref(c);
}

/* Every short name builds from the SD 2.1 config and runs a few steps. */
static void test_all_names(void)
{
    json_t *c = cfg(SD21);
    for (const char *const *nm = df_scheduler_names(); *nm; nm++) {
        df_scheduler *s;
        CHECK_MSG(df_scheduler_create(*nm, c, NULL, &s) == DF_OK, "%s: %s", *nm, df_last_error());
        CHECK(df_scheduler_set_timesteps(s, 7) == DF_OK);
        float x[8], in[8], e[8];
        for (int k = 0; k < 8; k++)
            x[k] = (float)k - 3.5f;
        int calls = 0;
        for (int i = 0; i < df_scheduler_count(s); i++) {
            CHECK(df_scheduler_scale_model_input(s, i, x, in, 8) == DF_OK);
            for (int k = 0; k < 8; k++)
                e[k] = 0.5f * in[k];
            CHECK_MSG(df_scheduler_step(s, i, e, x, x, 8, const_noise, &calls) == DF_OK, "%s step "
                      "%d: %s", *nm, i, df_last_error());
        }
        for (int k = 0; k < 8; k++)
            CHECK_MSG(isfinite(x[k]) && fabsf(x[k]) < 10, "%s: x[%d] = %g", *nm, k, x[k]);
        df_scheduler_free(s);
    }
    json_decref(c);
}

/* img2img's begin index and the pipeline's add_noise: values computed with
 * diffusers 0.27.2 (SD 2.1 config, 10 steps, set_begin_index(4) where the
 * class has it; add_noise(x0, noise, timesteps[4:5])). */
static void test_add_noise_at(void)
{
    static const struct { const char *name; float want[2]; } cases[] = {
        {"ddim", {1.11367154f, -0.910945177f}},
        {"euler", {2.45016241f, -1.83504868f}},
        {"dpmpp_2m", {1.11665094f, -0.777398348f}},
        {"unipc", {1.11665094f, -0.777398348f}},
        {"pndm", {1.1165005f, -0.774697542f}},
    };
    json_t *c = cfg(SD21);
    const float x0[2] = {0.5f, -1.25f}, noise[2] = {1.0f, -0.3f};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        df_scheduler *s;
        float out[2];
        CHECK(df_scheduler_create(cases[k].name, c, NULL, &s) == DF_OK);
        CHECK(df_scheduler_add_noise_at(s, 0, x0, noise, 2, out) == DF_ERR_RANGE);   /* no schedule */
        CHECK(df_scheduler_set_timesteps(s, 10) == DF_OK);
        CHECK(df_scheduler_set_begin_index(s, 4) == DF_OK);
        CHECK(df_scheduler_add_noise_at(s, 4, x0, noise, 2, out) == DF_OK);
        CHECK_MSG(fabsf(out[0] - cases[k].want[0]) <= 2e-6f && fabsf(out[1] - cases[k].want[1]) <= 2e-6f,
                  "%s: %.9g %.9g", cases[k].name, out[0], out[1]);
        CHECK(df_scheduler_add_noise_at(s, df_scheduler_count(s), x0, noise, 2, out) == DF_ERR_RANGE);
        CHECK(df_scheduler_set_begin_index(s, df_scheduler_count(s)) == DF_ERR_RANGE);
        CHECK(df_scheduler_set_begin_index(s, -1) == DF_ERR_RANGE);
        df_scheduler_free(s);
    }
    json_decref(c);
}

/* Four steps from begin index 4 of 10 with model output 0.25 x + (0.1, -0.2):
 * PNDM's counter, UniPC's corrector and DPM's lower-order start count from
 * the begin index, as diffusers 0.27.2 gives (its values below). */
static void test_begin_index_steps(void)
{
    static const struct { const char *name; float want[2]; } cases[] = {
        {"pndm", {0.381341815f, -0.975676179f}},
        {"unipc", {0.368647426f, -0.950982451f}},
        {"dpmpp_2m", {0.364476532f, -0.940500259f}},
    };
    json_t *c = cfg(SD21);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        df_scheduler *s;
        float x[2] = {0.5f, -1.25f}, mo[2];
        CHECK(df_scheduler_create(cases[k].name, c, NULL, &s) == DF_OK);
        CHECK(df_scheduler_set_timesteps(s, 10) == DF_OK);
        CHECK(df_scheduler_set_begin_index(s, 4) == DF_OK);
        CHECK(df_scheduler_step(s, 0, x, x, mo, 2, NULL, NULL) == DF_ERR_ARG);   /* not the begin */
        for (int i = 4; i < 8; i++) {
            mo[0] = 0.25f * x[0] + 0.1f;
            mo[1] = 0.25f * x[1] + -0.2f;
            CHECK(df_scheduler_step(s, i, mo, x, x, 2, NULL, NULL) == DF_OK);
        }
        CHECK_MSG(fabsf(x[0] - cases[k].want[0]) <= 2e-6f && fabsf(x[1] - cases[k].want[1]) <= 2e-6f,
                  "%s: %.9g %.9g", cases[k].name, x[0], x[1]);
        CHECK(df_scheduler_set_begin_index(s, 5) == DF_ERR_ARG);   /* after steps */
        df_scheduler_free(s);
    }
    json_decref(c);
}

int main(void)
{
    test_errors();
    test_sd21();
    test_ddim_by_hand();
    test_ddpm_noise();
    test_dpm_final_step();
    test_forward_process();
    test_all_names();
    test_add_noise_at();
    test_begin_index_steps();
    UNIT_END();
}
