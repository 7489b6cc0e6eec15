/* mk-single-file.c - writes a diffusers folder's UNet, VAE and text encoder
 * as one checkpoint in the original Stable Diffusion layout, for testing
 * df-sample --model FILE (built to build/tools/mk-single-file, not a df-
 * tool; used by tests/tools/test-df-sample-single-file.sh and
 * tests/unit/test_single_file.c).
 *
 * Each diffusers tensor goes under the name libdf's inverse mapping gives
 * (df_sf_file_name, lib/models/single_file.c); the OpenCLIP q/k/v
 * projections are fused into attn.in_proj_weight/_bias (rows q, k, v) and
 * the VAE mid attention's linears are written as (C,C,1,1) convolutions, as
 * the original modules store them. Like a real SD 2.x file it also holds
 * what a reader must skip: one more text layer than the config uses (the
 * OpenCLIP tower's last, built from layer 0's weights times -1, so that
 * using it would show), text_projection, logit_scale, the DDPM schedule
 * buffers and model_ema.decay.
 *
 * Usage: mk-single-file [--dtype f32|f16|bf16] [--drop NAME]...
 *                       [--extra NAME]... DIFFUSERS_DIR OUT.safetensors
 *   --drop NAME   leave out the checkpoint tensor NAME (a broken file)
 *   --extra NAME  add a 1-element tensor NAME (an unknown key), or replace
 *                 the tensor of that name by one (a wrong shape) */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "single_file.h"

#define MAX_LIST 64

typedef struct {
    char name[DF_SF_NAME_MAX];
    int ndim;
    int64_t shape[4];
    float *data;          /* F32 values, owned */
} out_tensor;

typedef struct {
    out_tensor *t;
    size_t n, cap;
} out_list;

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "mk-single-file: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

static out_tensor *push(out_list *L, const char *name, int ndim, const int64_t *shape, float *data)
{
    for (size_t i = 0; i < L->n; i++)
        if (!strcmp(L->t[i].name, name))
            return &L->t[i];
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 1024;
        if (!(L->t = realloc(L->t, L->cap * sizeof *L->t)))
            die("%s", "out of memory");
    }
    out_tensor *t = &L->t[L->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    if (ndim)   /* a scalar has no shape array */
        memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    return t;
}

static json_t *config(const char *dir, const char *comp)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/config.json", dir, comp);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        die("cannot read %s", path);
    return j;
}

static df_sf_layout layout(const char *dir)
{
    json_t *u = config(dir, "unet"), *v = config(dir, "vae"), *t = config(dir, "text_encoder");
    df_sf_layout lay = {
        .unet_layers_per_block = (int)json_integer_value(json_object_get(u, "layers_per_block")),
        .vae_blocks = (int)json_array_size(json_object_get(v, "block_out_channels")),
        .text_layers = (int)json_integer_value(json_object_get(t, "num_hidden_layers")),
    };
    json_t *types = json_object_get(u, "up_block_types");
    for (size_t i = 0; i < json_array_size(types); i++)
        if (strstr(json_string_value(json_array_get(types, i)), "CrossAttn"))
            lay.unet_up_attention |= 1u << i;
    json_decref(u);
    json_decref(v);
    json_decref(t);
    return lay;
}

static size_t numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

/* Every tensor of one component file, under its checkpoint name. */
static void convert(out_list *L, const char *path, df_sf_component c, const df_sf_layout *lay)
{
    df_safetensors *st;
    if (df_st_open(path, &st) != DF_OK)
        die("%s", df_last_error());
    for (size_t i = 0; i < df_st_count(st); i++) {
        const df_st_tensor *t = df_st_at(st, i);
        char name[DF_SF_NAME_MAX];
        int part;
        if (!df_sf_file_name(c, t->name, lay, name, sizeof name, &part))
            die("no checkpoint name for \"%s\"", t->name);
        float *data;
        if (df_st_load_f32(st, t->name, -1, NULL, &data) != DF_OK)
            die("%s", df_last_error());
        if (part < 0) {
            int64_t shape[4] = {0};
            memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
            int ndim = t->ndim;
            /* The AttnBlock's q, k, v, proj_out are 1x1 convolutions. */
            if (strstr(name, ".mid.attn_1.") && ndim == 2)
                ndim = 4, shape[2] = shape[3] = 1;
            push(L, name, ndim, shape, data);
            continue;
        }
        /* A third of a fused in_proj: (C,...) rows at part * C. */
        int64_t shape[4] = {0};
        memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
        shape[0] *= 3;
        out_tensor *o = push(L, name, t->ndim, shape, NULL);
        if (!o->data && !(o->data = calloc(numel(t->ndim, shape), sizeof(float))))
            die("%s", "out of memory");
        memcpy(o->data + (size_t)part * t->numel, data, t->numel * sizeof(float));
        free(data);
    }
    df_st_close(st);
}

static float *filled(size_t n, float v)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x)
        die("%s", "out of memory");
    for (size_t i = 0; i < n; i++)
        x[i] = v;
    return x;
}

/* What a real SD 2.x file holds besides the three models. */
static void add_extras(out_list *L, const df_sf_layout *lay)
{
    size_t n0 = L->n;
    char prefix[96], name[DF_SF_NAME_MAX];
    snprintf(prefix, sizeof prefix, "cond_stage_model.model.transformer.resblocks.0.");
    int64_t C = 0;
    for (size_t i = 0; i < n0; i++) {
        const out_tensor *t = &L->t[i];
        if (strncmp(t->name, prefix, strlen(prefix)))
            continue;
        size_t n = numel(t->ndim, t->shape);
        float *x = malloc(n * sizeof *x);
        if (!x)
            die("%s", "out of memory");
        for (size_t k = 0; k < n; k++)
            x[k] = -t->data[k];
        snprintf(name, sizeof name, "cond_stage_model.model.transformer.resblocks.%d.%s",
                 lay->text_layers, t->name + strlen(prefix));
        push(L, name, t->ndim, t->shape, x);
        if (!strcmp(t->name + strlen(prefix), "ln_1.weight"))
            C = t->shape[0];
    }
    push(L, "cond_stage_model.model.text_projection", 2, (int64_t[]){C, C},
         filled((size_t)(C * C), 0.01f));
    push(L, "cond_stage_model.model.logit_scale", 0, NULL, filled(1, 4.6052f));
    /* betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 and its product. */
    float *betas = filled(1000, 0), *acp = filled(1000, 0);
    double a = sqrt(0.00085), b = sqrt(0.012), prod = 1;
    for (int i = 0; i < 1000; i++) {
        double s = a + (b - a) * i / 999.0;
        betas[i] = (float)(s * s);
        prod *= 1 - s * s;
        acp[i] = (float)prod;
    }
    push(L, "betas", 1, (int64_t[]){1000}, betas);
    push(L, "alphas_cumprod", 1, (int64_t[]){1000}, acp);
    push(L, "model_ema.decay", 0, NULL, filled(1, 0.9999f));
}

int main(int argc, char **argv)
{
    const char *dtype = "f32";
    const char *drop[MAX_LIST], *extra[MAX_LIST];
    int ndrop = 0, nextra = 0;
    static const struct option longopts[] = {
        {"dtype", required_argument, 0, 'd'}, {"drop", required_argument, 0, 'x'},
        {"extra", required_argument, 0, 'e'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'd')
            dtype = optarg;
        else if (c == 'x' && ndrop < MAX_LIST)
            drop[ndrop++] = optarg;
        else if (c == 'e' && nextra < MAX_LIST)
            extra[nextra++] = optarg;
        else
            goto usage;
    }
    if (argc - optind != 2)
        goto usage;
    df_dtype dt = !strcmp(dtype, "f32") ? DF_DTYPE_F32 : !strcmp(dtype, "f16") ? DF_DTYPE_F16
                  : !strcmp(dtype, "bf16") ? DF_DTYPE_BF16 : DF_DTYPE_COUNT;
    if (dt == DF_DTYPE_COUNT)
        goto usage;
    const char *dir = argv[optind], *out = argv[optind + 1];
    df_sf_layout lay = layout(dir);
    out_list L = {0};
    static const struct { const char *file; df_sf_component c; } comps[] = {
        {"unet/diffusion_pytorch_model.safetensors", DF_SF_UNET},
        {"vae/diffusion_pytorch_model.safetensors", DF_SF_VAE},
        {"text_encoder/model.safetensors", DF_SF_TEXT}};
    for (size_t i = 0; i < 3; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, comps[i].file);
        convert(&L, path, comps[i].c, &lay);
    }
    add_extras(&L, &lay);
    for (int i = 0; i < nextra; i++) {   /* new, or replacing a tensor of that name */
        out_tensor *t = push(&L, extra[i], 1, (int64_t[]){1}, NULL);
        free(t->data);
        t->data = filled(1, 1.0f);
        t->ndim = 1;
        t->shape[0] = 1;
    }
    df_st_writer *w = df_st_writer_new();
    uint16_t **half = calloc(L.n + 1, sizeof *half);
    if (!w || !half)
        die("%s", "out of memory");
    int dropped = 0;
    for (size_t i = 0; i < L.n; i++) {
        out_tensor *t = &L.t[i];
        int skip = 0;
        for (int k = 0; k < ndrop; k++)
            skip |= !strcmp(drop[k], t->name);
        dropped += skip;
        if (skip)
            continue;
        size_t n = numel(t->ndim, t->shape);
        const void *data = t->data;
        if (dt != DF_DTYPE_F32) {
            if (!(half[i] = malloc((n ? n : 1) * sizeof **half)))
                die("%s", "out of memory");
            for (size_t k = 0; k < n; k++)
                half[i][k] = dt == DF_DTYPE_F16 ? df_f32_to_f16(t->data[k])
                                                : df_f32_to_bf16(t->data[k]);
            data = half[i];
        }
        /* The schedule buffers stay F32, as in real half-precision files. */
        df_dtype tdt = strchr(t->name, '.') ? dt : DF_DTYPE_F32;
        if (tdt == DF_DTYPE_F32)
            data = t->data;
        if (df_st_writer_add(w, t->name, tdt, t->ndim, t->shape, data) != DF_OK)
            die("%s", df_last_error());
    }
    if (dropped != ndrop)
        die("%s", "a --drop NAME matched no tensor");
    if (df_st_writer_meta(w, "format", "pt") != DF_OK || df_st_write(w, out) != DF_OK)
        die("%s", df_last_error());
    df_st_writer_free(w);
    for (size_t i = 0; i < L.n; i++) {
        free(L.t[i].data);
        free(half[i]);
    }
    free(half);
    free(L.t);
    return 0;
usage:
    fprintf(stderr, "usage: mk-single-file [--dtype f32|f16|bf16] [--drop NAME]... "
                    "[--extra NAME]... DIFFUSERS_DIR OUT.safetensors\n");
    return 2;
}
