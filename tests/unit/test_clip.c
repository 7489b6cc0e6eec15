/* test_clip.c - lib/models/clip against a plain double-precision CLIPTextModel
 * written here from the transformers definition, on small random models
 * written to temporary folders: gelu and quick_gelu, both pooling rules,
 * F16 weights (the "fp16" variant), a weight changed through df_weights_mut
 * (the LoRA merge path), and errors (missing or bad config keys, a missing
 * tensor, a shape mismatch, bad ids) reported by status with the tensor or
 * key named. The fixture model is checked by tests/check-fixtures. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip.h"
#include "safetensors.h"
#include "unit.h"

/* The test model: V tokens, P positions, C wide, NL layers, NH heads. */
enum { V = 40, P = 9, C = 8, NL = 2, NH = 2, I = 12, NT = 4 + 16 * NL };

typedef struct {
    char name[NT][96];
    int64_t shape[NT][2];
    int ndim[NT];
    float *data[NT];
    int n;
} model;

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) / 16777216.0 * 2.0 - 1.0);
}

static void add(model *m, const char *name, int64_t d0, int64_t d1, float base, float scale,
                unsigned *seed)
{
    int k = m->n++;
    snprintf(m->name[k], sizeof m->name[k], "text_model.%s", name);
    m->shape[k][0] = d0;
    m->shape[k][1] = d1;
    m->ndim[k] = d1 ? 2 : 1;
    size_t n = (size_t)d0 * (d1 ? d1 : 1);
    m->data[k] = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        m->data[k][i] = base + scale * frand(seed);
}

static void make_model(model *m, unsigned seed)
{
    memset(m, 0, sizeof *m);
    add(m, "embeddings.token_embedding.weight", V, C, 0, 1, &seed);
    add(m, "embeddings.position_embedding.weight", P, C, 0, 1, &seed);
    add(m, "final_layer_norm.weight", C, 0, 1, 0.2f, &seed);
    add(m, "final_layer_norm.bias", C, 0, 0, 0.2f, &seed);
    const char *lin[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.out_proj"};
    for (int l = 0; l < NL; l++) {
        char n[96];
        for (int j = 0; j < 2; j++) {
            snprintf(n, sizeof n, "encoder.layers.%d.layer_norm%d.weight", l, j + 1);
            add(m, n, C, 0, 1, 0.2f, &seed);
            snprintf(n, sizeof n, "encoder.layers.%d.layer_norm%d.bias", l, j + 1);
            add(m, n, C, 0, 0, 0.2f, &seed);
        }
        for (int j = 0; j < 4; j++) {
            snprintf(n, sizeof n, "encoder.layers.%d.%s.weight", l, lin[j]);
            add(m, n, C, C, 0, 0.6f, &seed);
            snprintf(n, sizeof n, "encoder.layers.%d.%s.bias", l, lin[j]);
            add(m, n, C, 0, 0, 0.1f, &seed);
        }
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.weight", l);
        add(m, n, I, C, 0, 0.6f, &seed);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.bias", l);
        add(m, n, I, 0, 0, 0.1f, &seed);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc2.weight", l);
        add(m, n, C, I, 0, 0.5f, &seed);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc2.bias", l);
        add(m, n, C, 0, 0, 0.1f, &seed);
    }
}

static const float *W(const model *m, const char *fmt, int l)
{
    char n[96], full[112];
    snprintf(n, sizeof n, fmt, l);
    snprintf(full, sizeof full, "text_model.%s", n);
    for (int k = 0; k < m->n; k++)
        if (!strcmp(m->name[k], full))
            return m->data[k];
    return NULL;
}

/* Write the weights (skipping tensor `skip`, F16 when f16) and a config. */
static void write_model(const char *dir, const model *m, const char *file, int f16, int skip,
                        const char *config)
{
    char p[512];
    df_st_writer *w = df_st_writer_new();
    uint16_t *h[NT] = {0};
    for (int k = 0; k < m->n; k++) {
        if (k == skip)
            continue;
        if (f16) {
            size_t n = (size_t)m->shape[k][0] * (m->ndim[k] == 2 ? m->shape[k][1] : 1);
            h[k] = malloc(n * sizeof *h[k]);
            for (size_t i = 0; i < n; i++)
                h[k][i] = df_f32_to_f16(m->data[k][i]);
        }
        df_st_writer_add(w, m->name[k], f16 ? DF_DTYPE_F16 : DF_DTYPE_F32, m->ndim[k],
                         m->shape[k], f16 ? (const void *)h[k] : (const void *)m->data[k]);
    }
    snprintf(p, sizeof p, "%s/%s", dir, file);
    CHECK(df_st_write(w, p) == DF_OK);
    df_st_writer_free(w);
    for (int k = 0; k < NT; k++)
        free(h[k]);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs(config, f);
    fclose(f);
}

static void config(char *buf, size_t n, const char *act, int eos, int hidden)
{
    snprintf(buf, n,
             "{\"hidden_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
             " \"intermediate_size\": %d, \"hidden_act\": \"%s\", \"layer_norm_eps\": 1e-05,"
             " \"max_position_embeddings\": %d, \"vocab_size\": %d, \"eos_token_id\": %d}",
             hidden, NL, NH, I, act, P, V, eos);
}

/* ---- the reference, in double ---- */

static void ln(double *y, const double *x, const float *w, const float *b)
{
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++)
        mean += x[i] / C;
    for (int i = 0; i < C; i++)
        var += (x[i] - mean) * (x[i] - mean) / C;
    for (int i = 0; i < C; i++)
        y[i] = (x[i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
}

static void lin(double *y, const double *x, const float *w, const float *b, int in, int out)
{
    for (int o = 0; o < out; o++) {
        y[o] = b[o];
        for (int i = 0; i < in; i++)
            y[o] += w[o * in + i] * x[i];
    }
}

/* One sequence of T ids: hs (NL+1,T,C), last (T,C). */
static void ref_forward(const model *m, const int32_t *ids, int T, int quick, double *hs,
                        double *last)
{
    double x[P][C], h[P][C], q[P][C], k[P][C], v[P][C], a[P][C], mid[I], t2[C];
    const int HS = C / NH;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++)
            x[t][i] = W(m, "embeddings.token_embedding.weight", 0)[ids[t] * C + i] +
                      W(m, "embeddings.position_embedding.weight", 0)[t * C + i];
    memcpy(hs, x, sizeof(double) * T * C);
    for (int l = 0; l < NL; l++) {
        for (int t = 0; t < T; t++) {
            ln(h[t], x[t], W(m, "encoder.layers.%d.layer_norm1.weight", l),
               W(m, "encoder.layers.%d.layer_norm1.bias", l));
            lin(q[t], h[t], W(m, "encoder.layers.%d.self_attn.q_proj.weight", l),
                W(m, "encoder.layers.%d.self_attn.q_proj.bias", l), C, C);
            lin(k[t], h[t], W(m, "encoder.layers.%d.self_attn.k_proj.weight", l),
                W(m, "encoder.layers.%d.self_attn.k_proj.bias", l), C, C);
            lin(v[t], h[t], W(m, "encoder.layers.%d.self_attn.v_proj.weight", l),
                W(m, "encoder.layers.%d.self_attn.v_proj.bias", l), C, C);
        }
        for (int hd = 0; hd < NH; hd++)
            for (int t = 0; t < T; t++) {   /* causal: keys 0..t */
                double s[P], mx = -1e300, z = 0;
                for (int j = 0; j <= t; j++) {
                    s[j] = 0;
                    for (int d = 0; d < HS; d++)
                        s[j] += q[t][hd * HS + d] * k[j][hd * HS + d] / sqrt((double)HS);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= t; j++)
                    z += (s[j] = exp(s[j] - mx));
                for (int d = 0; d < HS; d++) {
                    a[t][hd * HS + d] = 0;
                    for (int j = 0; j <= t; j++)
                        a[t][hd * HS + d] += s[j] / z * v[j][hd * HS + d];
                }
            }
        for (int t = 0; t < T; t++) {
            lin(t2, a[t], W(m, "encoder.layers.%d.self_attn.out_proj.weight", l),
                W(m, "encoder.layers.%d.self_attn.out_proj.bias", l), C, C);
            for (int i = 0; i < C; i++)
                x[t][i] += t2[i];
            ln(h[t], x[t], W(m, "encoder.layers.%d.layer_norm2.weight", l),
               W(m, "encoder.layers.%d.layer_norm2.bias", l));
            lin(mid, h[t], W(m, "encoder.layers.%d.mlp.fc1.weight", l),
                W(m, "encoder.layers.%d.mlp.fc1.bias", l), C, I);
            for (int i = 0; i < I; i++)
                mid[i] = quick ? mid[i] / (1 + exp(-1.702 * mid[i]))
                               : 0.5 * mid[i] * (1 + erf(mid[i] / sqrt(2.0)));
            lin(t2, mid, W(m, "encoder.layers.%d.mlp.fc2.weight", l),
                W(m, "encoder.layers.%d.mlp.fc2.bias", l), I, C);
            for (int i = 0; i < C; i++)
                x[t][i] += t2[i];
        }
        memcpy(hs + (size_t)(l + 1) * T * C, x, sizeof(double) * T * C);
    }
    for (int t = 0; t < T; t++)
        ln(last + t * C, x[t], W(m, "final_layer_norm.weight", 0), W(m, "final_layer_norm.bias", 0));
}

static double max_diff(const float *got, const double *ref, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, isnan(got[i]) ? INFINITY : fabs(got[i] - ref[i]));
    return d;
}

/* Run df_clip on B sequences and compare all outputs; pool[b] is the
 * expected pooled position of sequence b. */
static void compare_model(df_clip *clip, const model *m, const int32_t *ids, int B, int T,
                          int quick, const int *pool)
{
    size_t N = (size_t)B * T * C;
    float *last = malloc(N * sizeof *last), *hs = malloc((NL + 1) * N * sizeof *hs);
    float pooled[4 * C];
    CHECK(df_clip_forward(clip, ids, B, T, last, hs, pooled) == DF_OK);
    double *rhs = malloc(sizeof(double) * (NL + 1) * T * C), *rlast = malloc(sizeof(double) * T * C);
    for (int b = 0; b < B; b++) {
        ref_forward(m, ids + b * T, T, quick, rhs, rlast);
        CHECK_NEAR(max_diff(last + (size_t)b * T * C, rlast, (size_t)T * C), 0, 2e-5);
        for (int l = 0; l <= NL; l++)
            CHECK_NEAR(max_diff(hs + l * N + (size_t)b * T * C, rhs + (size_t)l * T * C,
                                (size_t)T * C), 0, 2e-5);
        CHECK_NEAR(max_diff(pooled + b * C, rlast + pool[b] * C, C), 0, 2e-5);
    }
    free(last);
    free(hs);
    free(rhs);
    free(rlast);
}

static void test_forward(const char *dir, const model *m)
{
    char cfg[512];
    df_clip *clip;
    /* gelu, legacy eos 2: pooled at argmax(ids), the first maximum. */
    config(cfg, sizeof cfg, "gelu", 2, C);
    write_model(dir, m, "model.safetensors", 0, -1, cfg);
    CHECK_MSG(df_clip_load(dir, NULL, &clip) == DF_OK, "%s", df_last_error());
    if (!clip)
        return;
    const df_clip_config *g = df_clip_get_config(clip);
    CHECK(g->hidden_size == C && g->num_layers == NL && g->num_heads == NH &&
          g->intermediate_size == I && g->max_positions == P && g->vocab_size == V);
    int32_t ids[3 * P] = {1, 5, 39, 3, 39, 0, 0, 0, 0,
                          7, 7, 7, 7, 7, 7, 7, 7, 7,
                          38, 2, 4, 6, 8, 10, 39, 1, 2};
    compare_model(clip, m, ids, 3, P, 0, (int[]){2, 0, 6});
    compare_model(clip, m, ids, 1, 4, 0, (int[]){2});   /* shorter T */
    /* A weight changed through df_weights_mut (how LoRA merges) is used. */
    int nd;
    int64_t sh[8];
    float *qw = df_weights_mut(df_clip_weights(clip),
                               "text_model.encoder.layers.1.self_attn.q_proj.weight", &nd, sh);
    CHECK(qw && nd == 2 && sh[0] == C && sh[1] == C);
    float *mine = (float *)W(m, "encoder.layers.%d.self_attn.q_proj.weight", 1);
    for (int i = 0; qw && i < C * C; i++)
        qw[i] = mine[i] += 0.3f * (float)((i % 5) - 2);
    compare_model(clip, m, ids, 3, P, 0, (int[]){2, 0, 6});
    df_clip_free(clip);

    /* quick_gelu, eos 7: pooled at the first 7, 0 when there is none. */
    config(cfg, sizeof cfg, "quick_gelu", 7, C);
    write_model(dir, m, "model.safetensors", 0, -1, cfg);
    CHECK(df_clip_load(dir, NULL, &clip) == DF_OK);
    int32_t ids2[2 * P] = {1, 5, 7, 3, 7, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 8, 9, 10};
    if (clip)
        compare_model(clip, m, ids2, 2, P, 1, (int[]){2, 0});
    df_clip_free(clip);
}

/* F16 weights through the "fp16" variant name equal the F32 model with
 * every weight rounded to half. */
static void test_f16(const char *dir, model *m)
{
    char cfg[512], p[512];
    config(cfg, sizeof cfg, "gelu", 2, C);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    write_model(dir, m, "model.fp16.safetensors", 1, -1, cfg);
    for (int k = 0; k < m->n; k++) {
        size_t n = (size_t)m->shape[k][0] * (m->ndim[k] == 2 ? m->shape[k][1] : 1);
        for (size_t i = 0; i < n; i++)
            m->data[k][i] = df_f16_to_f32(df_f32_to_f16(m->data[k][i]));
    }
    df_clip *clip;
    CHECK(df_clip_load(dir, NULL, &clip) == DF_ERR_NOTFOUND);   /* no F32 file now */
    CHECK_MSG(df_clip_load(dir, "fp16", &clip) == DF_OK, "%s", df_last_error());
    int32_t ids[P] = {3, 1, 4, 1, 5, 9, 2, 6, 39};
    if (clip)
        compare_model(clip, m, ids, 1, P, 0, (int[]){8});
    df_clip_free(clip);
    snprintf(p, sizeof p, "%s/model.fp16.safetensors", dir);
    unlink(p);
}

static void expect_load_error(const char *dir, const char *cfg, int skip, df_status want,
                              const char *needle, const model *m)
{
    write_model(dir, m, "model.safetensors", 0, skip, cfg);
    df_clip *clip = (df_clip *)1;
    df_status st = df_clip_load(dir, NULL, &clip);
    CHECK_MSG(st == want && clip == NULL, "status %d, want %d: %s", st, want, df_last_error());
    CHECK_MSG(strstr(df_last_error(), needle) != NULL, "\"%s\" lacks \"%s\"", df_last_error(), needle);
}

static void test_errors(const char *dir, const model *m)
{
    char cfg[512];
    config(cfg, sizeof cfg, "gelu", 2, C);
    /* A missing tensor is named. */
    int skip = m->n - 1;
    expect_load_error(dir, cfg, skip, DF_ERR_NOTFOUND, m->name[skip], m);
    /* Config width 6 against width-8 tensors: a shape error naming the first. */
    config(cfg, sizeof cfg, "gelu", 2, 6);
    expect_load_error(dir, cfg, -1, DF_ERR_SHAPE, "token_embedding", m);
    config(cfg, sizeof cfg, "relu", 2, C);
    expect_load_error(dir, cfg, -1, DF_ERR_UNSUPPORTED, "relu", m);
    expect_load_error(dir, "{\"hidden_size\": 8}", -1, DF_ERR_FORMAT, "num_hidden_layers", m);
    expect_load_error(dir, "{\"hidden_size\": 8, ", -1, DF_ERR_FORMAT, "config.json", m);
    config(cfg, sizeof cfg, "gelu", 2, 7);   /* 7 is not a multiple of 2 heads */
    expect_load_error(dir, cfg, -1, DF_ERR_FORMAT, "multiple", m);

    /* Bad ids and sizes at forward time. */
    config(cfg, sizeof cfg, "gelu", 2, C);
    write_model(dir, m, "model.safetensors", 0, -1, cfg);
    df_clip *clip;
    CHECK(df_clip_load(dir, NULL, &clip) == DF_OK);
    if (!clip)
        return;
    int32_t ids[P + 1] = {1, 2, V, 4};
    float out[(P + 1) * C];
    CHECK(df_clip_forward(clip, ids, 1, 4, out, NULL, NULL) == DF_ERR_RANGE);
    ids[2] = -1;
    CHECK(df_clip_forward(clip, ids, 1, 4, out, NULL, NULL) == DF_ERR_RANGE);
    ids[2] = 3;
    CHECK(df_clip_forward(clip, ids, 1, P + 1, out, NULL, NULL) == DF_ERR_RANGE);
    CHECK(df_clip_forward(clip, ids, 0, 4, out, NULL, NULL) == DF_ERR_RANGE);
    CHECK(df_clip_forward(clip, ids, 1, 4, out, NULL, NULL) == DF_OK);
    df_clip_free(clip);
    CHECK(df_clip_load("/nonexistent/text_encoder", NULL, &clip) != DF_OK && clip == NULL);
}

int main(void)
{
    char dir[] = "/tmp/df-test-clip-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    model m;
    make_model(&m, 12345);
    test_forward(dir, &m);
    test_errors(dir, &m);
    test_f16(dir, &m);
    for (int k = 0; k < m.n; k++)
        free(m.data[k]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    UNIT_END();
}
