/* fuzz_tokenizer.c - the CLIP tokenizer (lib/models/tokenizer.c) on
 * arbitrary bytes as a prompt (invalid UTF-8, NULs, control and combining
 * characters, CJK), with the fixture tokenizer at
 * $DF_FIXTURES/pipeline/tokenizer (or $DF_FUZZ_TOKENIZER, a tokenizer
 * folder). Every id must be inside the vocabulary. */
#include "fuzz_util.h"
#include "status.h"
#include "tokenizer.h"

static df_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("DF_FUZZ_TOKENIZER");
    if (!dir || !*dir)
        dir = fuzz_fixture("pipeline/tokenizer");
    if (df_tokenizer_load(dir, &tok) != DF_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s (set DF_FIXTURES)\n", dir, df_last_error());
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int32_t end = df_tokenizer_id_end(tok);
    if (df_tokenizer_tokenize_len(tok, (const char *)data, size, &ids, &n) == DF_OK) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= end || !df_tokenizer_token(tok, ids[i]))
                abort();
        free(ids);
    }
    int L = df_tokenizer_max_length(tok);
    int32_t *e = malloc((size_t)L * sizeof *e), *m = malloc((size_t)L * sizeof *m);
    size_t nu = 0;
    if (df_tokenizer_encode_len(tok, (const char *)data, size, e, m, &nu) == DF_OK) {
        if (e[0] != df_tokenizer_bos_id(tok))
            abort();
        for (int i = 0; i < L; i++)
            if (e[i] < 0 || e[i] >= end || (m[i] != 0 && m[i] != 1))
                abort();
    }
    free(e);
    free(m);
    /* the NUL-terminated entry points on the same text */
    char *s = fuzz_strdup(data, size);
    if (df_tokenizer_tokenize(tok, s, &ids, &n) == DF_OK)
        free(ids);
    free(s);
    return 0;
}
