/* fuzz_single_file.c - single-file checkpoint names (lib/models/
 * single_file.c). The input describes a checkpoint, one tensor per line:
 * "<name> <shape>", the shape as "4x8" (empty for a scalar, at most 4 dims,
 * at most 4096 elements). The file is written with df_st_writer and opened
 * with the fixture's layout; then every tensor must be classified exactly
 * once, each mapped name must map back (df_sf_file_name) to the name it came
 * from (the q/k/v thirds to their in_proj with the right part), and each
 * component's view must build or fail with a message, its tensors readable
 * and a missing one named. The safetensors header itself is fuzz_safetensors'. */
#include <stdbool.h>

#include "fuzz_util.h"
#include "safetensors.h"
#include "single_file.h"
#include "status.h"
#include "weights.h"

#define MAX_T 256

static const df_sf_layout lay = {.unet_layers_per_block = 2, .unet_up_attention = 0xe,
                                 .vae_blocks = 4, .text_layers = 2};

/* Forward then back must give the name again (a transformers CLIPTextModel
 * inside the file is read as is, so it has no original name to return to). */
static void check_round_trip(const char *name)
{
    df_sf_map m;
    if (df_sf_map_name(name, &lay, &m) != DF_SF_MAPPED ||
        !strncmp(name, "cond_stage_model.transformer.", 29))
        return;
    for (int p = 0; p < m.n; p++) {
        char back[DF_SF_NAME_MAX];
        int part;
        if (!df_sf_file_name(m.comp, m.names[p], &lay, back, sizeof back, &part) ||
            strcmp(back, name) || part != (m.n == 3 ? p : -1)) {
            fprintf(stderr, "fuzz_single_file: %s -> %s -> %s (part %d)\n", name, m.names[p],
                    back, part);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strdup(data, size);
    char *save = NULL, *line;
    float *bufs[MAX_T];
    int nb = 0, added = 0;
    df_st_writer *w = df_st_writer_new();
    if (!w)
        abort();
    for (line = strtok_r(text, "\n", &save); line && nb < MAX_T;
         line = strtok_r(NULL, "\n", &save)) {
        char *sp = strrchr(line, ' ');
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
                if (numel > 4096 || *e != 'x')
                    break;
                q = e + 1;
            }
        }
        if (numel > 4096)
            continue;
        check_round_trip(line);
        float *b = calloc(numel ? numel : 1, sizeof *b);
        if (!b)
            abort();
        bufs[nb++] = b;
        if (df_st_writer_add(w, line, DF_DTYPE_F32, nd, shape, b) == DF_OK)
            added++;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/sf.safetensors", fuzz_tmpdir());
    df_single_file *sf = NULL;
    if (added && df_st_write(w, path) == DF_OK &&
        df_single_file_open(path, &lay, &sf) == DF_OK) {
        size_t n = df_single_file_count(sf, DF_SF_MAPPED) + df_single_file_count(sf, DF_SF_SKIPPED) +
                   df_single_file_count(sf, DF_SF_UNKNOWN);
        if (n != df_single_file_tensors(sf))
            abort();
        for (int c = 0; c < DF_SF_COMPONENTS; c++) {
            df_weights *wt;
            if (df_single_file_weights(sf, (df_sf_component)c, &wt) != DF_OK)
                continue;
            const df_safetensors *v = df_weights_file(wt);
            for (size_t i = 0; i < df_st_count(v); i++)
                (void)df_weights_get(wt, df_st_at(v, i)->name, -1, NULL, NULL);
            (void)df_weights_get(wt, "down_blocks.0.resnets.0.norm1.weight", -1, NULL, NULL);
            (void)df_weights_get(wt, "text_model.encoder.layers.1.self_attn.v_proj.bias", -1,
                                 NULL, NULL);
            df_weights_free(wt);
        }
        df_single_file_free(sf);
    }
    df_st_writer_free(w);
    for (int i = 0; i < nb; i++)
        free(bufs[i]);
    free(text);
    return 0;
}
