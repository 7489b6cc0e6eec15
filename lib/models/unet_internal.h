/* unet_internal.h - the UNet's structure (blocks, transformers, bound
 * weight pointers), shared by the inference forward (lib/models/unet.c) and the
 * training forward/backward (lib/train/unet_train.c), which walk the same tree.
 * Not part of the public API. */
#ifndef DF_UNET_INTERNAL_H
#define DF_UNET_INTERNAL_H

#include "nn.h"
#include "unet.h"

#define MAX_BLOCKS 8
#define MAX_LAYERS 16          /* resnets per block, transformer blocks per attention */
#define FF_CHUNK 4096          /* feed-forward rows per chunk */

typedef struct {
    df_nn_norm n1, n2, n3;
    df_nn_lin q1, k1, v1, o1;      /* attn1: self-attention */
    df_nn_lin q2, k2, v2, o2;      /* attn2: cross-attention */
    df_nn_lin ff1, ff2;            /* ff.net.0.proj (8C,C), ff.net.2 (C,4C) */
} tblock;

/* Transformer2DModel */
typedef struct {
    char pre[128];
    int C, heads, ntb;
    df_nn_norm gn;
    df_nn_lin pin, pout;
    tblock tb[MAX_LAYERS];
} xformer;

typedef struct {
    int C, nres, has_attn, has_sampler;
    df_nn_resnet res[MAX_LAYERS + 1];
    xformer *att;                  /* nres entries when has_attn */
    df_nn_lin sampler;
} block;

struct df_unet {
    df_weights *w;
    /* config */
    int in_ch, out_ch, sample_size, cross_dim, groups, nblocks, mid, linear_proj;
    int down_pad, flip_sin_to_cos, center_input;
    float eps, freq_shift, mid_scale;
    int ch[MAX_BLOCKS];            /* block_out_channels */
    int temb_dim;                  /* time embedding width, 4 * ch[0] by default */
    block down[MAX_BLOCKS], up[MAX_BLOCKS];
    df_nn_resnet mid_res[2];
    xformer mid_att;
    df_nn_lin conv_in, conv_out, lin1, lin2;
    df_nn_norm norm_out;
    /* activation arena, for the shape below */
    float *arena;
    size_t arena_floats;
    int aB, ah, aw, aT;
};

/* Look every weight pointer up again (see bind_all in unet.c). */
df_status df_unet_bind(df_unet *u);

#endif
