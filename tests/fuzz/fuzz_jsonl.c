/* fuzz_jsonl.c - JSON Lines records (lib/base/jsonl.c): the input is a JSONL
 * stream read through df_jsonl_next from a memory FILE; each record's fields
 * go through the df_rec_* getters and the record is written back with
 * df_jsonl_write_fd (to /dev/null), as the tools pass records on. */
#include <stdio.h>

#include "fuzz_util.h"
#include "jsonl.h"

static int devnull = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (devnull < 0)
        devnull = open("/dev/null", O_WRONLY);
    if (size == 0)
        return 0;   /* fmemopen refuses a zero-size buffer */
    FILE *fp = fmemopen((void *)data, size, "r");
    if (!fp)
        return 0;
    df_jsonl_reader r;
    df_jsonl_reader_init(&r, fp);
    json_t *rec;
    while (df_jsonl_next(&r, &rec) == DF_OK && rec) {
        long long i;
        double d;
        const char *keys[] = {"error", "file", "caption", "prompt", "text", "raw"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            (void)df_rec_str(rec, keys[k]);
            (void)df_rec_int(rec, keys[k], &i);
            (void)df_rec_num(rec, keys[k], &d);
        }
        df_rec_set_int(rec, "input_line", r.lineno);
        (void)df_jsonl_write_fd(devnull, rec);
        json_decref(rec);
    }
    df_jsonl_reader_free(&r);
    fclose(fp);
    return 0;
}
