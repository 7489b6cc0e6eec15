/* latent_cache.h - the latent cache df-encode-latents writes and df-train
 * reads: VAE posterior means and log-variances (and optionally CLIP text
 * embeddings) of a dataset's images, so training never runs the VAE encoder.
 *
 * Layout of a cache directory:
 *   index.jsonl, index.K-of-N.jsonl   one JSON line per entry: the dataset
 *       record's fields plus file_name, text, shard, index, size [C,h,w],
 *       flip, resolution, has_text_embedding and encoded_at (UTC time,
 *       "2026-01-05T12:34:56.789Z"). A writer run without --shard
 *       appends to index.jsonl, shard K of N to index.K-of-N.jsonl.
 *   shard-00000.safetensors, shard-K-of-N-00000.safetensors
 *       tensors mean/<i>, logvar/<i> (F32 [C,h,w]) and text_embedding/<i>
 *       (F32 [T,hidden]) for the entries with index i; metadata format
 *       "diffyface-latents-1", vae_hash, resolution, latent_channels,
 *       latent_height, latent_width, scaling_factor, and text_encoder_hash
 *       when it holds text embeddings.
 *
 * Crash safety: a shard is written to a .tmp file, fsync'ed, renamed and
 * the directory fsync'ed before its index lines are appended (one write,
 * then fsync). A kill at any moment leaves each entry either fully present
 * (its line and its shard) or absent; a torn last index line is dropped by
 * readers and cut off by the next writer of that index file, which also
 * removes its own series' *.tmp files and shards no index line names.
 *
 * Entries are keyed by (file_name, flip) within a directory (a directory
 * holds one resolution and one VAE: the writer refuses to mix). When a key
 * appears more than once in a directory, the newest line wins (encoded_at;
 * on a tie the line read last: index.jsonl first, then index.*.jsonl in
 * name order, lines in file order), so a rerun that re-encodes an entry
 * (changed caption, text embedding added) replaces it, whatever --shard
 * either run had. Across directories nothing is deduplicated: two datasets
 * may both have a "00001.jpg".
 *
 * Tested by tests/unit/test_latent_cache.c (encode against the fixture
 * reference, writer/reader round trip, torn lines, consistency errors) and
 * tests/tools/test-df-encode-latents.sh (the tool, kills, --shard, --flip). */
#ifndef DF_LATENT_CACHE_H
#define DF_LATENT_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "image.h"
#include "status.h"
#include "vae.h"

#define DF_LATENT_FORMAT "diffyface-latents-1"

/* ---------------------------------------------------------------- reader */

typedef struct {
    char *file_name, *text;      /* text NULL if absent */
    int flip;
    int C, h, w;
    /* where the data is: private */
    int shard; long index; int has_text_embedding;
} df_latent_entry;

typedef struct df_latent_cache df_latent_cache;

/* Open one or more cache dirs (their index.jsonl and index.*.jsonl), check
 * every shard named is present, holds the tensors its entries name with
 * the right shapes, and that all shards agree on format, vae_hash,
 * resolution, latent size and scaling factor (and text_encoder_hash among
 * those that have one); errors name the dir, the shard and what differs.
 * Entries are sorted by file_name, then flip, then the order of dirs. */
df_status df_latent_cache_open(const char *const *dirs, int ndirs, df_latent_cache **out);
void df_latent_cache_close(df_latent_cache *c);
size_t df_latent_cache_count(const df_latent_cache *c);
const df_latent_entry *df_latent_cache_entry(const df_latent_cache *c, size_t i);
/* Copy entry i's mean and logvar (C*h*w floats each) into the caller's
 * buffers; text_emb (T*hidden) may be NULL, and must be NULL for an entry
 * without a text embedding (else DF_ERR_NOTFOUND). Thread-safe. */
df_status df_latent_cache_read(df_latent_cache *c, size_t i, float *mean, float *logvar,
                               float *text_emb);
const char *df_latent_cache_vae_hash(const df_latent_cache *c);
int df_latent_cache_resolution(const df_latent_cache *c);
float df_latent_cache_scaling_factor(const df_latent_cache *c);
/* Latent shape shared by every entry (0s for an empty cache). */
void df_latent_cache_latent_size(const df_latent_cache *c, int *C, int *h, int *w);
/* Text embedding shape (0, 0 when no entry has one) and the hash of the
 * text encoder that made them (NULL then). */
void df_latent_cache_text_shape(const df_latent_cache *c, int *T, int *hidden);
const char *df_latent_cache_text_encoder_hash(const df_latent_cache *c);

/* The same VAE identity computation the writer uses, so df-train can
 * compare the model's VAE with the cache's: sha256 over the bytes of
 * model_dir/vae/config.json followed by those of its weight file
 * (diffusion_pytorch_model.safetensors, else model.safetensors: the file
 * df_vae_load reads without a variant), as 64 lowercase hex digits. */
df_status df_latent_cache_vae_identity(const char *model_dir, char out_hex[65]);
/* The text encoder's identity: sha256 over text_encoder/config.json, its
 * weight file, and tokenizer/vocab.json, merges.txt, special_tokens_map.json
 * and tokenizer_config.json (those present), in that order: the tokenizer
 * decides the embeddings as much as the weights do. */
df_status df_latent_cache_text_encoder_identity(const char *model_dir, char out_hex[65]);

/* ---------------------------------------------------------------- encoding */

/* img (H,W,3 uint8 RGB) -> chw (3,H,W) float in [-1,1] as x/127.5 - 1,
 * mirrored left-right when flip. */
void df_latent_pixels(const df_image *img, int flip, float *chw);

/* images (B,3,H,W) in [-1,1] -> the posterior of the VAE encoder: mean and
 * logvar (B,L,h,w), logvar clamped to [-30,20] (diffusers'
 * DiagonalGaussianDistribution). */
df_status df_latent_encode(df_vae *v, const float *images, int B, int H, int W, float *mean,
                           float *logvar);

/* ---------------------------------------------------------------- writer */

typedef struct {
    const char *dir;
    int shard_k, shard_n;            /* --shard K/N (1 <= K <= N), or 0, 0 */
    const char *vae_hash;
    int resolution, latent_channels, latent_h, latent_w;
    float scaling_factor;
    const char *text_encoder_hash;   /* NULL: no text embeddings */
    int text_len, text_hidden;
} df_latent_writer_config;

typedef struct df_latent_writer df_latent_writer;

/* Create dir if missing, lock this writer's index file (a second writer
 * of the same --shard fails at once), repair a torn last line, remove this
 * series' leftovers (*.tmp, shards no index names), and load every index
 * of the dir for lookups. Refuses a dir whose shards were made with another
 * VAE, resolution or latent size (the error says which). */
df_status df_latent_writer_open(const df_latent_writer_config *cfg, df_latent_writer **out);

/* Is (file_name, flip) in the cache, with this text (when text != NULL)
 * and a text embedding (when need_text_embedding)? On a hit, *shard (valid
 * while w is open) and *index say where. Entries added but not yet flushed
 * count as hits. */
bool df_latent_writer_lookup(df_latent_writer *w, const char *file_name, int flip,
                             const char *text, bool need_text_embedding, const char **shard,
                             long *index);

/* Queue an entry for the current shard: rec is the dataset record (its
 * fields go into the index line; it must have file_name and may have
 * text), mean and logvar (C*h*w floats) and text_emb (T*hidden, NULL
 * without text embeddings) are copied. *shard (valid until the next add
 * after a flush) and *index say where it will be. */
df_status df_latent_writer_add(df_latent_writer *w, const json_t *rec, int flip,
                               const float *mean, const float *logvar, const float *text_emb,
                               const char **shard, long *index);
/* Entries queued and not yet on disk. */
size_t df_latent_writer_pending(const df_latent_writer *w);
/* Write the queued entries: shard (tmp, fsync, rename, fsync dir), then
 * their index lines (one write, fsync). A failure loses only them. */
df_status df_latent_writer_flush(df_latent_writer *w);
/* Flush, then free. w may be NULL. */
df_status df_latent_writer_close(df_latent_writer *w);

#endif
