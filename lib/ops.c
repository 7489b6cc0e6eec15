/* ops.c - the optimized versions of the op set in ops.h, the ones the models
 * call. Each is tested against its reference in ops_ref.c on random inputs,
 * odd sizes included, by tests/unit/test_ops.c.
 *
 * First landing: linear is an OpenBLAS sgemm; the others call straight into
 * their references until their fast versions land. */
#include <cblas.h>
#include <unistd.h>

#include "ops.h"

/* 0 means "not set yet": df_ops_threads() then uses the online CPU count. */
static int n_threads;

void df_ops_set_threads(int n)
{
    n_threads = n > 0 ? n : 0;
    openblas_set_num_threads(df_ops_threads());
}

int df_ops_threads(void)
{
    if (n_threads > 0)
        return n_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void df_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC)
{
    // out (N,OC) = inp (N,C) @ weight(OC,C)^T: row-major, B transposed
    if (N <= 0 || OC <= 0)
        return;
    if (bias) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                out[(size_t)n * OC + o] = bias[o];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C,
                bias ? 1.0f : 0.0f, out, OC);
}

void df_conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int B, int C, int H, int W, int OC, const df_conv2d_geom *g)
{
    df_conv2d_forward_ref(out, inp, weight, bias, B, C, H, W, OC, g);
}

void df_groupnorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int B, int C, int HW, int G, float eps)
{
    df_groupnorm_forward_ref(out, inp, gamma, beta, B, C, HW, G, eps);
}

void df_layernorm_forward(float *out, const float *inp, const float *gamma, const float *beta,
                          int N, int C, float eps)
{
    df_layernorm_forward_ref(out, inp, gamma, beta, N, C, eps);
}

void df_silu_forward(float *out, const float *inp, size_t n)
{
    df_silu_forward_ref(out, inp, n);
}

void df_gelu_forward(float *out, const float *inp, size_t n)
{
    df_gelu_forward_ref(out, inp, n);
}

void df_geglu_forward(float *out, const float *inp, int N, int C)
{
    df_geglu_forward_ref(out, inp, N, C);
}

void df_softmax_forward(float *out, const float *inp, int N, int C)
{
    df_softmax_forward_ref(out, inp, N, C);
}

void df_attention_forward(float *out, const float *q, const float *k, const float *v,
                          int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    df_attention_forward_ref(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
}
