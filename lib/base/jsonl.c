/* jsonl.c - JSON Lines reader and whole-line writer.
 * Tested by tests/unit/test_jsonl.c. */
#include "jsonl.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
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

static json_t *error_record(long lineno, const char *why, const char *raw, size_t n)
{
    json_t *rec = json_object();
    char msg[512];
    snprintf(msg, sizeof msg, "line %ld: %s", lineno, why);
    json_object_set_new(rec, "error", json_string(msg));
    json_object_set_new(rec, "input_line", json_integer(lineno));
    /* Keep the raw text (when it is valid UTF-8) so nothing is lost. */
    json_t *r = json_stringn(raw, n);
    if (r)
        json_object_set_new(rec, "raw", r);
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
            *out = error_record(r->lineno, why, r->line, (size_t)n);
        } else if (!json_is_object(v)) {
            json_decref(v);
            *out = error_record(r->lineno, "not a JSON object", r->line, (size_t)n);
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
    if (!s) /* not valid UTF-8: keep the bytes, escaped lossily, rather than drop the field */
        s = json_stringn_nocheck(val, strlen(val));
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
