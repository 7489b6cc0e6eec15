/* ops_backward_ref.c - plain reference versions of the backward ops in
 * ops_backward.h, written for reading: loops, one letter per dimension,
 * shape comments, sums in double.
 *
 * They are the ground truth the fast versions (ops_backward.c) are tested
 * against, and are themselves checked against central finite differences of
 * the forward references (ops_ref.c) in tests/unit/test_ops_backward.c.
 * Every gradient is accumulated (+=), and a NULL gradient is skipped.
 * Also here: the nearest-upsample backward, which has one version only. */
#include <math.h>
#include <stddef.h>

#include "ops_backward.h"

void df_linear_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int N, int C, int OC)
{
    // dout (N,OC), inp (N,C), weight (OC,C); dinp (N,C), dweight (OC,C), dbias (OC)
    if (dinp)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int o = 0; o < OC; o++)
                    acc += (double)dout[(size_t)n * OC + o] * weight[(size_t)o * C + c];
                dinp[(size_t)n * C + c] += (float)acc;
            }
    if (dweight)
        for (int o = 0; o < OC; o++)
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int n = 0; n < N; n++)
                    acc += (double)dout[(size_t)n * OC + o] * inp[(size_t)n * C + c];
                dweight[(size_t)o * C + c] += (float)acc;
            }
    if (dbias)
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                acc += dout[(size_t)n * OC + o];
            dbias[o] += (float)acc;
        }
}

/* d loss / d inp at one input pixel (b, c, ih, iw): the sum over the
 * output pixels whose window covers it, i.e. oh * stride - pad_t + kh = ih. */
static double conv_dinp_point(const float *dy, const float *weight, int C, int OC, int OH, int OW,
                              const df_conv2d_geom *g, int c, int ih, int iw)
{
    // dy (OC,OH,OW) of one image, weight (OC,C,K,K)
    int K = g->K, s = g->stride;
    double acc = 0.0;
    for (int o = 0; o < OC; o++)
        for (int kh = 0; kh < K; kh++) {
            int th = ih + g->pad_t - kh;   // = oh * s
            if (th < 0 || th % s || th / s >= OH)
                continue;
            for (int kw = 0; kw < K; kw++) {
                int tw = iw + g->pad_l - kw;
                if (tw < 0 || tw % s || tw / s >= OW)
                    continue;
                acc += (double)dy[((size_t)o * OH + th / s) * OW + tw / s] *
                       weight[(((size_t)o * C + c) * K + kh) * K + kw];
            }
        }
    return acc;
}

void df_conv2d_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int B, int C, int H, int W,
                            int OC, const df_conv2d_geom *g)
{
    // dout (B,OC,OH,OW), inp (B,C,H,W), weight (OC,C,K,K);
    // dinp (B,C,H,W), dweight (OC,C,K,K), dbias (OC)
    int OH, OW, K = g->K, s = g->stride;
    df_conv2d_out_size(g, H, W, &OH, &OW);
    if (OH <= 0 || OW <= 0)
        return;
    if (dinp)
        for (int b = 0; b < B; b++) {
            const float *dy = dout + (size_t)b * OC * OH * OW;
            for (int c = 0; c < C; c++)
                for (int ih = 0; ih < H; ih++)
                    for (int iw = 0; iw < W; iw++)
                        dinp[(((size_t)b * C + c) * H + ih) * W + iw] +=
                            (float)conv_dinp_point(dy, weight, C, OC, OH, OW, g, c, ih, iw);
        }
    if (dweight)
        for (int o = 0; o < OC; o++)
            for (int c = 0; c < C; c++)
                for (int kh = 0; kh < K; kh++)
                    for (int kw = 0; kw < K; kw++) {
                        // the input pixel under tap (kh, kw) of output pixel (oh, ow)
                        double acc = 0.0;
                        for (int b = 0; b < B; b++)
                            for (int oh = 0; oh < OH; oh++) {
                                int ih = oh * s - g->pad_t + kh;
                                if (ih < 0 || ih >= H)
                                    continue;
                                for (int ow = 0; ow < OW; ow++) {
                                    int iw = ow * s - g->pad_l + kw;
                                    if (iw < 0 || iw >= W)
                                        continue;
                                    acc += (double)dout[(((size_t)b * OC + o) * OH + oh) * OW + ow] *
                                           inp[(((size_t)b * C + c) * H + ih) * W + iw];
                                }
                            }
                        dweight[(((size_t)o * C + c) * K + kh) * K + kw] += (float)acc;
                    }
    if (dbias)
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int b = 0; b < B; b++)
                for (size_t i = 0; i < (size_t)OH * OW; i++)
                    acc += dout[((size_t)b * OC + o) * OH * OW + i];
            dbias[o] += (float)acc;
        }
}

/* Mean and 1/sqrt(var + eps) of n values, two passes in double, as the
 * forward reference normalizes. */
static void mean_rstd(const float *x, size_t n, float eps, double *mean, double *rstd)
{
    double s = 0.0, ss = 0.0;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    double m = s / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *rstd = 1.0 / sqrt(ss / (double)n + eps);
}

/* The normalization backward shared by groupnorm and layernorm, for one
 * normalized set of n = nc * L values (nc channels of L values each, channel
 * c scaled by gamma[c]): with xhat = (x - mean) * rstd and
 * dxhat = dout * gamma,
 *     dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
 *     dgamma[c] += sum over the channel of dout * xhat, dbeta[c] += sum of dout.
 * Channel c's values are at x[c * cs + i * is] for i < L. */
static void norm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                          const float *gamma, int nc, int L, size_t cs, size_t is, double mean,
                          double rstd)
{
    double n = (double)nc * L, sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
    for (int c = 0; c < nc; c++) {
        double sdy = 0.0, sdy_xhat = 0.0;
        for (int i = 0; i < L; i++) {
            size_t at = c * cs + i * is;
            double xhat = (x[at] - mean) * rstd;
            sdy += dy[at];
            sdy_xhat += dy[at] * xhat;
        }
        sum_dxhat += gamma[c] * sdy;
        sum_dxhat_xhat += gamma[c] * sdy_xhat;
        if (dgamma)
            dgamma[c] += (float)sdy_xhat;
        if (dbeta)
            dbeta[c] += (float)sdy;
    }
    if (dx)
        for (int c = 0; c < nc; c++)
            for (int i = 0; i < L; i++) {
                size_t at = c * cs + i * is;
                double xhat = (x[at] - mean) * rstd;
                dx[at] += (float)(rstd * ((double)dy[at] * gamma[c] - sum_dxhat / n -
                                          xhat * sum_dxhat_xhat / n));
            }
}

void df_groupnorm_backward_ref(float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *gamma, int B, int C, int HW, int G,
                               float eps)
{
    // dout, inp, dinp (B,C,HW); gamma, dgamma, dbeta (C); group g holds channels g*CG..g*CG+CG-1
    int CG = C / G;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            size_t off = ((size_t)b * C + (size_t)g * CG) * HW;   // the group's CG*HW values
            double mean, rstd;
            mean_rstd(inp + off, (size_t)CG * HW, eps, &mean, &rstd);
            norm_backward(dinp ? dinp + off : NULL, dgamma ? dgamma + g * CG : NULL,
                          dbeta ? dbeta + g * CG : NULL, dout + off, inp + off, gamma + g * CG,
                          CG, HW, (size_t)HW, 1, mean, rstd);
        }
}

void df_layernorm_backward_ref(float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *gamma, int N, int C, float eps)
{
    // dout, inp, dinp (N,C); gamma, dgamma, dbeta (C): each row is C channels of one value
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * C;
        double mean, rstd;
        mean_rstd(inp + off, (size_t)C, eps, &mean, &rstd);
        norm_backward(dinp ? dinp + off : NULL, dgamma, dbeta, dout + off, inp + off, gamma, C, 1,
                      1, 0, mean, rstd);
    }
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* d/dx of x/2 (1 + erf(x/sqrt 2)): Phi(x) + x phi(x). */
static double gelu_grad(double x)
{
    return 0.5 * (1.0 + erf(x * 0.70710678118654752440)) +
           x * exp(-0.5 * x * x) * 0.39894228040143267794;
}

void df_silu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n)
{
    // d/dx x sigmoid(x) = s (1 + x (1 - s))
    for (size_t i = 0; i < n; i++) {
        double x = inp[i], s = sigmoid(x);
        dinp[i] += (float)(dout[i] * s * (1.0 + x * (1.0 - s)));
    }
}

void df_gelu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dinp[i] += (float)(dout[i] * gelu_grad(inp[i]));
}

void df_geglu_backward_ref(float *dinp, const float *dout, const float *inp, int N, int C)
{
    // inp, dinp (N,2C) = [h | gate], dout (N,C); out = h * gelu(gate)
    for (int n = 0; n < N; n++) {
        const float *h = inp + (size_t)n * 2 * C, *gate = h + C;
        float *dh = dinp + (size_t)n * 2 * C, *dgate = dh + C;
        for (int c = 0; c < C; c++) {
            double dy = dout[(size_t)n * C + c], g = gate[c];
            double gelu = 0.5 * g * (1.0 + erf(g * 0.70710678118654752440));
            dh[c] += (float)(dy * gelu);
            dgate[c] += (float)(dy * h[c] * gelu_grad(g));
        }
    }
}

/* scale * q_i . k_j over one head's HS values. */
static double score(const float *qi, const float *kj, int HS, float scale)
{
    double dot = 0.0;
    for (int d = 0; d < HS; d++)
        dot += (double)qi[d] * kj[d];
    return scale * dot;
}

/* With P = softmax(S) per row, S = scale q k^T, out = P v:
 *     dv_j += sum_i P_ij dout_i,   dP_ij = dout_i . v_j,
 *     dS_ij = P_ij (dP_ij - D_i)   with D_i = sum_j P_ij dP_ij = dout_i . out_i,
 *     dq_i += scale sum_j dS_ij k_j,   dk_j += scale sum_i dS_ij q_i.
 * Per (batch, head): the row max and softmax sum of each query first, then
 * dq query by query and dk, dv key by key, each entry P_ij recomputed from
 * them, so that every gradient row is summed in double before it is added. */
void df_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v, const float *out,
                               int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    // q, dq, out, dout (B,Tq,NH*HS); k, v, dk, dv (B,Tk,NH*HS); head h is columns h*HS..
    int C = NH * HS;
    // per query: score max, softmax sum, D; per head dimension: a gradient row
    // (Tq and HS are sequence length and head size, small enough for the stack)
    double m[Tq > 0 ? Tq : 1], l[Tq > 0 ? Tq : 1], D[Tq > 0 ? Tq : 1];
    double acc_a[HS > 0 ? HS : 1], acc_b[HS > 0 ? HS : 1];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t qoff = (size_t)b * Tq * C + (size_t)h * HS;   // row i at qoff + i*C
            size_t koff = (size_t)b * Tk * C + (size_t)h * HS;   // row j at koff + j*C
            for (int i = 0; i < Tq; i++) {
                int nkeys = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;   // keys 0..nkeys-1
                const float *qi = q + qoff + (size_t)i * C;
                m[i] = -INFINITY;
                for (int j = 0; j < nkeys; j++)
                    m[i] = fmax(m[i], score(qi, k + koff + (size_t)j * C, HS, scale));
                l[i] = 0.0;
                for (int j = 0; j < nkeys; j++)
                    l[i] += exp(score(qi, k + koff + (size_t)j * C, HS, scale) - m[i]);
                D[i] = 0.0;
                for (int d = 0; d < HS; d++)
                    D[i] += (double)dout[qoff + (size_t)i * C + d] * out[qoff + (size_t)i * C + d];
            }
            // dq, query by query (acc_a: sum_j dS_ij k_j)
            for (int i = 0; dq && i < Tq; i++) {
                int nkeys = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
                const float *qi = q + qoff + (size_t)i * C, *dyi = dout + qoff + (size_t)i * C;
                for (int d = 0; d < HS; d++)
                    acc_a[d] = 0.0;
                for (int j = 0; j < nkeys; j++) {
                    const float *kj = k + koff + (size_t)j * C, *vj = v + koff + (size_t)j * C;
                    double p = exp(score(qi, kj, HS, scale) - m[i]) / l[i];
                    double ds = p * (score(dyi, vj, HS, 1.0f) - D[i]);
                    for (int d = 0; d < HS; d++)
                        acc_a[d] += ds * kj[d];
                }
                for (int d = 0; d < HS; d++)
                    dq[qoff + (size_t)i * C + d] += (float)(scale * acc_a[d]);
            }
            // dk and dv, key by key (acc_a: sum_i dS_ij q_i, acc_b: sum_i P_ij dout_i)
            for (int j = 0; (dk || dv) && j < Tk; j++) {
                const float *kj = k + koff + (size_t)j * C, *vj = v + koff + (size_t)j * C;
                for (int d = 0; d < HS; d++)
                    acc_a[d] = acc_b[d] = 0.0;
                // causal: query i sees key j when j <= i
                for (int i = causal ? j : 0; i < Tq; i++) {
                    const float *qi = q + qoff + (size_t)i * C, *dyi = dout + qoff + (size_t)i * C;
                    double p = exp(score(qi, kj, HS, scale) - m[i]) / l[i];
                    double ds = p * (score(dyi, vj, HS, 1.0f) - D[i]);
                    for (int d = 0; d < HS; d++) {
                        acc_a[d] += ds * qi[d];
                        acc_b[d] += p * dyi[d];
                    }
                }
                for (int d = 0; d < HS; d++) {
                    if (dk)
                        dk[koff + (size_t)j * C + d] += (float)(scale * acc_a[d]);
                    if (dv)
                        dv[koff + (size_t)j * C + d] += (float)acc_b[d];
                }
            }
        }
}

void df_upsample_nearest_backward(float *dinp, const float *dout, int B, int C, int H, int W,
                                  int OH, int OW)
{
    // dout (B,C,OH,OW), dinp (B,C,H,W); output pixel (oh, ow) was copied from
    // (oh*H/OH, ow*W/OW), so its gradient goes back there, in a fixed order
    for (size_t bc = 0; bc < (size_t)B * C; bc++) {
        const float *dy = dout + bc * OH * OW;
        float *dx = dinp + bc * H * W;
        for (int oh = 0; oh < OH; oh++) {
            int ih = (int)((long long)oh * H / OH);
            for (int ow = 0; ow < OW; ow++)
                dx[(size_t)ih * W + (int)((long long)ow * W / OW)] += dy[(size_t)oh * OW + ow];
        }
    }
}
