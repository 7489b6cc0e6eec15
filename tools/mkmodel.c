/* mkmodel.c - writes a Stable Diffusion 2.1 (768-v) diffusers folder with
 * random weights and the real configs, for benchmarks: the structure is what
 * costs time, not the values. Built to build/tools/mkmodel (not a df- tool);
 * used by tests/bench/bench-sd.sh.
 *
 * The configs are the fixture pipeline's (same key sets as the real files)
 * with the sizes changed to the real SD 2.1 values from the fixtures README;
 * tokenizer, scheduler and model_index.json are copied. Tensor names and
 * shapes are derived from the config the way diffusers/transformers build
 * the modules; `--keep-sizes` keeps the fixture's sizes instead, and
 * `--check` then compares every name and shape with the fixture's own files
 * (that is how the derivation is tested: tests/bench/bench-sd.sh runs it).
 * Weights are streamed to disk (the UNet is 3.5 GB in F32), F32 by default,
 * F16 with --f16 (written under the diffusers "fp16" variant name).
 *
 * Usage: mkmodel [--keep-sizes] [--check] [--f16] FIXTURE_PIPELINE OUT_DIR */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"

#define MAXT 1400

typedef struct { char name[160]; int ndim; int64_t shape[4]; } tdesc;
typedef struct { tdesc t[MAXT]; int n; int overflow; } tlist;

static void add(tlist *L, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (L->n == MAXT) {
        L->overflow = 1;
        return;
    }
    tdesc *t = &L->t[L->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * ndim);
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* weight + bias of a linear (out, in) or a norm (c) */
static void linear(tlist *L, const char *p, int64_t out, int64_t in, int bias)
{
    add(L, SHAPE(out, in), "%s.weight", p);
    if (bias)
        add(L, SHAPE(out), "%s.bias", p);
}

static void norm(tlist *L, const char *p, int64_t c)
{
    add(L, SHAPE(c), "%s.weight", p);
    add(L, SHAPE(c), "%s.bias", p);
}

static void conv(tlist *L, const char *p, int64_t out, int64_t in, int64_t k)
{
    add(L, SHAPE(out, in, k, k), "%s.weight", p);
    add(L, SHAPE(out), "%s.bias", p);
}

/* ResnetBlock2D; temb 0 for the VAE's (no time embedding projection). */
static void resnet(tlist *L, const char *p, int64_t in, int64_t out, int64_t temb)
{
    char s[160];
    snprintf(s, sizeof s, "%s.norm1", p), norm(L, s, in);
    snprintf(s, sizeof s, "%s.conv1", p), conv(L, s, out, in, 3);
    if (temb)
        snprintf(s, sizeof s, "%s.time_emb_proj", p), linear(L, s, out, temb, 1);
    snprintf(s, sizeof s, "%s.norm2", p), norm(L, s, out);
    snprintf(s, sizeof s, "%s.conv2", p), conv(L, s, out, out, 3);
    if (in != out)
        snprintf(s, sizeof s, "%s.conv_shortcut", p), conv(L, s, out, in, 1);
}

/* Transformer2DModel with linear projections and one BasicTransformerBlock. */
static void transformer(tlist *L, const char *p, int64_t c, int64_t cross)
{
    char s[200];
    snprintf(s, sizeof s, "%s.norm", p), norm(L, s, c);
    snprintf(s, sizeof s, "%s.proj_in", p), linear(L, s, c, c, 1);
    snprintf(s, sizeof s, "%s.proj_out", p), linear(L, s, c, c, 1);
    for (int n = 1; n <= 3; n++)
        snprintf(s, sizeof s, "%s.transformer_blocks.0.norm%d", p, n), norm(L, s, c);
    for (int a = 1; a <= 2; a++) {
        int64_t kv = a == 1 ? c : cross;
        snprintf(s, sizeof s, "%s.transformer_blocks.0.attn%d.to_q", p, a), linear(L, s, c, c, 0);
        snprintf(s, sizeof s, "%s.transformer_blocks.0.attn%d.to_k", p, a), linear(L, s, c, kv, 0);
        snprintf(s, sizeof s, "%s.transformer_blocks.0.attn%d.to_v", p, a), linear(L, s, c, kv, 0);
        snprintf(s, sizeof s, "%s.transformer_blocks.0.attn%d.to_out.0", p, a), linear(L, s, c, c, 1);
    }
    snprintf(s, sizeof s, "%s.transformer_blocks.0.ff.net.0.proj", p), linear(L, s, 8 * c, c, 1);
    snprintf(s, sizeof s, "%s.transformer_blocks.0.ff.net.2", p), linear(L, s, c, 4 * c, 1);
}

typedef struct { int64_t boc[4], layers, cross, in, out; } unet_cfg;

static void unet_tensors(tlist *L, const unet_cfg *u)
{
    char s[160];
    int64_t c0 = u->boc[0], temb = 4 * c0;
    conv(L, "conv_in", c0, u->in, 3);
    linear(L, "time_embedding.linear_1", temb, c0, 1);
    linear(L, "time_embedding.linear_2", temb, temb, 1);
    int64_t out = c0;
    for (int i = 0; i < 4; i++) {   // CrossAttnDownBlock2D x3, DownBlock2D
        int64_t in = out;
        out = u->boc[i];
        for (int j = 0; j < u->layers; j++) {
            snprintf(s, sizeof s, "down_blocks.%d.resnets.%d", i, j);
            resnet(L, s, j == 0 ? in : out, out, temb);
            if (i < 3)
                snprintf(s, sizeof s, "down_blocks.%d.attentions.%d", i, j),
                    transformer(L, s, out, u->cross);
        }
        if (i < 3)
            snprintf(s, sizeof s, "down_blocks.%d.downsamplers.0.conv", i), conv(L, s, out, out, 3);
    }
    int64_t c3 = u->boc[3];
    resnet(L, "mid_block.resnets.0", c3, c3, temb);
    transformer(L, "mid_block.attentions.0", c3, u->cross);
    resnet(L, "mid_block.resnets.1", c3, c3, temb);
    int64_t rev[4] = {u->boc[3], u->boc[2], u->boc[1], u->boc[0]};
    out = rev[0];
    for (int i = 0; i < 4; i++) {   // UpBlock2D, CrossAttnUpBlock2D x3
        int64_t prev = out, in = rev[i + 1 < 4 ? i + 1 : 3];
        out = rev[i];
        for (int j = 0; j <= u->layers; j++) {
            int64_t skip = j == u->layers ? in : out;
            snprintf(s, sizeof s, "up_blocks.%d.resnets.%d", i, j);
            resnet(L, s, (j == 0 ? prev : out) + skip, out, temb);
            if (i > 0)
                snprintf(s, sizeof s, "up_blocks.%d.attentions.%d", i, j),
                    transformer(L, s, out, u->cross);
        }
        if (i < 3)
            snprintf(s, sizeof s, "up_blocks.%d.upsamplers.0.conv", i), conv(L, s, out, out, 3);
    }
    norm(L, "conv_norm_out", c0);
    conv(L, "conv_out", u->out, c0, 3);
}

typedef struct { int64_t boc[4], layers, latent, in, out; } vae_cfg;

static void vae_mid(tlist *L, const char *p, int64_t c)
{
    char s[160];
    snprintf(s, sizeof s, "%s.resnets.0", p), resnet(L, s, c, c, 0);
    snprintf(s, sizeof s, "%s.attentions.0.group_norm", p), norm(L, s, c);
    const char *proj[] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int k = 0; k < 4; k++)
        snprintf(s, sizeof s, "%s.attentions.0.%s", p, proj[k]), linear(L, s, c, c, 1);
    snprintf(s, sizeof s, "%s.resnets.1", p), resnet(L, s, c, c, 0);
}

static void vae_tensors(tlist *L, const vae_cfg *v)
{
    char s[160];
    int64_t c0 = v->boc[0], c3 = v->boc[3];
    conv(L, "encoder.conv_in", c0, v->in, 3);
    int64_t out = c0;
    for (int i = 0; i < 4; i++) {
        int64_t in = out;
        out = v->boc[i];
        for (int j = 0; j < v->layers; j++)
            snprintf(s, sizeof s, "encoder.down_blocks.%d.resnets.%d", i, j),
                resnet(L, s, j == 0 ? in : out, out, 0);
        if (i < 3)
            snprintf(s, sizeof s, "encoder.down_blocks.%d.downsamplers.0.conv", i),
                conv(L, s, out, out, 3);
    }
    vae_mid(L, "encoder.mid_block", c3);
    norm(L, "encoder.conv_norm_out", c3);
    conv(L, "encoder.conv_out", 2 * v->latent, c3, 3);
    conv(L, "quant_conv", 2 * v->latent, 2 * v->latent, 1);
    conv(L, "post_quant_conv", v->latent, v->latent, 1);
    conv(L, "decoder.conv_in", c3, v->latent, 3);
    vae_mid(L, "decoder.mid_block", c3);
    int64_t rev[4] = {v->boc[3], v->boc[2], v->boc[1], v->boc[0]};
    out = rev[0];
    for (int i = 0; i < 4; i++) {
        int64_t prev = out;
        out = rev[i];
        for (int j = 0; j <= v->layers; j++)
            snprintf(s, sizeof s, "decoder.up_blocks.%d.resnets.%d", i, j),
                resnet(L, s, j == 0 ? prev : out, out, 0);
        if (i < 3)
            snprintf(s, sizeof s, "decoder.up_blocks.%d.upsamplers.0.conv", i),
                conv(L, s, out, out, 3);
    }
    norm(L, "decoder.conv_norm_out", c0);
    conv(L, "decoder.conv_out", v->out, c0, 3);
}

typedef struct { int64_t hidden, layers, inter, vocab, maxpos; } text_cfg;

static void text_tensors(tlist *L, const text_cfg *t)
{
    char s[160];
    int64_t C = t->hidden;
    add(L, SHAPE(t->vocab, C), "text_model.embeddings.token_embedding.weight");
    add(L, SHAPE(t->maxpos, C), "text_model.embeddings.position_embedding.weight");
    for (int i = 0; i < t->layers; i++) {
        const char *proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++)
            snprintf(s, sizeof s, "text_model.encoder.layers.%d.self_attn.%s", i, proj[k]),
                linear(L, s, C, C, 1);
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.layer_norm1", i), norm(L, s, C);
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.layer_norm2", i), norm(L, s, C);
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.mlp.fc1", i), linear(L, s, t->inter, C, 1);
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.mlp.fc2", i), linear(L, s, C, t->inter, 1);
    }
    norm(L, "text_model.final_layer_norm", C);
}

/* ---------------------------------------------------------------- writing */

static uint64_t rng = 0x243F6A8885A308D3ull;

static float urand(void)   // uniform [-1, 1)
{
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (float)(((rng * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

static size_t numel(const tdesc *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* Values: weights uniform with variance 1/fan_in (activations keep their
 * scale through the depth), norm weights 1 + u/10, biases u/50: value =
 * base + scale * u for u uniform in [-1,1). */
static void value_law(const tdesc *t, float *base, float *scale)
{
    const char *n = t->name;
    size_t len = strlen(n);
    *base = 0.0f;
    if (len > 5 && !strcmp(n + len - 5, ".bias")) {
        *scale = 0.02f;
    } else if (t->ndim == 1) {
        *base = 1.0f, *scale = 0.1f;
    } else {
        size_t fan_in = numel(t) / (size_t)t->shape[0];
        if (strstr(n, "embedding.weight") && !strstr(n, "time_"))
            fan_in = 1;   // token and position embeddings: O(1) entries
        *scale = sqrtf(3.0f / (float)fan_in);
    }
}

static int write_st(const tlist *L, const char *path, int f16)
{
    json_t *h = json_object();
    size_t off = 0, esz = f16 ? 2 : 4;
    for (int i = 0; i < L->n; i++) {
        const tdesc *t = &L->t[i];
        json_t *sh = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(sh, json_integer(t->shape[d]));
        size_t bytes = numel(t) * esz;
        json_object_set_new(h, t->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", f16 ? "F16" : "F32",
                                                  "shape", sh, "data_offsets", (json_int_t)off,
                                                  (json_int_t)(off + bytes)));
        off += bytes;
    }
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    FILE *f = fopen(path, "wb");
    if (!hs || !f) {
        fprintf(stderr, "mkmodel: %s: %s\n", path, strerror(errno));
        free(hs);
        if (f)
            fclose(f);
        return -1;
    }
    size_t hl = strlen(hs), padded = (hl + 7) / 8 * 8;
    uint64_t hlen = padded;
    fwrite(&hlen, 8, 1, f);
    fwrite(hs, 1, hl, f);
    for (size_t i = hl; i < padded; i++)
        fputc(' ', f);
    free(hs);
    enum { CH = 1 << 16 };
    static float buf[CH];
    static uint16_t hbuf[CH];
    for (int i = 0; i < L->n; i++) {
        size_t n = numel(&L->t[i]);
        float base, scale;
        value_law(&L->t[i], &base, &scale);
        for (size_t a = 0; a < n; a += CH) {
            size_t m = n - a < CH ? n - a : CH;
            for (size_t j = 0; j < m; j++)
                buf[j] = base + scale * urand();
            if (f16) {
                for (size_t j = 0; j < m; j++)
                    hbuf[j] = df_f32_to_f16(buf[j]);
                fwrite(hbuf, 2, m, f);
            } else {
                fwrite(buf, 4, m, f);
            }
        }
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "mkmodel: %s: write failed\n", path);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------- configs */

static json_t *load_json(const char *dir, const char *file)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    json_error_t e;
    json_t *j = json_load_file(p, 0, &e);
    if (!j)
        fprintf(stderr, "mkmodel: %s: %s\n", p, e.text);
    return j;
}

static int save_json(json_t *j, const char *dir, const char *file)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return json_dump_file(j, p, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

static json_t *int_array(int n, const int64_t *v)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static int64_t geti(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static void get4(json_t *o, const char *k, int64_t *v)
{
    for (int i = 0; i < 4; i++)
        v[i] = json_integer_value(json_array_get(json_object_get(o, k), i));
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    if (!a || !b) {
        fprintf(stderr, "mkmodel: cannot copy %s to %s\n", from, to);
        if (a)
            fclose(a);
        return -1;
    }
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        fwrite(buf, 1, n, b);
    fclose(a);
    return fclose(b) ? -1 : 0;
}

/* Every name and shape of L present in the fixture file and vice versa. */
static int check_against(const tlist *L, const char *path)
{
    df_safetensors *st;
    if (df_st_open(path, &st) != DF_OK) {
        fprintf(stderr, "mkmodel: cannot open %s\n", path);
        return -1;
    }
    int bad = 0;
    for (int i = 0; i < L->n; i++) {
        const df_st_tensor *t = df_st_find(st, L->t[i].name);
        if (!t || df_st_check_shape(t, L->t[i].ndim, L->t[i].shape) != DF_OK) {
            fprintf(stderr, "mkmodel: check: %s %s in %s\n", L->t[i].name,
                    t ? "has another shape" : "is missing", path);
            bad++;
        }
    }
    if ((size_t)L->n != df_st_count(st)) {
        fprintf(stderr, "mkmodel: check: %d tensors derived, %zu in %s\n", L->n, df_st_count(st), path);
        bad++;
    }
    printf("check %s: %d tensors, %s\n", path, L->n, bad ? "MISMATCH" : "names and shapes identical");
    df_st_close(st);
    return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
    int keep = 0, check = 0, f16 = 0, c;
    static const struct option lo[] = {{"keep-sizes", no_argument, 0, 'k'},
                                       {"check", no_argument, 0, 'c'},
                                       {"f16", no_argument, 0, 'f'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    const char *usage = "usage: mkmodel [--keep-sizes] [--check] [--f16] FIXTURE_PIPELINE OUT_DIR\n";
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 'k')
            keep = 1;
        else if (c == 'c')
            check = 1;
        else if (c == 'f')
            f16 = 1;
        else if (c == 'h')
            return fputs(usage, stdout), 0;
        else
            return fputs(usage, stderr), 2;
    }
    if (argc - optind != 2)
        return fputs(usage, stderr), 2;
    const char *src = argv[optind], *dst = argv[optind + 1];
    json_t *uj = load_json(src, "unet/config.json"), *vj = load_json(src, "vae/config.json");
    json_t *tj = load_json(src, "text_encoder/config.json");
    if (!uj || !vj || !tj) {
        json_decref(uj), json_decref(vj), json_decref(tj);
        return 1;
    }
    if (!keep) {   // the real SD 2.1 (768-v) sizes, fixtures README table
        json_object_set_new(uj, "block_out_channels", int_array(4, (int64_t[]){320, 640, 1280, 1280}));
        json_object_set_new(uj, "attention_head_dim", int_array(4, (int64_t[]){5, 10, 20, 20}));
        json_object_set_new(uj, "cross_attention_dim", json_integer(1024));
        json_object_set_new(uj, "sample_size", json_integer(96));
        json_object_set_new(vj, "block_out_channels", int_array(4, (int64_t[]){128, 256, 512, 512}));
        json_object_set_new(vj, "sample_size", json_integer(768));
        json_object_set_new(tj, "hidden_size", json_integer(1024));
        json_object_set_new(tj, "num_hidden_layers", json_integer(23));
        json_object_set_new(tj, "num_attention_heads", json_integer(16));
        json_object_set_new(tj, "intermediate_size", json_integer(4096));
        json_object_set_new(tj, "projection_dim", json_integer(512));
    }
    unet_cfg u = {.layers = geti(uj, "layers_per_block"), .cross = geti(uj, "cross_attention_dim"),
                  .in = geti(uj, "in_channels"), .out = geti(uj, "out_channels")};
    get4(uj, "block_out_channels", u.boc);
    vae_cfg v = {.layers = geti(vj, "layers_per_block"), .latent = geti(vj, "latent_channels"),
                 .in = geti(vj, "in_channels"), .out = geti(vj, "out_channels")};
    get4(vj, "block_out_channels", v.boc);
    text_cfg t = {geti(tj, "hidden_size"), geti(tj, "num_hidden_layers"),
                  geti(tj, "intermediate_size"), geti(tj, "vocab_size"),
                  geti(tj, "max_position_embeddings")};
    static tlist UL, VL, TL;
    unet_tensors(&UL, &u), vae_tensors(&VL, &v), text_tensors(&TL, &t);
    if (UL.overflow || VL.overflow || TL.overflow)
        return fputs("mkmodel: too many tensors\n", stderr), 1;
    if (check) {
        char p[4096];
        int bad = 0;
        snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", src);
        bad |= check_against(&UL, p);
        snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", src);
        bad |= check_against(&VL, p);
        snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", src);
        bad |= check_against(&TL, p);
        json_decref(uj), json_decref(vj), json_decref(tj);
        return bad ? 1 : 0;
    }
    const char *sub[] = {"", "/unet", "/vae", "/text_encoder", "/tokenizer", "/scheduler"};
    char p[4096], q[4096];
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s%s", dst, sub[i]);
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return fprintf(stderr, "mkmodel: %s: %s\n", p, strerror(errno)), 1;
    }
    const char *copies[] = {"model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                            "scheduler/scheduler_config.json"};
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", src, copies[i]);
        snprintf(q, sizeof q, "%s/%s", dst, copies[i]);
        if (copy_file(p, q))
            return 1;
    }
    if (save_json(uj, dst, "unet/config.json") || save_json(vj, dst, "vae/config.json") ||
        save_json(tj, dst, "text_encoder/config.json"))
        return fputs("mkmodel: cannot write configs\n", stderr), 1;
    const char *ext = f16 ? "fp16.safetensors" : "safetensors";
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.%s", dst, ext);
    if (write_st(&UL, p, f16))
        return 1;
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.%s", dst, ext);
    if (write_st(&VL, p, f16))
        return 1;
    snprintf(p, sizeof p, "%s/text_encoder/model.%s", dst, ext);
    if (write_st(&TL, p, f16))
        return 1;
    json_decref(uj), json_decref(vj), json_decref(tj);
    printf("mkmodel: wrote %s (unet %d, vae %d, text encoder %d tensors)\n", dst, UL.n, VL.n, TL.n);
    return 0;
}
