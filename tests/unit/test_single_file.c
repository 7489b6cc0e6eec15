/* test_single_file.c - single-file checkpoints (lib/models/single_file.c,
 * single_file_model.c), the built-in SD 2.1 configs (sd21_config.c) and the
 * built-in CLIP BPE (clip_bpe.c, df_tokenizer_load_merges).
 *
 * The checkpoint is the fixture pipeline written by build/tools/
 * mk-single-file in the original layout. Checked: every tensor of the file
 * is classified, and the three views together use every byte of every
 * mapped tensor exactly once; each view holds exactly the fixture
 * component's names with its values (F32 without copies); the mapping of
 * known real SD 2.1 names; unknown keys are reported; a missing tensor is
 * named by its checkpoint key; truncated and foreign files and pickle
 * checkpoints fail; the built-in configs have the fixture configs' key sets
 * and the real SD 2.1 values; the built-in tokenizer equals the fixture's
 * vocab.json id for id and encodes alike; the prediction type rule. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline.h"
#include "safetensors.h"
#include "sd21_config.h"
#include "single_file.h"
#include "tokenizer.h"
#include "unet.h"
#include "unit.h"

static const char *fx, *build;
static char tmp[256];

static const char *fxpath(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx, rel);
    return buf[k];
}

/* mk-single-file ARGS -> tmp/NAME; false when it failed. */
static bool make_file(const char *name, const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/tools/mk-single-file' %s '%s/pipeline' '%s/%s'", build, args,
             fx, tmp, name);
    return system(cmd) == 0;
}

static const char *tmppath(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp, name);
    return buf[k];
}

static const df_sf_layout fixture_layout = {.unet_layers_per_block = 2,
                                            .unet_up_attention = 0xe,
                                            .vae_blocks = 4, .text_layers = 2};

/* ---- the mapping of real SD 2.1 names (layers_per_block 2, 4 VAE blocks, 23 text layers) ---- */

static void check_map(const char *file, const char *ours, int n)
{
    static const df_sf_layout real = {2, 0xe, 4, 23};
    df_sf_map m;
    df_sf_kind k = df_sf_map_name(file, &real, &m);
    if (!ours) {
        CHECK_MSG(k == DF_SF_SKIPPED, "%s: kind %d", file, (int)k);
        return;
    }
    CHECK_MSG(k == DF_SF_MAPPED && m.n == n && !strcmp(m.names[0], ours), "%s -> %s (want %s)",
              file, k == DF_SF_MAPPED ? m.names[0] : "(not mapped)", ours);
    /* and back */
    char back[DF_SF_NAME_MAX];
    int part;
    CHECK_MSG(df_sf_file_name(m.comp, ours, &real, back, sizeof back, &part) &&
              !strcmp(back, file), "%s <- %s", back, ours);
}

static void test_real_names(void)
{
    check_map("model.diffusion_model.time_embed.0.weight", "time_embedding.linear_1.weight", 1);
    check_map("model.diffusion_model.time_embed.2.bias", "time_embedding.linear_2.bias", 1);
    check_map("model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight", 1);
    check_map("model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
              "down_blocks.0.resnets.0.norm1.weight", 1);
    check_map("model.diffusion_model.input_blocks.2.1.proj_in.weight",
              "down_blocks.0.attentions.1.proj_in.weight", 1);
    check_map("model.diffusion_model.input_blocks.3.0.op.weight",
              "down_blocks.0.downsamplers.0.conv.weight", 1);
    check_map("model.diffusion_model.input_blocks.4.0.skip_connection.weight",
              "down_blocks.1.resnets.0.conv_shortcut.weight", 1);
    check_map("model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
              "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight", 1);
    check_map("model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
              "down_blocks.3.resnets.1.conv2.weight", 1);
    check_map("model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
              "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight", 1);
    check_map("model.diffusion_model.middle_block.2.emb_layers.1.bias",
              "mid_block.resnets.1.time_emb_proj.bias", 1);
    check_map("model.diffusion_model.output_blocks.2.1.conv.weight",
              "up_blocks.0.upsamplers.0.conv.weight", 1);
    check_map("model.diffusion_model.output_blocks.5.2.conv.bias",
              "up_blocks.1.upsamplers.0.conv.bias", 1);
    check_map("model.diffusion_model.output_blocks.8.1.norm.weight",
              "up_blocks.2.attentions.2.norm.weight", 1);
    check_map("model.diffusion_model.output_blocks.11.0.skip_connection.bias",
              "up_blocks.3.resnets.2.conv_shortcut.bias", 1);
    check_map("model.diffusion_model.out.0.weight", "conv_norm_out.weight", 1);
    check_map("model.diffusion_model.out.2.bias", "conv_out.bias", 1);
    check_map("first_stage_model.encoder.down.0.block.1.conv2.weight",
              "encoder.down_blocks.0.resnets.1.conv2.weight", 1);
    check_map("first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
              "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", 1);
    check_map("first_stage_model.encoder.down.2.downsample.conv.weight",
              "encoder.down_blocks.2.downsamplers.0.conv.weight", 1);
    check_map("first_stage_model.encoder.mid.attn_1.proj_out.weight",
              "encoder.mid_block.attentions.0.to_out.0.weight", 1);
    check_map("first_stage_model.decoder.mid.attn_1.norm.bias",
              "decoder.mid_block.attentions.0.group_norm.bias", 1);
    check_map("first_stage_model.decoder.mid.block_2.norm1.weight",
              "decoder.mid_block.resnets.1.norm1.weight", 1);
    check_map("first_stage_model.decoder.up.3.block.0.conv1.weight",
              "decoder.up_blocks.0.resnets.0.conv1.weight", 1);
    check_map("first_stage_model.decoder.up.1.upsample.conv.weight",
              "decoder.up_blocks.2.upsamplers.0.conv.weight", 1);
    check_map("first_stage_model.decoder.norm_out.weight", "decoder.conv_norm_out.weight", 1);
    check_map("first_stage_model.post_quant_conv.weight", "post_quant_conv.weight", 1);
    check_map("cond_stage_model.model.positional_embedding",
              "text_model.embeddings.position_embedding.weight", 1);
    check_map("cond_stage_model.model.ln_final.bias", "text_model.final_layer_norm.bias", 1);
    check_map("cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight",
              "text_model.encoder.layers.22.self_attn.q_proj.weight", 3);
    check_map("cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.weight",
              "text_model.encoder.layers.0.mlp.fc2.weight", 1);
    check_map("cond_stage_model.model.transformer.resblocks.23.ln_1.weight", NULL, 0);
    check_map("cond_stage_model.model.text_projection", NULL, 0);
    check_map("cond_stage_model.model.logit_scale", NULL, 0);
    check_map("alphas_cumprod", NULL, 0);
    check_map("model_ema.diffusion_modelinput_blocks00weight", NULL, 0);
    /* the VAE's 1x1 attention convs are read as linears, the norms are not */
    df_sf_map m;
    static const df_sf_layout real = {2, 0xe, 4, 23};
    df_sf_map_name("first_stage_model.encoder.mid.attn_1.q.weight", &real, &m);
    CHECK(m.squeeze);
    df_sf_map_name("first_stage_model.encoder.mid.attn_1.q.bias", &real, &m);
    CHECK(!m.squeeze);
    df_sf_map_name("first_stage_model.encoder.mid.attn_1.norm.weight", &real, &m);
    CHECK(!m.squeeze);
    CHECK(df_sf_map_name("model.diffusion_model.input_blocks.1.0.in_layers.1.weight", &real, &m) ==
          DF_SF_UNKNOWN);
    CHECK(df_sf_map_name("model.diffusion_model.input_blocks.01.0.in_layers.0.weight", &real, &m) ==
          DF_SF_UNKNOWN);
    CHECK(df_sf_map_name("first_stage_model.decoder.up.4.block.0.conv1.weight", &real, &m) ==
          DF_SF_UNKNOWN);
    /* the upsampler sits after the attention only where there is one */
    CHECK(df_sf_map_name("model.diffusion_model.output_blocks.2.2.conv.weight", &real, &m) ==
          DF_SF_UNKNOWN);
    CHECK(df_sf_map_name("model.diffusion_model.output_blocks.5.1.conv.weight", &real, &m) ==
          DF_SF_UNKNOWN);
}

/* ---- the fixture as one file ---- */

/* Every byte of every tensor of the file belongs to exactly one entry of
 * the three views, or the tensor is skipped. */
static void test_coverage(void)
{
    df_single_file *sf;
    CHECK_MSG(df_single_file_open(tmppath("sd.safetensors"), &fixture_layout, &sf) == DF_OK, "%s",
              df_last_error());
    if (!sf)
        return;
    size_t total = df_single_file_tensors(sf);
    CHECK(df_single_file_count(sf, DF_SF_UNKNOWN) == 0);
    CHECK(df_single_file_count(sf, DF_SF_MAPPED) + df_single_file_count(sf, DF_SF_SKIPPED) == total);
    /* mk-single-file adds: one text layer (12 tensors), text_projection,
     * logit_scale, betas, alphas_cumprod, model_ema.decay */
    CHECK_MSG(df_single_file_count(sf, DF_SF_SKIPPED) == 17, "%zu skipped",
              df_single_file_count(sf, DF_SF_SKIPPED));
    CHECK(df_single_file_component_count(sf, DF_SF_UNET) == 684);
    CHECK(df_single_file_component_count(sf, DF_SF_VAE) == 244);
    CHECK(df_single_file_component_count(sf, DF_SF_TEXT) == 36 - 2 * 4);   /* q/k/v fused */

    const df_safetensors *file = df_single_file_file(sf);
    size_t fbytes = 0;
    for (size_t i = 0; i < df_st_count(file); i++)
        fbytes += df_st_at(file, i)->nbytes;
    /* byte use count over the file's data, through each view's offsets */
    const char *base = df_st_at(file, 0)->data;
    unsigned char *use = calloc(fbytes, 1);
    static const char *const comp_file[3] = {"pipeline/unet/diffusion_pytorch_model.safetensors",
                                             "pipeline/vae/diffusion_pytorch_model.safetensors",
                                             "pipeline/text_encoder/model.safetensors"};
    for (int c = 0; c < DF_SF_COMPONENTS; c++) {
        df_weights *w;
        CHECK_MSG(df_single_file_weights(sf, (df_sf_component)c, &w) == DF_OK, "%s", df_last_error());
        df_safetensors *ref;
        CHECK(df_st_open(fxpath(comp_file[c]), &ref) == DF_OK);
        const df_safetensors *v = df_weights_file(w);
        CHECK_MSG(df_st_count(v) == df_st_count(ref), "component %d: %zu names, fixture %zu", c,
                  df_st_count(v), df_st_count(ref));
        size_t bad = 0;
        for (size_t i = 0; i < df_st_count(ref); i++) {
            const df_st_tensor *r = df_st_at(ref, i), *t = df_st_find(v, r->name);
            if (!t) {
                bad++;
                continue;
            }
            /* the fixture's shape (VAE attention: linear), its values, no copy */
            df_status st;
            const float *got = df_weights_get(w, r->name, r->ndim, r->shape, &st);
            bad += !got || memcmp(got, r->data, r->nbytes) != 0 || (const void *)got != t->data;
            size_t off = (size_t)((const char *)t->data - base);
            for (size_t b = 0; off + t->nbytes <= fbytes && b < t->nbytes; b++)
                use[off + b]++;
        }
        CHECK_MSG(bad == 0, "component %d: %zu tensors missing, different or copied", c, bad);
        CHECK(df_weights_private_bytes(w) == 0);
        df_st_close(ref);
        df_weights_free(w);
    }
    /* skipped tensors are not used; mapped ones once, every byte */
    df_sf_map m;
    size_t wrong = 0;
    for (size_t i = 0; i < df_st_count(file); i++) {
        const df_st_tensor *t = df_st_at(file, i);
        int want = df_sf_map_name(t->name, &fixture_layout, &m) == DF_SF_MAPPED;
        size_t off = (size_t)((const char *)t->data - base);
        for (size_t b = 0; b < t->nbytes; b++)
            wrong += use[off + b] != want;
    }
    CHECK_MSG(wrong == 0, "%zu bytes used a wrong number of times", wrong);
    free(use);
    df_single_file_free(sf);
}

/* F16: values are the fixture's rounded to half, converted once. */
static void test_f16(void)
{
    df_single_file *sf;
    CHECK_MSG(df_single_file_open(tmppath("sd16.safetensors"), &fixture_layout, &sf) == DF_OK,
              "%s", df_last_error());
    if (!sf)
        return;
    df_weights *w;
    CHECK(df_single_file_weights(sf, DF_SF_TEXT, &w) == DF_OK);
    df_safetensors *ref;
    CHECK(df_st_open(fxpath("pipeline/text_encoder/model.safetensors"), &ref) == DF_OK);
    size_t bad = 0;
    for (size_t i = 0; i < df_st_count(ref); i++) {
        const df_st_tensor *r = df_st_at(ref, i);
        const float *got = df_weights_get(w, r->name, r->ndim, r->shape, NULL);
        float *want;
        df_st_load_f32(ref, r->name, -1, NULL, &want);
        for (size_t k = 0; got && k < r->numel; k++)
            bad += got[k] != df_f16_to_f32(df_f32_to_f16(want[k]));
        bad += !got;
        free(want);
    }
    CHECK_MSG(bad == 0, "%zu values differ from the fixture rounded to F16", bad);
    df_st_close(ref);
    df_weights_free(w);
    df_single_file_free(sf);
}

static void test_errors(void)
{
    df_single_file *sf = NULL;
    /* unknown keys: counted and named, the rest still loads */
    CHECK(make_file("extra.safetensors", "--extra model.diffusion_model.label_emb.0.0.weight "
                    "--extra something_else"));
    CHECK_MSG(df_single_file_open(tmppath("extra.safetensors"), &fixture_layout, &sf) == DF_OK,
              "%s", df_last_error());
    if (sf) {
        CHECK(df_single_file_count(sf, DF_SF_UNKNOWN) == 2);
        const char *a = df_single_file_unknown(sf, 0), *b = df_single_file_unknown(sf, 1);
        CHECK(a && b && ((!strcmp(a, "something_else") && strstr(b, "label_emb")) ||
                         (!strcmp(b, "something_else") && strstr(a, "label_emb"))));
        CHECK(df_single_file_unknown(sf, 2) == NULL);
        df_single_file_free(sf);
    }
    df_pipeline *p = NULL;
    df_pipeline_open_opts o = {.config_dir = fxpath("pipeline"), .prediction = "v"};
    CHECK(df_pipeline_open_model(tmppath("extra.safetensors"), &o, &p) == DF_OK);
    CHECK(p && df_pipeline_notes(p) && strstr(df_pipeline_notes(p), "2 of its") &&
          strstr(df_pipeline_notes(p), "not used"));
    df_pipeline_free(p);

    /* a missing tensor is named by its checkpoint key */
    const char *gone = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight";
    char args[256];
    snprintf(args, sizeof args, "--drop %s", gone);
    CHECK(make_file("drop.safetensors", args));
    sf = NULL;
    CHECK(df_single_file_open(tmppath("drop.safetensors"), &fixture_layout, &sf) == DF_OK);
    if (sf) {
        df_weights *w;
        CHECK(df_single_file_weights(sf, DF_SF_UNET, &w) == DF_OK);
        json_t *cfg = json_load_file(fxpath("pipeline/unet/config.json"), 0, NULL);
        df_unet *u = NULL;
        CHECK(df_unet_load_json(cfg, "unet/config.json", w, &u) == DF_ERR_NOTFOUND && !u);
        CHECK_MSG(strstr(df_last_error(), gone) &&
                  strstr(df_last_error(), "down_blocks.0.resnets.0.norm1.weight"), "%s",
                  df_last_error());
        json_decref(cfg);
        df_single_file_free(sf);
    }
    /* in_proj that does not split in three */
    CHECK(make_file("noqkv.safetensors",
                    "--extra cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias"));
    sf = NULL;
    CHECK(df_single_file_open(tmppath("noqkv.safetensors"), &fixture_layout, &sf) == DF_ERR_SHAPE);
    CHECK(!sf && strstr(df_last_error(), "in_proj_bias"));

    /* truncated: the header promises more than the file holds */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "head -c 100000 '%s' > '%s'", tmppath("sd.safetensors"),
             tmppath("cut.safetensors"));
    CHECK(system(cmd) == 0);
    CHECK(df_single_file_open(tmppath("cut.safetensors"), &fixture_layout, &sf) == DF_ERR_FORMAT);
    CHECK(!sf && strstr(df_last_error(), "cut.safetensors"));
    p = NULL;
    CHECK(df_pipeline_open_model(tmppath("cut.safetensors"), &o, &p) == DF_ERR_FORMAT && !p);

    /* a diffusers component file is not a single-file checkpoint */
    CHECK(df_single_file_open(fxpath("pipeline/unet/diffusion_pytorch_model.safetensors"),
                              &fixture_layout, &sf) == DF_ERR_FORMAT);
    CHECK(!sf && strstr(df_last_error(), "model.diffusion_model.") &&
          strstr(df_last_error(), "first unknown"));

    /* pickle checkpoints are refused, whatever they hold */
    static const char *const pickles[] = {"m.ckpt", "m.pt", "m.pth"};
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tmppath("sd.safetensors"), tmppath(pickles[i]));
        CHECK(system(cmd) == 0);
        CHECK(df_pipeline_open_model(tmppath(pickles[i]), NULL, &p) == DF_ERR_UNSUPPORTED && !p);
        CHECK(strstr(df_last_error(), "pickle") && strstr(df_last_error(), pickles[i]));
    }

    /* the built-in configs do not fit the tiny model: the load says which */
    CHECK(df_pipeline_open_model(tmppath("sd.safetensors"), NULL, &p) == DF_OK);
    if (p) {
        df_pipeline_params pp = {.prompt = "a face", .width = 64, .height = 64, .steps = 1,
                                 .guidance = 7.5f, .batch = 1};
        df_pipeline_output out;
        CHECK(df_pipeline_generate(p, &pp, NULL, &out) == DF_ERR_SHAPE);
        CHECK(df_pipeline_load_failed(p));
        CHECK_MSG(strstr(df_last_error(), "built-in SD 2.1 text_encoder/config.json"), "%s",
                  df_last_error());
        df_pipeline_free(p);
    }
}

/* ---- prediction type ---- */

static void test_prediction(void)
{
    df_sf_model m;
    const char *f = tmppath("sd.safetensors");
    CHECK(df_sf_model_open(f, fxpath("pipeline"), NULL, &m) == DF_OK);
    CHECK(m.prediction && !strcmp(m.prediction, "epsilon") && strstr(m.note, "sample_size 8"));
    CHECK(!strcmp(json_string_value(json_object_get(m.scheduler, "prediction_type")), "epsilon"));
    df_sf_model_free(&m);
    CHECK(df_sf_model_open(f, fxpath("pipeline"), "v", &m) == DF_OK);
    CHECK(!strcmp(m.prediction, "v_prediction") && !m.note[0]);
    df_sf_model_free(&m);
    CHECK(df_sf_model_open(f, fxpath("pipeline"), "epsilon", &m) == DF_OK);
    CHECK(!strcmp(json_string_value(json_object_get(m.scheduler, "prediction_type")), "epsilon"));
    df_sf_model_free(&m);
    CHECK(df_sf_model_open(f, fxpath("pipeline"), "x", &m) == DF_ERR_ARG);
    /* built in: sample_size 96, the 768 px v model */
    CHECK(df_sf_model_open(f, NULL, NULL, &m) == DF_OK);
    CHECK(m.unet_sample_size == 96 && !strcmp(m.prediction, "v_prediction") && !m.note[0]);
    CHECK(m.vae_blocks == 4 && m.unet_in_channels == 4);
    df_sf_model_free(&m);
    CHECK(df_sf_model_open(f, "/nonexistent", NULL, &m) != DF_OK);
}

/* ---- built-in configs ---- */

/* Keys whose values the fixture changed, with the real SD 2.1 values (the
 * fixtures README's table); every other value must equal the fixture's. */
static void check_config(const char *text, const char *fixture, const char *const *keys,
                         const char *const *real, int n)
{
    json_error_t e;
    json_t *got = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    json_t *ref = json_load_file(fxpath(fixture), 0, &e);
    CHECK_MSG(got && ref, "%s: %s", fixture, e.text);
    if (!got || !ref)
        return;
    CHECK_MSG(json_object_size(got) == json_object_size(ref), "%s: %zu keys, fixture %zu", fixture,
              json_object_size(got), json_object_size(ref));
    const char *k;
    json_t *v;
    json_object_foreach(ref, k, v) {
        json_t *g = json_object_get(got, k), *want = v;
        for (int i = 0; i < n; i++)
            if (!strcmp(k, keys[i]))
                want = json_loads(real[i], JSON_DECODE_ANY, &e);
        CHECK_MSG(g && json_equal(g, want), "%s: \"%s\" differs", fixture, k);
        if (want != v)
            json_decref(want);
    }
    json_decref(got);
    json_decref(ref);
}

static void test_configs(void)
{
    static const char *const uk[] = {"attention_head_dim", "block_out_channels",
                                     "cross_attention_dim", "sample_size"};
    static const char *const uv[] = {"[5, 10, 20, 20]", "[320, 640, 1280, 1280]", "1024", "96"};
    check_config(df_sd21_unet_config, "pipeline/unet/config.json", uk, uv, 4);
    static const char *const vk[] = {"block_out_channels", "sample_size"};
    static const char *const vv[] = {"[128, 256, 512, 512]", "768"};
    check_config(df_sd21_vae_config, "pipeline/vae/config.json", vk, vv, 2);
    static const char *const tk[] = {"hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "intermediate_size"};
    static const char *const tv[] = {"1024", "23", "16", "4096"};
    check_config(df_sd21_text_encoder_config, "pipeline/text_encoder/config.json", tk, tv, 4);
    check_config(df_sd21_scheduler_config, "pipeline/scheduler/scheduler_config.json", NULL, NULL, 0);
}

/* ---- built-in tokenizer ---- */

static void test_tokenizer(void)
{
    df_tokenizer *b = NULL, *f = NULL;
    CHECK_MSG(df_tokenizer_load_builtin(&b) == DF_OK, "%s", df_last_error());
    CHECK(df_tokenizer_load(fxpath("pipeline/tokenizer"), &f) == DF_OK);
    if (!b || !f)
        return;
    CHECK(df_tokenizer_id_end(b) == 49408 && df_tokenizer_id_end(f) == 49408);
    CHECK(df_tokenizer_vocab_size(b) == df_tokenizer_vocab_size(f));
    int diff = 0;
    for (int32_t id = 0; id < df_tokenizer_id_end(f); id++) {
        const char *x = df_tokenizer_token(b, id), *y = df_tokenizer_token(f, id);
        diff += !x || !y || strcmp(x, y);
    }
    CHECK_MSG(diff == 0, "%d ids differ from vocab.json", diff);
    CHECK(df_tokenizer_bos_id(b) == 49406 && df_tokenizer_eos_id(b) == 49407);
    CHECK(df_tokenizer_pad_id(b) == 0 && df_tokenizer_max_length(b) == 77);
    /* the fixture's cases encode alike (ids and masks) */
    FILE *cases = fopen(fxpath("refs/tokenizer_cases.jsonl"), "r");
    CHECK(cases != NULL);
    char *line = NULL;
    size_t cap = 0;
    int n = 0, bad = 0;
    while (cases && getline(&line, &cap, cases) > 0) {
        json_t *j = json_loads(line, JSON_ALLOW_NUL, NULL);
        const char *text = json_string_value(json_object_get(j, "text"));
        size_t len = json_string_length(json_object_get(j, "text"));
        int32_t i1[77], i2[77], m1[77], m2[77];
        if (text && df_tokenizer_encode_len(b, text, len, i1, m1, NULL) == DF_OK &&
            df_tokenizer_encode_len(f, text, len, i2, m2, NULL) == DF_OK)
            bad += memcmp(i1, i2, sizeof i1) || memcmp(m1, m2, sizeof m1);
        else
            bad++;
        n++;
        json_decref(j);
    }
    free(line);
    if (cases)
        fclose(cases);
    CHECK_MSG(n >= 300 && bad == 0, "%d of %d cases differ", bad, n);
    df_tokenizer_free(b);
    df_tokenizer_free(f);
    /* merges text that is not CLIP's: a duplicate rank cannot happen, an
     * empty one is refused */
    df_tokenizer *t = NULL;
    CHECK(df_tokenizer_load_merges("#version: 0.2\n", 14, "empty", &t) == DF_ERR_FORMAT && !t);
    CHECK(df_tokenizer_load_merges("#version: 0.2\na b\n", 18, "tiny", &t) == DF_OK);
    if (t) {
        CHECK(df_tokenizer_id_end(t) == 515 && !strcmp(df_tokenizer_token(t, 512), "ab"));
        CHECK(!strcmp(df_tokenizer_token(t, 513), "<|startoftext|>"));
        df_tokenizer_free(t);
    }
}

int main(void)
{
    fx = getenv("DF_FIXTURES");
    build = getenv("DF_BUILD");
    if (!fx)
        fx = "../shared/fixtures";
    if (!build)
        build = "build";
    snprintf(tmp, sizeof tmp, "/tmp/df-test-single-file-XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_real_names();
    test_configs();
    test_tokenizer();
    if (make_file("sd.safetensors", "") && make_file("sd16.safetensors", "--dtype f16")) {
        test_coverage();
        test_f16();
        test_errors();
        test_prediction();
    } else {
        CHECK_MSG(0, "%s/tools/mk-single-file failed", build);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
    UNIT_END();
}
