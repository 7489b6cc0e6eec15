/* ops_ref.c - plain reference versions of the op set in ops.h, written for
 * reading: loops, one letter per dimension, shape comments.
 *
 * They are the ground truth the optimized versions (ops.c) are tested
 * against in tests/unit/test_ops.c, and the models are checked against the
 * diffusers fixtures through them. Sums are accumulated in double so that the
 * reference is closer to the exact value than either torch or our fast code;
 * the per-op tolerances in the test then bound the fast code's float error.
 * Also here: upsample, timestep embedding and concat, which have one
 * version only (memory-bound copies, a small fraction of any model's time).
 * The elementwise helpers and layout changes, also single versions, are
 * threaded and live in ops.c. */
#include <math.h>
#include <string.h>

#include "ops.h"

void df_linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC)
{
    // inp (N,C), weight (OC,C), bias (OC), out (N,OC)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        for (int o = 0; o < OC; o++) {
            const float *w = weight + (size_t)o * C;
            double acc = bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++)
                acc += (double)x[c] * w[c];
            out[(size_t)n * OC + o] = (float)acc;
        }
    }
}

void df_conv2d_out_size(const df_conv2d_geom *g, int H, int W, int *OH, int *OW)
{
    *OH = (H + g->pad_t + g->pad_b - g->K) / g->stride + 1;
    *OW = (W + g->pad_l + g->pad_r - g->K) / g->stride + 1;
}

/* One output value of a convolution: the sum over input channels and the
 * K x K window, skipping taps that fall into the zero padding. */
static double conv_point(const float *x, const float *w, int C, int H, int W,
                         const df_conv2d_geom *g, int oh, int ow)
{
    // x (C,H,W) of one image, w (C,K,K) of one output channel
    int K = g->K;
    double acc = 0.0;
    for (int c = 0; c < C; c++) {
        for (int kh = 0; kh < K; kh++) {
            int ih = oh * g->stride - g->pad_t + kh;
            if (ih < 0 || ih >= H)
                continue;
            for (int kw = 0; kw < K; kw++) {
                int iw = ow * g->stride - g->pad_l + kw;
                if (iw < 0 || iw >= W)
                    continue;
                acc += (double)x[((size_t)c * H + ih) * W + iw] * w[((size_t)c * K + kh) * K + kw];
            }
        }
    }
    return acc;
}

void df_conv2d_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int B, int C, int H, int W, int OC, const df_conv2d_geom *g)
{
    // inp (B,C,H,W), weight (OC,C,K,K), bias (OC), out (B,OC,OH,OW)
    int OH, OW, K = g->K;
    df_conv2d_out_size(g, H, W, &OH, &OW);
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * C * H * W;
        for (int o = 0; o < OC; o++) {
            const float *w = weight + (size_t)o * C * K * K;
            float *y = out + ((size_t)b * OC + o) * OH * OW;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    y[(size_t)oh * OW + ow] =
                        (float)((bias ? bias[o] : 0.0) + conv_point(x, w, C, H, W, g, oh, ow));
        }
    }
}

/* Mean and biased variance (divided by n) of n values, two passes in double. */
static void mean_var(const float *x, size_t n, size_t stride, double *mean, double *var)
{
    double s = 0.0, ss = 0.0;
    for (size_t i = 0; i < n; i++)
        s += x[i * stride];
    double m = s / (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = x[i * stride] - m;
        ss += d * d;
    }
    *mean = m;
    *var = ss / (double)n;
}

void df_groupnorm_forward_ref(float *out, const float *inp, const float *gamma, const float *beta,
                              int B, int C, int HW, int G, float eps)
{
    // inp (B,C,HW), gamma (C), beta (C), out (B,C,HW); group g holds channels g*CG..g*CG+CG-1
    int CG = C / G;
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < G; g++) {
            size_t off = ((size_t)b * C + (size_t)g * CG) * HW;
            double mean, var;
            // the group's channels are contiguous: CG*HW values from off
            mean_var(inp + off, (size_t)CG * HW, 1, &mean, &var);
            double rstd = 1.0 / sqrt(var + eps);
            for (int c = 0; c < CG; c++) {
                int ch = g * CG + c;
                for (int i = 0; i < HW; i++) {
                    size_t at = off + (size_t)c * HW + i;
                    out[at] = (float)((inp[at] - mean) * rstd * gamma[ch] + beta[ch]);
                }
            }
        }
    }
}

void df_layernorm_forward_ref(float *out, const float *inp, const float *gamma, const float *beta,
                              int N, int C, float eps)
{
    // inp (N,C), gamma (C), beta (C), out (N,C)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double mean, var;
        mean_var(x, (size_t)C, 1, &mean, &var);
        double rstd = 1.0 / sqrt(var + eps);
        for (int c = 0; c < C; c++)
            y[c] = (float)((x[c] - mean) * rstd * gamma[c] + beta[c]);
    }
}

void df_silu_forward_ref(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

/* gelu(x) = x/2 (1 + erf(x / sqrt 2)), the exact form torch's nn.GELU() uses. */
static inline float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

void df_gelu_forward_ref(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = gelu1(inp[i]);
}

void df_geglu_forward_ref(float *out, const float *inp, int N, int C)
{
    // inp (N,2C) = [h | gate], out (N,C)
    for (int n = 0; n < N; n++) {
        const float *h = inp + (size_t)n * 2 * C;
        const float *gate = h + C;
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] = h[c] * gelu1(gate[c]);
    }
}

void df_softmax_forward_ref(float *out, const float *inp, int N, int C)
{
    // inp (N,C), out (N,C); the row max is subtracted so exp never overflows
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float maxv = -INFINITY;
        for (int c = 0; c < C; c++)
            maxv = x[c] > maxv ? x[c] : maxv;
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            y[c] = expf(x[c] - maxv);
            sum += y[c];
        }
        float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++)
            y[c] *= inv;
    }
}

/* One query row of one head: scores over the visible keys, softmax, then the
 * weighted sum of values. att is scratch of Tk floats. */
static void attend_row(float *o, const float *qi, const float *k, const float *v, float *att,
                       int nkeys, int rowstride, int HS, float scale)
{
    // qi (HS), k and v rows at rowstride apart (Tk,HS), o (HS)
    float maxv = -INFINITY;
    for (int j = 0; j < nkeys; j++) {
        const float *kj = k + (size_t)j * rowstride;
        double dot = 0.0;
        for (int d = 0; d < HS; d++)
            dot += (double)qi[d] * kj[d];
        att[j] = scale * (float)dot;
        maxv = att[j] > maxv ? att[j] : maxv;
    }
    double sum = 0.0;
    for (int j = 0; j < nkeys; j++) {
        att[j] = expf(att[j] - maxv);
        sum += att[j];
    }
    for (int d = 0; d < HS; d++) {
        double acc = 0.0;
        for (int j = 0; j < nkeys; j++)
            acc += (double)att[j] * v[(size_t)j * rowstride + d];
        o[d] = (float)(acc / sum);
    }
}

void df_attention_forward_ref(float *out, const float *q, const float *k, const float *v,
                              int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    // q (B,Tq,NH*HS), k and v (B,Tk,NH*HS), out (B,Tq,NH*HS); head h is columns h*HS..
    int C = NH * HS;
    float att[Tk > 0 ? Tk : 1];   // Tk floats of scratch; Tk is a sequence length (<= ~10^4)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *kb = k + (size_t)b * Tk * C + (size_t)h * HS;
            const float *vb = v + (size_t)b * Tk * C + (size_t)h * HS;
            for (int i = 0; i < Tq; i++) {
                size_t at = ((size_t)b * Tq + i) * C + (size_t)h * HS;
                int nkeys = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
                attend_row(out + at, q + at, kb, vb, att, nkeys, C, HS, scale);
            }
        }
    }
}

void df_upsample_nearest_forward(float *out, const float *inp, int B, int C, int H, int W,
                                 int OH, int OW)
{
    // inp (B,C,H,W), out (B,C,OH,OW); integer src index = floor(dst*H/OH)
    for (size_t bc = 0; bc < (size_t)B * C; bc++) {
        const float *x = inp + bc * H * W;
        float *y = out + bc * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            int ih = (int)((long long)oh * H / OH);
            for (int ow = 0; ow < OW; ow++)
                y[(size_t)oh * OW + ow] = x[(size_t)ih * W + (int)((long long)ow * W / OW)];
        }
    }
}

void df_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                           float freq_shift, float max_period)
{
    // t (B), out (B,dim). Each step rounds to float as torch does in float32:
    // exponent = (-ln(max_period) * i) / (half - shift); emb = t * exp(exponent).
    int half = dim / 2;
    float neg_log = (float)(-log((double)max_period));
    float denom = (float)((double)half - (double)freq_shift);
    for (int b = 0; b < B; b++) {
        float *y = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            float exponent = (neg_log * (float)i) / denom;
            float e = t[b] * expf(exponent);
            float s = sinf(e), c = cosf(e);
            y[i] = flip_sin_to_cos ? c : s;
            y[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2)
            y[dim - 1] = 0.0f;   // diffusers pads an odd dim with one zero
    }
}

void df_concat_channels(float *out, const float *a, int Ca, const float *b, int Cb, int B, int HW)
{
    // a (B,Ca,HW), b (B,Cb,HW), out (B,Ca+Cb,HW); memmove in case out aliases a at b == 0
    for (int n = 0; n < B; n++) {
        float *y = out + (size_t)n * (Ca + Cb) * HW;
        memmove(y, a + (size_t)n * Ca * HW, sizeof(float) * Ca * HW);
        memmove(y + (size_t)Ca * HW, b + (size_t)n * Cb * HW, sizeof(float) * Cb * HW);
    }
}
