/* fuzz_lora.c - LoRA key parsing and checking (lib/models/lora.c). The
 * input describes a LoRA file, one tensor per line: "<name> <shape>", the
 * shape as "4x8" (empty for a scalar, at most 4 dims, at most 4096
 * elements); a line starting with '!' makes that tensor hold a NaN. The
 * file is written with df_st_writer and checked with df_lora_check against
 * the fixture model's UNet and text encoder weights
 * ($DF_FIXTURES/pipeline), which resolves every key (PEFT, diffusers,
 * kohya), pairs down/up/alpha and checks shapes and values. The first line
 * is also given to df_lora_parse_arg. A binary format would spend the
 * fuzzer's time in the safetensors header, which fuzz_safetensors covers. */
#include <math.h>
#include <stdbool.h>

#include "fuzz_util.h"
#include "lora.h"
#include "safetensors.h"
#include "status.h"
#include "weights.h"

static df_weights *unet, *te;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char u[4096], t[4096];
    snprintf(u, sizeof u, "%s", fuzz_fixture("pipeline/unet"));
    snprintf(t, sizeof t, "%s", fuzz_fixture("pipeline/text_encoder"));
    if (df_weights_open_dir(u, NULL, &unet) != DF_OK ||
        df_weights_open_dir(t, NULL, &te) != DF_OK) {
        fprintf(stderr, "fuzz_lora: %s (set DF_FIXTURES)\n", df_last_error());
        exit(1);
    }
    return 0;
}

#define MAX_T 512

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strdup(data, size);
    char *save = NULL, *line;
    float *bufs[MAX_T];
    int nb = 0;
    df_st_writer *w = df_st_writer_new();
    if (!w)
        abort();
    bool first = true;
    int added = 0;
    for (line = strtok_r(text, "\n", &save); line && nb < MAX_T;
         line = strtok_r(NULL, "\n", &save)) {
        if (first) {
            char *p = NULL;
            float sc;
            if (df_lora_parse_arg(line, &p, &sc) == DF_OK)
                free(p);
            first = false;
        }
        bool nan = line[0] == '!';
        char *name = line + nan;
        char *sp = strrchr(name, ' ');
        int64_t shape[4];
        int nd = 0;
        size_t numel = 1;
        if (sp) {
            *sp = 0;
            for (char *q = sp + 1; *q && nd < 4;) {
                char *e;
                long v = strtol(q, &e, 10);
                if (e == q || v < 0 || v > 4096)
                    break;
                shape[nd++] = v;
                numel *= (size_t)v;
                if (numel > 4096)
                    break;
                q = *e == 'x' ? e + 1 : e;
                if (!*e || *e != 'x')
                    break;
            }
        }
        if (numel > 4096)
            continue;
        float *b = malloc((numel ? numel : 1) * sizeof *b);
        if (!b)
            abort();
        for (size_t i = 0; i < numel; i++)
            b[i] = 0.01f * (float)((i * 7) % 13) - 0.05f;
        if (nan && numel)
            b[numel / 2] = NAN;
        bufs[nb++] = b;
        if (df_st_writer_add(w, name, DF_DTYPE_F32, nd, shape, b) == DF_OK)
            added++;
    }
    const char *path = NULL;
    {
        char p[600];
        snprintf(p, sizeof p, "%s/lora.safetensors", fuzz_tmpdir());
        path = p;
        /* df_st_write on an empty writer calls qsort(NULL, 0, ...), which
         * UBSan reports (nonnull argument; reported, lib/io/safetensors.c
         * is not ours to change here): write an empty file by hand. */
        static const uint8_t empty[10] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
        if (!added)
            fuzz_write_file("lora.safetensors", empty, sizeof empty);
        if (!added || df_st_write(w, path) == DF_OK) {
            df_lora_report rep;
            memset(&rep, 0, sizeof rep);
            df_status s = df_lora_check(path, unet, te, &rep);
            if (s == DF_OK && rep.n_applied + rep.n_unmatched != rep.n_tensors) {
                fprintf(stderr, "fuzz_lora: %zu tensors, %zu applied, %zu unmatched:",
                        rep.n_tensors, rep.n_applied, rep.n_unmatched);
                for (size_t i = 0; i < rep.n_unmatched; i++)
                    fprintf(stderr, " %s", rep.unmatched[i]);
                fprintf(stderr, "\n");
                abort();
            }
            df_lora_report_free(&rep);
            memset(&rep, 0, sizeof rep);
            (void)df_lora_check(path, unet, NULL, &rep);
            df_lora_report_free(&rep);
        }
    }
    df_st_writer_free(w);
    for (int i = 0; i < nb; i++)
        free(bufs[i]);
    free(text);
    return 0;
}
