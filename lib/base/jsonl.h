/* jsonl.h - JSON Lines records on jansson.
 *
 * Reader: lines of any length; a line that is not a JSON object becomes a
 * record {"error": "line N: ...", "input_line": N, "raw": "<the line>"} so
 * that it is passed on and counted, never skipped. A line that is not valid
 * UTF-8 cannot be a JSON string: its record carries "raw_base64" (the line's
 * exact bytes, without the newline, in standard base64) instead of "raw".
 * With a reader name set, the error reads "NAME: line N: ...". Blank lines
 * are not records and are skipped.
 * Strings that are not valid UTF-8 (file names) are stored by df_rec_set_str
 * with each invalid byte written as the four characters \xNN.
 * Writer: each record is serialized first and written with write(2) in one
 * piece under a lock, so concurrent writers on one pipe (threads here, or
 * GNU parallel jobs) never interleave inside a line.
 * Tested by tests/unit/test_jsonl.c. */
#ifndef DF_JSONL_H
#define DF_JSONL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "status.h"

typedef struct {
    FILE *fp;
    char *line;
    size_t cap;
    long lineno;       /* line number of the record last returned (1-based) */
    const char *name;  /* input name for error records ("a/metadata.jsonl"), or NULL */
} df_jsonl_reader;

void df_jsonl_reader_init(df_jsonl_reader *r, FILE *fp);
/* Next record into *out (new reference). DF_OK with *out == NULL at EOF;
 * DF_ERR_IO on a read error. A malformed line gives DF_OK and an error
 * record, as described above. */
df_status df_jsonl_next(df_jsonl_reader *r, json_t **out);
void df_jsonl_reader_free(df_jsonl_reader *r);

/* Write one record as one line to fd (compact, keys in insertion order).
 * Thread-safe. DF_ERR_IO when the write fails (EPIPE, ENOSPC). */
df_status df_jsonl_write_fd(int fd, const json_t *rec);

/* Read a whole JSONL file into a new array (same rules as the reader). */
df_status df_jsonl_read_file(const char *path, json_t **array_out);

/* Helpers for record fields. */
const char *df_rec_str(const json_t *rec, const char *key);   /* NULL if absent or not a string */
bool df_rec_int(const json_t *rec, const char *key, long long *out);
bool df_rec_num(const json_t *rec, const char *key, double *out);
/* Sets the field; a value that is not valid UTF-8 is stored escaped (below). */
void df_rec_set_str(json_t *rec, const char *key, const char *val);
void df_rec_set_int(json_t *rec, const char *key, long long val);
void df_rec_set_num(json_t *rec, const char *key, double val);
/* Set "error" to the formatted message. */
void df_rec_set_error(json_t *rec, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* s[0..n) as valid UTF-8, each byte that is not part of a valid sequence
 * (and NUL) written as \xNN: for messages and fields naming file names that
 * are not UTF-8. New string (free it), NULL when out of memory. */
char *df_utf8_escape(const char *s, size_t n);

/* Read a whole JSON file (config.json and the like) with a clear error. */
df_status df_json_load_file(const char *path, json_t **out);

#endif
