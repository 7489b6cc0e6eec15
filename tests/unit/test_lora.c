/* test_lora.c - lib/models/lora: the same LoRA in PEFT, diffusers and kohya format
 * (the fixtures' lora/ folder) merges into identical weights, equal to
 * W + scale * (alpha/r) * B @ A computed here independently; every tensor is
 * accounted for; unknown tensors are named; a LoRA that does not fit the
 * model fails before changing anything. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lora.h"
#include "safetensors.h"
#include "unit.h"
#include "weights.h"

static char fx[2048];

static const char *fxpath(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx, rel);
    return buf[k];
}

static void open_models(df_weights **unet, df_weights **te)
{
    CHECK(df_weights_open_dir(fxpath("pipeline/unet"), NULL, unet) == DF_OK);
    CHECK(df_weights_open_dir(fxpath("pipeline/text_encoder"), NULL, te) == DF_OK);
}

/* Copy of a weight after merging, for comparison across formats. */
static float *snapshot(df_weights *w, const char *name, size_t *n)
{
    df_status st;
    const float *p = df_weights_get(w, name, -1, NULL, &st);
    const df_st_tensor *t = df_st_find(df_weights_file(w), name);
    CHECK(p && t);
    if (!p || !t)
        return NULL;
    *n = t->numel;
    float *c = malloc(*n * sizeof *c);
    memcpy(c, p, *n * sizeof *c);
    return c;
}

static const char *UNET_W = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
static const char *UNET_OUT = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0.weight";
static const char *TE_W = "text_model.encoder.layers.1.self_attn.out_proj.weight";

/* Independent expectation for one module from the PEFT file. */
static void expect_merged(const char *module_key, const char *wname, df_weights *base, float f,
                          float **exp, size_t *n)
{
    df_safetensors *st;
    CHECK(df_st_open(fxpath("lora/peft_lora.safetensors"), &st) == DF_OK);
    char ka[512], kb[512];
    snprintf(ka, sizeof ka, "%s.lora_A.weight", module_key);
    snprintf(kb, sizeof kb, "%s.lora_B.weight", module_key);
    float *A = NULL, *B = NULL;
    CHECK(df_st_load_f32(st, ka, -1, NULL, &A) == DF_OK);
    CHECK(df_st_load_f32(st, kb, -1, NULL, &B) == DF_OK);
    const df_st_tensor *ta = df_st_find(st, ka), *tb = df_st_find(st, kb);
    *exp = snapshot(base, wname, n);
    if (A && B && ta && tb && *exp) {
        int64_t r = ta->shape[0], in = ta->shape[1], out = tb->shape[0];
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < in; i++) {
                double s = 0;
                for (int64_t k = 0; k < r; k++)
                    s += (double)B[o * r + k] * A[k * in + i];
                (*exp)[o * in + i] += (float)(f * s);
            }
    }
    free(A);
    free(B);
    df_st_close(st);
}

int main(void)
{
    const char *env = getenv("DF_FIXTURES");
    snprintf(fx, sizeof fx, "%s", env ? env : "../shared/fixtures");
    if (access(fxpath("lora/peft_lora.safetensors"), R_OK) != 0) {
        fprintf(stderr, "fixtures not found at %s (set DF_FIXTURES)\n", fx);
        return 1;
    }
    const char *files[] = {"lora/peft_lora.safetensors", "lora/pytorch_lora_weights.safetensors",
                           "lora/kohya_lora.safetensors"};
    const char *formats[] = {"peft", "diffusers", "kohya"};
    const float scale = 0.7f;
    float *got[3][3];
    size_t n[3];

    for (int f = 0; f < 3; f++) {
        df_weights *unet, *te;
        open_models(&unet, &te);
        df_lora_report rep;
        df_status s = df_lora_apply(fxpath(files[f]), scale, unet, te, &rep);
        CHECK_MSG(s == DF_OK, "%s: %s", files[f], df_last_error());
        CHECK_MSG(!strcmp(rep.format, formats[f]), "format %s, want %s", rep.format, formats[f]);
        CHECK_MSG(rep.n_applied == rep.n_tensors && rep.n_unmatched == 0,
                  "%s: %zu of %zu applied", files[f], rep.n_applied, rep.n_tensors);
        CHECK(rep.n_unet_pairs > 0 && rep.n_te_pairs > 0);
        got[f][0] = snapshot(unet, UNET_W, &n[0]);
        got[f][1] = snapshot(unet, UNET_OUT, &n[1]);
        got[f][2] = snapshot(te, TE_W, &n[2]);
        df_lora_report_free(&rep);
        df_weights_free(unet);
        df_weights_free(te);
    }
    /* Expected from the PEFT file's A and B and the untouched base weights. */
    df_weights *unet, *te;
    open_models(&unet, &te);
    float *exp[3];
    size_t m[3];
    expect_merged("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", UNET_W, unet,
                  scale, &exp[0], &m[0]);
    expect_merged("unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0", UNET_OUT,
                  unet, scale, &exp[1], &m[1]);
    expect_merged("text_encoder.text_model.encoder.layers.1.self_attn.out_proj", TE_W, te, scale,
                  &exp[2], &m[2]);
    for (int f = 0; f < 3; f++)
        for (int k = 0; k < 3; k++) {
            double d = unit_max_abs_diff(got[f][k], exp[k], n[k]);
            CHECK_MSG(m[k] == n[k] && d <= 1e-6, "%s tensor %d: max diff %g", files[f], k, d);
            free(got[f][k]);
        }
    for (int k = 0; k < 3; k++)
        free(exp[k]);

    /* A file with an extra, unknown tensor: it is applied except that one,
     * which is named. A LoRA whose shape cannot fit fails, changing nothing. */
    df_safetensors *src;
    CHECK(df_st_open(fxpath("lora/peft_lora.safetensors"), &src) == DF_OK);
    df_st_writer *w = df_st_writer_new();
    for (size_t i = 0; i < df_st_count(src); i++) {
        const df_st_tensor *t = df_st_at(src, i);
        df_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    float junk[4] = {1, 2, 3, 4};
    df_st_writer_add(w, "unet.no_such_block.to_q.lora_A.weight", DF_DTYPE_F32, 2,
                     (int64_t[]){2, 2}, junk);
    char path[] = "/tmp/df-test-lora-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(df_st_write(w, path) == DF_OK);
    df_st_writer_free(w);
    df_lora_report rep;
    CHECK(df_lora_apply(path, 1.0f, unet, te, &rep) == DF_OK);
    CHECK(rep.n_unmatched == 1 && rep.n_applied + 1 == rep.n_tensors);
    CHECK(rep.n_unmatched == 1 && strstr(rep.unmatched[0], "no_such_block"));
    df_lora_report_free(&rep);

    w = df_st_writer_new();
    float a[4 * 7] = {0}, b[7 * 4] = {0};
    df_st_writer_add(w, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                     DF_DTYPE_F32, 2, (int64_t[]){4, 7}, a);
    df_st_writer_add(w, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
                     DF_DTYPE_F32, 2, (int64_t[]){7, 4}, b);
    CHECK(df_st_write(w, path) == DF_OK);
    df_st_writer_free(w);
    size_t nb;
    float *before = snapshot(unet, UNET_W, &nb);
    CHECK(df_lora_apply(path, 1.0f, unet, te, &rep) == DF_ERR_SHAPE);
    CHECK(strstr(df_last_error(), "does not fit"));
    float *after = snapshot(unet, UNET_W, &nb);
    CHECK(before && after && memcmp(before, after, nb * sizeof(float)) == 0);
    free(before);
    free(after);
    df_lora_report_free(&rep);
    unlink(path);
    df_st_close(src);
    df_weights_free(unet);
    df_weights_free(te);

    /* df_lora_check: the same report as apply, and no weight changed or copied. */
    {
        df_weights *cu, *ct;
        open_models(&cu, &ct);
        size_t n0;
        float *w0 = snapshot(cu, UNET_W, &n0);
        df_lora_report chk;
        CHECK(df_lora_check(fxpath("lora/kohya_lora.safetensors"), cu, ct, &chk) == DF_OK);
        CHECK(!strcmp(chk.format, "kohya") && chk.n_applied == chk.n_tensors && chk.n_unmatched == 0);
        CHECK(chk.n_unet_pairs > 0 && chk.n_te_pairs > 0);
        CHECK(df_weights_private_bytes(cu) == 0 && df_weights_private_bytes(ct) == 0);
        float *w1 = snapshot(cu, UNET_W, &n0);
        CHECK(w0 && w1 && memcmp(w0, w1, n0 * sizeof(float)) == 0);
        free(w0);
        free(w1);
        df_lora_report_free(&chk);
        df_weights_free(cu);
        df_weights_free(ct);
    }

    /* A module's down tensor twice, under two formats' suffixes (kohya's
     * lora_down and peft's lora_A): the second is reported as unmatched,
     * not dropped (found by tests/fuzz/fuzz_lora.c). */
    {
        df_weights *cu, *ct;
        open_models(&cu, &ct);
        static float d[4 * 32], e[4 * 3];
        const char *dup = "/tmp/df_test_lora_dup.safetensors";
        df_st_writer *w = df_st_writer_new();
        CHECK(df_st_writer_add(w, "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down"
                               ".weight", DF_DTYPE_F32, 2, (int64_t[]){4, 32}, d) == DF_OK);
        CHECK(df_st_writer_add(w, "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_A"
                               ".weight", DF_DTYPE_F32, 2, (int64_t[]){4, 3}, e) == DF_OK);
        CHECK(df_st_write(w, dup) == DF_OK);
        df_st_writer_free(w);
        df_lora_report chk;
        CHECK(df_lora_check(dup, cu, ct, &chk) == DF_OK);
        CHECK_MSG(chk.n_applied + chk.n_unmatched == chk.n_tensors && chk.n_tensors == 2,
                  "%zu tensors, %zu applied, %zu unmatched", chk.n_tensors, chk.n_applied,
                  chk.n_unmatched);
        df_lora_report_free(&chk);
        unlink(dup);
        df_weights_free(cu);
        df_weights_free(ct);
    }

    /* --lora argument parsing */
    char *p;
    float sc;
    CHECK(df_lora_parse_arg("x.safetensors:0.5", &p, &sc) == DF_OK && !strcmp(p, "x.safetensors") && sc == 0.5f);
    free(p);
    CHECK(df_lora_parse_arg("dir:a/x.safetensors", &p, &sc) == DF_OK && !strcmp(p, "dir:a/x.safetensors") && sc == 1.0f);
    free(p);
    CHECK(df_lora_parse_arg(":2", &p, &sc) == DF_ERR_ARG);
    /* FILE:abc where FILE exists and FILE:abc does not: a bad scale, named;
     * an existing file whose name ends in ":abc" is still a path. */
    const char *real = fxpath("lora/peft_lora.safetensors");
    char arg[4200];
    snprintf(arg, sizeof arg, "%s:abc", real);
    CHECK(df_lora_parse_arg(arg, &p, &sc) == DF_ERR_ARG && strstr(df_last_error(), "'abc'"));
    snprintf(arg, sizeof arg, "%s:inf", real);
    CHECK(df_lora_parse_arg(arg, &p, &sc) == DF_ERR_ARG && strstr(df_last_error(), "'inf'"));
    char dir[] = "/tmp/df-test-lora-XXXXXX";
    if (mkdtemp(dir)) {
        char colon[256], plain[256];
        snprintf(colon, sizeof colon, "%s/a.safetensors:abc", dir);
        snprintf(plain, sizeof plain, "%s/a.safetensors", dir);
        FILE *f1 = fopen(colon, "w"), *f2 = fopen(plain, "w");
        if (f1)
            fclose(f1);
        if (f2)
            fclose(f2);
        CHECK(df_lora_parse_arg(colon, &p, &sc) == DF_OK && !strcmp(p, colon) && sc == 1.0f);
        free(p);
        unlink(colon);
        unlink(plain);
        rmdir(dir);
    }
    /* Neither exists: left to the open, which names the file. */
    CHECK(df_lora_parse_arg("/nonexistent/x.safetensors:abc", &p, &sc) == DF_OK &&
          !strcmp(p, "/nonexistent/x.safetensors:abc"));
    free(p);
    UNIT_END();
}
