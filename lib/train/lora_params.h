/* lora_params.h - the trainable LoRA parameter set of df-train: which base
 * weights get an adapter, the A/B values and their gradients in one block
 * each, initialisation, and loading/saving in the three LoRA key formats
 * that lib/models/lora.c reads.
 *
 * Math (peft): y = W x + b + (alpha/rank) * B (A x), A = lora_A = "down"
 * (rank, in), B = lora_B = "up" (out, rank).
 *
 * alpha in files: kohya files store it (".alpha" per module); PEFT and
 * diffusers files do not, and every tool (diffusers, peft, lib/models/lora.c) loads
 * them with alpha = rank. So df_lora_set_save writes PEFT/diffusers files
 * with B multiplied by alpha/rank (the same function at factor 1), and
 * df_lora_set_load divides a B read from a file without alpha by alpha/rank.
 * With alpha == rank nothing is scaled. A file with an explicit alpha that
 * differs from the set's is refused.
 * Tested by tests/unit/test_lora_params.c (fixture model, the fixtures'
 * three LoRA files, round trips through lib/models/lora.c's merge). */
#ifndef DF_LORA_PARAMS_H
#define DF_LORA_PARAMS_H

#include <stddef.h>

#include "rng.h"
#include "status.h"
#include "weights.h"

enum { DF_LORA_UNET = 0, DF_LORA_TE = 1 };

typedef struct {
    char *module;      /* "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" or
                        * "text_model.encoder.layers.0.self_attn.q_proj" (weight <module>.weight) */
    int component;     /* DF_LORA_UNET / DF_LORA_TE */
    int in, out;       /* base weight (out, in) */
    float *A, *B;      /* A = lora_A = down (rank, in); B = lora_B = up (out, rank): into s->params */
    float *gA, *gB;    /* gradients, same shapes, into s->grads */
} df_lora_param;

typedef struct {
    df_lora_param *p;
    size_t n;                  /* UNet params first (sorted by module), then text encoder (sorted) */
    int rank;
    float alpha;               /* forward factor = alpha / rank */
    float *params, *grads;     /* one allocation each, nfloats: per param A then B, in p order */
    size_t nfloats, n_unet_floats;   /* params[0 .. n_unet_floats) are the UNet's */
} df_lora_set;

/* Find every 2-D weight "<module>.weight" of unet (may be NULL) whose module
 * is or ends with ".<target>" for a target of unet_targets ("to_q", "to_k",
 * "to_v", "to_out.0"), and likewise in te (may be NULL) with te_targets
 * ("q_proj", "k_proj", "v_proj", "out_proj"). A non-empty target list with no
 * match is DF_ERR_NOTFOUND naming the targets; 1 <= rank <= min(in, out) of
 * every matched weight, else DF_ERR_ARG naming the weight. alpha must be
 * finite and > 0. Params and grads start at zero. */
df_status df_lora_set_create(df_lora_set *s, df_weights *unet, const char *const *unet_targets,
                             int n_ut, df_weights *te, const char *const *te_targets, int n_tt,
                             int rank, float alpha);
void df_lora_set_free(df_lora_set *s);
/* The parameter of `module` in `component`, or NULL. */
df_lora_param *df_lora_set_find(df_lora_set *s, int component, const char *module);
void df_lora_set_zero_grad(df_lora_set *s);

/* peft's initialisations, drawn from rng param by param in p order (A only):
 * "gaussian": A ~ N(0, (1/rank)^2) (torch normal_ = randn * std), B = 0;
 * "kaiming":  A ~ U(-b, b), b = 1/sqrt(in) (kaiming_uniform_ with a = sqrt(5),
 *             torch's uniform_ for float: 24 random bits per element), B = 0.
 * Unknown name -> DF_ERR_ARG. Grads are not touched. */
df_status df_lora_set_init(df_lora_set *s, const char *how, df_rng *rng);

typedef enum { DF_LORA_FMT_PEFT, DF_LORA_FMT_DIFFUSERS, DF_LORA_FMT_KOHYA } df_lora_format;

/* Key of a parameter's tensor in a file: which 0 = A, 1 = B, 2 = alpha (kohya
 * only; "" for the others).
 *   PEFT:      unet.<module>.lora_A.weight / .lora_B.weight,
 *              text_encoder.<module>.lora_A.weight / ...
 *   DIFFUSERS: unet.<module>.lora.down.weight / .lora.up.weight,
 *              text_encoder.<module>.lora_linear_layer.down.weight / .up.weight
 *   KOHYA:     lora_unet_<module, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha,
 *              lora_te_<module ...>...
 * A name that does not fit in cap gives "". */
void df_lora_key(char *buf, size_t cap, const df_lora_param *p, int which, df_lora_format fmt);

/* Set A and B of every parameter from a LoRA file in any format lib/models/lora.c
 * reads (peft lora_A/lora_B with optional base_model.model. prefixes and
 * .default adapter name, diffusers lora.down/up, lora_linear_layer.down/up
 * and the attention-processor form, kohya lora_down/lora_up/alpha). Every
 * parameter must be found with the right shape, and every tensor of the file
 * must belong to a parameter; errors name the tensor or the missing key.
 * Alpha: see the top of this file. Nothing is changed unless the whole file
 * loads. */
df_status df_lora_set_load(df_lora_set *s, const char *path);

/* Write every parameter to `path` (atomically: path.tmp, fsync, rename) in
 * fmt, F32. PEFT and DIFFUSERS carry no alpha, so B is saved multiplied by
 * alpha/rank when alpha != rank (see the top of this file); KOHYA writes B as
 * it is plus an F32 scalar ".alpha" per module. meta_kv: NULL or a
 * NULL-terminated list of key, value strings for the header's __metadata__;
 * "format": "pt" is always written (and wins over a "format" in meta_kv). */
df_status df_lora_set_save(const df_lora_set *s, const char *path, df_lora_format fmt,
                           const char *const *meta_kv);

#endif
