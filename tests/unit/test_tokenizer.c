/* test_tokenizer.c - lib/models/tokenizer edge cases the fixture cases do not
 * cover: empty and all-"!" prompts, truncation of very long input, invalid
 * UTF-8 and NUL bytes (defined behaviour: dropped, as Python drops U+FFFD
 * and U+0000), oversize text, Python's str.lower specials, load errors, and
 * BPE merge order on a hand-made vocabulary whose result is derived by hand.
 * Uses the fixture tokenizer ($DF_FIXTURES/pipeline/tokenizer). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer.h"
#include "unit.h"

#define L 77

static const df_tokenizer *tk;

/* Untruncated ids of text (len bytes). */
static size_t toks(const char *text, size_t len, int32_t *out, size_t cap)
{
    int32_t *ids;
    size_t n;
    if (df_tokenizer_tokenize_len(tk, text, len, &ids, &n) != DF_OK)
        return (size_t)-1;
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = ids[i];
    free(ids);
    return n;
}

/* Same ids for two texts. */
static int same(const char *a, size_t la, const char *b)
{
    int32_t x[64], y[64];
    size_t n = toks(a, la, x, 64), m = toks(b, strlen(b), y, 64);
    return n == m && n <= 64 && !memcmp(x, y, n * sizeof *x);
}

static void test_empty_and_pad(void)
{
    int32_t ids[L], mask[L];
    size_t nu = 0;
    int32_t bos = df_tokenizer_bos_id(tk), eos = df_tokenizer_eos_id(tk);
    int32_t pad = df_tokenizer_pad_id(tk);
    CHECK(bos == 49406 && eos == 49407 && pad == 0);   /* SD 2.x: pad "!" is id 0 */
    CHECK(!strcmp(df_tokenizer_token(tk, pad), "!"));
    CHECK(df_tokenizer_encode(tk, "", ids, mask, &nu) == DF_OK);
    CHECK(nu == 2 && ids[0] == bos && ids[1] == eos && mask[0] == 1 && mask[1] == 1);
    for (int i = 2; i < L; i++)
        CHECK(ids[i] == pad && mask[i] == 0);
    /* Every literal "!" is the pad token on its own, never a BPE merge. */
    char bang[201];
    memset(bang, '!', 200);
    bang[200] = '\0';
    CHECK(df_tokenizer_encode(tk, bang, ids, mask, &nu) == DF_OK);
    CHECK(nu == 202);
    for (int i = 1; i < L - 1; i++)
        CHECK(ids[i] == pad && mask[i] == 1);
    CHECK(ids[L - 1] == eos && mask[L - 1] == 1);
    /* "a!b": the pad splits the text; a and b are BPE'd apart. */
    int32_t x[8];
    CHECK(toks("a!b", 3, x, 8) == 3 && x[1] == pad);
    CHECK(!strcmp(df_tokenizer_token(tk, x[0]), "a</w>") && !strcmp(df_tokenizer_token(tk, x[2]), "b</w>"));
}

static void test_long(void)
{
    /* 5000 x "a photo ": 10000 BPE ids, truncated to 75 + bos/eos. */
    size_t reps = 5000, len = reps * 8;
    char *s = malloc(len + 1);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + 8 * i, "a photo ", 8);
    s[len] = '\0';
    int32_t ids[L], mask[L];
    size_t nu = 0;
    CHECK(df_tokenizer_encode(tk, s, ids, mask, &nu) == DF_OK);
    CHECK(nu == 2 * reps + 2);
    CHECK(!strcmp(df_tokenizer_token(tk, ids[1]), "a</w>"));
    CHECK(!strcmp(df_tokenizer_token(tk, ids[2]), "photo</w>"));
    CHECK(ids[75] == ids[1] && ids[L - 1] == df_tokenizer_eos_id(tk));
    for (int i = 0; i < L; i++)
        CHECK(mask[i] == 1);
    free(s);
    /* One 300000-letter word: BPE is O(n log n), and the token strings
     * spell the word back, "</w>" on the last one. */
    size_t wl = 300000;
    char *word = malloc(wl + 1), *back = malloc(2 * wl + 16);
    unsigned seed = 1;
    for (size_t i = 0; i < wl; i++) {
        seed = seed * 1103515245u + 12345u;
        word[i] = (char)('a' + (seed >> 16) % 26);
    }
    word[wl] = '\0';
    int32_t *wid = NULL;
    size_t wn = 0, bl = 0;
    CHECK(df_tokenizer_tokenize(tk, word, &wid, &wn) == DF_OK && wn > 0 && wn < wl);
    for (size_t i = 0; i < wn; i++) {
        const char *tok = df_tokenizer_token(tk, wid[i]);
        size_t k = tok ? strlen(tok) : 0;
        if (bl + k < 2 * wl + 16) {
            memcpy(back + bl, tok, k);
            bl += k;
        }
    }
    CHECK(bl == wl + 4 && !memcmp(back, word, wl) && !memcmp(back + wl, "</w>", 4));
    free(word);
    free(back);
    free(wid);

    /* Over 1 MiB is refused with a status, not a crash or a stall. */
    size_t big = ((size_t)1 << 20) + 1;
    char *b = malloc(big + 1);
    memset(b, 'a', big);
    b[big] = '\0';
    int32_t *out = NULL;
    size_t n = 7;
    CHECK(df_tokenizer_tokenize(tk, b, &out, &n) == DF_ERR_RANGE && out == NULL && n == 0);
    free(b);
}

static void test_bad_bytes(void)
{
    /* Invalid UTF-8 reads as U+FFFD, which cleaning drops. */
    CHECK(same("\xff\xfe", 2, ""));
    CHECK(same("ab\xc3(cd", 6, "ab(cd"));
    CHECK(same("x\xc0\xafy", 4, "xy"));            /* overlong '/' */
    CHECK(same("x\xed\xa0\x80y", 5, "xy"));        /* UTF-16 surrogate */
    CHECK(same("abc\xe2\x82", 5, "abc"));          /* truncated at the end */
    CHECK(same("a\0b", 3, "ab"));                  /* NUL dropped */
    CHECK(same("x\xf4\x90\x80\x80y", 6, "xy"));    /* above U+10FFFF */
    int32_t x[4];
    CHECK(toks("\x80\x80\x80", 3, x, 4) == 0);
}

static void test_unicode(void)
{
    /* Python's str.lower: U+0130 -> "i" + U+0307; final sigma by context. */
    CHECK(same("\xc4\xb0", 2, "i\xcc\x87"));
    CHECK(same("\xce\xa3\xce\x91\xce\xa3", 6, "\xcf\x83\xce\xb1\xcf\x82"));   /* ΣΑΣ -> σας */
    CHECK(same("\xce\xa3", 2, "\xcf\x83"));                                    /* lone Σ -> σ */
    /* NFC: e + combining acute == é; zero-width space and BOM dropped. */
    CHECK(same("cafe\xcc\x81", 6, "caf\xc3\xa9"));
    CHECK(same("a\xe2\x80\x8b" "b\xef\xbb\xbf", 8, "ab"));
    /* CJK ideographs are split apart; other whitespace is a space. */
    CHECK(same("\xe4\xbd\xa0\xe5\xa5\xbd", 6, "\xe4\xbd\xa0 \xe5\xa5\xbd"));
    CHECK(same("a\xc2\xa0" "b\xe3\x80\x80" "c", 8, "a b c"));
    /* Special tokens inside text keep their ids. */
    int32_t x[8];
    CHECK(toks("a<|endoftext|>b", 15, x, 8) == 3 && x[1] == df_tokenizer_eos_id(tk));
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

/* A hand-made tokenizer: "abab" -> symbols a b a b</w>. Ranks: "a b</w>" 0,
 * "a b" 1. BPE merges the lowest rank first: a b ab</w>, then ab ab</w>. */
static void test_bpe_order(const char *dir)
{
    write_file(dir, "vocab.json",
               "{\"a\":0,\"b\":1,\"a</w>\":2,\"b</w>\":3,\"ab</w>\":4,\"ab\":5,"
               "\"<|startoftext|>\":6,\"<|endoftext|>\":7}");
    write_file(dir, "merges.txt", "#version: 0.2\na b</w>\na b\n");
    df_tokenizer *t;
    CHECK(df_tokenizer_load(dir, &t) == DF_OK);
    if (!t)
        return;
    int32_t *ids;
    size_t n;
    CHECK(df_tokenizer_tokenize(t, "abab ba", &ids, &n) == DF_OK);
    /* "ba": b a</w> has no merge. */
    CHECK(n == 4 && ids[0] == 5 && ids[1] == 4 && ids[2] == 1 && ids[3] == 2);
    free(ids);
    /* No pad in either file: transformers' default pad is <|endoftext|>. */
    CHECK(df_tokenizer_pad_id(t) == 7 && df_tokenizer_max_length(t) == 77);
    df_tokenizer_free(t);

    /* Merges out of learned order ("ab a" ranked before "a b"): one pass
     * merges EVERY "a b" before "ab a" is considered, so "ababx" is
     * ab ab x</w> (5 5 9), not aba b x</w> as merging one pair at a time
     * would give; "abab" is ab a b</w> after the pass, then aba b</w> (8 3).
     * transformers gives the same. */
    write_file(dir, "vocab.json",
               "{\"a\":0,\"b\":1,\"a</w>\":2,\"b</w>\":3,\"ab</w>\":4,\"ab\":5,"
               "\"<|startoftext|>\":6,\"<|endoftext|>\":7,\"aba\":8,\"x</w>\":9,\"x\":10}");
    write_file(dir, "merges.txt", "#version: 0.2\nab a\na b\n");
    CHECK(df_tokenizer_load(dir, &t) == DF_OK);
    if (t) {
        CHECK(df_tokenizer_tokenize(t, "ababx abab", &ids, &n) == DF_OK);
        CHECK(n == 5 && ids[0] == 5 && ids[1] == 5 && ids[2] == 9 && ids[3] == 8 && ids[4] == 3);
        free(ids);
        df_tokenizer_free(t);
    }

    /* Load errors name the file. */
    write_file(dir, "special_tokens_map.json", "{\"pad_token\": \"zz\"}");
    CHECK(df_tokenizer_load(dir, &t) == DF_ERR_FORMAT && t == NULL);
    CHECK(strstr(df_last_error(), "zz") != NULL);
    write_file(dir, "special_tokens_map.json", "[1,");
    CHECK(df_tokenizer_load(dir, &t) == DF_ERR_FORMAT && strstr(df_last_error(), "special_tokens_map"));
    char p[512];
    snprintf(p, sizeof p, "%s/special_tokens_map.json", dir);
    unlink(p);
    write_file(dir, "vocab.json", "{\"a\": \"x\"}");
    CHECK(df_tokenizer_load(dir, &t) == DF_ERR_FORMAT && strstr(df_last_error(), "vocab.json"));
    write_file(dir, "vocab.json", "{\"a\": 0");
    CHECK(df_tokenizer_load(dir, &t) == DF_ERR_FORMAT);
    CHECK(df_tokenizer_load("/nonexistent/tokenizer", &t) != DF_OK && t == NULL);
    CHECK(strstr(df_last_error(), "/nonexistent/tokenizer") != NULL);
}

int main(void)
{
    const char *fx = getenv("DF_FIXTURES");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/pipeline/tokenizer", fx ? fx : "../shared/fixtures");
    df_tokenizer *t = NULL;
    CHECK_MSG(df_tokenizer_load(dir, &t) == DF_OK, "%s", df_last_error());
    if (t) {
        tk = t;
        test_empty_and_pad();
        test_long();
        test_bad_bytes();
        test_unicode();
        df_tokenizer_free(t);
    }
    char tmp[] = "/tmp/df-test-tokenizer-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    test_bpe_order(tmp);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0);
    UNIT_END();
}
