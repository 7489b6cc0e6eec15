/* pipeline.c - StableDiffusionPipeline: prompts -> embeddings -> denoising
 * loop with classifier-free guidance -> VAE decode. See pipeline.h.
 * Tested by tests/check_fixtures/check_pipeline.c and test-df-sample.sh. */
#include "pipeline.h"
#include "pipeline_edit.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clip.h"
#include "jsonl.h"
#include "ops.h"
#include "rng.h"
#include "scheduler.h"
#include "single_file.h"
#include "tokenizer.h"
#include "unet.h"
#include "vae.h"

typedef struct {
    char *path;
    float scale;
} lora_ref;

struct df_pipeline {
    char *dir;
    char *variant;
    /* Per component (text encoder, UNet, VAE): the variant its files have.
     * A component without variant files falls back to its full-precision
     * file, as diffusers does; `notes` says so for the caller to show. */
    const char *comp_variant[3];
    char notes[1024];
    df_tokenizer *tok;
    json_t *sched_config;
    int unet_sample_size, unet_channels, vae_scale;
    lora_ref *loras;
    int n_loras;
    bool keep;
    bool load_failed;    /* the last generate failed loading a component */
    df_sf_model *sf;     /* a single-file checkpoint: its configs and mapped tables */
    df_clip *clip;       /* loaded on demand; kept only with keep */
    df_unet *unet;
    df_vae *vae;
};

static char *join(const char *dir, const char *rel)
{
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", dir, rel);
    return s;
}

/* An int config value without loading the component. */
static df_status config_int(const char *dir, const char *file, const char *key, int *out)
{
    char *path = join(dir, file);
    json_t *cfg;
    df_status st = path ? df_json_load_file(path, &cfg) : df_fail(DF_ERR_NOMEM, "out of memory");
    if (st == DF_OK) {
        json_t *v = json_object_get(cfg, key);
        /* Range-checked before the cast: 2^32 + 8 must not read as 8. */
        if (json_is_integer(v) && json_integer_value(v) >= -65536 && json_integer_value(v) <= 65536)
            *out = (int)json_integer_value(v);
        else if (json_is_integer(v))
            st = df_fail(DF_ERR_RANGE, "%s: \"%s\" = %lld outside [-65536, 65536]", path, key,
                         (long long)json_integer_value(v));
        else if (json_is_array(v))   /* block_out_channels: its length */
            *out = (int)json_array_size(v);
        else
            st = df_fail(DF_ERR_FORMAT, "%s: no integer \"%s\"", path, key);
        json_decref(cfg);
    }
    free(path);
    return st;
}

/* Fail at open, not after minutes of sampling, on what can be checked
 * cheaply: the model's own scheduler config builds a scheduler, and each
 * component's weight file exists and has a valid header (an mmap and a
 * JSON parse; the weights themselves are read when the component loads). */
static df_status check_model_files(df_pipeline *p)
{
    df_scheduler *s = NULL;
    df_status st = df_scheduler_create(NULL, p->sched_config, NULL, &s);
    df_scheduler_free(s);
    if (st != DF_OK)
        return df_fail(st, "%s/scheduler/scheduler_config.json: %s", p->dir, df_last_error());
    static const char *const comps[] = {"text_encoder", "unet", "vae"};
    for (int i = 0; i < 3 && st == DF_OK; i++) {
        char *dir = join(p->dir, comps[i]);
        df_weights *w = NULL;
        p->comp_variant[i] = p->variant;
        st = dir ? df_weights_open_dir(dir, p->variant, &w) : df_fail(DF_ERR_NOMEM, "out of memory");
        if (st == DF_ERR_NOTFOUND && p->variant) {
            st = df_weights_open_dir(dir, NULL, &w);
            p->comp_variant[i] = NULL;
            size_t n = strlen(p->notes);
            if (st == DF_OK)
                snprintf(p->notes + n, sizeof p->notes - n,
                         "%s%s: no %s weight file; using the full-precision one", n ? "\n" : "",
                         comps[i], p->variant);
        }
        df_weights_free(w);
        free(dir);
    }
    return st;
}

df_status df_pipeline_open(const char *model_dir, const char *variant, df_pipeline **out)
{
    *out = NULL;
    df_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    p->dir = strdup(model_dir);
    p->variant = variant ? strdup(variant) : NULL;
    df_status st = DF_OK;
    char *path = join(model_dir, "model_index.json");
    json_t *index = NULL;
    if ((st = df_json_load_file(path, &index)) != DF_OK)
        st = df_fail(st, "%s: not a diffusers model folder (%s)", model_dir, df_last_error());
    json_decref(index);
    free(path);
    char *tokdir = join(model_dir, "tokenizer");
    char *schedpath = join(model_dir, "scheduler/scheduler_config.json");
    if (st == DF_OK)
        st = df_tokenizer_load(tokdir, &p->tok);
    if (st == DF_OK)
        st = df_scheduler_load_config(schedpath, &p->sched_config);
    free(tokdir);
    free(schedpath);
    int nblocks = 0;
    if (st == DF_OK)
        st = config_int(model_dir, "unet/config.json", "sample_size", &p->unet_sample_size);
    if (st == DF_OK)
        st = config_int(model_dir, "unet/config.json", "in_channels", &p->unet_channels);
    if (st == DF_OK)
        st = config_int(model_dir, "vae/config.json", "block_out_channels", &nblocks);
    if (st == DF_OK && (nblocks < 1 || nblocks > 8))
        st = df_fail(DF_ERR_FORMAT, "%s/vae/config.json: block_out_channels has %d entries "
                     "(1 to 8 accepted)", model_dir, nblocks);
    p->vae_scale = st == DF_OK ? 1 << (nblocks - 1) : 1;
    /* The default image side (sample_size * vae scale) must stay a sane int. */
    if (st == DF_OK && (p->unet_sample_size < 1 || p->unet_sample_size > 8192 / p->vae_scale))
        st = df_fail(DF_ERR_FORMAT, "%s/unet/config.json: sample_size %d outside [1, %d]",
                     model_dir, p->unet_sample_size, 8192 / p->vae_scale);
    if (st == DF_OK && (p->unet_channels < 1 || p->unet_channels > 64))
        st = df_fail(DF_ERR_FORMAT, "%s/unet/config.json: in_channels %d outside [1, 64]",
                     model_dir, p->unet_channels);
    if (st == DF_OK)
        st = check_model_files(p);
    if (st != DF_OK) {
        df_pipeline_free(p);
        return st;
    }
    *out = p;
    return DF_OK;
}

/* The original SD layout in one .safetensors (lib/models/single_file.h):
 * configs and tokenizer built in or from opts->config_dir; the components'
 * tables are views of the file, made when each component loads. */
static df_status open_single_file(const char *model, const df_pipeline_open_opts *opts,
                                  df_pipeline **out)
{
    df_pipeline *p = calloc(1, sizeof *p);
    if (!p || !(p->dir = strdup(model)) || !(p->sf = calloc(1, sizeof *p->sf))) {
        df_pipeline_free(p);
        return df_fail(DF_ERR_NOMEM, "out of memory");
    }
    df_status st = df_sf_model_open(model, opts ? opts->config_dir : NULL,
                                    opts ? opts->prediction : NULL, p->sf);
    if (st != DF_OK) {
        free(p->sf);   /* nothing left in it to free */
        p->sf = NULL;
        df_pipeline_free(p);
        return st;
    }
    p->tok = p->sf->tok;   /* the pipeline frees these two */
    p->sf->tok = NULL;
    p->sched_config = json_incref(p->sf->scheduler);
    p->unet_sample_size = p->sf->unet_sample_size;
    p->unet_channels = p->sf->unet_in_channels;
    p->vae_scale = 1 << (p->sf->vae_blocks - 1);
    if (p->unet_sample_size > 8192 / p->vae_scale) {   /* the default side must stay sane */
        st = df_fail(DF_ERR_FORMAT, "%s: sample_size %d outside [1, %d]",
                     p->sf->label[DF_SF_UNET], p->unet_sample_size, 8192 / p->vae_scale);
        df_pipeline_free(p);
        return st;
    }
    snprintf(p->notes, sizeof p->notes, "%.*s", (int)sizeof p->notes - 1, p->sf->note);
    size_t unknown = df_single_file_count(p->sf->file, DF_SF_UNKNOWN);
    if (unknown) {
        size_t n = strlen(p->notes);
        snprintf(p->notes + n, sizeof p->notes - n, "%s%s: %zu of its %zu tensors are not used "
                 "(unknown names; the first: %s)", n ? "\n" : "", model, unknown,
                 df_single_file_tensors(p->sf->file), df_single_file_unknown(p->sf->file, 0));
    }
    *out = p;
    return DF_OK;
}

/* Which file and config a single-file load error is about. */
static df_status sf_context(const df_pipeline *p, df_sf_component c, df_status st)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", df_last_error());
    return df_fail(st, "%s: %s (config: %s)", p->dir, msg, p->sf->label[c]);
}

/* A component's weights and model, from its folder or the single file. */
static df_status load_clip(df_pipeline *p, df_clip **out)
{
    if (!p->sf) {
        char *dir = join(p->dir, "text_encoder");
        df_status st = dir ? df_clip_load(dir, p->comp_variant[0], out)
                           : df_fail(DF_ERR_NOMEM, "out of memory");
        free(dir);
        return st;
    }
    df_weights *w;
    df_status st = df_single_file_weights(p->sf->file, DF_SF_TEXT, &w);
    if (st == DF_OK)
        st = df_clip_load_json(p->sf->config[DF_SF_TEXT], p->sf->label[DF_SF_TEXT], w, out);
    return st ? sf_context(p, DF_SF_TEXT, st) : DF_OK;
}

static df_status load_unet_model(df_pipeline *p, df_unet **out)
{
    if (!p->sf) {
        char *dir = join(p->dir, "unet");
        df_status st = dir ? df_unet_load(dir, p->comp_variant[1], out)
                           : df_fail(DF_ERR_NOMEM, "out of memory");
        free(dir);
        return st;
    }
    df_weights *w;
    df_status st = df_single_file_weights(p->sf->file, DF_SF_UNET, &w);
    if (st == DF_OK)
        st = df_unet_load_json(p->sf->config[DF_SF_UNET], p->sf->label[DF_SF_UNET], w, out);
    return st ? sf_context(p, DF_SF_UNET, st) : DF_OK;
}

static df_status load_vae(df_pipeline *p, df_vae **out)
{
    if (!p->sf) {
        char *dir = join(p->dir, "vae");
        df_status st = dir ? df_vae_load(dir, p->comp_variant[2], out)
                           : df_fail(DF_ERR_NOMEM, "out of memory");
        free(dir);
        return st;
    }
    df_weights *w;
    df_status st = df_single_file_weights(p->sf->file, DF_SF_VAE, &w);
    if (st == DF_OK)
        st = df_vae_load_json(p->sf->config[DF_SF_VAE], p->sf->label[DF_SF_VAE], w, out);
    return st ? sf_context(p, DF_SF_VAE, st) : DF_OK;
}

df_status df_pipeline_open_model(const char *model, const df_pipeline_open_opts *opts,
                                 df_pipeline **out)
{
    *out = NULL;
    struct stat sb;
    if (stat(model, &sb) != 0)
        return df_fail(DF_ERR_NOTFOUND, "%s: %s", model, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return df_pipeline_open(model, opts ? opts->variant : NULL, out);
    size_t n = strlen(model);
    if ((n >= 5 && strcmp(model + n - 5, ".ckpt") == 0) ||
        (n >= 3 && strcmp(model + n - 3, ".pt") == 0) ||
        (n >= 4 && strcmp(model + n - 4, ".pth") == 0))
        return df_fail(DF_ERR_UNSUPPORTED, "%s: pickle checkpoints can run code when loaded, so "
                       "they are not read; convert it to .safetensors first", model);
    return open_single_file(model, opts, out);
}

static void unload(df_pipeline *p)
{
    df_clip_free(p->clip);
    df_unet_free(p->unet);
    df_vae_free(p->vae);
    p->clip = NULL;
    p->unet = NULL;
    p->vae = NULL;
}

void df_pipeline_free(df_pipeline *p)
{
    if (!p)
        return;
    unload(p);
    for (int i = 0; i < p->n_loras; i++)
        free(p->loras[i].path);
    free(p->loras);
    df_tokenizer_free(p->tok);
    json_decref(p->sched_config);
    if (p->sf)
        df_sf_model_free(p->sf);
    free(p->sf);
    free(p->dir);
    free(p->variant);
    free(p);
}

const json_t *df_pipeline_scheduler_config(const df_pipeline *p)
{
    return p->sched_config;
}

const char *df_pipeline_notes(const df_pipeline *p)
{
    return p->notes[0] ? p->notes : NULL;
}

void df_pipeline_keep_loaded(df_pipeline *p, bool keep) { p->keep = keep; }

bool df_pipeline_load_failed(const df_pipeline *p) { return p->load_failed; }

/* An inpainting UNet (9 = latents 4 + mask 1 + masked-image latents 4) works
 * on 4-channel latents, as diffusers' inpainting pipeline demands. */
int df_pipeline_latent_channels(const df_pipeline *p)
{
    return p->unet_channels == DF_INPAINT_UNET_CHANNELS ? 4 : p->unet_channels;
}

void df_pipeline_default_size(const df_pipeline *p, int *width, int *height)
{
    *width = *height = p->unet_sample_size * p->vae_scale;
}

int df_pipeline_size_multiple(const df_pipeline *p) { return p->vae_scale; }

df_status df_pipeline_add_lora(df_pipeline *p, const char *path, float scale,
                               df_lora_report *rep)
{
    /* Check against freshly opened weight tables (nothing copied or merged):
     * the report and any shape error come now, before a model is loaded. */
    df_weights *uw = NULL, *tw = NULL;
    df_status st;
    if (p->sf) {   /* the single file's views: nothing is read or copied */
        st = df_single_file_weights(p->sf->file, DF_SF_UNET, &uw);
        if (st == DF_OK)
            st = df_single_file_weights(p->sf->file, DF_SF_TEXT, &tw);
    } else {
        char *ud = join(p->dir, "unet"), *td = join(p->dir, "text_encoder");
        st = df_weights_open_dir(ud, p->comp_variant[1], &uw);
        if (st == DF_OK)
            st = df_weights_open_dir(td, p->comp_variant[0], &tw);
        free(ud);
        free(td);
    }
    if (st == DF_OK)
        st = df_lora_check(path, uw, tw, rep);
    df_weights_free(uw);
    df_weights_free(tw);
    if (st != DF_OK)
        return st;
    if (rep->n_pairs == 0)   /* name one, so that the key scheme can be seen */
        return df_fail(DF_ERR_NOTFOUND, "%s: none of its %zu tensors matches this model%s%s%s",
                       path, rep->n_tensors, rep->n_unmatched ? " (first: " : "",
                       rep->n_unmatched ? rep->unmatched[0] : "", rep->n_unmatched ? ")" : "");
    lora_ref *v = realloc(p->loras, (p->n_loras + 1) * sizeof *v);
    if (!v)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    p->loras = v;
    v[p->n_loras].path = strdup(path);
    v[p->n_loras].scale = scale;
    p->n_loras++;
    unload(p);   /* kept components no longer carry every LoRA */
    return DF_OK;
}

int df_pipeline_lora_count(const df_pipeline *p) { return p->n_loras; }

float df_pipeline_lora_scale(const df_pipeline *p, int index)
{
    return index >= 0 && index < p->n_loras ? p->loras[index].scale : 0.0f;
}

df_status df_pipeline_set_lora_scale(df_pipeline *p, int index, float scale)
{
    if (index < 0 || index >= p->n_loras)
        return df_fail(DF_ERR_ARG, "no LoRA number %d (%d added)", index, p->n_loras);
    if (!isfinite(scale))
        return df_fail(DF_ERR_ARG, "LoRA scale must be finite");
    if (p->loras[index].scale != scale) {
        p->loras[index].scale = scale;
        unload(p);   /* merged weights carry the old scale; reloaded at next use */
    }
    return DF_OK;
}

static df_status merge_loras(df_pipeline *p, df_weights *unet, df_weights *te)
{
    for (int i = 0; i < p->n_loras; i++) {
        if (p->loras[i].scale == 0.0f)   /* switched off: merging would add zeros */
            continue;
        df_lora_report rep;
        df_status st = df_lora_apply(p->loras[i].path, p->loras[i].scale, unet, te, &rep);
        df_lora_report_free(&rep);
        if (st != DF_OK)
            return st;
    }
    return DF_OK;
}

static void stage(const df_pipeline_hooks *h, const char *name)
{
    if (h && h->on_stage)
        h->on_stage(h->ctx, name);
}

static bool stop_asked(const df_pipeline_hooks *h)
{
    return h && h->should_stop && h->should_stop(h->ctx);
}

/* A tokenizer from another model: its sequences or ids would not fit the
 * text encoder's position or token tables, for every prompt (or, worse,
 * only for prompts with rare words). */
static df_status check_tokenizer_fits(const df_pipeline *p, const df_clip_config *c)
{
    if (df_tokenizer_max_length(p->tok) > c->max_positions)
        return df_fail(DF_ERR_SHAPE, "%s: tokenizer model_max_length %d exceeds the text "
                       "encoder's max_position_embeddings %d", p->dir,
                       df_tokenizer_max_length(p->tok), c->max_positions);
    if (df_tokenizer_id_end(p->tok) > c->vocab_size)
        return df_fail(DF_ERR_SHAPE, "%s: tokenizer ids up to %d exceed the text encoder's "
                       "vocab_size %d", p->dir, df_tokenizer_id_end(p->tok) - 1, c->vocab_size);
    return DF_OK;
}

/* Embeddings (2,T,C): [negative, positive]. */
static df_status encode_prompts(df_pipeline *p, const df_pipeline_params *pp,
                                df_pipeline_output *out, float **embeds, int *T, int *C)
{
    int L = df_tokenizer_max_length(p->tok);
    int32_t *ids = malloc(2 * (size_t)L * sizeof *ids);
    if (!ids)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    const char *neg = pp->negative_prompt ? pp->negative_prompt : "";
    df_status st = df_tokenizer_encode(p->tok, neg, ids, NULL, &out->negative_tokens);
    if (st == DF_OK)
        st = df_tokenizer_encode(p->tok, pp->prompt ? pp->prompt : "", ids + L, NULL,
                                 &out->prompt_tokens);
    out->max_tokens = L;
    if (st == DF_OK && !p->clip) {
        st = load_clip(p, &p->clip);
        if (st == DF_OK)
            st = merge_loras(p, NULL, df_clip_weights(p->clip));
        if (st == DF_OK)
            st = check_tokenizer_fits(p, df_clip_get_config(p->clip));
        if (st != DF_OK) {
            p->load_failed = true;
            df_clip_free(p->clip);   /* not half-merged into the next call */
            p->clip = NULL;
        }
    }
    if (st == DF_OK) {
        *C = df_clip_get_config(p->clip)->hidden_size;
        *T = L;
        *embeds = malloc(2 * (size_t)L * *C * sizeof **embeds);
        st = *embeds ? df_clip_forward(p->clip, ids, 2, L, *embeds, NULL, NULL)
                     : df_fail(DF_ERR_NOMEM, "out of memory");
        /* Checked here, or it would surface as a puzzling UNet NaN. */
        for (size_t k = 0; st == DF_OK && k < 2 * (size_t)L * *C; k++)
            if (!isfinite((*embeds)[k]))
                st = df_fail(DF_ERR_NUMERIC, "text encoder: non-finite (NaN or Inf) prompt "
                             "embeddings");
    }
    free(ids);
    if (!p->keep) {
        df_clip_free(p->clip);
        p->clip = NULL;
    }
    return st;
}

static df_status load_unet(df_pipeline *p)
{
    if (p->unet)
        return DF_OK;
    df_status st = load_unet_model(p, &p->unet);
    if (st == DF_OK)
        st = merge_loras(p, df_unet_weights(p->unet), NULL);
    if (st != DF_OK) {
        p->load_failed = true;
        df_unet_free(p->unet);
        p->unet = NULL;
    }
    return st;
}

/* The starting latents of img2img/inpainting (the image latents noised to
 * the begin step) or of text to image (the noise times init_noise_sigma). */
static df_status start_latents(df_scheduler *s, const df_edit *e, float *latents, size_t n)
{
    if (e && e->from_image)
        return df_scheduler_add_noise_at(s, e->begin, e->image_latents, e->noise, n, latents);
    if (e)
        memcpy(latents, e->noise, n * sizeof *latents);
    float sigma0 = df_scheduler_init_noise_sigma(s);
    for (size_t k = 0; k < n; k++)
        latents[k] *= sigma0;
    return DF_OK;
}

/* 4-channel inpainting after step i: the unmasked region goes back to the
 * image latents, noised to step i+1 (unnoised after the last step). */
static df_status blend_step(df_scheduler *s, const df_edit *e, int i, float *proper,
                            float *latents, size_t n)
{
    df_status st = DF_OK;
    if (i + 1 < df_scheduler_count(s))
        st = df_scheduler_add_noise_at(s, i + 1, e->image_latents, e->noise, n, proper);
    else
        memcpy(proper, e->image_latents, n * sizeof *proper);
    if (st == DF_OK)
        df_edit_blend(e, proper, latents);
    return st;
}

/* The denoising loop; latents (B,C,h,w) out (in: the noise for text to
 * image; e, when not NULL, holds img2img/inpainting's inputs). */
static df_status denoise(df_pipeline *p, const df_pipeline_params *pp, const float *embeds, int T,
                         int Ctx, float *latents, int B, int C, int h, int w, df_rng *rng,
                         const df_edit *e, const df_pipeline_hooks *hooks, df_pipeline_output *o)
{
    df_scheduler *s = NULL;
    df_status st = df_scheduler_create(pp->scheduler, p->sched_config, NULL, &s);
    if (st == DF_OK) {
        snprintf(o->scheduler, sizeof o->scheduler, "%s", df_scheduler_class_name(s));
        st = df_scheduler_set_timesteps(s, pp->steps);
    }
    if (st == DF_OK && e)
        st = df_scheduler_set_begin_index(s, e->begin);
    if (st == DF_OK)
        st = load_unet(p);
    /* The buffers below are sized from the text encoder and the pipeline's
     * channel count: a UNet from another model must not read past them. */
    int cin = e && e->concat ? 2 * C + 1 : C;   /* latents, mask, masked-image latents */
    if (st == DF_OK && (df_unet_in_channels(p->unet) != cin || df_unet_out_channels(p->unet) != C ||
                        df_unet_cross_attention_dim(p->unet) != Ctx)) {
        p->load_failed = true;
        st = df_fail(DF_ERR_SHAPE, "%s/unet/config.json: in/out_channels %d/%d and "
                     "cross_attention_dim %d do not fit %d/%d channels and the text "
                     "encoder's hidden_size %d", p->dir, df_unet_in_channels(p->unet),
                     df_unet_out_channels(p->unet), df_unet_cross_attention_dim(p->unet), cin, C,
                     Ctx);
    }
    if (st != DF_OK) {
        df_scheduler_free(s);
        return st;
    }
    bool cfg = pp->guidance > 1.0f;
    int NB = cfg ? 2 * B : B;                      /* UNet batch: [neg x B, pos x B] */
    size_t n = (size_t)B * C * h * w, hw = (size_t)h * w;
    float *x = malloc((size_t)NB * cin * hw * sizeof *x);
    float *scaled = malloc(n * sizeof *scaled);
    float *eo = malloc(n * NB / B * sizeof *eo);
    float *ehs = malloc((size_t)NB * T * Ctx * sizeof *ehs);
    float *ts = malloc(NB * sizeof *ts);
    float *guided = malloc(n * sizeof *guided);
    if (!x || !scaled || !eo || !ehs || !ts || !guided)
        st = df_fail(DF_ERR_NOMEM, "out of memory for the denoising loop");
    size_t te = (size_t)T * Ctx;
    for (int b = 0; st == DF_OK && b < NB; b++) {
        const float *src = cfg && b < B ? embeds : embeds + te;   /* rows: neg, pos */
        memcpy(ehs + b * te, src, te * sizeof *ehs);
    }
    if (st == DF_OK)
        st = start_latents(s, e, latents, n);
    /* Steps begin .. count-1 run; hooks count them from 0 of `run`. */
    int count = df_scheduler_count(s), begin = e ? e->begin : 0, run = count - begin;
    for (int i = begin; st == DF_OK && i < count; i++) {
        float t = df_scheduler_timestep(s, i);
        if (stop_asked(hooks)) {
            st = df_fail(DF_ERR_INTERRUPTED, "stopped before step %d of %d", i - begin + 1, run);
            break;
        }
        if (hooks && hooks->before_step)
            hooks->before_step(hooks->ctx, i - begin, run, latents);
        st = df_scheduler_scale_model_input(s, i, latents, scaled, n);
        if (st != DF_OK)
            break;
        df_edit_unet_input(e, scaled, NB, B, C, (int)hw, x);
        for (int b = 0; b < NB; b++)
            ts[b] = t;
        st = df_unet_forward(p->unet, x, ts, ehs, NB, h, w, T, eo);
        if (st == DF_ERR_NUMERIC)
            st = df_fail(st, "step %d of %d: %s (non-finite)", i - begin + 1, run, df_last_error());
        if (st != DF_OK)
            break;
        const float g = pp->guidance;
        for (size_t k = 0; k < n; k++)
            guided[k] = cfg ? eo[k] + g * (eo[n + k] - eo[k]) : eo[k];
        st = df_scheduler_step(s, i, guided, latents, latents, n, df_rng_noise_fn, rng);
        if (st == DF_OK && e && e->inpaint && !e->concat)
            st = blend_step(s, e, i, guided, latents, n);   /* guided is free until the next step */
        for (size_t k = 0; st == DF_OK && k < n; k++)
            if (!isfinite(latents[k]))
                st = df_fail(DF_ERR_NUMERIC, "non-finite latents after step %d of %d",
                             i - begin + 1, run);
        if (st == DF_OK && hooks && hooks->on_step)
            hooks->on_step(hooks->ctx, i - begin, run, t, eo, latents);
    }
    free(x);
    free(scaled);
    free(eo);
    free(ehs);
    free(ts);
    free(guided);
    df_scheduler_free(s);
    df_ops_release_scratch();   // the UNet's convolution scratch, before the VAE's
    if (!p->keep) {
        df_unet_free(p->unet);
        p->unet = NULL;
    }
    return st;
}

/* img2img/inpainting: encode the init image (and the masked image) and
 * draw the noise, in diffusers' order; the VAE is freed after unless kept. */
static df_status prepare_edit(df_pipeline *p, const df_pipeline_params *pp, df_pipeline_output *o,
                              int begin, df_rng *rng, df_edit *e)
{
    df_status st = p->vae ? DF_OK : load_vae(p, &p->vae);
    if (st == DF_OK && df_vae_latent_channels(p->vae) != o->C)
        st = df_fail(DF_ERR_SHAPE, "%s/vae/config.json: latent_channels %d, the UNet needs %d",
                     p->dir, df_vae_latent_channels(p->vae), o->C);
    if (st != DF_OK) {
        p->load_failed = true;   /* the model's problem, not the prompt's */
        df_vae_free(p->vae);
        p->vae = NULL;
        return st;
    }
    st = df_edit_prepare(p->vae, pp, o->batch, o->C, o->h, o->w, begin,
                         p->unet_channels == DF_INPAINT_UNET_CHANNELS, rng, e);
    df_ops_release_scratch();
    if (!p->keep) {
        df_vae_free(p->vae);
        p->vae = NULL;
    }
    return st;
}

/* VAE decode to NHWC floats in [0,1] and uint8, as diffusers' postprocess
 * and numpy_to_pil: clamp(x/2 + 0.5, 0, 1), round(x * 255) half to even. */
static df_status decode(df_pipeline *p, df_pipeline_output *o)
{
    df_status st = DF_OK;
    if (!p->vae) {
        st = load_vae(p, &p->vae);
        if (st == DF_OK && df_vae_latent_channels(p->vae) != o->C) {
            st = df_fail(DF_ERR_SHAPE, "%s/vae/config.json: latent_channels %d, the UNet makes %d",
                         p->dir, df_vae_latent_channels(p->vae), o->C);
            df_vae_free(p->vae);
            p->vae = NULL;
        }
        if (st != DF_OK) {
            p->load_failed = true;
            return st;
        }
    }
    size_t n = (size_t)o->batch * o->C * o->h * o->w;
    size_t HW = (size_t)o->height * o->width;
    float *scaled = malloc(n * sizeof *scaled);
    float *img = malloc((size_t)o->batch * 3 * HW * sizeof *img);
    o->image = malloc((size_t)o->batch * 3 * HW * sizeof *o->image);
    o->rgb = malloc((size_t)o->batch * 3 * HW);
    if (!scaled || !img || !o->image || !o->rgb)
        st = df_fail(DF_ERR_NOMEM, "out of memory for the decoded image");
    const float sf = df_vae_scaling_factor(p->vae);
    for (size_t k = 0; st == DF_OK && k < n; k++)
        scaled[k] = o->latents[k] / sf;
    if (st == DF_OK)
        st = df_vae_decode(p->vae, scaled, o->batch, o->h, o->w, img);
    for (int b = 0; st == DF_OK && b < o->batch; b++)
        for (size_t q = 0; q < HW; q++)
            for (int c = 0; c < 3; c++) {
                float v = img[((size_t)b * 3 + c) * HW + q] / 2.0f + 0.5f;
                v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                size_t k = ((size_t)b * HW + q) * 3 + c;
                o->image[k] = v;
                o->rgb[k] = (uint8_t)nearbyintf(v * 255.0f);
            }
    free(scaled);
    free(img);
    df_ops_release_scratch();
    if (!p->keep) {
        df_vae_free(p->vae);
        p->vae = NULL;
    }
    return st;
}

df_status df_pipeline_generate(df_pipeline *p, const df_pipeline_params *pp,
                               const df_pipeline_hooks *hooks, df_pipeline_output *o)
{
    memset(o, 0, sizeof *o);
    p->load_failed = false;
    int m = p->vae_scale;
    if (pp->width < m || pp->height < m || pp->width % m || pp->height % m)
        return df_fail(DF_ERR_ARG, "width and height must be positive multiples of %d (got %dx%d)",
                       m, pp->width, pp->height);
    if (pp->steps < 1 || pp->batch < 1 || !isfinite(pp->guidance))
        return df_fail(DF_ERR_ARG, "steps and batch must be at least 1, guidance finite");
    int begin = 0;
    df_status st = df_edit_check(pp, p->unet_channels, &begin);
    if (st != DF_OK)
        return st;
    bool edit = pp->init_image != NULL;
    if (edit && pp->init_latents)
        return df_fail(DF_ERR_ARG, "initial latents cannot be combined with an init image");
    o->batch = pp->batch;
    o->C = df_pipeline_latent_channels(p);
    o->h = pp->height / m;
    o->w = pp->width / m;
    o->width = pp->width;
    o->height = pp->height;
    float *embeds = NULL;
    int T = 0, Ctx = 0;
    stage(hooks, "text encoder");
    st = encode_prompts(p, pp, o, &embeds, &T, &Ctx);
    if (st == DF_OK && hooks && hooks->on_embeds)
        hooks->on_embeds(hooks->ctx, embeds, embeds + (size_t)T * Ctx, T, Ctx);
    size_t n = (size_t)o->batch * o->C * o->h * o->w;
    df_rng rng;
    df_rng_seed(&rng, pp->seed);
    df_edit e = {0};
    if (st == DF_OK) {
        o->latents = malloc(n * sizeof *o->latents);
        if (!o->latents)
            st = df_fail(DF_ERR_NOMEM, "out of memory");
        else if (pp->init_latents)
            memcpy(o->latents, pp->init_latents, n * sizeof *o->latents);
        else if (!edit)
            df_rng_randn(&rng, o->latents, n);   /* one draw for the batch, as randn_tensor */
    }
    if (st == DF_OK && edit) {
        stage(hooks, "vae encode");
        st = prepare_edit(p, pp, o, begin, &rng, &e);
    }
    if (st == DF_OK && stop_asked(hooks))
        st = df_fail(DF_ERR_INTERRUPTED, "stopped before denoising");
    if (st == DF_OK) {
        stage(hooks, "unet");
        st = denoise(p, pp, embeds, T, Ctx, o->latents, o->batch, o->C, o->h, o->w, &rng,
                     edit ? &e : NULL, hooks, o);
    }
    df_edit_free(&e);
    free(embeds);
    if (st == DF_OK && stop_asked(hooks))
        st = df_fail(DF_ERR_INTERRUPTED, "stopped before decoding");
    if (st == DF_OK) {
        stage(hooks, "vae");
        st = decode(p, o);
    }
    if (st != DF_OK)
        df_pipeline_output_free(o);
    return st;
}

void df_pipeline_output_free(df_pipeline_output *o)
{
    free(o->latents);
    free(o->image);
    free(o->rgb);
    o->latents = o->image = NULL;
    o->rgb = NULL;
}
