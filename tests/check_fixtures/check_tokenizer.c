/* check_tokenizer.c - checks lib/models/tokenizer against refs/tokenizer_cases.jsonl
 * (transformers' CLIPTokenizer on every case): input_ids and attention_mask
 * (the padded, truncated pipeline call), the untruncated length and the BPE
 * token strings must be identical. Prints one line for the file and one
 * FAIL line per failing case, naming it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tokenizer.h"

/* Compare a JSON integer array with n ints; count of differing positions
 * (a length mismatch counts every missing one). */
static size_t diff_ids(const json_t *ref, const int32_t *got, size_t n, size_t *first)
{
    size_t nr = json_array_size(ref), bad = nr > n ? nr - n : n - nr;
    *first = SIZE_MAX;
    for (size_t i = 0; i < n && i < nr; i++) {
        json_t *e = json_array_get(ref, i);
        if (!json_is_integer(e) || json_integer_value(e) != got[i]) {
            bad++;
            if (*first == SIZE_MAX)
                *first = i;
        }
    }
    if (bad && *first == SIZE_MAX)
        *first = nr < n ? nr : n;
    return bad;
}

/* bpe_tokens must be the vocabulary strings of the untruncated ids. */
static size_t diff_tokens(const df_tokenizer *t, const json_t *ref, const int32_t *ids, size_t n)
{
    size_t nr = json_array_size(ref), bad = nr > n ? nr - n : n - nr;
    for (size_t i = 0; i < n && i < nr; i++) {
        const char *r = json_string_value(json_array_get(ref, i));
        const char *g = df_tokenizer_token(t, ids[i]);
        bad += !r || !g || strcmp(r, g) != 0;
    }
    return bad;
}

/* Checks one case; prints a FAIL line and returns 1 when it differs. */
static int check_case(const cf_ctx *c, const df_tokenizer *t, const json_t *rec, size_t k)
{
    const json_t *jt = json_object_get(rec, "text");
    const char *text = json_string_value(jt);
    size_t tlen = json_string_length(jt);
    char name[256], note[512];
    snprintf(name, sizeof name, "%s:case_%zu", c->file, k);
    if (!text) {
        cf_line("FAIL", name, NAN, NAN, "record has no \"text\"");
        return 1;
    }
    size_t L = (size_t)df_tokenizer_max_length(t), nu = 0, nbpe = 0, first;
    int32_t *ids = calloc(L, sizeof *ids), *mask = calloc(L, sizeof *mask), *bpe = NULL;
    df_status st = DF_ERR_NOMEM;
    if (ids && mask && !(st = df_tokenizer_encode_len(t, text, tlen, ids, mask, &nu)))
        st = df_tokenizer_tokenize_len(t, text, tlen, &bpe, &nbpe);
    int fail = 1;
    if (st) {
        snprintf(note, sizeof note, "text %.80s: %s", text, df_last_error());
        cf_line("FAIL", name, NAN, NAN, note);
    } else {
        size_t bad_ids = diff_ids(json_object_get(rec, "input_ids"), ids, L, &first);
        size_t f2, bad_mask = diff_ids(json_object_get(rec, "attention_mask"), mask, L, &f2);
        size_t bad_tok = diff_tokens(t, json_object_get(rec, "bpe_tokens"), bpe, nbpe);
        json_int_t ref_nu = json_integer_value(json_object_get(rec, "n_ids_untruncated"));
        fail = bad_ids || bad_mask || bad_tok || ref_nu != (json_int_t)nu;
        if (fail) {
            snprintf(note, sizeof note,
                     "text \"%.60s\": %zu ids differ (first at %zu), %zu mask, %zu bpe tokens, "
                     "length %zu vs %lld",
                     text, bad_ids, bad_ids ? first : 0, bad_mask, bad_tok, nu, (long long)ref_nu);
            cf_line("FAIL", name, (double)bad_ids, NAN, note);
        }
    }
    free(ids);
    free(mask);
    free(bpe);
    return fail;
}

/* The cases, one JSON object a line. Read here rather than with lib/base/jsonl
 * because a case holds "\u0000", which needs JSON_ALLOW_NUL. */
static json_t *read_cases(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        df_fail(DF_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    json_t *arr = json_array();
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    while (arr && getline(&line, &cap, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line))
            continue;   /* blank lines are not records */
        json_error_t err;
        json_t *rec = json_loads(line, JSON_ALLOW_NUL, &err);
        if (!json_is_object(rec)) {
            df_fail(DF_ERR_FORMAT, "%s: line %ld: %s", path, lineno, rec ? "not an object" : err.text);
            json_decref(rec);
            json_decref(arr);
            arr = NULL;
        } else {
            json_array_append_new(arr, rec);
        }
    }
    free(line);
    fclose(f);
    return arr;
}

int cf_check_tokenizer(const cf_ctx *c)
{
    df_tokenizer *t;
    if (df_tokenizer_load(cf_path(c, "pipeline/tokenizer"), &t)) {
        cf_line("FAIL", c->file, NAN, NAN, df_last_error());
        return 1;
    }
    json_t *cases = read_cases(cf_path(c, c->file));
    if (!cases) {
        cf_line("FAIL", c->file, NAN, NAN, df_last_error());
        df_tokenizer_free(t);
        return 1;
    }
    size_t k, failed = 0;
    json_t *rec;
    json_array_foreach(cases, k, rec)
        failed += check_case(c, t, rec, k);
    char note[128];
    snprintf(note, sizeof note, "%zu of %zu cases identical (ids, mask, bpe tokens, length)",
             json_array_size(cases) - failed, json_array_size(cases));
    /* max_abs here is the number of failing cases. */
    int bad = failed > 0 || json_array_size(cases) == 0;
    cf_line(bad ? "FAIL" : "PASS", c->file, (double)failed, 0, note);
    json_decref(cases);
    df_tokenizer_free(t);
    return (int)failed + bad;
}
