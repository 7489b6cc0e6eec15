/* trainer.c - the training run of df-train (see trainer.h): checks before
 * any work, the data order, batch assembly from the latent cache, the
 * optimizer step, checkpoints and the final LoRA with its metadata. */
#include "trainer.h"

#include <errno.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "clip.h"
#include "clip_train.h"
#include "latent_cache.h"
#include "log.h"
#include "optim.h"
#include "rng.h"
#include "scheduler.h"
#include "tokenizer.h"
#include "train_step.h"
#include "unet.h"
#include "unet_train.h"

#define MAX_TARGETS 32

typedef struct {
    const df_train_opts *o;
    const df_train_hooks *hk;
    df_unet *unet;
    df_clip *te;
    df_tokenizer *tok;
    df_scheduler *sched;
    df_latent_cache *cache;
    df_lora_set set;
    df_adamw opt;
    df_unet_train *ut;
    df_clip_train *ct;
    df_train_state st;
    /* the data: entries trained on (not the flipped twins), each entry's twin or -1 */
    int64_t *base, *twin;
    size_t nbase;
    int C, h, w, T, D;
    float scaling;
    char *ut_buf, *tt_buf;
    const char *ut_list[MAX_TARGETS], *tt_list[MAX_TARGETS];
    int nut, ntt;
    char model_hash[65], dataset_hash[65], vae_hash[65];
    char *caption_model;
    time_t started;
    long resumed_at;        /* the checkpoint's step on --resume, else -1 */
    int lock_fd;            /* flock on out_dir/.lock, held for the run */
    bool cached_text;       /* text states from the cache (text encoder not trained) */
    float *empty_text;      /* (T,D) states of "" for caption dropout with cached_text */
} run;

/* ------------------------------------------------------------ checks */

static int split_list(char *s, const char **out)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < MAX_TARGETS; tok = strtok(NULL, ","))
        if (*tok)
            out[n++] = tok;
    return n;
}

static df_status check_out_dir(const char *dir)
{
    if (mkdir(dir, 0777) && errno != EEXIST)
        return df_fail(DF_ERR_IO, "%s: cannot create the output directory: %s", dir,
                       strerror(errno));
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/.df-train-write-test", dir);
    FILE *f = fopen(probe, "w");
    if (!f)
        return df_fail(DF_ERR_IO, "%s: output directory is not writable: %s", dir,
                       strerror(errno));
    fclose(f);
    unlink(probe);
    return DF_OK;
}

/* sha256 over files, each fully read, as lowercase hex. */
static df_status hash_files(const char *const *paths, int n, char out[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32], *buf = malloc(1 << 20);
    df_status s = DF_OK;
    if (!ctx || !buf || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        s = df_fail(DF_ERR_NOMEM, "hash: out of memory");
    for (int i = 0; !s && i < n; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) {
            s = df_fail(DF_ERR_IO, "%s: %s", paths[i], strerror(errno));
            break;
        }
        size_t k;
        while ((k = fread(buf, 1, 1 << 20, f)) > 0)
            EVP_DigestUpdate(ctx, buf, k);
        if (ferror(f))
            s = df_fail(DF_ERR_IO, "%s: read error", paths[i]);
        fclose(f);
    }
    unsigned int len = 0;
    if (!s)
        EVP_DigestFinal_ex(ctx, md, &len);
    for (unsigned i = 0; !s && i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    EVP_MD_CTX_free(ctx);
    free(buf);
    return s;
}

/* The base model's identity (kohya's ss_sd_model_hash role): sha256 over
 * the UNet's and the text encoder's config and weight files. */
static df_status model_identity(const char *dir, char out[65])
{
    static const char *const rel[] = {"unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                      "text_encoder/config.json", "text_encoder/model.safetensors"};
    char paths[4][4096];
    const char *p[4];
    for (int i = 0; i < 4; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s", dir, rel[i]);
        p[i] = paths[i];
    }
    return hash_files(p, 4, out);
}

/* The dataset's identity: the VAE's and every entry's name, flip and caption. */
static void dataset_identity(run *r)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned int len = 0;
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, r->vae_hash, strlen(r->vae_hash));
    for (size_t i = 0; i < df_latent_cache_count(r->cache); i++) {
        const df_latent_entry *e = df_latent_cache_entry(r->cache, i);
        EVP_DigestUpdate(ctx, e->file_name, strlen(e->file_name) + 1);
        EVP_DigestUpdate(ctx, e->flip ? "1" : "0", 1);
        if (e->text)
            EVP_DigestUpdate(ctx, e->text, strlen(e->text) + 1);
    }
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
        sprintf(r->dataset_hash + 2 * i, "%02x", md[i]);
}

/* Entries to train on, and each one's flipped twin for random_flip. */
static df_status index_entries(run *r)
{
    size_t n = df_latent_cache_count(r->cache);
    if (n == 0)
        return df_fail(DF_ERR_ARG, "the latent cache holds no entries");
    r->base = malloc(n * sizeof *r->base);
    r->twin = malloc(n * sizeof *r->twin);
    if (!r->base || !r->twin)
        return df_fail(DF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const df_latent_entry *e = df_latent_cache_entry(r->cache, i);
        if (!e->text)
            return df_fail(DF_ERR_ARG, "%s: no caption (\"text\") in the cache: the dataset must "
                           "be captioned (df-caption) before training", e->file_name);
        if (r->o->random_flip && e->flip)
            continue;   // reached through its twin
        r->twin[r->nbase] = -1;
        r->base[r->nbase++] = (int64_t)i;
    }
    // entries are sorted by file_name then flip: a twin directly follows its image
    for (size_t k = 0; r->o->random_flip && k < r->nbase; k++) {
        size_t i = (size_t)r->base[k];
        const df_latent_entry *e = df_latent_cache_entry(r->cache, i);
        if (i + 1 < n) {
            const df_latent_entry *f = df_latent_cache_entry(r->cache, i + 1);
            if (f->flip && !strcmp(f->file_name, e->file_name))
                r->twin[k] = (int64_t)i + 1;
        }
    }
    return DF_OK;
}

/* The run's configuration as JSON: a resume must match it (max_steps,
 * save_every and keep may change). */
static char *config_json(const run *r)
{
    const df_train_opts *o = r->o;
    json_t *j = json_pack("{s:s, s:s, s:i, s:f, s:s, s:s, s:b, s:f, s:f, s:s, s:I, s:i, s:i, "
                          "s:f, s:f, s:f, s:f, s:b, s:b, s:s, s:I, s:I}",
                          "model", r->model_hash, "dataset", r->dataset_hash, "rank", o->rank,
                          "alpha", (double)o->alpha, "unet_targets", o->unet_targets,
                          "text_targets", o->text_targets, "train_text_encoder",
                          o->train_text_encoder, "unet_lr", o->unet_lr, "text_lr", o->text_lr,
                          "lr_schedule", o->lr_schedule, "warmup", (json_int_t)o->warmup_steps,
                          "batch_size", o->batch_size, "accum", o->accum, "max_grad_norm",
                          o->max_grad_norm, "snr_gamma", o->snr_gamma, "noise_offset",
                          o->noise_offset, "caption_dropout", o->caption_dropout,
                          "random_flip", o->random_flip, "use_mean", o->use_mean, "init",
                          o->init, "seed", (json_int_t)o->seed, "epochs", (json_int_t)o->epochs);
    char *s = j ? json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* Name the first setting that differs between two configurations. */
static df_status config_differs(const char *saved, const char *now)
{
    json_t *a = json_loads(saved, 0, NULL), *b = json_loads(now, 0, NULL);
    const char *key;
    json_t *v;
    df_status s = DF_OK;
    json_object_foreach(b, key, v) {
        json_t *w = json_object_get(a, key);
        if (!w || !json_equal(v, w)) {
            char *x = w ? json_dumps(w, JSON_ENCODE_ANY) : NULL, *y = json_dumps(v, JSON_ENCODE_ANY);
            s = df_fail(DF_ERR_ARG, "--resume: the checkpoint was made with another "
                        "configuration: %s was %s, now %s", key, x ? x : "absent", y ? y : "?");
            free(x);
            free(y);
            break;
        }
    }
    if (!a || !b)
        s = df_fail(DF_ERR_FORMAT, "--resume: unreadable configuration in the checkpoint");
    json_decref(a);
    json_decref(b);
    return s;
}

/* One run at a time in an output directory: two would interleave their
 * checkpoints. The lock goes with the process, however it ends. */
static df_status lock_out_dir(run *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/.lock", r->o->out_dir);
    r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (r->lock_fd < 0)
        return df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB))
        return df_fail(DF_ERR_IO, "%s is in use by another df-train run", r->o->out_dir);
    return DF_OK;
}

/* A fresh run (no --resume) must not mix its checkpoints with an earlier
 * run's: refuse, and say how to go on. */
static df_status check_fresh(run *r)
{
    if (r->o->resume)
        return DF_OK;
    char pat[4096];
    snprintf(pat, sizeof pat, "%s/checkpoint-*", r->o->out_dir);
    glob_t g;
    int found = glob(pat, 0, NULL, &g) == 0;
    if (found)
        globfree(&g);
    if (found)
        return df_fail(DF_ERR_ARG, "%s holds checkpoints of an earlier run: --resume continues "
                       "it; remove them (or choose another --out) to start afresh",
                       r->o->out_dir);
    return DF_OK;
}

/* Without text-encoder training the text states can come from the cache
 * (df-encode-latents --text-embeddings): when every entry has them and
 * they were made by this model's text encoder. Caption dropout then uses
 * the states of "" computed here once. */
static df_status setup_cached_text(run *r)
{
    int T, D;
    df_latent_cache_text_shape(r->cache, &T, &D);
    if (r->o->train_text_encoder || T == 0)
        return DF_OK;
    for (size_t i = 0; i < df_latent_cache_count(r->cache); i++)
        if (!df_latent_cache_entry(r->cache, i)->has_text_embedding)
            return DF_OK;
    char te[65];
    df_status s = df_latent_cache_text_encoder_identity(r->o->model_dir, te);
    if (s)
        return s;
    const char *cached = df_latent_cache_text_encoder_hash(r->cache);
    if (!cached || strcmp(cached, te) || T != r->T || D != r->D) {
        df_warn("the cache's text embeddings were made by another text encoder: computing them "
                "again");
        return DF_OK;
    }
    if (!(r->empty_text = malloc((size_t)T * D * sizeof *r->empty_text)))
        return df_fail(DF_ERR_NOMEM, "out of memory");
    const char *empty = "";
    if ((s = df_clip_encode_text(r->te, r->tok, &empty, 1, r->empty_text, NULL)))
        return s;
    r->cached_text = true;
    df_warn("text states from the cache (the text encoder is not trained)");
    return DF_OK;
}

static df_status load_all(run *r)
{
    const df_train_opts *o = r->o;
    char path[4096];
    df_status s;
    if (o->rank < 1)
        return df_fail(DF_ERR_ARG, "--rank must be at least 1");
    if ((s = check_out_dir(o->out_dir)) || (s = lock_out_dir(r)) || (s = check_fresh(r)))
        return s;
    if ((s = df_latent_cache_open(o->cache_dirs, o->ncache, &r->cache)))
        return df_fail(s, "--cache: %s", df_last_error());
    if ((s = df_latent_cache_vae_identity(o->model_dir, r->vae_hash)))
        return s;
    if (strcmp(r->vae_hash, df_latent_cache_vae_hash(r->cache)))
        return df_fail(DF_ERR_ARG, "the latent cache was made with another VAE (cache %.12s, "
                       "model %.12s): encode the dataset again with df-encode-latents --model %s",
                       df_latent_cache_vae_hash(r->cache), r->vae_hash, o->model_dir);
    df_latent_cache_latent_size(r->cache, &r->C, &r->h, &r->w);
    r->scaling = df_latent_cache_scaling_factor(r->cache);
    if ((s = index_entries(r)))
        return s;
    snprintf(path, sizeof path, "%s/unet", o->model_dir);
    if ((s = df_unet_load(path, NULL, &r->unet)))
        return s;
    if (df_unet_in_channels(r->unet) != r->C)
        return df_fail(DF_ERR_SHAPE, "the cache's latents have %d channels, the UNet takes %d",
                       r->C, df_unet_in_channels(r->unet));
    snprintf(path, sizeof path, "%s/text_encoder", o->model_dir);
    if ((s = df_clip_load(path, NULL, &r->te)))
        return s;
    snprintf(path, sizeof path, "%s/tokenizer", o->model_dir);
    if ((s = df_tokenizer_load(path, &r->tok)))
        return s;
    if ((s = df_scheduler_load(o->model_dir, "ddpm", NULL, &r->sched)))
        return s;
    r->T = df_tokenizer_max_length(r->tok);
    r->D = df_clip_get_config(r->te)->hidden_size;
    if (df_unet_cross_attention_dim(r->unet) != r->D)
        return df_fail(DF_ERR_SHAPE, "the UNet attends to %d-wide text states, the text encoder "
                       "gives %d", df_unet_cross_attention_dim(r->unet), r->D);
    if (!(r->ut_buf = strdup(o->unet_targets)) || !(r->tt_buf = strdup(o->text_targets)))
        return df_fail(DF_ERR_NOMEM, "out of memory");
    r->nut = split_list(r->ut_buf, r->ut_list);
    r->ntt = o->train_text_encoder ? split_list(r->tt_buf, r->tt_list) : 0;
    if ((s = df_lora_set_create(&r->set, df_unet_weights(r->unet), r->ut_list, r->nut,
                                o->train_text_encoder ? df_clip_weights(r->te) : NULL,
                                r->tt_list, r->ntt, o->rank, o->alpha)))
        return s;
    if ((s = df_unet_train_create(r->unet, &r->set, o->checkpointing, &r->ut)))
        return s;
    if (o->train_text_encoder && (s = df_clip_train_create(r->te, &r->set, &r->ct)))
        return s;
    if ((s = df_adamw_init(&r->opt, r->set.nfloats)))
        return s;
    if ((s = model_identity(o->model_dir, r->model_hash)) || (s = setup_cached_text(r)))
        return s;
    dataset_identity(r);
    return DF_OK;
}

/* ------------------------------------------------------------- data */

/* A new epoch's order: Fisher-Yates over the base entries. */
static df_status new_order(run *r)
{
    df_train_state *st = &r->st;
    if (!st->order || st->n_order != r->nbase) {
        free(st->order);
        if (!(st->order = malloc(r->nbase * sizeof *st->order)))
            return df_fail(DF_ERR_NOMEM, "out of memory");
        st->n_order = r->nbase;
    }
    for (size_t i = 0; i < r->nbase; i++)
        st->order[i] = (int64_t)i;
    for (size_t i = r->nbase; i > 1; i--) {
        size_t j = df_rng_u32(&st->rng) % i;
        int64_t t = st->order[i - 1];
        st->order[i - 1] = st->order[j];
        st->order[j] = t;
    }
    st->pos = 0;
    return DF_OK;
}

/* A uniform float in [0,1) from the generator. */
static double uniform(df_rng *g) { return df_rng_u32(g) / 4294967296.0; }

typedef struct {
    int B;
    float *lat, *noise, *mean, *logvar, *tmp;
    int64_t *t;
    int32_t *ids;
    float *ehs;
} batch_buf;

static void batch_free(batch_buf *b)
{
    free(b->lat);
    free(b->noise);
    free(b->mean);
    free(b->logvar);
    free(b->tmp);
    free(b->t);
    free(b->ids);
    free(b->ehs);
}

static df_status batch_alloc(run *r, batch_buf *b)
{
    size_t per = (size_t)r->C * r->h * r->w, n = (size_t)r->o->batch_size * per;
    b->lat = malloc(n * sizeof(float));
    b->noise = malloc(n * sizeof(float));
    b->mean = malloc(per * sizeof(float));
    b->logvar = malloc(per * sizeof(float));
    b->tmp = malloc(n * sizeof(float));
    b->t = malloc((size_t)r->o->batch_size * sizeof *b->t);
    b->ids = malloc((size_t)r->o->batch_size * r->T * sizeof *b->ids);
    b->ehs = malloc((size_t)r->o->batch_size * r->T * r->D * sizeof *b->ehs);
    if (!b->lat || !b->noise || !b->mean || !b->logvar || !b->tmp || !b->t || !b->ids || !b->ehs)
        return df_fail(DF_ERR_NOMEM, "out of memory for batch %d", r->o->batch_size);
    return DF_OK;
}

/* The next micro-batch of the epoch (shorter at its end; b->B = 0 when the
 * epoch is done). Draw order, fixed: per item flip and caption dropout,
 * then the latent sample, the noise, the noise offset, the timesteps. */
static df_status next_batch(run *r, batch_buf *b)
{
    const df_train_opts *o = r->o;
    df_train_state *st = &r->st;
    df_rng *g = &st->rng;
    size_t per = (size_t)r->C * r->h * r->w;
    const char *texts[256];
    b->B = 0;
    while (b->B < o->batch_size && st->pos < (long)r->nbase) {
        size_t k = (size_t)st->order[st->pos++];
        int64_t idx = r->base[k];
        if (o->random_flip && uniform(g) < 0.5 && r->twin[k] >= 0)
            idx = r->twin[k];
        const df_latent_entry *e = df_latent_cache_entry(r->cache, (size_t)idx);
        bool drop = o->caption_dropout > 0 && uniform(g) < o->caption_dropout;
        texts[b->B] = drop ? "" : e->text;
        size_t ntext = (size_t)r->T * r->D;
        float *emb = r->cached_text && !drop ? b->ehs + b->B * ntext : NULL;
        df_status s = df_latent_cache_read(r->cache, (size_t)idx, b->lat + b->B * per,
                                           b->tmp + b->B * per, emb);
        if (s)
            return s;
        if (r->cached_text && drop)
            memcpy(b->ehs + b->B * ntext, r->empty_text, ntext * sizeof *b->ehs);
        b->B++;
    }
    if (b->B == 0)
        return DF_OK;
    size_t n = (size_t)b->B * per;
    // latents = (mean + exp(logvar / 2) * eps) * scaling_factor (latent_dist.sample())
    if (!o->use_mean) {
        df_rng_randn(g, b->noise, n);
        for (size_t i = 0; i < n; i++)
            b->lat[i] = b->lat[i] + expf(0.5f * b->tmp[i]) * b->noise[i];
    }
    for (size_t i = 0; i < n; i++)
        b->lat[i] *= r->scaling;
    df_rng_randn(g, b->noise, n);
    if (o->noise_offset > 0) {
        // diffusers: noise += offset * randn(B, C, 1, 1)
        float off[1024];
        size_t nc = (size_t)b->B * r->C < 1024 ? (size_t)b->B * r->C : 1024;
        df_rng_randn(g, off, nc);
        for (size_t c = 0; c < nc; c++)
            for (size_t i = 0; i < (size_t)r->h * r->w; i++)
                b->noise[c * r->h * r->w + i] += (float)o->noise_offset * off[c];
    }
    int nt = df_scheduler_num_train_timesteps(r->sched);
    for (int i = 0; i < b->B; i++)
        b->t[i] = df_rng_u32(g) % (uint32_t)nt;
    if (o->train_text_encoder) {
        for (int i = 0; i < b->B; i++) {
            df_status s = df_tokenizer_encode(r->tok, texts[i], b->ids + (size_t)i * r->T, NULL,
                                              NULL);
            if (s)
                return s;
        }
        return DF_OK;
    }
    return r->cached_text ? DF_OK : df_clip_encode_text(r->te, r->tok, texts, b->B, b->ehs, NULL);
}

/* ------------------------------------------------------------ saving */

static df_status save_final(run *r, const char *path, long epochs_done)
{
    const df_train_opts *o = r->o;
    char v[24][96];
    int k = 0;
#define KV(fmt, ...) snprintf(v[k++], sizeof v[0], fmt, __VA_ARGS__)
    KV("%d", o->rank);
    KV("%g", (double)o->alpha);
    KV("%g", o->unet_lr);
    KV("%g", o->train_text_encoder ? o->text_lr : 0.0);
    KV("%ld", r->st.step);
    KV("%ld", epochs_done);
    KV("%d", df_latent_cache_resolution(r->cache));
    KV("%g", o->noise_offset);
    KV("%g", o->snr_gamma);
    KV("%d", o->batch_size);
    KV("%d", o->accum);
    KV("%llu", (unsigned long long)o->seed);
    KV("%zu", r->nbase);
    KV("%ld", (long)r->started);
    KV("%ld", (long)time(NULL));
    KV("%g", o->max_grad_norm);
    KV("%g", o->caption_dropout);
    KV("%ld", o->warmup_steps);
#undef KV
    const char *meta[] = {
        "ss_network_module", "networks.lora", "ss_network_dim", v[0], "ss_network_alpha", v[1],
        "ss_learning_rate", v[2], "ss_unet_lr", v[2], "ss_text_encoder_lr", v[3],
        "ss_steps", v[4], "ss_max_train_steps", v[4], "ss_epoch", v[5], "ss_num_epochs", v[5],
        "ss_resolution", v[6], "ss_noise_offset", v[7], "ss_min_snr_gamma", v[8],
        "ss_batch_size_per_device", v[9], "ss_gradient_accumulation_steps", v[10],
        "ss_seed", v[11], "ss_num_train_images", v[12], "ss_training_started_at", v[13],
        "ss_training_finished_at", v[14], "ss_max_grad_norm", v[15],
        "ss_caption_dropout_rate", v[16], "ss_lr_warmup_steps", v[17],
        "ss_lr_scheduler", o->lr_schedule, "ss_sd_model_hash", r->model_hash,
        "ss_dataset_hash", r->dataset_hash, "ss_vae_hash", r->vae_hash,
        "ss_v2", "True", "ss_base_model_version", "sd_v2",
        "ss_gradient_checkpointing", o->checkpointing ? "True" : "False",
        "ss_caption_model", r->caption_model ? r->caption_model : "",
        "ss_lora_init", o->init,
        "diffyface_format", o->format == DF_LORA_FMT_KOHYA ? "kohya" : "peft", NULL};
    return df_lora_set_save(&r->set, path, o->format, meta);
}

/* A checkpoint of the current step; `notify` runs the on_saved hook (the
 * final save notifies once, for the final LoRA). A resume with nothing
 * left to do finds this step's checkpoint already there and keeps it. */
static df_status save_checkpoint(run *r, bool notify)
{
    char done[4096];
    struct stat sb;
    snprintf(done, sizeof done, "%s/checkpoint-%ld", r->o->out_dir, r->st.step);
    if (r->resumed_at == r->st.step && !stat(done, &sb))
        return DF_OK;
    df_status s = df_checkpoint_save(r->o->out_dir, &r->set, &r->opt, &r->st,
                                     r->o->keep_checkpoints);
    if (!s && notify && r->hk && r->hk->on_saved) {
        char path[4200];
        snprintf(path, sizeof path, "%s/lora.safetensors", done);
        r->hk->on_saved(r->hk->ctx, r->st.step, path, false);
    }
    return s;
}

/* ------------------------------------------------------------- loop */

static df_status optimizer_step(run *r, double *norm)
{
    const df_train_opts *o = r->o;
    double coef;
    *norm = df_grad_clip(r->set.grads, r->set.nfloats, o->max_grad_norm, &coef);
    if (!isfinite(*norm))
        return df_fail(DF_ERR_NUMERIC, "step %ld: the gradient is not finite (NaN or Inf); "
                       "lower the learning rate", r->st.step + 1);
    double mult = df_lr_multiplier(o->lr_schedule, r->st.step, o->warmup_steps, o->max_steps);
    df_adamw_hparams hu = {o->unet_lr * mult, 0.9, 0.999, 1e-8, 1e-2};
    df_adamw_hparams ht = {o->text_lr * mult, 0.9, 0.999, 1e-8, 1e-2};
    df_adamw_begin_step(&r->opt);
    size_t nu = r->set.n_unet_floats;
    df_adamw_update(&r->opt, 0, r->set.params, r->set.grads, nu, &hu);
    if (r->set.nfloats > nu)
        df_adamw_update(&r->opt, nu, r->set.params + nu, r->set.grads + nu,
                        r->set.nfloats - nu, &ht);
    df_lora_set_zero_grad(&r->set);
    r->st.step++;
    return DF_OK;
}

static df_status train_loop(run *r)
{
    const df_train_opts *o = r->o;
    batch_buf b = {0};
    df_status s = batch_alloc(r, &b);
    df_train_model tm = {.unet = r->ut, .text = r->ct, .sched = r->sched,
                         .snr_gamma = o->snr_gamma};
    double t0 = df_now();
    while (!s && r->st.step < o->max_steps && (o->epochs <= 0 || r->st.epoch < o->epochs)) {
        double ts = df_now(), loss_sum = 0;
        int images = 0, micro = 0;
        for (int a = 0; !s && a < o->accum; a++) {
            if (r->st.pos >= (long)r->nbase) {   // epoch done
                r->st.epoch++;
                if (o->epochs > 0 && r->st.epoch >= o->epochs)
                    break;
                if ((s = new_order(r)))
                    break;
            }
            if ((s = next_batch(r, &b)) || b.B == 0)
                break;
            df_train_batch tb = {.B = b.B, .C = r->C, .h = r->h, .w = r->w, .T = r->T,
                                 .D = r->D, .latents = b.lat, .noise = b.noise,
                                 .timesteps = b.t, .ids = b.ids, .ehs = b.ehs};
            float loss;
            s = df_train_step(&tm, &tb, 1.0f / (float)o->accum, &loss, NULL);
            loss_sum += loss;
            images += b.B;
            micro++;
        }
        if (s || micro == 0)
            break;
        double norm;
        if ((s = optimizer_step(r, &norm)))
            break;
        double now = df_now();
        double mult = df_lr_multiplier(o->lr_schedule, r->st.step - 1, o->warmup_steps,
                                       o->max_steps);
        df_train_metrics m = {.step = r->st.step, .epoch = r->st.epoch, .max_steps = o->max_steps,
                              .loss = loss_sum / micro, .lr_unet = o->unet_lr * mult,
                              .lr_text = o->train_text_encoder ? o->text_lr * mult : 0,
                              .grad_norm = norm, .images_per_s = images / (now - ts),
                              .seconds = now - t0, .images = images};
        if (r->hk && r->hk->on_step)
            r->hk->on_step(r->hk->ctx, &m);
        if (o->save_every > 0 && r->st.step % o->save_every == 0 && r->st.step < o->max_steps)
            s = save_checkpoint(r, true);
    }
    batch_free(&b);
    return s;
}

/* The caption model(s) named by the records (df-caption's "caption_model"),
 * from the cache indexes, which keep each record's fields: distinct values
 * joined by ",". */
static void find_caption_model(run *r)
{
    char buf[512] = "";
    for (int d = 0; d < r->o->ncache; d++) {
        char pat[4096];
        snprintf(pat, sizeof pat, "%s/index*.jsonl", r->o->cache_dirs[d]);
        glob_t g;
        if (glob(pat, 0, NULL, &g))
            continue;
        for (size_t i = 0; i < g.gl_pathc; i++) {
            FILE *f = fopen(g.gl_pathv[i], "r");
            char *line = NULL;
            size_t cap = 0;
            while (f && getline(&line, &cap, f) > 0) {
                json_t *j = json_loads(line, 0, NULL);
                const char *m = json_string_value(json_object_get(j, "caption_model"));
                if (m && !strstr(buf, m) && strlen(buf) + strlen(m) + 2 < sizeof buf) {
                    if (*buf)
                        strcat(buf, ",");
                    strcat(buf, m);
                }
                json_decref(j);
            }
            free(line);
            if (f)
                fclose(f);
        }
        globfree(&g);
    }
    r->caption_model = *buf ? strdup(buf) : NULL;
}

static void run_free(run *r)
{
    df_unet_train_free(r->ut);
    df_clip_train_free(r->ct);
    df_adamw_free(&r->opt);
    df_lora_set_free(&r->set);
    df_train_state_free(&r->st);
    df_scheduler_free(r->sched);
    df_tokenizer_free(r->tok);
    df_clip_free(r->te);
    df_unet_free(r->unet);
    df_latent_cache_close(r->cache);
    free(r->base);
    free(r->twin);
    free(r->ut_buf);
    free(r->tt_buf);
    free(r->caption_model);
    free(r->empty_text);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
}

df_status df_train_run(const df_train_opts *o, const df_train_hooks *hk)
{
    run r;
    memset(&r, 0, sizeof r);
    r.o = o, r.hk = hk;
    r.started = time(NULL);
    r.resumed_at = -1;
    r.lock_fd = -1;
    df_status s = load_all(&r);
    char *cfg = s ? NULL : config_json(&r);
    if (!s && !cfg)
        s = df_fail(DF_ERR_NOMEM, "out of memory");
    find_caption_model(&r);
    if (!s && o->resume) {
        char latest[4096];
        struct stat sb;
        snprintf(latest, sizeof latest, "%s/latest", o->out_dir);
        if (stat(latest, &sb)) {   // nothing to resume: a fresh start
            df_warn("--resume: no checkpoint in %s, starting from step 0", o->out_dir);
        } else if (!(s = df_checkpoint_load(o->out_dir, &r.set, &r.opt, &r.st))) {
            s = r.st.config_json ? config_differs(r.st.config_json, cfg)
                                 : df_fail(DF_ERR_FORMAT, "--resume: checkpoint without its "
                                           "configuration");
            if (!s && r.st.n_order != r.nbase)
                s = df_fail(DF_ERR_ARG, "--resume: the checkpoint's data order has %zu entries, "
                            "the cache %zu", r.st.n_order, r.nbase);
            if (!s && r.st.step > o->max_steps)
                s = df_fail(DF_ERR_ARG, "--resume: the checkpoint is at step %ld, past "
                            "--max-steps %ld", r.st.step, o->max_steps);
            r.resumed_at = r.st.step;
        }
    }
    if (!s && r.st.config_json == NULL) {   // a fresh run
        df_rng_seed(&r.st.rng, o->seed);
        r.st.seed = o->seed;
        s = df_lora_set_init(&r.set, o->init, &r.st.rng);
        if (!s)
            s = new_order(&r);
    }
    if (!s) {
        free(r.st.config_json);
        r.st.config_json = cfg;
        cfg = NULL;
        if (hk && hk->on_start)
            hk->on_start(hk->ctx, r.st.step, o->max_steps, r.nbase);
        s = train_loop(&r);
    }
    if (!s) {   // the last checkpoint and the final LoRA, always
        char path[4096];
        snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", o->out_dir);
        s = save_checkpoint(&r, false);
        if (!s)
            s = save_final(&r, path, r.st.epoch + (r.st.pos > 0));
        if (!s && hk && hk->on_saved)
            hk->on_saved(hk->ctx, r.st.step, path, true);
    }
    free(cfg);
    run_free(&r);
    return s;
}
