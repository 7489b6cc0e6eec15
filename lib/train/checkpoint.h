/* checkpoint.h - df-train's resumable state on disk: LoRA params, AdamW
 * moments, data-order position and the generator, so that a run stopped and
 * resumed gives bit for bit the run that was never stopped.
 *
 * Layout under the output directory:
 *   checkpoint-<step>/lora.safetensors       params (PEFT keys, df_lora_set_save: a
 *                                            LoRA every tool can load)
 *   checkpoint-<step>/optimizer.safetensors  exp_avg/<peft key>, exp_avg_sq/<peft key>
 *                                            (F32), step (I64 scalar); when alpha != rank
 *                                            also param/<peft key> of every B, the exact
 *                                            values (lora.safetensors holds B * alpha/rank)
 *   checkpoint-<step>/state.json             step, epoch, pos, seed, the generator
 *                                            (mt words as hex, index, has_next_normal,
 *                                            next_normal as its IEEE bit pattern), the
 *                                            epoch's order, rank/alpha/params/floats, and
 *                                            config_json (the run's configuration, a string)
 *   latest                                   "checkpoint-<step>\n"
 * Every file is written as name.tmp, fsync'd and renamed; the checkpoint is
 * built in checkpoint-<step>.tmp/ and renamed into place when complete (an
 * older checkpoint of the same step is swapped out first), then `latest` is
 * replaced. Names ending in ".tmp" are leftovers of an interrupted save and
 * are never loaded. Tested by tests/unit/test_checkpoint.c. */
#ifndef DF_CHECKPOINT_H
#define DF_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "lora_params.h"
#include "optim.h"
#include "rng.h"
#include "status.h"

typedef struct {
    long step, epoch;          /* optimizer steps done; epoch index */
    long pos;                  /* position in the epoch's data order */
    uint64_t seed;
    df_rng rng;                /* full generator state, saved bit-exactly */
    size_t n_order;
    int64_t *order;            /* the current epoch's permutation of entry indices */
    char *config_json;         /* the run's configuration (a JSON text chosen by df-train;
                                * NULL is saved as absent), to detect a resume with another */
} df_train_state;

/* Save into dir (created if missing) as described above. keep > 0 keeps
 * only the `keep` newest checkpoints (by step), deleting older ones once the
 * new one is complete; 0 keeps all. A failure to delete an old checkpoint is
 * reported (DF_ERR_IO) although the new checkpoint is then complete. */
df_status df_checkpoint_save(const char *dir, const df_lora_set *s, const df_adamw *o,
                             const df_train_state *st, int keep);

/* Load the checkpoint `dir/latest` names (when latest is missing or names a
 * checkpoint that is not there: the complete checkpoint-<N> with the highest N).
 * s must have been created with the same targets, rank and alpha (else a clear
 * error naming the difference); o must be df_adamw_init'ed with s->nfloats, or
 * zeroed ({0}) to be allocated here. st is overwritten (free the old one
 * first) and must be freed with df_train_state_free. DF_ERR_NOTFOUND when dir
 * holds no checkpoint. Nothing of s, o or st is changed on failure. */
df_status df_checkpoint_load(const char *dir, df_lora_set *s, df_adamw *o, df_train_state *st);

void df_train_state_free(df_train_state *st);

#endif
