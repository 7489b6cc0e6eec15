/* test_unet.c - lib/models/unet on bad input and on properties the fixture checker
 * does not cover: a config whose channel count does not match the weights
 * (the error names the tensor), layers_per_block too small for the file
 * (the unexpected tensor is named), unsupported or malformed config values,
 * missing and truncated weight files, bad sizes; batch independence at an
 * odd, non-square latent size; and a weight changed through df_weights_mut
 * (how LoRA merges) is used by the next forward, and undoing it restores
 * the output bit for bit. Uses the fixture UNet (DF_FIXTURES). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "unet.h"
#include "unit.h"

static char tmpdir[] = "/tmp/df-test-unet-XXXXXX";
static char unet_dir[1024];

/* tmpdir/NAME/ with config.json = the fixture's with `key` set to `val`
 * (val NULL: unchanged; raw text when raw != NULL) and links to the weights. */
static const char *make_dir(const char *name, const char *key, json_t *val, const char *raw)
{
    static char dir[1200];
    char path[1400], src[1400];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (raw) {
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(raw, f);
            fclose(f);
        }
    } else {
        snprintf(src, sizeof src, "%s/config.json", unet_dir);
        json_t *cfg = json_load_file(src, 0, NULL);
        if (cfg && key)
            json_object_set_new(cfg, key, val);
        if (cfg)
            json_dump_file(cfg, path, JSON_INDENT(1));
        json_decref(cfg);
    }
    static const char *files[] = {"diffusion_pytorch_model.safetensors",
                                  "diffusion_pytorch_model.fp16.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", unet_dir, files[i]);
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (symlink(src, path) != 0 && access(path, F_OK) != 0)
            fprintf(stderr, "symlink %s failed\n", path);
    }
    return dir;
}

/* Load must fail with status want and a message holding `needle`. */
static void expect_load_error(const char *dir, df_status want, const char *needle)
{
    df_unet *u = NULL;
    df_status s = df_unet_load(dir, NULL, &u);
    CHECK_MSG(s == want, "%s: got status %d (%s), want %d", dir, s, df_last_error(), want);
    CHECK_MSG(u == NULL, "%s: model returned on failure", dir);
    CHECK_MSG(strstr(df_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              df_last_error(), needle);
    df_unet_free(u);
}

static void test_config_errors(void)
{
    /* 96 channels in the last block: its first resnet's conv1 is (64,32,3,3) in the file. */
    json_t *boc = json_pack("[i,i,i,i]", 32, 32, 32, 96);
    expect_load_error(make_dir("channels", "block_out_channels", boc, NULL), DF_ERR_SHAPE,
                      "down_blocks.3.resnets.0.conv1.weight");
    /* One resnet per block: the up path's skip channels change first. */
    expect_load_error(make_dir("layers", "layers_per_block", json_integer(1), NULL),
                      DF_ERR_SHAPE, "up_blocks.0.resnets.1.norm1.weight");
    /* No mid block: the file's mid-block tensors are left over. */
    expect_load_error(make_dir("nomid", "mid_block_type", json_null(), NULL), DF_ERR_FORMAT,
                      "unexpected tensor \"mid_block.");
    expect_load_error(make_dir("dual", "dual_cross_attention", json_true(), NULL),
                      DF_ERR_UNSUPPORTED, "dual_cross_attention");
    expect_load_error(make_dir("act", "act_fn", json_string("mish"), NULL), DF_ERR_UNSUPPORTED,
                      "act_fn");
    expect_load_error(make_dir("heads", "attention_head_dim", json_pack("[i,i,i,i]", 3, 2, 2, 4),
                               NULL), DF_ERR_FORMAT, "not divisible by 3 heads");
    expect_load_error(make_dir("types", "down_block_types", json_pack("[s]", "DownBlock2D"), NULL),
                      DF_ERR_FORMAT, "down_block_types");
    expect_load_error(make_dir("proj", "use_linear_projection", json_false(), NULL), DF_ERR_SHAPE,
                      "proj_in.weight");
    expect_load_error(make_dir("badjson", NULL, NULL, "{\"block_out_channels\": [32,"),
                      DF_ERR_FORMAT, "config.json");
    expect_load_error(make_dir("notobj", NULL, NULL, "[1, 2]"), DF_ERR_FORMAT, "not a JSON object");
    expect_load_error(make_dir("neg", "layers_per_block", json_integer(-2), NULL), DF_ERR_FORMAT,
                      "layers_per_block");
}

static void test_file_errors(void)
{
    char dir[1200], path[1400], src[1400];
    /* No weight file at all. */
    snprintf(dir, sizeof dir, "%s/noweights", tmpdir);
    mkdir(dir, 0700);
    snprintf(src, sizeof src, "%s/config.json", unet_dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(symlink(src, path) == 0);
    expect_load_error(dir, DF_ERR_NOTFOUND, "noweights");
    expect_load_error("/nonexistent/unet", DF_ERR_NOTFOUND, "/nonexistent/unet/config.json");
    /* A weight file cut in the middle of its data. */
    snprintf(dir, sizeof dir, "%s/truncated", tmpdir);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(symlink(src, path) == 0);
    snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", unet_dir);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(path, "wb");
    CHECK(in && out);
    char buf[4096];
    for (long done = 0; in && out && done < 100000; done += sizeof buf)
        if (fread(buf, 1, sizeof buf, in) != sizeof buf || fwrite(buf, 1, sizeof buf, out) != sizeof buf)
            break;
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    expect_load_error(dir, DF_ERR_FORMAT, "truncated/diffusion_pytorch_model.safetensors");
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) * (1.0 / (1 << 24)) * 2.0 - 1.0);
    }
}

/* B=2 at 5x7 against each image alone; weight mutation seen by forward. */
static void test_forward_properties(void)
{
    df_unet *u = NULL;
    CHECK_MSG(df_unet_load(unet_dir, NULL, &u) == DF_OK, "%s", df_last_error());
    if (!u)
        return;
    int B = 2, C = df_unet_in_channels(u), h = 5, w = 7, T = 9, D = df_unet_cross_attention_dim(u);
    size_t ns = (size_t)C * h * w, ne = (size_t)T * D, no = (size_t)df_unet_out_channels(u) * h * w;
    float *x = malloc(B * ns * 4), *e = malloc(B * ne * 4), *o2 = malloc(B * no * 4),
          *o1 = malloc(B * no * 4), *o3 = malloc(B * no * 4), t[2] = {981.0f, 17.0f};
    fill(x, B * ns, 1);
    fill(e, B * ne, 2);
    CHECK(df_unet_forward(u, x, t, e, B, h, w, T, o2) == DF_OK);
    for (int b = 0; b < B; b++)
        CHECK(df_unet_forward(u, x + b * ns, t + b, e + b * ne, 1, h, w, T, o1 + b * no) == DF_OK);
    double d = unit_max_abs_diff(o1, o2, B * no);
    CHECK_MSG(d < 1e-5, "batch of 2 vs one by one: max diff %g", d);

    /* Scale one cross-attention output projection as a LoRA merge would. */
    int nd;
    int64_t shape[DF_ST_MAX_DIMS];
    float *wq = df_weights_mut(df_unet_weights(u),
                               "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
                               &nd, shape);
    CHECK(wq != NULL && nd == 2);
    if (wq) {
        size_t n = (size_t)shape[0] * shape[1];
        float *keep = malloc(n * sizeof *keep);
        memcpy(keep, wq, n * sizeof *keep);
        for (size_t i = 0; i < n; i++)
            wq[i] *= 3.0f;
        CHECK(df_unet_forward(u, x, t, e, B, h, w, T, o3) == DF_OK);
        d = unit_max_abs_diff(o3, o2, B * no);
        CHECK_MSG(d > 1e-3, "mutated weight not used: max diff %g", d);
        memcpy(wq, keep, n * sizeof *keep);
        free(keep);
        CHECK(df_unet_forward(u, x, t, e, B, h, w, T, o3) == DF_OK);
        d = unit_max_abs_diff(o3, o2, B * no);
        CHECK_MSG(d == 0, "weight restored but output differs by %g", d);
    }
    CHECK(df_unet_forward(u, x, t, e, 0, h, w, T, o3) == DF_ERR_ARG);
    CHECK(df_unet_forward(u, x, t, e, B, 0, w, T, o3) == DF_ERR_ARG);
    CHECK(df_unet_activation_bytes(u) > 0);
    df_unet_release_activations(u);
    CHECK(df_unet_activation_bytes(u) == 0);
    free(x), free(e), free(o1), free(o2), free(o3);
    df_unet_free(u);
}

/* The CFG batch: items with the same latents and timestep and different
 * text start as one item and are copied before the first cross-attention
 * (unet.c, expand_batch); three such items against each alone, and a batch
 * whose items are the same in everything. */
static void test_shared_prefix(void)
{
    df_unet *u = NULL;
    CHECK_MSG(df_unet_load(unet_dir, NULL, &u) == DF_OK, "%s", df_last_error());
    if (!u)
        return;
    int B = 3, C = df_unet_in_channels(u), h = 16, w = 12, T = 9,
        D = df_unet_cross_attention_dim(u);
    size_t ns = (size_t)C * h * w, ne = (size_t)T * D, no = (size_t)df_unet_out_channels(u) * h * w;
    float *x = malloc(B * ns * 4), *e = malloc(B * ne * 4), *ob = malloc(B * no * 4),
          *o1 = malloc(B * no * 4), t[3] = {501.0f, 501.0f, 501.0f};
    fill(x, ns, 3);
    for (int b = 1; b < B; b++)
        memcpy(x + b * ns, x, ns * sizeof *x);
    fill(e, B * ne, 4);
    CHECK(df_unet_forward(u, x, t, e, B, h, w, T, ob) == DF_OK);
    for (int b = 0; b < B; b++)
        CHECK(df_unet_forward(u, x + b * ns, t + b, e + b * ne, 1, h, w, T, o1 + b * no) == DF_OK);
    double d = unit_max_abs_diff(o1, ob, B * no), apart = unit_max_abs_diff(o1, o1 + no, no);
    CHECK_MSG(d < 1e-5, "shared-prefix batch of 3 vs one by one: max diff %g", d);
    CHECK_MSG(apart > 1e-3, "items with different text came out alike (diff %g)", apart);
    // the same text too: one item computed, copied to the other at the end
    // if no cross-attention comes first; every item equals item 0 alone
    for (int b = 1; b < B; b++)
        memcpy(e + b * ne, e, ne * sizeof *e);
    CHECK(df_unet_forward(u, x, t, e, B, h, w, T, ob) == DF_OK);
    for (int b = 0; b < B; b++) {
        d = unit_max_abs_diff(o1, ob + b * no, no);
        CHECK_MSG(d < 1e-5, "identical items: item %d differs from item 0 alone by %g", b, d);
    }
    free(x), free(e), free(ob), free(o1);
    df_unet_free(u);
}

int main(void)
{
    const char *fx = getenv("DF_FIXTURES");
    if (!fx || access(fx, F_OK) != 0)
        fx = "../shared/fixtures";
    snprintf(unet_dir, sizeof unet_dir, "%s/pipeline/unet", fx);
    CHECK_MSG(access(unet_dir, F_OK) == 0, "fixture UNet %s missing (set DF_FIXTURES)", unet_dir);
    CHECK(mkdtemp(tmpdir) != NULL);
    if (access(unet_dir, F_OK) == 0) {
        test_config_errors();
        test_file_errors();
        test_forward_properties();
        test_shared_prefix();
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    CHECK(system(cmd) == 0);
    UNIT_END();
}
