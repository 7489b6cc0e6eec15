/* nn.h - building blocks shared by the UNet and the VAE: reading a diffusers
 * config.json with typed, range-checked getters; binding named weights with
 * shape checks (the first failure names the tensor); and the layers both
 * models use (ResnetBlock2D, strided-conv downsampler, nearest+conv
 * upsampler, single-head spatial self-attention).
 *
 * Layers take their activations from the caller (see each function for which
 * buffers it clobbers), so the models can plan one arena per shape.
 * Tested through the models: tests/check_fixtures/check_unet.c and
 * check_vae.c compare whole forwards with diffusers, tests/unit/test_unet.c
 * and test_vae.c feed bad configs and weight files. */
#ifndef DF_NN_H
#define DF_NN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "weights.h"

/* ---- config.json ---- */

typedef struct {
    json_t *j;
    char path[4096];     /* for messages: ".../unet/config.json" */
} df_nn_cfg;

df_status df_nn_cfg_load(const char *dir, df_nn_cfg *c);
void df_nn_cfg_free(df_nn_cfg *c);
/* Absent or null keys give dflt; required keys pass required = true. Values
 * outside [lo,hi] or of the wrong type are DF_ERR_FORMAT naming the key. */
df_status df_nn_cfg_int(const df_nn_cfg *c, const char *key, bool required, int dflt, int lo,
                        int hi, int *out);
df_status df_nn_cfg_num(const df_nn_cfg *c, const char *key, double dflt, double lo, double hi,
                        double *out);
df_status df_nn_cfg_bool(const df_nn_cfg *c, const char *key, bool dflt, bool *out);
/* A string (absent or null -> dflt, which may be NULL). */
df_status df_nn_cfg_str(const df_nn_cfg *c, const char *key, const char *dflt, const char **out);
/* A list of n ints, or one int meaning "n times that"; absent -> dflt for all
 * (required when dflt_ok is false). */
df_status df_nn_cfg_ints(const df_nn_cfg *c, const char *key, int n, bool dflt_ok, int dflt,
                         int lo, int hi, int *out);
/* A list of at most max strings; *n gets the count (>= 1). */
df_status df_nn_cfg_strs(const df_nn_cfg *c, const char *key, int max, const char **out, int *n);
/* Unsupported feature switches: the key must be absent, null, or equal
 * to the value the code implements (false, 0, 1.0, "default", ...). */
df_status df_nn_cfg_expect_false(const df_nn_cfg *c, const char *key);  /* false or list of false */
df_status df_nn_cfg_expect_null(const df_nn_cfg *c, const char *key);
df_status df_nn_cfg_expect_num(const df_nn_cfg *c, const char *key, double v);
df_status df_nn_cfg_expect_str(const df_nn_cfg *c, const char *key, const char *v);

/* ---- weights ---- */

/* Binds weights by name with shape checks. After the first failure every
 * later get returns NULL and keeps that first message (it names the tensor
 * and the component). When `used` collection is on (at load), the bound
 * names are kept so that df_nn_binder_check_unused can name a tensor of the
 * file that the config does not account for. */
typedef struct {
    df_weights *w;
    const char *component;   /* "unet", "vae" */
    df_status st;
    bool collect;
    char **used;
    size_t nused, capused;
} df_nn_binder;

/* name = printf(fmt, ...); shape given as ndim dims. */
const float *df_nn_get(df_nn_binder *b, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A linear weight that may be stored as (OC,C) or (OC,C,1,1) (older VAE
 * checkpoints), under `name` or, when absent, under `alt` (may be NULL). */
const float *df_nn_get_linear(df_nn_binder *b, int OC, int C, const char *name, const char *alt);
/* Like df_nn_get for a 1-D tensor of n under `name`, else `alt`. */
const float *df_nn_get_vec(df_nn_binder *b, int n, const char *name, const char *alt);
df_status df_nn_binder_check_unused(df_nn_binder *b);
void df_nn_binder_free(df_nn_binder *b);

/* ---- layers ---- */

typedef struct { const float *w, *b; } df_nn_lin;    /* linear or conv weight, bias */
typedef struct { const float *g, *b; } df_nn_norm;   /* norm affine */

/* diffusers ResnetBlock2D (time-embedding-shift "default"). */
typedef struct {
    char pre[128];           /* "down_blocks.0.resnets.1" */
    int cin, cout, temb_dim; /* temb_dim 0: no time embedding (VAE) */
    int groups;
    float eps, out_scale;    /* output_scale_factor */
    df_nn_norm n1, n2;
    df_nn_lin c1, c2, temb, sc;   /* sc.w NULL when cin == cout */
} df_nn_resnet;

void df_nn_resnet_bind(df_nn_binder *b, df_nn_resnet *r);
/* x (B,cin,HW) may be clobbered (its buffer must hold B*max(cin,cout)*HW);
 * out (B,cout,HW) must not alias x; t (B,cout,HW) scratch; temb_act
 * (B,temb_dim) = silu(time embedding) or NULL; tproj (B,cout) scratch. */
void df_nn_resnet_forward(const df_nn_resnet *r, float *x, float *out, float *t,
                          const float *temb_act, float *tproj, int B, int H, int W);

/* 3x3 conv with stride 2: pad 1 all round (UNet, downsample_padding 1) or
 * pad 0 after padding right/bottom by 1 (VAE, downsample_padding 0). */
void df_nn_downsample_size(int pad, int H, int W, int *OH, int *OW);
void df_nn_downsample_forward(const df_nn_lin *conv, int pad, float *out, const float *x, int B,
                              int C, int H, int W);
/* Nearest upsampling to (OH,OW), then 3x3 conv pad 1: x (B,C,H,W) -> out
 * (B,C,OH,OW). Computed in bands of DF_NN_UP_BAND output rows, so the
 * upsampled map is never whole (at 768 px it would be 600 MB): u is scratch
 * of df_nn_upsample_scratch(C,OH,OW) floats. */
#define DF_NN_UP_BAND 64
size_t df_nn_upsample_scratch(int C, int OH, int OW);
void df_nn_upsample_forward(const df_nn_lin *conv, float *out, float *u, const float *x, int B,
                            int C, int H, int W, int OH, int OW);

/* Spatial self-attention (diffusers Attention with group_norm and residual,
 * as in the VAE mid block): x (B,C,HW) += to_out(attn(GN(x))). Scratch: t
 * (B*C*HW), q, k, v, o (HW*C each); images go through one at a time. */
typedef struct {
    int C, heads, groups;
    float eps;
    df_nn_norm gn;
    df_nn_lin q, k, v, o;
} df_nn_spatial_attn;

void df_nn_spatial_attn_bind(df_nn_binder *b, df_nn_spatial_attn *a, const char *pre);
void df_nn_spatial_attn_forward(const df_nn_spatial_attn *a, float *x, float *t, float *q,
                                float *k, float *v, float *o, int B, int HW);

/* Checked size arithmetic: *acc = a * b (and += for add); false on overflow. */
bool df_nn_mul(size_t a, size_t b, size_t *out);
bool df_nn_add(size_t *acc, size_t a);
/* True when all n values are finite. */
bool df_nn_all_finite(const float *x, size_t n);

#endif
