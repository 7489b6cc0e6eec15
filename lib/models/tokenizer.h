/* tokenizer.h - the CLIP byte-level BPE tokenizer, computing what
 * transformers' slow CLIPTokenizer computes without ftfy (the setup of the
 * reference fixtures and of most installs), with the padding and truncation
 * StableDiffusionPipeline.encode_prompt asks for.
 *
 * Loaded from a diffusers `tokenizer/` folder: vocab.json, merges.txt,
 * special_tokens_map.json (its pad token overrides tokenizer_config.json's:
 * SD 2.x pads with "!" = id 0, SD 1.x with "<|endoftext|>") and
 * tokenizer_config.json (model_max_length, 77).
 *
 * Steps, in transformers' order: the special tokens (bos, eos, unk, pad) are
 * cut out of the raw text first, so every literal "!" is the pad id; each
 * remaining piece is cleaned (control and format characters dropped,
 * whitespace to ' ', spaces around CJK ideographs), NFC-normalized, split
 * on whitespace and lower-cased word by word (Python's str.lower, final
 * sigma and U+0130 included), split by the CLIP pre-tokenizer regex and
 * byte-level BPE'd with the "</w>" end-of-word marker.
 * Invalid UTF-8 bytes are read as U+FFFD, which the cleaning drops (what
 * Python gives for bytes.decode(errors="replace")).
 *
 * Tested against refs/tokenizer_cases.jsonl by tests/check_fixtures/
 * check_tokenizer.c and for edge cases by tests/unit/test_tokenizer.c. */
#ifndef DF_TOKENIZER_H
#define DF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct df_tokenizer df_tokenizer;

/* Load from a tokenizer folder. Errors name the file and what is wrong. */
df_status df_tokenizer_load(const char *dir, df_tokenizer **out);
void df_tokenizer_free(df_tokenizer *t);

/* From merges.txt text alone, the vocabulary derived as CLIP's
 * simple_tokenizer derives it (byte symbols, the same with "</w>", the
 * merges in rank order, <|startoftext|>, <|endoftext|>), with SD 2.x's
 * special tokens (pad "!") and model_max_length 77. label names the source
 * in messages. */
df_status df_tokenizer_load_merges(const char *merges, size_t len, const char *label,
                                   df_tokenizer **out);
/* OpenAI CLIP's BPE, built into libdf (lib/models/clip_bpe.c), for models
 * that bring no tokenizer folder: df_tokenizer_load_merges on it. */
df_status df_tokenizer_load_builtin(df_tokenizer **out);

/* model_max_length (77 for CLIP) and the special ids (49406, 49407, and 0
 * for SD 2.x's "!" pad). */
int df_tokenizer_max_length(const df_tokenizer *t);
int32_t df_tokenizer_bos_id(const df_tokenizer *t);
int32_t df_tokenizer_eos_id(const df_tokenizer *t);
int32_t df_tokenizer_pad_id(const df_tokenizer *t);
int32_t df_tokenizer_vocab_size(const df_tokenizer *t);
/* 1 + the largest id in vocab.json: a text encoder needs this many rows. */
int32_t df_tokenizer_id_end(const df_tokenizer *t);
/* The vocabulary string of an id ("a</w>"), NULL when out of range. */
const char *df_tokenizer_token(const df_tokenizer *t, int32_t id);

/* BPE ids of text (NUL-terminated UTF-8) without bos/eos and without
 * truncation: tokenizer.tokenize() mapped to ids. *ids is malloc'd (free it;
 * NULL when *n == 0). Texts over 1 MiB are refused (DF_ERR_RANGE): no
 * prompt is that long, and a record should not cost unbounded memory. */
df_status df_tokenizer_tokenize(const df_tokenizer *t, const char *text, int32_t **ids,
                                size_t *n);

/* The pipeline's call: ids (max_length) = [bos] + bpe[:max_length-2] + [eos],
 * padded with the pad id; mask (max_length, may be NULL) is 1 up to and
 * including eos, 0 after. *n_untruncated (may be NULL) gets the length
 * before truncation, bos and eos included: more than max_length means the
 * prompt was cut (df-sample warns, as diffusers does). */
df_status df_tokenizer_encode(const df_tokenizer *t, const char *text, int32_t *ids,
                              int32_t *mask, size_t *n_untruncated);

/* The same for len bytes that may hold NULs (dropped, as Python drops
 * U+0000), e.g. a JSON string with \u0000. */
df_status df_tokenizer_tokenize_len(const df_tokenizer *t, const char *text, size_t len,
                                    int32_t **ids, size_t *n);
df_status df_tokenizer_encode_len(const df_tokenizer *t, const char *text, size_t len,
                                  int32_t *ids, int32_t *mask, size_t *n_untruncated);

#endif
