/* test_jsonl.c - lib/base/jsonl: malformed lines become error records with the
 * line number, long lines survive, records round-trip whole. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonl.h"
#include "unit.h"

int main(void)
{
    /* A file with a good record, a non-object, broken JSON, a blank line and
     * a 1 MB line. */
    char path[] = "/tmp/df-test-jsonl-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *fp = fdopen(fd, "w+");
    fprintf(fp, "{\"file_name\":\"a.jpg\",\"x\":1}\n[1,2]\n{broken\n\n   \n{\"text\":\"");
    for (int i = 0; i < 1000000; i++)
        fputc('a' + i % 26, fp);
    fprintf(fp, "\"}\n{\"last\":true}");   /* no final newline */
    rewind(fp);

    df_jsonl_reader r;
    df_jsonl_reader_init(&r, fp);
    json_t *rec;
    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);
    CHECK(!strcmp(df_rec_str(rec, "file_name"), "a.jpg"));
    CHECK(r.lineno == 1);
    json_decref(rec);

    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);
    CHECK(df_rec_str(rec, "error") && strstr(df_rec_str(rec, "error"), "line 2"));
    CHECK(!strcmp(df_rec_str(rec, "raw"), "[1,2]"));
    json_decref(rec);

    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);
    CHECK(df_rec_str(rec, "error") && strstr(df_rec_str(rec, "error"), "line 3"));
    json_decref(rec);

    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);   /* blank lines 4, 5 skipped */
    CHECK(r.lineno == 6);
    CHECK(df_rec_str(rec, "text") && strlen(df_rec_str(rec, "text")) == 1000000);
    json_decref(rec);

    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);
    CHECK(json_is_true(json_object_get(rec, "last")));
    json_decref(rec);
    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec == NULL);
    df_jsonl_reader_free(&r);
    fclose(fp);

    /* The writer puts one whole line with a newline; order of keys kept. */
    int p[2];
    CHECK(pipe(p) == 0);
    json_t *o = json_object();
    df_rec_set_str(o, "file_name", "b.png");
    df_rec_set_int(o, "width", 768);
    df_rec_set_error(o, "bad %d", 7);
    CHECK(df_jsonl_write_fd(p[1], o) == DF_OK);
    json_decref(o);
    close(p[1]);
    char buf[256] = {0};
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    CHECK(n > 0);
    CHECK(!strcmp(buf, "{\"file_name\":\"b.png\",\"width\":768,\"error\":\"bad 7\"}\n"));

    /* A write to a closed pipe is an error, not silence. */
    CHECK(pipe(p) == 0);
    close(p[0]);
    signal(SIGPIPE, SIG_IGN);
    o = json_object();
    CHECK(df_jsonl_write_fd(p[1], o) == DF_ERR_IO);
    json_decref(o);
    close(p[1]);
    unlink(path);

    /* A line that is not valid UTF-8 keeps its exact bytes as raw_base64
     * (a JSON string cannot hold them), and a reader name is in the error. */
    char path2[] = "/tmp/df-test-jsonl-XXXXXX";
    fd = mkstemp(path2);
    CHECK(fd >= 0);
    fp = fdopen(fd, "w+");
    fputs("{\"text\":\"caf\xe9\"}\n", fp);
    rewind(fp);
    df_jsonl_reader_init(&r, fp);
    r.name = "in.jsonl";
    CHECK(df_jsonl_next(&r, &rec) == DF_OK && rec);
    CHECK(df_rec_str(rec, "error") && !strncmp(df_rec_str(rec, "error"), "in.jsonl: line 1: ", 18));
    CHECK(json_object_get(rec, "raw") == NULL);
    /* base64 of {"text":"caf\xe9"} */
    CHECK(df_rec_str(rec, "raw_base64") && !strcmp(df_rec_str(rec, "raw_base64"), "eyJ0ZXh0IjoiY2Fm6SJ9"));
    char *dump = json_dumps(rec, JSON_COMPACT);   /* the record serializes */
    CHECK(dump != NULL);
    free(dump);
    json_decref(rec);
    df_jsonl_reader_free(&r);
    fclose(fp);
    unlink(path2);

    /* Strings that are not UTF-8 are stored escaped, and still serialize. */
    o = json_object();
    df_rec_set_str(o, "file_name", "bad\xff.png");
    CHECK(df_rec_str(o, "file_name") && !strcmp(df_rec_str(o, "file_name"), "bad\\xff.png"));
    dump = json_dumps(o, JSON_COMPACT);
    CHECK(dump && !strcmp(dump, "{\"file_name\":\"bad\\\\xff.png\"}"));
    free(dump);
    json_decref(o);
    char *esc = df_utf8_escape("a\xc3\xa9\xed\xa0\x80z", 7);   /* é kept, a surrogate escaped */
    CHECK(esc && !strcmp(esc, "a\xc3\xa9\\xed\\xa0\\x80z"));
    free(esc);
    UNIT_END();
}
