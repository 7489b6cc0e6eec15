/* fuzz_nn_config.c - model config.json parsing (lib/models/nn.c's
 * df_nn_cfg_* getters and the UNet, VAE and CLIP text encoder loaders that
 * build a model's structure from them). The first input byte picks the
 * component (0 unet, 1 vae, 2 text_encoder, by value mod 3); the rest is
 * config.json, written to a temp component folder beside a link to the
 * fixture model's weights ($DF_FIXTURES/pipeline/<component>), so that a
 * config the parser accepts is checked against real weights. Every getter
 * is also called on the same text with the keys the loaders use. */
#include <sys/stat.h>

#include "clip.h"
#include "fuzz_util.h"
#include "nn.h"
#include "status.h"
#include "unet.h"
#include "vae.h"

static const char *comp[3] = {"unet", "vae", "text_encoder"};
static const char *wfile[3] = {"diffusion_pytorch_model.safetensors",
                               "diffusion_pytorch_model.safetensors", "model.safetensors"};
static char dirs[3][512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    for (int i = 0; i < 3; i++) {
        char src[4096], dst[1024], sub[64];
        snprintf(dirs[i], sizeof dirs[i], "%s/%s", fuzz_tmpdir(), comp[i]);
        mkdir(dirs[i], 0700);
        snprintf(sub, sizeof sub, "pipeline/%s/%s", comp[i], wfile[i]);
        snprintf(src, sizeof src, "%s", fuzz_fixture(sub));
        if (access(src, R_OK) != 0) {
            fprintf(stderr, "fuzz_nn_config: %s: not readable (set DF_FIXTURES)\n", src);
            exit(1);
        }
        snprintf(dst, sizeof dst, "%s/%s", dirs[i], wfile[i]);
        if (symlink(src, dst) != 0) {
            perror(dst);
            exit(1);
        }
    }
    return 0;
}

static void getters(const df_nn_cfg *c)
{
    static const char *keys[] = {"block_out_channels", "layers_per_block", "attention_head_dim",
                                 "down_block_types", "up_block_types", "in_channels",
                                 "norm_eps", "act_fn", "flip_sin_to_cos", "_class_name",
                                 "num_attention_heads", "transformer_layers_per_block",
                                 "hidden_size", "nope"};
    int iv[8];
    double d;
    bool b;
    const char *s, *ss[8];
    int n;
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        (void)df_nn_cfg_int(c, keys[k], k & 1, 3, -5, 1 << 20, iv);
        (void)df_nn_cfg_num(c, keys[k], 0.5, -1e9, 1e9, &d);
        (void)df_nn_cfg_bool(c, keys[k], false, &b);
        (void)df_nn_cfg_str(c, keys[k], NULL, &s);
        (void)df_nn_cfg_ints(c, keys[k], 4, k & 1, 2, 0, 4096, iv);
        (void)df_nn_cfg_strs(c, keys[k], 8, ss, &n);
        (void)df_nn_cfg_expect_false(c, keys[k]);
        (void)df_nn_cfg_expect_null(c, keys[k]);
        (void)df_nn_cfg_expect_num(c, keys[k], 1.0);
        (void)df_nn_cfg_expect_str(c, keys[k], "default");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int i = data[0] % 3;
    char name[600];
    snprintf(name, sizeof name, "%s/config.json", comp[i]);
    fuzz_write_file(name, data + 1, size - 1);
    df_nn_cfg c;
    if (df_nn_cfg_load(dirs[i], &c) == DF_OK) {
        getters(&c);
        df_nn_cfg_free(&c);
    }
    if (i == 0) {
        df_unet *u = NULL;
        if (df_unet_load(dirs[i], NULL, &u) == DF_OK)
            df_unet_free(u);
    } else if (i == 1) {
        df_vae *v = NULL;
        if (df_vae_load(dirs[i], NULL, &v) == DF_OK)
            df_vae_free(v);
    } else {
        df_clip *t = NULL;
        if (df_clip_load(dirs[i], NULL, &t) == DF_OK)
            df_clip_free(t);
    }
    return 0;
}
