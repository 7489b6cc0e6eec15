/* clip_bpe.c - OpenAI CLIP's BPE merges (MIT licence), built into libdf
 * for single-file checkpoints, which carry no tokenizer.
 *
 * clip_merges.txt.gz is the merges.txt of the SD 2.1 tokenizer folder (the
 * first 48894 merges of CLIP's bpe_simple_vocab_16e6.txt, "#version: 0.2"
 * header), gzip -9 -n: 208 KB in the binary instead of 1.5 MB for
 * vocab.json + merges.txt, since the vocabulary follows from the merges
 * (df_tokenizer_load_merges). The assembler's .incbin embeds the file at
 * build time; the Makefile makes this object depend on it.
 * Tested by tests/unit/test_single_file.c: ids equal to the fixture
 * tokenizer's vocab.json for every id, and equal encodings. */
#include <stdlib.h>
#include <zlib.h>

#include "tokenizer.h"

__asm__(".section .rodata\n"
        ".balign 16\n"
        "df_clip_merges_gz:\n"
        ".incbin \"lib/models/clip_merges.txt.gz\"\n"
        "df_clip_merges_gz_end:\n"
        ".previous\n");
extern const unsigned char df_clip_merges_gz[] __asm__("df_clip_merges_gz");
extern const unsigned char df_clip_merges_gz_end[] __asm__("df_clip_merges_gz_end");

/* The merges text is 525 KB; anything much larger is not this file. */
#define MAX_MERGES_BYTES ((size_t)4 << 20)

df_status df_tokenizer_load_builtin(df_tokenizer **out)
{
    *out = NULL;
    z_stream z = {0};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return df_fail(DF_ERR_NOMEM, "built-in CLIP BPE: zlib init failed");
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    z.next_in = (unsigned char *)df_clip_merges_gz;
    z.avail_in = (unsigned)(df_clip_merges_gz_end - df_clip_merges_gz);
    int r = Z_OK;
    while (buf && r == Z_OK) {
        if (n == cap) {
            char *nb = cap < MAX_MERGES_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        z.next_out = (unsigned char *)buf + n;
        z.avail_out = (unsigned)(cap - n);
        r = inflate(&z, Z_NO_FLUSH);
        n = cap - z.avail_out;
    }
    inflateEnd(&z);
    df_status st = !buf ? df_fail(DF_ERR_NOMEM, "built-in CLIP BPE: out of memory")
                   : r != Z_STREAM_END ? df_fail(DF_ERR_FORMAT, "built-in CLIP BPE: bad gzip data")
                                       : df_tokenizer_load_merges(buf, n, "built-in CLIP BPE", out);
    free(buf);
    return st;
}
