/* jsonl.c - JSON Lines reader and whole-line writer.
 * Tested by tests/unit/test_jsonl.c. */
#include "jsonl.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

void df_jsonl_reader_init(df_jsonl_reader *r, FILE *fp)
{
    memset(r, 0, sizeof *r);
    r->fp = fp;
}

void df_jsonl_reader_free(df_jsonl_reader *r)
{
    free(r->line);
    r->line = NULL;
    r->cap = 0;
}

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are invalid,
 * as for jansson). NUL counts as invalid here: it cannot be in a C string. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned cp;
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

char *df_utf8_escape(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n > (SIZE_MAX - 1) / 4)
        return NULL;
    char *out = malloc(4 * n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(u + i, n - i);
        if (k) {
            memcpy(o, u + i, k);
            o += k;
            i += k;
        } else {
            o += sprintf(o, "\\x%02x", u[i]);
            i++;
        }
    }
    *o = '\0';
    return out;
}

static char *base64(const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static json_t *error_record(const char *name, long lineno, const char *why, const char *raw,
                            size_t n)
{
    json_t *rec = json_object();
    if (name)
        df_rec_set_error(rec, "%s: line %ld: %s", name, lineno, why);
    else
        df_rec_set_error(rec, "line %ld: %s", lineno, why);
    json_object_set_new(rec, "input_line", json_integer(lineno));
    /* Keep the line so nothing is lost: as text when it is valid UTF-8,
     * else its exact bytes in base64 (a JSON string cannot hold them). */
    json_t *r = json_stringn(raw, n);
    if (r) {
        json_object_set_new(rec, "raw", r);
    } else {
        char *b = base64((const unsigned char *)raw, n);
        if (b)
            json_object_set_new(rec, "raw_base64", json_string(b));
        free(b);
    }
    return rec;
}

df_status df_jsonl_next(df_jsonl_reader *r, json_t **out)
{
    *out = NULL;
    for (;;) {
        errno = 0;
        ssize_t n = getline(&r->line, &r->cap, r->fp);
        if (n < 0) {
            if (ferror(r->fp))
                return df_fail(DF_ERR_IO, "read error after line %ld: %s", r->lineno,
                               strerror(errno ? errno : EIO));
            return DF_OK;
        }
        r->lineno++;
        if (is_blank(r->line, (size_t)n))
            continue;
        while (n > 0 && (r->line[n - 1] == '\n' || r->line[n - 1] == '\r'))
            n--;
        json_error_t jerr;
        json_t *v = json_loadb(r->line, (size_t)n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        if (!v) {
            char why[300];
            snprintf(why, sizeof why, "invalid JSON: %s", jerr.text);
            *out = error_record(r->name, r->lineno, why, r->line, (size_t)n);
        } else if (!json_is_object(v)) {
            json_decref(v);
            *out = error_record(r->name, r->lineno, "not a JSON object", r->line, (size_t)n);
        } else {
            *out = v;
        }
        return DF_OK;
    }
}

df_status df_jsonl_write_fd(int fd, const json_t *rec)
{
    char *s = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        return df_fail(DF_ERR_NOMEM, "cannot serialize record");
    size_t len = strlen(s);
    char *line = realloc(s, len + 2);
    if (!line) {
        free(s);
        return df_fail(DF_ERR_NOMEM, "cannot serialize record");
    }
    line[len++] = '\n';
    df_status st = DF_OK;
    pthread_mutex_lock(&write_lock);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            st = df_fail(DF_ERR_IO, "write error: %s", strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&write_lock);
    free(line);
    return st;
}

df_status df_jsonl_read_file(const char *path, json_t **array_out)
{
    *array_out = NULL;
    FILE *fp = fopen(path, "r");
    if (!fp)
        return df_fail(DF_ERR_IO, "%s: %s", path, strerror(errno));
    df_jsonl_reader r;
    df_jsonl_reader_init(&r, fp);
    json_t *arr = json_array();
    df_status st;
    json_t *rec;
    while ((st = df_jsonl_next(&r, &rec)) == DF_OK && rec)
        json_array_append_new(arr, rec);
    df_jsonl_reader_free(&r);
    fclose(fp);
    if (st != DF_OK) {
        json_decref(arr);
        return df_fail(st, "%s: %s", path, df_last_error());
    }
    *array_out = arr;
    return DF_OK;
}

const char *df_rec_str(const json_t *rec, const char *key)
{
    return json_string_value(json_object_get(rec, key));
}

bool df_rec_int(const json_t *rec, const char *key, long long *out)
{
    json_t *v = json_object_get(rec, key);
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    return false;
}

bool df_rec_num(const json_t *rec, const char *key, double *out)
{
    json_t *v = json_object_get(rec, key);
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return true;
    }
    return false;
}

void df_rec_set_str(json_t *rec, const char *key, const char *val)
{
    json_t *s = json_string(val);
    if (!s) {
        /* Not valid UTF-8 (a file name, a message quoting one): keep the
         * bytes, invalid ones escaped as \xNN, rather than drop the field or
         * store a string that cannot be serialized. */
        char *e = df_utf8_escape(val, strlen(val));
        s = e ? json_string(e) : NULL;
        free(e);
    }
    if (s)
        json_object_set_new(rec, key, s);
}

void df_rec_set_int(json_t *rec, const char *key, long long val)
{
    json_object_set_new(rec, key, json_integer(val));
}

void df_rec_set_num(json_t *rec, const char *key, double val)
{
    json_object_set_new(rec, key, json_real(val));
}

void df_rec_set_error(json_t *rec, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    df_rec_set_str(rec, "error", msg);
}

df_status df_json_load_file(const char *path, json_t **out)
{
    json_error_t jerr;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out) {
        if (jerr.line < 0 || jerr.position == 0)
            return df_fail(DF_ERR_IO, "%s: %s", path, jerr.text);
        return df_fail(DF_ERR_FORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    }
    return DF_OK;
}
