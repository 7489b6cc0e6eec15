/* tokenizer.c - CLIP byte-level BPE, as transformers 4.40's slow
 * CLIPTokenizer without ftfy (see tokenizer.h for the steps).
 *
 * Text moves through the steps as arrays of Unicode code points; utf8proc
 * supplies categories, NFC and simple lower-case mappings, and the few
 * places where Python's str.lower differs from a simple mapping (U+0130,
 * final sigma) are handled here. BPE works on the byte-encoded string of
 * one pre-token, its symbols being byte spans of that string.
 *
 * Tested by tests/check_fixtures/check_tokenizer.c (all fixture cases:
 * ids, masks and BPE token strings) and tests/unit/test_tokenizer.c. */
#include "tokenizer.h"

#include <jansson.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define MAX_TEXT_BYTES ((size_t)1 << 20)
#define MAX_FILE_BYTES ((size_t)64 << 20)
#define MAX_SPECIALS 16
/* transformers reads merges.txt lines [1 : 49152 - 256 - 2 + 1]: CLIP's
 * 49152-entry vocab less the 256 byte symbols and 2 specials. */
#define CLIP_MAX_MERGES (49152 - 256 - 2)

/* ---- string -> int hash table (open addressing, FNV-1a) ---- */

typedef struct {
    char *key;      /* NUL-terminated copy; NULL = empty slot */
    size_t len;
    int32_t val;
} hslot;

typedef struct {
    hslot *slots;
    size_t cap;     /* power of two */
    size_t n;
} htab;

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static df_status ht_init(htab *h, size_t expect)
{
    size_t cap = 16;
    while (cap < expect * 2) {
        if (cap > ((size_t)1 << 40))
            return df_fail(DF_ERR_NOMEM, "tokenizer: table of %zu entries too large", expect);
        cap *= 2;
    }
    h->slots = calloc(cap, sizeof *h->slots);
    h->cap = cap;
    h->n = 0;
    return h->slots ? DF_OK : df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
}

static void ht_free(htab *h)
{
    for (size_t i = 0; h->slots && i < h->cap; i++)
        free(h->slots[i].key);
    free(h->slots);
    h->slots = NULL;
}

static hslot *ht_slot(const htab *h, const char *key, size_t len)
{
    size_t i = fnv1a(key, len) & (h->cap - 1);
    while (h->slots[i].key &&
           !(h->slots[i].len == len && memcmp(h->slots[i].key, key, len) == 0))
        i = (i + 1) & (h->cap - 1);
    return &h->slots[i];
}

/* Insert or overwrite (a later duplicate wins, as in a Python dict). The
 * table was sized for every entry up front, so it never fills. */
static df_status ht_put(htab *h, const char *key, size_t len, int32_t val)
{
    hslot *s = ht_slot(h, key, len);
    if (!s->key) {
        if ((h->n + 1) * 2 > h->cap)
            return df_fail(DF_ERR_NOMEM, "tokenizer: hash table full");
        s->key = strndup(key, len);
        if (!s->key)
            return df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
        s->len = len;
        h->n++;
    }
    s->val = val;
    return DF_OK;
}

static bool ht_get(const htab *h, const char *key, size_t len, int32_t *val)
{
    const hslot *s = ht_slot(h, key, len);
    if (!s->key)
        return false;
    *val = s->val;
    return true;
}

/* ---- code point buffers ---- */

typedef struct {
    uint32_t *v;
    size_t n, cap;
} cpbuf;

static bool cp_push(cpbuf *b, uint32_t c)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof *b->v)
            return false;
        uint32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v)
            return false;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = c;
    return true;
}

/* Invalid bytes become U+FFFD, which cleaning then drops. */
static bool utf8_decode(const char *s, size_t len, cpbuf *out)
{
    size_t i = 0;
    while (i < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            c = 0xFFFD;
            k = 1;
        }
        if (!cp_push(out, (uint32_t)c))
            return false;
        i += (size_t)k;
    }
    return true;
}

/* UTF-8 of n code points into a new NUL-terminated string. */
static char *utf8_encode(const uint32_t *v, size_t n, size_t *len_out)
{
    if (n > (SIZE_MAX - 1) / 4)
        return NULL;
    char *s = malloc(4 * n + 1);
    if (!s)
        return NULL;
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)utf8proc_encode_char((utf8proc_int32_t)v[i], (utf8proc_uint8_t *)s + len);
    s[len] = '\0';
    *len_out = len;
    return s;
}

/* ---- the tokenizer ---- */

struct df_tokenizer {
    htab vocab;           /* token string -> id */
    htab merges;          /* "a b" -> rank */
    char **id_to_token;   /* n_ids entries, NULL where no token has that id */
    int32_t n_ids;
    int32_t vocab_entries;
    int max_length;
    int32_t bos, eos, pad, unk;
    /* Added tokens cut out of the raw text before anything else. */
    cpbuf specials[MAX_SPECIALS];
    int32_t special_ids[MAX_SPECIALS];
    int n_specials;
    /* bytes_to_unicode: byte b is written as this UTF-8 (1-2 bytes). */
    char byte_enc[256][3];
};

int df_tokenizer_max_length(const df_tokenizer *t) { return t->max_length; }
int32_t df_tokenizer_bos_id(const df_tokenizer *t) { return t->bos; }
int32_t df_tokenizer_eos_id(const df_tokenizer *t) { return t->eos; }
int32_t df_tokenizer_pad_id(const df_tokenizer *t) { return t->pad; }
int32_t df_tokenizer_vocab_size(const df_tokenizer *t) { return t->vocab_entries; }
int32_t df_tokenizer_id_end(const df_tokenizer *t) { return t->n_ids; }

const char *df_tokenizer_token(const df_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids ? t->id_to_token[id] : NULL;
}

void df_tokenizer_free(df_tokenizer *t)
{
    if (!t)
        return;
    ht_free(&t->vocab);
    ht_free(&t->merges);
    for (int32_t i = 0; t->id_to_token && i < t->n_ids; i++)
        free(t->id_to_token[i]);
    free(t->id_to_token);
    for (int i = 0; i < t->n_specials; i++)
        free(t->specials[i].v);
    free(t);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes map to U+0100.. in byte order, so that BPE never sees
 * whitespace or control characters. */
static void build_byte_encoder(df_tokenizer *t)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)n++;
        utf8proc_ssize_t k = utf8proc_encode_char((utf8proc_int32_t)cp,
                                                  (utf8proc_uint8_t *)t->byte_enc[b]);
        t->byte_enc[b][k] = '\0';
    }
}

static df_status load_vocab(df_tokenizer *t, const char *path)
{
    json_error_t err;
    json_t *v = json_load_file(path, 0, &err);
    if (!v)
        return err.line > 0 ? df_fail(DF_ERR_FORMAT, "%s: %s (line %d)", path, err.text, err.line)
                            : df_fail(DF_ERR_FORMAT, "%s: %s", path, err.text);
    df_status st = DF_OK;
    if (!json_is_object(v) || json_object_size(v) == 0) {
        st = df_fail(DF_ERR_FORMAT, "%s: not a non-empty JSON object", path);
        goto out;
    }
    if ((st = ht_init(&t->vocab, json_object_size(v))))
        goto out;
    const char *key;
    json_t *val;
    int32_t max_id = -1;
    json_object_foreach(v, key, val) {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id >= (1 << 24)) {
            st = df_fail(DF_ERR_FORMAT, "%s: id of \"%s\" is not an integer in [0, 2^24)", path, key);
            goto out;
        }
        if ((st = ht_put(&t->vocab, key, strlen(key), (int32_t)id)))
            goto out;
        if (id > max_id)
            max_id = (int32_t)id;
    }
    t->n_ids = max_id + 1;
    t->vocab_entries = (int32_t)json_object_size(v);
    t->id_to_token = calloc((size_t)t->n_ids, sizeof *t->id_to_token);
    if (!t->id_to_token) {
        st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    json_object_foreach(v, key, val) {
        char **slot = &t->id_to_token[json_integer_value(val)];
        if (!*slot && !(*slot = strdup(key))) {
            st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
    }
out:
    json_decref(v);
    return st;
}

static df_status read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return df_fail(DF_ERR_NOTFOUND, "%s: cannot open: %s", path, strerror(errno));
    char *b = NULL;
    size_t n = 0, cap = 0;
    df_status st = DF_OK;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > MAX_FILE_BYTES + 1) {
                st = df_fail(DF_ERR_RANGE, "%s: larger than %zu bytes", path, MAX_FILE_BYTES);
                break;
            }
            char *nb = realloc(b, cap + 1);
            if (!nb) {
                st = df_fail(DF_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            b = nb;
        }
        size_t k = fread(b + n, 1, cap - n, f);
        n += k;
        if (k == 0) {
            if (ferror(f))
                st = df_fail(DF_ERR_IO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (st) {
        free(b);
        return st;
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return DF_OK;
}

static bool is_space_ascii(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* merges.txt: "#version" header line, then "a b" per line; the line's
 * position is its rank. Read as transformers reads it: the whole file
 * stripped, split on '\n', lines 1..CLIP_MAX_MERGES, each split on
 * whitespace; a line that is not two fields takes a rank but matches no pair. */
static df_status parse_merges(df_tokenizer *t, char *buf, size_t len, const char *path)
{
    df_status st = DF_OK;
    char *s = buf, *e = buf + len;
    while (s < e && is_space_ascii(*s))
        s++;
    while (e > s && is_space_ascii(e[-1]))
        e--;
    *e = '\0';
    size_t lines = 1;
    for (char *p = s; p < e; p++)
        lines += *p == '\n';
    if ((st = ht_init(&t->merges, lines)))
        goto out;
    char *line = s;
    for (size_t ln = 0; line && ln <= CLIP_MAX_MERGES; ln++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (ln > 0) {
            char *f[3] = {0}, *save = NULL;
            int nf = 0;
            for (char *tok = strtok_r(line, " \t\r\v\f", &save); tok && nf < 3;
                 tok = strtok_r(NULL, " \t\r\v\f", &save))
                f[nf++] = tok;
            if (nf == 2) {
                size_t la = strlen(f[0]), lb = strlen(f[1]);
                memmove(f[0] + la + 1, f[1], lb);  /* "a b" in place: f[1] follows f[0] */
                f[0][la] = ' ';
                if ((st = ht_put(&t->merges, f[0], la + 1 + lb, (int32_t)(ln - 1))))
                    goto out;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    if (t->merges.n == 0)
        st = df_fail(DF_ERR_FORMAT, "%s: no merges", path);
out:
    return st;
}

static df_status load_merges(df_tokenizer *t, const char *path)
{
    char *buf = NULL;
    size_t len = 0;
    df_status st = read_file(path, &buf, &len);
    if (st == DF_OK)
        st = parse_merges(t, buf, len, path);
    free(buf);
    return st;
}

/* A token entry in special_tokens_map.json / tokenizer_config.json is a
 * string or an AddedToken object {"content": ...}. */
static const char *token_content(const json_t *v)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_object(v))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

/* The special token for `key`: special_tokens_map.json overrides
 * tokenizer_config.json (that is where SD 2.x's pad "!" comes from). */
static const char *special_token(const json_t *map, const json_t *cfg, const char *key,
                                 const char *dflt)
{
    const char *s = map ? token_content(json_object_get(map, key)) : NULL;
    if (!s && cfg)
        s = token_content(json_object_get(cfg, key));
    return s ? s : dflt;
}

static df_status add_special(df_tokenizer *t, const char *content, const char *dir)
{
    if (!content[0])
        return DF_OK;
    int32_t id;
    if (!ht_get(&t->vocab, content, strlen(content), &id))
        return df_fail(DF_ERR_FORMAT, "%s: special token \"%s\" is not in vocab.json", dir, content);
    cpbuf b = {0};
    if (!utf8_decode(content, strlen(content), &b)) {
        free(b.v);
        return df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
    }
    for (int i = 0; i < t->n_specials; i++)
        if (t->specials[i].n == b.n && !memcmp(t->specials[i].v, b.v, b.n * sizeof *b.v)) {
            free(b.v);
            return DF_OK;
        }
    if (t->n_specials == MAX_SPECIALS) {
        free(b.v);
        return df_fail(DF_ERR_RANGE, "%s: more than %d added tokens", dir, MAX_SPECIALS);
    }
    t->specials[t->n_specials] = b;
    t->special_ids[t->n_specials++] = id;
    return DF_OK;
}

static df_status id_of(const df_tokenizer *t, const char *dir, const char *tok, int32_t *id)
{
    if (!ht_get(&t->vocab, tok, strlen(tok), id))
        return df_fail(DF_ERR_FORMAT, "%s: token \"%s\" is not in vocab.json", dir, tok);
    return DF_OK;
}

static json_t *load_optional_json(const char *path, df_status *st)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fclose(f);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j || !json_is_object(j)) {
        *st = df_fail(DF_ERR_FORMAT, "%s: %s", path, j ? "not a JSON object" : err.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

static df_status set_specials(df_tokenizer *t, const json_t *map, const json_t *cfg,
                              const char *dir, const char *path);

static df_status load_specials(df_tokenizer *t, const char *dir)
{
    char path[4096];
    df_status st = DF_OK;
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    json_t *map = load_optional_json(path, &st);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *cfg = st ? NULL : load_optional_json(path, &st);
    if (!st)
        st = set_specials(t, map, cfg, dir, path);
    json_decref(map);
    json_decref(cfg);
    return st;
}

/* The special tokens and model_max_length from special_tokens_map.json
 * (map) and tokenizer_config.json (cfg, read from path); either may be NULL. */
static df_status set_specials(df_tokenizer *t, const json_t *map, const json_t *cfg,
                              const char *dir, const char *path)
{
    df_status st = DF_OK;
    t->max_length = 77;
    json_t *ml = cfg ? json_object_get(cfg, "model_max_length") : NULL;
    if (ml) {
        double v = json_number_value(ml);
        if (!json_is_number(ml) || v < 2 || v > 65536) {
            st = df_fail(DF_ERR_RANGE, "%s: model_max_length is not a number in [2, 65536]", path);
            goto out;
        }
        t->max_length = (int)v;
    }
    const char *bos = special_token(map, cfg, "bos_token", "<|startoftext|>");
    const char *eos = special_token(map, cfg, "eos_token", "<|endoftext|>");
    const char *unk = special_token(map, cfg, "unk_token", "<|endoftext|>");
    const char *pad = special_token(map, cfg, "pad_token", "<|endoftext|>");
    if ((st = id_of(t, dir, bos, &t->bos)) || (st = id_of(t, dir, eos, &t->eos)) ||
        (st = id_of(t, dir, unk, &t->unk)) || (st = id_of(t, dir, pad, &t->pad)))
        goto out;
    const char *all[] = {bos, eos, unk, pad};
    for (int i = 0; i < 4 && !st; i++)
        st = add_special(t, all[i], dir);
    /* Newer tokenizer_config.json files list added tokens explicitly. */
    json_t *added = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    const char *k;
    json_t *v;
    json_object_foreach(added, k, v) {
        const char *c = token_content(v);
        if (!st && c)
            st = add_special(t, c, dir);
    }
out:
    return st;
}

df_status df_tokenizer_load(const char *dir, df_tokenizer **out)
{
    *out = NULL;
    df_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
    char path[4096];
    df_status st;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if ((st = load_vocab(t, path)))
        goto fail;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if ((st = load_merges(t, path)))
        goto fail;
    if ((st = load_specials(t, dir)))
        goto fail;
    build_byte_encoder(t);
    *out = t;
    return DF_OK;
fail:
    df_tokenizer_free(t);
    return st;
}

/* CLIP's simple_tokenizer builds its vocabulary from the merges alone: the
 * 256 byte symbols in bytes_to_unicode order (printable bytes ascending,
 * then the remapped ones), the same with "</w>", each merge's joined pair
 * in rank order, then <|startoftext|> and <|endoftext|>. */
static df_status clip_vocab(df_tokenizer *t, const char *label)
{
    size_t nm = t->merges.n, n = 512 + nm + 2;
    df_status st = ht_init(&t->vocab, n);
    if (st)
        return st;
    if (!(t->id_to_token = calloc(n, sizeof *t->id_to_token)))
        return df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
    int order[256], k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            if (printable == (pass == 0))
                order[k++] = b;
        }
    int32_t id = 0;
    for (int end = 0; end < 2; end++)
        for (int i = 0; i < 256; i++) {
            char tok[8];
            snprintf(tok, sizeof tok, "%s%s", t->byte_enc[order[i]], end ? "</w>" : "");
            t->id_to_token[id] = strdup(tok);
            if (!t->id_to_token[id] || (st = ht_put(&t->vocab, tok, strlen(tok), id)))
                return st ? st : df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
            id++;
        }
    /* Merge ranks are 0..nm-1; the slot order of the table is not rank order. */
    for (size_t i = 0; i < t->merges.cap; i++) {
        const hslot *m = &t->merges.slots[i];
        if (!m->key)
            continue;
        if (m->val < 0 || (size_t)m->val >= nm || t->id_to_token[512 + m->val])
            return df_fail(DF_ERR_FORMAT, "%s: merge ranks are not 0..%zu", label, nm - 1);
        char *joined = malloc(m->len + 1);
        if (!joined)
            return df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
        size_t a = strcspn(m->key, " ");
        memcpy(joined, m->key, a);
        memcpy(joined + a, m->key + a + 1, m->len - a - 1);
        joined[m->len - 1] = '\0';
        t->id_to_token[512 + m->val] = joined;
    }
    for (size_t i = 0; i < nm; i++)
        if ((st = ht_put(&t->vocab, t->id_to_token[512 + i], strlen(t->id_to_token[512 + i]),
                         (int32_t)(512 + i))))
            return st;
    static const char *const special[2] = {"<|startoftext|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        if (!(t->id_to_token[512 + nm + i] = strdup(special[i])))
            return df_fail(DF_ERR_NOMEM, "%s: out of memory", label);
        if ((st = ht_put(&t->vocab, special[i], strlen(special[i]), (int32_t)(512 + nm + i))))
            return st;
    }
    t->n_ids = (int32_t)n;
    t->vocab_entries = (int32_t)t->vocab.n;
    return DF_OK;
}

df_status df_tokenizer_load_merges(const char *merges, size_t len, const char *label,
                                   df_tokenizer **out)
{
    *out = NULL;
    df_tokenizer *t = calloc(1, sizeof *t);
    char *buf = malloc(len + 1);
    df_status st = DF_OK;
    if (!t || !buf) {
        free(buf);
        free(t);
        return df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
    }
    memcpy(buf, merges, len);
    buf[len] = '\0';
    build_byte_encoder(t);
    /* SD 2.x's special_tokens_map.json: pad "!" (id 0); the rest CLIP's. */
    json_t *map = json_pack("{s:s}", "pad_token", "!");
    json_t *cfg = json_pack("{s:i}", "model_max_length", 77);
    if (!map || !cfg)
        st = df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
    if (!st)
        st = parse_merges(t, buf, len, label);
    if (!st)
        st = clip_vocab(t, label);
    if (!st)
        st = set_specials(t, map, cfg, label, label);
    json_decref(map);
    json_decref(cfg);
    free(buf);
    if (st) {
        df_tokenizer_free(t);
        return st;
    }
    *out = t;
    return DF_OK;
}

/* ---- Unicode classes, as Python's unicodedata / str and the regex module ---- */

/* The reference ran Python 3.11, whose unicodedata is Unicode 14.0, where
 * these code points are unassigned (category Cn, so cleaning drops them);
 * utf8proc 2.8 knows Unicode 15.0, which assigned them (new scripts, CJK
 * extension H, emoji such as U+1FAF8). Derived by comparing the two tables
 * over all code points; there are no other category differences. */
static bool unassigned_in_unicode14(uint32_t c)
{
    static const uint32_t r[][2] = {
        {0xCF3, 0xCF3}, {0xECE, 0xECE}, {0x10EFD, 0x10EFF}, {0x1123F, 0x11241},
        {0x11B00, 0x11B09}, {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59},
        {0x1342F, 0x1342F}, {0x13439, 0x13455}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155},
        {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E08F, 0x1E08F},
        {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
        {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF},
        {0x1FABB, 0x1FABD}, {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB},
        {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8}, {0x2B739, 0x2B739}, {0x31350, 0x323AF},
    };
    if (c < 0xCF3)
        return false;
    for (size_t i = 0; i < sizeof r / sizeof *r; i++)
        if (c >= r[i][0] && c <= r[i][1])
            return true;
    return false;
}

static bool is_letter(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static bool is_number(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/* Unicode White_Space (Python's str.isspace and the regex \s). */
static bool is_white(uint32_t c)
{
    if ((c >= 9 && c <= 13) || c == ' ' || c == 0x85 || (c >= 0x1C && c <= 0x1F))
        return true;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* BasicTokenizer._is_chinese_char: the CJK Unified Ideograph blocks. */
static bool is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Case_Ignorable (for final sigma): Mn, Me, Cf, Lm, Sk and the
 * Word_Break MidLetter / MidNumLet / Single_Quote characters. */
static bool is_case_ignorable(uint32_t c)
{
    static const uint32_t mid[] = {0x27, 0x2E, 0x3A, 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019,
                                   0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    for (size_t i = 0; i < sizeof mid / sizeof *mid; i++)
        if (c == mid[i])
            return true;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK;
}

/* Cased: Lu, Ll, Lt, anything with a case mapping, the two Other_Lowercase
 * letters of category Lo and the Other_Uppercase squared and circled Latin
 * capitals of U+1F130.. (no case mappings). Checked over all code points
 * against Python 3.11's final-sigma behaviour. */
static bool is_cased(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
        return true;
    utf8proc_int32_t s = (utf8proc_int32_t)c;
    return utf8proc_tolower(s) != s || utf8proc_toupper(s) != s || c == 0xAA || c == 0xBA ||
           (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
           (c >= 0x1F170 && c <= 0x1F189);
}

/* Python's handle_capital_sigma: U+03A3 lower-cases to final U+03C2 when
 * a cased letter precedes it and none follows (case-ignorables skipped). */
static uint32_t lower_sigma(const uint32_t *w, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(w[j - 1]))
        j--;
    if (j == 0 || !is_cased(w[j - 1]))
        return 0x3C3;
    for (j = i + 1; j < n && is_case_ignorable(w[j]); j++)
        ;
    return j == n || !is_cased(w[j]) ? 0x3C2 : 0x3C3;
}

/* Python's str.lower of one word: simple mappings, except U+0130 (full
 * mapping "i" + combining dot above) and the contextual final sigma. */
static bool lower_word(const uint32_t *w, size_t n, cpbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        bool ok;
        if (w[i] == 0x130)
            ok = cp_push(out, 'i') && cp_push(out, 0x307);
        else if (w[i] == 0x3A3)
            ok = cp_push(out, lower_sigma(w, n, i));
        else
            ok = cp_push(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)w[i]));
        if (!ok)
            return false;
    }
    return true;
}

/* ---- BasicTokenizer(strip_accents=False, do_split_on_punc=False) ---- */

/* _clean_text and _tokenize_chinese_chars: drop U+0000, U+FFFD and every
 * C* character except \t \n \r; whitespace (those three, ' ', Zs) -> ' ';
 * CJK ideographs get a space on each side. */
static bool clean_text(const uint32_t *in, size_t n, cpbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
        bool tnr = c == '\t' || c == '\n' || c == '\r';
        bool ok = true;
        if (c == 0 || c == 0xFFFD)
            continue;
        if (!tnr && k >= UTF8PROC_CATEGORY_CC)   /* Cc Cf Cs Co */
            continue;
        if (!tnr && (k == UTF8PROC_CATEGORY_CN || unassigned_in_unicode14(c)))   /* unassigned */
            continue;
        if (tnr || c == ' ' || k == UTF8PROC_CATEGORY_ZS)
            ok = cp_push(out, ' ');
        else if (is_cjk(c))
            ok = cp_push(out, ' ') && cp_push(out, c) && cp_push(out, ' ');
        else
            ok = cp_push(out, c);
        if (!ok)
            return false;
    }
    return true;
}

/* NFC through utf8proc (decompose, reorder, compose; Hangul included). */
static bool nfc(const cpbuf *in, cpbuf *out)
{
    size_t len;
    char *s = utf8_encode(in->v, in->n, &len);
    if (!s)
        return false;
    utf8proc_uint8_t *d = NULL;
    utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &d,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    free(s);
    bool ok = k >= 0 && utf8_decode((const char *)d, (size_t)k, out);
    free(d);
    return ok;
}

/* The whole BasicTokenizer: clean, NFC, split on whitespace, lower-case
 * each word, re-join with single spaces. */
static bool basic_normalize(const uint32_t *in, size_t n, cpbuf *out)
{
    cpbuf a = {0}, b = {0};
    bool ok = clean_text(in, n, &a) && nfc(&a, &b);
    for (size_t i = 0; ok && i < b.n;) {
        if (is_white(b.v[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < b.n && !is_white(b.v[j]))
            j++;
        ok = (out->n == 0 || cp_push(out, ' ')) && lower_word(b.v + i, j - i, out);
        i = j;
    }
    free(a.v);
    free(b.v);
    return ok;
}

/* ---- CLIP pre-tokenizer regex ----
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (IGNORECASE). Alternatives are tried in order at each position, as the
 * regex engine does; positions matching none (whitespace) are skipped. */

static bool match_ascii(const uint32_t *v, size_t n, size_t i, const char *lit)
{
    for (size_t k = 0; lit[k]; k++) {
        if (i + k >= n)
            return false;
        uint32_t c = v[i + k], l = (unsigned char)lit[k];
        /* IGNORECASE: ASCII case, and U+017F long s folds to s */
        bool eq = c == l || (l >= 'a' && l <= 'z' && c == l - 32) || (l == 's' && c == 0x17F);
        if (!eq)
            return false;
    }
    return true;
}

/* Characters no alternative matches, skipped like whitespace: \s, and
 * U+0345 (combining ypogegrammeni, Mn): under IGNORECASE the regex module
 * tests a set against the character's case variants too, and U+0345 folds
 * to the letter iota, so it is neither outside \p{L} nor inside it. It is
 * the only code point whose class IGNORECASE changes (checked over all). */
static bool regex_skips(uint32_t c)
{
    return c == 0x345 || is_white(c);
}

/* Length of the pre-token at i, 0 if none starts there. */
static size_t pretoken_len(const uint32_t *v, size_t n, size_t i)
{
    static const char *const lits[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re",
                                       "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < sizeof lits / sizeof *lits; k++)
        if (match_ascii(v, n, i, lits[k]))
            return strlen(lits[k]);
    size_t j = i;
    if (is_letter(v[i])) {
        while (j < n && is_letter(v[j]))
            j++;
        return j - i;
    }
    if (is_number(v[i]))
        return 1;
    while (j < n && !regex_skips(v[j]) && !is_letter(v[j]) && !is_number(v[j]))
        j++;
    return j - i;
}

/* ---- byte-level BPE ---- */

typedef struct { int32_t *v; size_t n, cap; } idbuf;

static bool id_push(idbuf *b, int32_t id)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v)
            return false;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return true;
}

/* The word being merged: symbol i is the byte span [s[i], e[i]) of the
 * encoded word, "</w>" appended when it ends the word (e == len); merged
 * symbols keep the left one's index and unlink the right one. */
typedef struct {
    const char *enc;
    size_t len;
    size_t *s, *e;
    uint32_t *next;       /* UINT32_MAX at the end */
    uint32_t *prev;       /* UINT32_MAX at the start */
    bool *alive;
    char *buf;            /* scratch for pair keys */
} bword;

/* A candidate merge of the adjacent symbols left, right, as they were
 * when it was queued (their ends tell whether they changed since). */
typedef struct {
    int32_t rank;
    uint32_t left, right;
    size_t left_end, right_end;
} bpair;

static size_t sym_text(const bword *w, uint32_t i, char *buf)
{
    size_t n = w->e[i] - w->s[i];
    memcpy(buf, w->enc + w->s[i], n);
    if (w->e[i] == w->len) {
        memcpy(buf + n, "</w>", 4);
        n += 4;
    }
    return n;
}

static int32_t pair_rank(const df_tokenizer *t, const bword *w, uint32_t a, uint32_t b)
{
    size_t n = sym_text(w, a, w->buf);
    w->buf[n++] = ' ';
    n += sym_text(w, b, w->buf + n);
    int32_t r;
    return ht_get(&t->merges, w->buf, n, &r) ? r : INT32_MAX;
}

/* Min-heap on (rank, left): equal ranks come out left to right. */
static bool pair_less(const bpair *x, const bpair *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(bpair *h, size_t *n, bpair p)
{
    size_t i = (*n)++;
    for (; i > 0 && pair_less(&p, &h[(i - 1) / 2]); i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = p;
}

static bpair heap_pop(bpair *h, size_t *n)
{
    bpair top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && pair_less(&h[c + 1], &h[c]))
            c++;
        if (!pair_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void queue_pair(const df_tokenizer *t, const bword *w, bpair *h, size_t *n, uint32_t a)
{
    uint32_t b = w->next[a];
    if (b == UINT32_MAX)
        return;
    int32_t r = pair_rank(t, w, a, b);
    if (r != INT32_MAX)
        heap_push(h, n, (bpair){r, a, b, w->e[a], w->e[b]});
}

static bool pair_valid(const bword *w, const bpair *p)
{
    return w->alive[p->left] && w->alive[p->right] && w->next[p->left] == p->right &&
           w->e[p->left] == p->left_end && w->e[p->right] == p->right_end;
}

/* One pass of CLIPTokenizer.bpe: merge every occurrence of the lowest-rank
 * pair, left to right and non-overlapping (an occurrence whose symbols an
 * earlier one consumed is stale). New neighbour pairs are queued only after
 * the pass, as Python recomputes the pairs after it. */
static size_t merge_pass(const df_tokenizer *t, bword *w, bpair *h, size_t *n, uint32_t *touched)
{
    int32_t rank = h[0].rank;
    size_t nt = 0;
    while (*n && h[0].rank == rank) {
        bpair p = heap_pop(h, n);
        if (!pair_valid(w, &p))
            continue;
        uint32_t a = p.left, b = p.right;
        w->e[a] = w->e[b];
        w->alive[b] = false;
        w->next[a] = w->next[b];
        if (w->next[b] != UINT32_MAX)
            w->prev[w->next[b]] = a;
        touched[nt++] = a;
    }
    return nt;
}

/* CLIPTokenizer.bpe on the m characters of an encoded word (character i
 * starts at byte starts[i]): merge the lowest-rank adjacent pair everywhere
 * until no pair has a rank. A heap of candidate pairs keeps this
 * O(m log m), so a long run of letters cannot stall the tokenizer. */
static bool bpe_word(const df_tokenizer *t, const char *enc, size_t len, const size_t *starts,
                     size_t m, idbuf *out)
{
    if (m >= UINT32_MAX / 4)
        return false;
    bword w = {enc, len, malloc(m * sizeof(size_t)), malloc(m * sizeof(size_t)),
               malloc(m * sizeof(uint32_t)), malloc(m * sizeof(uint32_t)), malloc(m),
               malloc(2 * len + 16)};
    /* each merge queues at most two pairs: m initial + 2m later */
    bpair *heap = malloc(3 * m * sizeof *heap);
    uint32_t *touched = malloc(m * sizeof *touched);
    bool ok = w.s && w.e && w.next && w.prev && w.alive && w.buf && heap && touched;
    size_t nh = 0;
    for (uint32_t i = 0; ok && i < m; i++) {
        w.s[i] = starts[i];
        w.e[i] = i + 1 < m ? starts[i + 1] : len;
        w.next[i] = i + 1 < m ? i + 1 : UINT32_MAX;
        w.prev[i] = i > 0 ? i - 1 : UINT32_MAX;
        w.alive[i] = true;
    }
    for (uint32_t i = 0; ok && i + 1 < m; i++)
        queue_pair(t, &w, heap, &nh, i);
    while (ok && nh) {
        size_t nt = merge_pass(t, &w, heap, &nh, touched);
        for (size_t k = 0; k < nt; k++) {
            uint32_t a = touched[k];
            if (w.prev[a] != UINT32_MAX)
                queue_pair(t, &w, heap, &nh, w.prev[a]);
            queue_pair(t, &w, heap, &nh, a);
        }
    }
    /* symbol 0 is never the right side of a merge, so the word starts there */
    for (uint32_t i = 0; ok && i != UINT32_MAX; i = w.next[i]) {
        size_t n = sym_text(&w, i, w.buf);
        int32_t id;
        if (!ht_get(&t->vocab, w.buf, n, &id))
            id = t->unk;
        ok = id_push(out, id);
    }
    free(w.s); free(w.e); free(w.next); free(w.prev); free(w.alive); free(w.buf);
    free(heap); free(touched);
    return ok;
}

/* One pre-token: the CLIP specials stand for themselves (transformers'
 * bpe cache holds them), anything else is UTF-8 -> bytes_to_unicode -> BPE. */
static bool bpe_pretoken(const df_tokenizer *t, const uint32_t *v, size_t n, idbuf *out)
{
    size_t len;
    char *utf = utf8_encode(v, n, &len);
    if (!utf)
        return false;
    int32_t id;
    if ((!strcmp(utf, "<|startoftext|>") || !strcmp(utf, "<|endoftext|>")) &&
        ht_get(&t->vocab, utf, len, &id)) {
        free(utf);
        return id_push(out, id);
    }
    char *enc = malloc(2 * len + 1);
    size_t *starts = malloc((len ? len : 1) * sizeof *starts);
    bool ok = enc && starts;
    size_t el = 0;
    for (size_t i = 0; ok && i < len; i++) {
        const char *b = t->byte_enc[(unsigned char)utf[i]];
        starts[i] = el;
        size_t bl = strlen(b);
        memcpy(enc + el, b, bl);
        el += bl;
    }
    if (ok && len > 0)
        ok = bpe_word(t, enc, el, starts, len, out);
    free(utf);
    free(enc);
    free(starts);
    return ok;
}

/* CLIPTokenizer._tokenize of one piece between special tokens. */
static bool tokenize_piece(const df_tokenizer *t, const uint32_t *v, size_t n, idbuf *out)
{
    cpbuf norm = {0};
    bool ok = basic_normalize(v, n, &norm);
    for (size_t i = 0; ok && i < norm.n;) {
        size_t k = pretoken_len(norm.v, norm.n, i);
        if (k == 0) {
            i++;
            continue;
        }
        ok = bpe_pretoken(t, norm.v + i, k, out);
        i += k;
    }
    free(norm.v);
    return ok;
}

/* Longest added token starting at i, as transformers' trie splits. */
static int special_at(const df_tokenizer *t, const uint32_t *v, size_t n, size_t i)
{
    int best = -1;
    for (int s = 0; s < t->n_specials; s++) {
        const cpbuf *p = &t->specials[s];
        if (p->n <= n - i && !memcmp(v + i, p->v, p->n * sizeof *v) &&
            (best < 0 || p->n > t->specials[best].n))
            best = s;
    }
    return best;
}

df_status df_tokenizer_tokenize(const df_tokenizer *t, const char *text, int32_t **ids,
                                size_t *n)
{
    return df_tokenizer_tokenize_len(t, text, strlen(text), ids, n);
}

df_status df_tokenizer_tokenize_len(const df_tokenizer *t, const char *text, size_t len,
                                    int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (len > MAX_TEXT_BYTES)
        return df_fail(DF_ERR_RANGE, "prompt of %zu bytes is longer than the %zu accepted",
                       len, MAX_TEXT_BYTES);
    cpbuf cp = {0};
    idbuf out = {0};
    bool ok = utf8_decode(text, len, &cp);
    size_t i = 0, piece = 0;
    while (ok && i < cp.n) {
        int s = special_at(t, cp.v, cp.n, i);
        if (s < 0) {
            i++;
            continue;
        }
        if (i > piece)
            ok = tokenize_piece(t, cp.v + piece, i - piece, &out);
        ok = ok && id_push(&out, t->special_ids[s]);
        i += t->specials[s].n;
        piece = i;
    }
    if (ok && cp.n > piece)
        ok = tokenize_piece(t, cp.v + piece, cp.n - piece, &out);
    free(cp.v);
    if (!ok) {
        free(out.v);
        return df_fail(DF_ERR_NOMEM, "tokenizer: out of memory");
    }
    *ids = out.v;
    *n = out.n;
    return DF_OK;
}

df_status df_tokenizer_encode(const df_tokenizer *t, const char *text, int32_t *ids,
                              int32_t *mask, size_t *n_untruncated)
{
    return df_tokenizer_encode_len(t, text, strlen(text), ids, mask, n_untruncated);
}

df_status df_tokenizer_encode_len(const df_tokenizer *t, const char *text, size_t len,
                                  int32_t *ids, int32_t *mask, size_t *n_untruncated)
{
    int32_t *bpe;
    size_t n;
    df_status st = df_tokenizer_tokenize_len(t, text, len, &bpe, &n);
    if (st)
        return st;
    size_t L = (size_t)t->max_length, keep = n < L - 2 ? n : L - 2;
    ids[0] = t->bos;
    if (keep)
        memcpy(ids + 1, bpe, keep * sizeof *ids);
    ids[keep + 1] = t->eos;
    for (size_t i = keep + 2; i < L; i++)
        ids[i] = t->pad;
    for (size_t i = 0; mask && i < L; i++)
        mask[i] = i < keep + 2;
    if (n_untruncated)
        *n_untruncated = n + 2;
    free(bpe);
    return DF_OK;
}
