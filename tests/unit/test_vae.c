/* test_vae.c - lib/models/vae on bad input and on what the fixture checker does not
 * cover: a config whose channel count does not match the weights (the error
 * names the tensor), unsupported block types, a missing weight file; a
 * weight file in the pre-0.14 attention naming (query/key/value/proj_attn,
 * with (C,C,1,1) shapes on the encoder side) decodes and encodes exactly as
 * the current naming; batch independence on a non-square image; sizes too
 * small for the downsamplers. Uses the fixture VAE (DF_FIXTURES). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "unit.h"
#include "vae.h"

static char tmpdir[] = "/tmp/df-test-vae-XXXXXX";
static char vae_dir[1024];

/* tmpdir/NAME with the fixture config (key set to val unless NULL) and the
 * weight file linked (or none when link_weights is 0). */
static const char *make_dir(const char *name, const char *key, json_t *val, int link_weights)
{
    static char dir[1200];
    char path[1400], src[1400];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    mkdir(dir, 0700);
    snprintf(src, sizeof src, "%s/config.json", vae_dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(src, 0, NULL);
    if (cfg && key)
        json_object_set_new(cfg, key, val);
    CHECK(cfg && json_dump_file(cfg, path, JSON_INDENT(1)) == 0);
    json_decref(cfg);
    if (link_weights) {
        snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", vae_dir);
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
        CHECK(symlink(src, path) == 0);
    }
    return dir;
}

static void expect_load_error(const char *dir, df_status want, const char *needle)
{
    df_vae *v = NULL;
    df_status s = df_vae_load(dir, NULL, &v);
    CHECK_MSG(s == want, "%s: got status %d (%s), want %d", dir, s, df_last_error(), want);
    CHECK(v == NULL);
    CHECK_MSG(strstr(df_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              df_last_error(), needle);
    df_vae_free(v);
}

static void test_errors(void)
{
    expect_load_error(make_dir("channels", "block_out_channels", json_pack("[i,i,i,i]", 32, 32, 64, 96), 1),
                      DF_ERR_SHAPE, "encoder.down_blocks.3.resnets.0.conv1.weight");
    expect_load_error(make_dir("latent", "latent_channels", json_integer(8), 1), DF_ERR_SHAPE,
                      "encoder.conv_out.weight");
    expect_load_error(make_dir("types", "up_block_types",
                               json_pack("[s,s,s,s]", "UpDecoderBlock2D", "UpDecoderBlock2D",
                                         "AttnUpDecoderBlock2D", "UpDecoderBlock2D"), 1),
                      DF_ERR_UNSUPPORTED, "AttnUpDecoderBlock2D");
    expect_load_error(make_dir("noattn", "mid_block_add_attention", json_false(), 1),
                      DF_ERR_FORMAT, "unexpected tensor \"");
    expect_load_error(make_dir("noweights", NULL, NULL, 0), DF_ERR_NOTFOUND, "noweights");
    expect_load_error(make_dir("sf", "scaling_factor", json_string("x"), 1), DF_ERR_FORMAT,
                      "scaling_factor");
}

/* Rewrite the fixture weights with the old attention names. */
static const char *write_old_names(void)
{
    static char dir[1200];
    char path[1400], src[1400];
    snprintf(dir, sizeof dir, "%s/oldnames", tmpdir);
    make_dir("oldnames", NULL, NULL, 0);
    snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", vae_dir);
    df_safetensors *st = NULL;
    CHECK(df_st_open(src, &st) == DF_OK);
    if (!st)
        return dir;
    df_st_writer *w = df_st_writer_new();
    static const char *from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    char names[64][256];
    int nn = 0;
    for (size_t i = 0; i < df_st_count(st); i++) {
        const df_st_tensor *t = df_st_at(st, i);
        const char *name = t->name;
        int64_t shape[4] = {t->shape[0], t->shape[1], 1, 1};
        int ndim = t->ndim;
        for (int k = 0; k < 4 && nn < 64; k++) {
            const char *p = strstr(name, from[k]);
            if (p && strstr(name, "mid_block.attentions.0")) {
                snprintf(names[nn], sizeof names[nn], "%.*s%s%s", (int)(p - name), name, to[k],
                         p + strlen(from[k]));
                name = names[nn++];
                if (ndim == 2 && !strncmp(name, "encoder.", 8))
                    ndim = 4;     /* the (C,C,1,1) form of some converted checkpoints */
                break;
            }
        }
        CHECK(df_st_writer_add(w, name, t->dtype, ndim, ndim != t->ndim ? shape : t->shape, t->data) ==
              DF_OK);
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    CHECK_MSG(df_st_write(w, path) == DF_OK, "%s", df_last_error());
    CHECK(nn == 16);
    df_st_writer_free(w);
    df_st_close(st);
    return dir;
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) * (1.0 / (1 << 24)) * 2.0 - 1.0);
    }
}

static void test_forward(void)
{
    df_vae *v = NULL, *old = NULL;
    CHECK_MSG(df_vae_load(vae_dir, NULL, &v) == DF_OK, "%s", df_last_error());
    CHECK_MSG(df_vae_load(write_old_names(), NULL, &old) == DF_OK, "%s", df_last_error());
    if (!v || !old)
        goto out;
    int B = 2, H = 24, W = 40, h, w, L = df_vae_latent_channels(v);
    df_vae_latent_size(v, H, W, &h, &w);
    CHECK(h == 3 && w == 5);
    size_t ni = (size_t)3 * H * W, nm = (size_t)2 * L * h * w, nl = (size_t)L * h * w;
    float *img = malloc(B * ni * 4), *m1 = malloc(B * nm * 4), *m2 = malloc(B * nm * 4),
          *d1 = malloc(B * ni * 4), *d2 = malloc(B * ni * 4), *lat = malloc(B * nl * 4);
    fill(img, B * ni, 5);
    fill(lat, B * nl, 6);
    CHECK(df_vae_encode(v, img, B, H, W, m1) == DF_OK);
    CHECK(df_vae_encode(old, img, B, H, W, m2) == DF_OK);
    CHECK_MSG(unit_max_abs_diff(m1, m2, B * nm) == 0, "old names: encoder differs");
    CHECK(df_vae_decode(v, lat, B, h, w, d1) == DF_OK);
    CHECK(df_vae_decode(old, lat, B, h, w, d2) == DF_OK);
    CHECK_MSG(unit_max_abs_diff(d1, d2, B * ni) == 0, "old names: decoder differs");
    /* second image alone, through an arena sized for two */
    CHECK(df_vae_decode(v, lat + nl, 1, h, w, d2) == DF_OK);
    double d = unit_max_abs_diff(d1 + ni, d2, ni);
    CHECK_MSG(d < 1e-6, "batch vs single decode differ by %g", d);
    CHECK(df_vae_encode(v, img, B, 1, 1, m2) == DF_ERR_ARG);
    CHECK(df_vae_decode(v, lat, 0, h, w, d2) == DF_ERR_ARG);
    CHECK(df_vae_peak_activation_bytes(v) > 0);
    CHECK_NEAR(df_vae_scaling_factor(v), 0.18215f, 0);
    free(img), free(m1), free(m2), free(d1), free(d2), free(lat);
out:
    df_vae_free(v);
    df_vae_free(old);
}

int main(void)
{
    const char *fx = getenv("DF_FIXTURES");
    if (!fx || access(fx, F_OK) != 0)
        fx = "../shared/fixtures";
    snprintf(vae_dir, sizeof vae_dir, "%s/pipeline/vae", fx);
    CHECK_MSG(access(vae_dir, F_OK) == 0, "fixture VAE %s missing (set DF_FIXTURES)", vae_dir);
    CHECK(mkdtemp(tmpdir) != NULL);
    if (access(vae_dir, F_OK) == 0) {
        test_errors();
        test_forward();
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    CHECK(system(cmd) == 0);
    UNIT_END();
}
