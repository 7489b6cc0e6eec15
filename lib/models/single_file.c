/* single_file.c - the original SD checkpoint layout under diffusers names
 * (see single_file.h).
 *
 * The mapping follows the two module trees. ldm's UNetModel numbers its
 * blocks flat: input_blocks[0] is conv_in, then per level layers_per_block
 * entries [ResBlock, SpatialTransformer?] and, except at the last level, one
 * [Downsample] (its conv is "op"); middle_block is [ResBlock,
 * SpatialTransformer, ResBlock]; output_blocks has layers_per_block + 1
 * entries per level, the last one ending in an Upsample. A ResBlock's
 * in_layers/emb_layers/out_layers Sequentials hold GroupNorm, SiLU, conv,
 * ... at fixed positions, which diffusers names norm1/conv1/time_emb_proj/
 * norm2/conv2; the SpatialTransformer's names are diffusers' already. The
 * VAE's Encoder/Decoder keep down[i]/up[i] lists, the decoder's up[i] being
 * built from the lowest resolution up, i.e. diffusers' up_blocks[n-1-i].
 * Renames of sub-layers are tables read in both directions, so the mapping
 * and its inverse (used to name a missing tensor, and by the test
 * converter) cannot drift apart. Tested by tests/unit/test_single_file.c. */
#include "single_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *file, *ours;     /* the same sub-layer in the file and in diffusers */
} pair;

#define N_OF(a) (sizeof(a) / sizeof *(a))

/* ldm ResBlock Sequentials: in_layers = [GroupNorm, SiLU, conv], emb_layers
 * = [SiLU, Linear], out_layers = [GroupNorm, SiLU, Dropout, conv]. */
static const pair unet_resnet[] = {
    {"in_layers.0.", "norm1."},      {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},     {"skip_connection.", "conv_shortcut."},
};
/* SpatialTransformer: diffusers kept the names. */
static const pair unet_attn[] = {
    {"norm.", "norm."}, {"proj_in.", "proj_in."}, {"proj_out.", "proj_out."},
    {"transformer_blocks.", "transformer_blocks."},
};
static const pair vae_resnet[] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."}, {"conv2.", "conv2."},
    {"nin_shortcut.", "conv_shortcut."},
};
/* AttnBlock: GroupNorm and four 1x1 convolutions. */
static const pair vae_attn[] = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};
/* OpenCLIP ResidualAttentionBlock (in_proj is handled apart). */
static const pair text_layer[] = {
    {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."}, {"attn.out_proj.", "self_attn.out_proj."},
    {"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."},
};

/* DDPM/LatentDiffusion buffers and bookkeeping saved beside the modules. */
static const char *const schedule_buffers[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights", "logvar", "scale_factor",
};

#define UNET_P "model.diffusion_model."
#define VAE_P "first_stage_model."
#define CLIP_P "cond_stage_model.model."
#define HFCLIP_P "cond_stage_model.transformer."

static bool eat(const char **s, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(*s, prefix, n))
        return false;
    *s += n;
    return true;
}

/* A decimal index followed by '.', at most 4 digits (no model has more). */
static bool eat_index(const char **s, int *v)
{
    const char *p = *s;
    int x = 0, n = 0;
    while (*p >= '0' && *p <= '9' && n < 5)
        x = x * 10 + (*p++ - '0'), n++;
    if (n == 0 || n > 4 || (n > 1 && **s == '0') || *p != '.')
        return false;
    *v = x;
    *s = p + 1;
    return true;
}

static bool is_param(const char *s)
{
    return !strcmp(s, "weight") || !strcmp(s, "bias");
}

/* rest = <from sub-layer><weight|bias> -> out = <to sub-layer><same>, with
 * from/to the file or our column of tab. *hit gets the table row. */
static bool swap(const char *rest, const pair *tab, size_t n, bool to_ours, bool any_tail,
                 char *out, size_t cap, int *hit)
{
    for (size_t i = 0; i < n; i++) {
        const char *from = to_ours ? tab[i].file : tab[i].ours;
        const char *to = to_ours ? tab[i].ours : tab[i].file;
        const char *p = rest;
        if (!eat(&p, from) || !(any_tail ? *p != '\0' : is_param(p)))
            continue;
        int k = snprintf(out, cap, "%s%s", to, p);
        if (k < 0 || (size_t)k >= cap)
            return false;
        if (hit)
            *hit = (int)i;
        return true;
    }
    return false;
}

static bool setf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool setf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return k >= 0 && (size_t)k < cap;
}

/* ---- file -> diffusers ---- */

static df_sf_kind mapped(df_sf_map *m, df_sf_component c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static df_sf_kind mapped(df_sf_map *m, df_sf_component c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(m->names[0], sizeof m->names[0], fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof m->names[0])
        return m->kind = DF_SF_UNKNOWN;
    m->comp = c;
    m->n = 1;
    return m->kind = DF_SF_MAPPED;
}

static df_sf_kind skipped(df_sf_map *m, const char *why)
{
    m->why = why;
    return m->kind = DF_SF_SKIPPED;
}

/* Each parser below tries its patterns in turn on the same string: every
 * attempt starts again from s0 (TRY), so a pattern that matched a prefix
 * and then failed leaves nothing consumed for the next one. */
#define TRY(prefix) (s = s0, eat(&s, prefix))

static df_sf_kind map_unet_blocks(const char *s0, const df_sf_layout *lay, df_sf_map *m)
{
    const int L = lay->unet_layers_per_block;
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int n, k;
    if (TRY("input_blocks.") && eat_index(&s, &n) && eat_index(&s, &k)) {
        if (n == 0)
            return k == 0 && is_param(s) ? mapped(m, DF_SF_UNET, "conv_in.%s", s) : DF_SF_UNKNOWN;
        int level = (n - 1) / (L + 1), r = (n - 1) % (L + 1);
        if (r == L)   /* the level's Downsample */
            return k == 0 && eat(&s, "op.") && is_param(s)
                       ? mapped(m, DF_SF_UNET, "down_blocks.%d.downsamplers.0.conv.%s", level, s)
                       : DF_SF_UNKNOWN;
        if (k == 0 && swap(s, unet_resnet, N_OF(unet_resnet), true, false, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "down_blocks.%d.resnets.%d.%s", level, r, sub);
        if (k == 1 && swap(s, unet_attn, N_OF(unet_attn), true, true, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "down_blocks.%d.attentions.%d.%s", level, r, sub);
        return DF_SF_UNKNOWN;
    }
    if (TRY("middle_block.") && eat_index(&s, &k)) {
        if ((k == 0 || k == 2) &&
            swap(s, unet_resnet, N_OF(unet_resnet), true, false, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "mid_block.resnets.%d.%s", k / 2, sub);
        if (k == 1 && swap(s, unet_attn, N_OF(unet_attn), true, true, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "mid_block.attentions.0.%s", sub);
        return DF_SF_UNKNOWN;
    }
    if (TRY("output_blocks.") && eat_index(&s, &n) && eat_index(&s, &k)) {
        int level = n / (L + 1), r = n % (L + 1);
        if (k == 0 && swap(s, unet_resnet, N_OF(unet_resnet), true, false, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "up_blocks.%d.resnets.%d.%s", level, r, sub);
        /* The Upsample is the block's last module: .1, or .2 after an attention. */
        int up = level < 32 && (lay->unet_up_attention >> level & 1) ? 2 : 1;
        if (k == up && r == L && eat(&s, "conv.") && is_param(s))
            return mapped(m, DF_SF_UNET, "up_blocks.%d.upsamplers.0.conv.%s", level, s);
        if (k == 1 && swap(s, unet_attn, N_OF(unet_attn), true, true, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_UNET, "up_blocks.%d.attentions.%d.%s", level, r, sub);
    }
    return DF_SF_UNKNOWN;
}

static df_sf_kind map_unet(const char *s0, const df_sf_layout *lay, df_sf_map *m)
{
    static const pair top[] = {
        {"time_embed.0.", "time_embedding.linear_1."}, {"time_embed.2.", "time_embedding.linear_2."},
        {"out.0.", "conv_norm_out."}, {"out.2.", "conv_out."},
    };
    char sub[DF_SF_NAME_MAX];
    if (swap(s0, top, N_OF(top), true, false, sub, sizeof sub, NULL))
        return mapped(m, DF_SF_UNET, "%s", sub);
    return map_unet_blocks(s0, lay, m);
}

/* encoder./decoder. mid: block_1, attn_1, block_2. */
static df_sf_kind map_vae_mid(const char *side, const char *s0, df_sf_map *m)
{
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int hit;
    if (TRY("block_1.") && swap(s, vae_resnet, N_OF(vae_resnet), true, false, sub, sizeof sub, NULL))
        return mapped(m, DF_SF_VAE, "%s.mid_block.resnets.0.%s", side, sub);
    if (TRY("block_2.") && swap(s, vae_resnet, N_OF(vae_resnet), true, false, sub, sizeof sub, NULL))
        return mapped(m, DF_SF_VAE, "%s.mid_block.resnets.1.%s", side, sub);
    if (TRY("attn_1.") && swap(s, vae_attn, N_OF(vae_attn), true, false, sub, sizeof sub, &hit)) {
        m->squeeze = hit > 0 && !strcmp(s + strlen(vae_attn[hit].file), "weight");
        return mapped(m, DF_SF_VAE, "%s.mid_block.attentions.0.%s", side, sub);
    }
    return DF_SF_UNKNOWN;
}

/* After "encoder." or "decoder.". */
static df_sf_kind map_vae_side(const char *side, const char *s0, const df_sf_layout *lay,
                               df_sf_map *m)
{
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int i, j;
    bool enc = side[0] == 'e';
    if (((TRY("conv_in.") && is_param(s)) || (TRY("conv_out.") && is_param(s))))
        return mapped(m, DF_SF_VAE, "%s.%s", side, s0);
    if (TRY("norm_out.") && is_param(s))
        return mapped(m, DF_SF_VAE, "%s.conv_norm_out.%s", side, s);
    if (TRY("mid."))
        return map_vae_mid(side, s, m);
    if (enc && TRY("down.") && eat_index(&s, &i)) {
        const char *r = s;
        if (eat(&s, "block.") && eat_index(&s, &j) &&
            swap(s, vae_resnet, N_OF(vae_resnet), true, false, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_VAE, "encoder.down_blocks.%d.resnets.%d.%s", i, j, sub);
        s = r;
        if (eat(&s, "downsample.conv.") && is_param(s))
            return mapped(m, DF_SF_VAE, "encoder.down_blocks.%d.downsamplers.0.conv.%s", i, s);
        return DF_SF_UNKNOWN;
    }
    if (!enc && TRY("up.") && eat_index(&s, &i) && i < lay->vae_blocks) {
        int u = lay->vae_blocks - 1 - i;   /* up[i] is built from the lowest resolution */
        const char *r = s;
        if (eat(&s, "block.") && eat_index(&s, &j) &&
            swap(s, vae_resnet, N_OF(vae_resnet), true, false, sub, sizeof sub, NULL))
            return mapped(m, DF_SF_VAE, "decoder.up_blocks.%d.resnets.%d.%s", u, j, sub);
        s = r;
        if (eat(&s, "upsample.conv.") && is_param(s))
            return mapped(m, DF_SF_VAE, "decoder.up_blocks.%d.upsamplers.0.conv.%s", u, s);
    }
    return DF_SF_UNKNOWN;
}

static df_sf_kind map_vae(const char *s0, const df_sf_layout *lay, df_sf_map *m)
{
    const char *s;
    if ((TRY("quant_conv.") && is_param(s)) || (TRY("post_quant_conv.") && is_param(s)))
        return mapped(m, DF_SF_VAE, "%s", s0);
    if (TRY("encoder."))
        return map_vae_side("encoder", s, lay, m);
    if (TRY("decoder."))
        return map_vae_side("decoder", s, lay, m);
    return DF_SF_UNKNOWN;
}

static df_sf_kind map_openclip(const char *s0, const df_sf_layout *lay, df_sf_map *m)
{
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int i;
    if (!strcmp(s0, "token_embedding.weight"))
        return mapped(m, DF_SF_TEXT, "text_model.embeddings.token_embedding.weight");
    if (!strcmp(s0, "positional_embedding"))
        return mapped(m, DF_SF_TEXT, "text_model.embeddings.position_embedding.weight");
    if (TRY("ln_final.") && is_param(s))
        return mapped(m, DF_SF_TEXT, "text_model.final_layer_norm.%s", s);
    if (!strcmp(s0, "text_projection") || !strcmp(s0, "logit_scale"))
        return skipped(m, "CLIP's contrastive head, unused by SD");
    if (!TRY("transformer.resblocks.") || !eat_index(&s, &i))
        return DF_SF_UNKNOWN;
    if (i >= lay->text_layers)   /* SD 2.x takes the penultimate layer's output */
        return skipped(m, "text layer after the last one SD uses");
    const char *r = s;
    if (eat(&s, "attn.in_proj_") && is_param(s)) {
        static const char qkv[3] = {'q', 'k', 'v'};
        for (int p = 0; p < 3; p++)
            if (!setf(m->names[p], sizeof m->names[p],
                      "text_model.encoder.layers.%d.self_attn.%c_proj.%s", i, qkv[p], s))
                return m->kind = DF_SF_UNKNOWN;
        m->comp = DF_SF_TEXT;
        m->n = 3;
        return m->kind = DF_SF_MAPPED;
    }
    if (swap(r, text_layer, N_OF(text_layer), true, false, sub, sizeof sub, NULL))
        return mapped(m, DF_SF_TEXT, "text_model.encoder.layers.%d.%s", i, sub);
    return DF_SF_UNKNOWN;
}

df_sf_kind df_sf_map_name(const char *name, const df_sf_layout *lay, df_sf_map *m)
{
    memset(m, 0, sizeof *m);
    /* No real key comes near this (the longest SD 2.x one has 84 bytes); the
     * bound keeps both directions of the mapping within DF_SF_NAME_MAX. */
    if (strlen(name) > DF_SF_NAME_MAX - 64)
        return DF_SF_UNKNOWN;
    const char *s0 = name, *s;
    if (TRY(UNET_P))
        return map_unet(s, lay, m);
    if (TRY(VAE_P))
        return map_vae(s, lay, m);
    if (TRY(CLIP_P))
        return map_openclip(s, lay, m);
    if (TRY(HFCLIP_P)) {   /* a transformers CLIPTextModel saved inside the file */
        const char *t = s;
        int i;
        if (!strcmp(s, "text_model.embeddings.position_ids"))
            return skipped(m, "position ids buffer (positions are 0..76)");
        if (eat(&t, "text_model.encoder.layers.") && eat_index(&t, &i) && i >= lay->text_layers)
            return skipped(m, "text layer after the last one SD uses");
        return strncmp(s, "text_model.", 11) ? DF_SF_UNKNOWN : mapped(m, DF_SF_TEXT, "%s", s);
    }
    if (TRY("model_ema."))
        return skipped(m, "EMA copy of the UNet (the file's main weights are used)");
    for (size_t i = 0; i < N_OF(schedule_buffers); i++)
        if (!strcmp(name, schedule_buffers[i]))
            return skipped(m, "training schedule buffer (the scheduler config is used)");
    return DF_SF_UNKNOWN;
}

/* ---- diffusers -> file ---- */

/* down_blocks.l. / up_blocks.l. (s0 after the index). */
static bool inv_unet_block(bool down, int l, const char *s0, const df_sf_layout *lay, char *buf,
                           size_t cap)
{
    const int L = lay->unet_layers_per_block;
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int r;
    int base = down ? 1 + l * (L + 1) : l * (L + 1);
    const char *blocks = down ? "input_blocks" : "output_blocks";
    if (TRY("resnets.") && eat_index(&s, &r) && r <= L - down &&
        swap(s, unet_resnet, N_OF(unet_resnet), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, UNET_P "%s.%d.0.%s", blocks, base + r, sub);
    if (TRY("attentions.") && eat_index(&s, &r) && r <= L - down &&
        swap(s, unet_attn, N_OF(unet_attn), false, true, sub, sizeof sub, NULL))
        return setf(buf, cap, UNET_P "%s.%d.1.%s", blocks, base + r, sub);
    if (down && TRY("downsamplers.0.conv.") && is_param(s))
        return setf(buf, cap, UNET_P "input_blocks.%d.0.op.%s", base + L, s);
    if (!down && TRY("upsamplers.0.conv.") && is_param(s) && l < 32)
        return setf(buf, cap, UNET_P "output_blocks.%d.%d.conv.%s", base + L,
                    (lay->unet_up_attention >> l & 1) ? 2 : 1, s);
    return false;
}

static bool inv_unet(const char *s0, const df_sf_layout *lay, char *buf, size_t cap)
{
    static const pair top[] = {
        {"time_embed.0.", "time_embedding.linear_1."}, {"time_embed.2.", "time_embedding.linear_2."},
        {"input_blocks.0.0.", "conv_in."}, {"out.0.", "conv_norm_out."}, {"out.2.", "conv_out."},
    };
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int l, r;
    if (swap(s0, top, N_OF(top), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, UNET_P "%s", sub);
    if (TRY("mid_block.resnets.") && eat_index(&s, &r) && r < 2 &&
        swap(s, unet_resnet, N_OF(unet_resnet), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, UNET_P "middle_block.%d.%s", 2 * r, sub);
    if (TRY("mid_block.attentions.0.") &&
        swap(s, unet_attn, N_OF(unet_attn), false, true, sub, sizeof sub, NULL))
        return setf(buf, cap, UNET_P "middle_block.1.%s", sub);
    if (TRY("down_blocks.") && eat_index(&s, &l))
        return inv_unet_block(true, l, s, lay, buf, cap);
    if (TRY("up_blocks.") && eat_index(&s, &l))
        return inv_unet_block(false, l, s, lay, buf, cap);
    return false;
}

/* After "encoder." or "decoder.". */
static bool inv_vae_side(const char *side, const char *s0, const df_sf_layout *lay, char *buf,
                         size_t cap)
{
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int i, j;
    bool enc = side[0] == 'e';
    if ((TRY("conv_in.") && is_param(s)) || (TRY("conv_out.") && is_param(s)))
        return setf(buf, cap, VAE_P "%s.%s", side, s0);
    if (TRY("conv_norm_out.") && is_param(s))
        return setf(buf, cap, VAE_P "%s.norm_out.%s", side, s);
    if (TRY("mid_block.resnets.") && eat_index(&s, &j) && j < 2 &&
        swap(s, vae_resnet, N_OF(vae_resnet), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, VAE_P "%s.mid.block_%d.%s", side, j + 1, sub);
    if (TRY("mid_block.attentions.0.") &&
        swap(s, vae_attn, N_OF(vae_attn), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, VAE_P "%s.mid.attn_1.%s", side, sub);
    if (enc && TRY("down_blocks.") && eat_index(&s, &i)) {
        const char *r = s;
        if (eat(&s, "resnets.") && eat_index(&s, &j) &&
            swap(s, vae_resnet, N_OF(vae_resnet), false, false, sub, sizeof sub, NULL))
            return setf(buf, cap, VAE_P "encoder.down.%d.block.%d.%s", i, j, sub);
        s = r;
        if (eat(&s, "downsamplers.0.conv.") && is_param(s))
            return setf(buf, cap, VAE_P "encoder.down.%d.downsample.conv.%s", i, s);
        return false;
    }
    if (!enc && TRY("up_blocks.") && eat_index(&s, &i) && i < lay->vae_blocks) {
        int u = lay->vae_blocks - 1 - i;
        const char *r = s;
        if (eat(&s, "resnets.") && eat_index(&s, &j) &&
            swap(s, vae_resnet, N_OF(vae_resnet), false, false, sub, sizeof sub, NULL))
            return setf(buf, cap, VAE_P "decoder.up.%d.block.%d.%s", u, j, sub);
        s = r;
        if (eat(&s, "upsamplers.0.conv.") && is_param(s))
            return setf(buf, cap, VAE_P "decoder.up.%d.upsample.conv.%s", u, s);
    }
    return false;
}

static bool inv_vae(const char *s0, const df_sf_layout *lay, char *buf, size_t cap)
{
    const char *s;
    if ((TRY("quant_conv.") && is_param(s)) || (TRY("post_quant_conv.") && is_param(s)))
        return setf(buf, cap, VAE_P "%s", s0);
    if (TRY("encoder."))
        return inv_vae_side("encoder", s, lay, buf, cap);
    if (TRY("decoder."))
        return inv_vae_side("decoder", s, lay, buf, cap);
    return false;
}

static bool inv_text(const char *s0, char *buf, size_t cap, int *part)
{
    char sub[DF_SF_NAME_MAX];
    const char *s;
    int i;
    if (!strcmp(s0, "text_model.embeddings.token_embedding.weight"))
        return setf(buf, cap, CLIP_P "token_embedding.weight");
    if (!strcmp(s0, "text_model.embeddings.position_embedding.weight"))
        return setf(buf, cap, CLIP_P "positional_embedding");
    if (TRY("text_model.final_layer_norm.") && is_param(s))
        return setf(buf, cap, CLIP_P "ln_final.%s", s);
    if (!TRY("text_model.encoder.layers.") || !eat_index(&s, &i))
        return false;
    static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.",
                                       "self_attn.v_proj."};
    for (int p = 0; p < 3; p++) {
        const char *t = s;
        if (eat(&t, qkv[p]) && is_param(t)) {
            *part = p;
            return setf(buf, cap, CLIP_P "transformer.resblocks.%d.attn.in_proj_%s", i, t);
        }
    }
    if (swap(s, text_layer, N_OF(text_layer), false, false, sub, sizeof sub, NULL))
        return setf(buf, cap, CLIP_P "transformer.resblocks.%d.%s", i, sub);
    return false;
}

#undef TRY

bool df_sf_file_name(df_sf_component c, const char *name, const df_sf_layout *lay, char *buf,
                     size_t cap, int *part)
{
    *part = -1;
    switch (c) {
    case DF_SF_UNET: return inv_unet(name, lay, buf, cap);
    case DF_SF_VAE: return inv_vae(name, lay, buf, cap);
    case DF_SF_TEXT: return inv_text(name, buf, cap, part);
    default: return false;
    }
}

/* ---- the file ---- */

typedef struct {
    df_sf_kind kind;
    df_sf_component comp;
} slot_class;

struct df_single_file {
    df_safetensors *st;
    df_sf_layout lay;
    slot_class *cls;           /* per tensor of st, in df_st_at order */
    size_t count[3], per_comp[DF_SF_COMPONENTS];
    const char **unknown;
};

void df_single_file_free(df_single_file *sf)
{
    if (!sf)
        return;
    df_st_close(sf->st);
    free(sf->cls);
    free(sf->unknown);
    free(sf);
}

/* The fused in_proj must split into three equal row blocks. */
static df_status check_split(const df_single_file *sf, const df_st_tensor *t)
{
    bool w = t->ndim == 2, b = t->ndim == 1;
    if ((w || b) && t->shape[0] > 0 && t->shape[0] % 3 == 0)
        return DF_OK;
    return df_fail(DF_ERR_SHAPE, "%s: tensor \"%s\": shape [%lld%s] does not split into q, k, v "
                   "(a multiple of 3 rows expected)", df_st_path(sf->st), t->name,
                   t->ndim ? (long long)t->shape[0] : 0LL, t->ndim > 1 ? ", ..." : "");
}

df_status df_single_file_open(const char *path, const df_sf_layout *lay, df_single_file **out)
{
    *out = NULL;
    df_single_file *sf = calloc(1, sizeof *sf);
    if (!sf)
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
    sf->lay = *lay;
    df_status st = df_st_open(path, &sf->st);
    size_t n = st == DF_OK ? df_st_count(sf->st) : 0;
    if (st == DF_OK && (!(sf->cls = calloc(n + 1, sizeof *sf->cls)) ||
                        !(sf->unknown = calloc(n + 1, sizeof *sf->unknown))))
        st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; st == DF_OK && i < n; i++) {
        const df_st_tensor *t = df_st_at(sf->st, i);
        df_sf_map m;
        df_sf_kind k = df_sf_map_name(t->name, lay, &m);
        sf->cls[i] = (slot_class){k, m.comp};
        sf->count[k]++;
        if (k == DF_SF_UNKNOWN)
            sf->unknown[sf->count[k] - 1] = t->name;
        if (k == DF_SF_MAPPED) {
            sf->per_comp[m.comp]++;
            if (m.n == 3)
                st = check_split(sf, t);
        }
    }
    static const char *const what[DF_SF_COMPONENTS] = {
        "UNet (" UNET_P "*)", "VAE (" VAE_P "*)", "text encoder (" CLIP_P "*)"};
    for (int c = 0; st == DF_OK && c < DF_SF_COMPONENTS; c++)
        if (!sf->per_comp[c])
            st = df_fail(DF_ERR_FORMAT, "%s: no %s tensors: not a Stable Diffusion single-file "
                         "checkpoint (%zu tensors%s%s)", path, what[c], n,
                         sf->count[DF_SF_UNKNOWN] ? ", first unknown: " : "",
                         sf->count[DF_SF_UNKNOWN] ? sf->unknown[0] : "");
    if (st != DF_OK) {
        df_single_file_free(sf);
        return st;
    }
    *out = sf;
    return DF_OK;
}

typedef struct {
    df_sf_component c;
    df_sf_layout lay;
} hint_ctx;

static bool hint(const void *ctx, const char *name, char *buf, size_t cap)
{
    const hint_ctx *h = ctx;
    int part;
    return df_sf_file_name(h->c, name, &h->lay, buf, cap, &part);
}

df_status df_single_file_weights(df_single_file *sf, df_sf_component c, df_weights **out)
{
    *out = NULL;
    size_t n = 0, total = df_st_count(sf->st);
    for (size_t i = 0; i < total; i++)
        if (sf->cls[i].kind == DF_SF_MAPPED && sf->cls[i].comp == c)
            n += 3;   /* at most three entries per tensor */
    df_st_tensor *v = calloc(n + 1, sizeof *v);
    if (!v)
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", df_st_path(sf->st));
    size_t k = 0;
    df_status st = DF_OK;
    for (size_t i = 0; st == DF_OK && i < total; i++) {
        if (sf->cls[i].kind != DF_SF_MAPPED || sf->cls[i].comp != c)
            continue;
        const df_st_tensor *t = df_st_at(sf->st, i);
        df_sf_map m;
        df_sf_map_name(t->name, &sf->lay, &m);
        for (int p = 0; p < m.n; p++) {
            df_st_tensor e = *t;
            if (m.n == 3) {   /* row third p of a contiguous (3C, ...) tensor */
                e.shape[0] = t->shape[0] / 3;
                e.numel = t->numel / 3;
                e.nbytes = t->nbytes / 3;
                e.data = (const char *)t->data + (size_t)p * e.nbytes;
            }
            if (m.squeeze && t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1)
                e.ndim = 2;
            if (!(e.name = strdup(m.names[p]))) {
                st = df_fail(DF_ERR_NOMEM, "%s: out of memory", df_st_path(sf->st));
                break;
            }
            v[k++] = e;
        }
    }
    if (st != DF_OK) {
        for (size_t i = 0; i < k; i++)
            free((char *)v[i].name);
        free(v);
        return st;
    }
    df_safetensors *view;
    if ((st = df_st_view_new(sf->st, df_st_path(sf->st), v, k, &view)) != DF_OK)
        return st;
    if ((st = df_weights_open_st(view, out)) != DF_OK)
        return st;
    hint_ctx h = {c, sf->lay};
    df_weights_set_hint(*out, hint, &h, sizeof h);
    return DF_OK;
}

size_t df_single_file_count(const df_single_file *sf, df_sf_kind kind)
{
    return (unsigned)kind < 3 ? sf->count[kind] : 0;
}

size_t df_single_file_component_count(const df_single_file *sf, df_sf_component c)
{
    return (unsigned)c < DF_SF_COMPONENTS ? sf->per_comp[c] : 0;
}

const df_safetensors *df_single_file_file(const df_single_file *sf)
{
    return sf->st;
}

size_t df_single_file_tensors(const df_single_file *sf)
{
    return df_st_count(sf->st);
}

const char *df_single_file_unknown(const df_single_file *sf, size_t i)
{
    return i < sf->count[DF_SF_UNKNOWN] ? sf->unknown[i] : NULL;
}
