/* ops_attention.cu - flash-style multi-head attention,
 * df_cuda_attention_forward and _backward, whose references are
 * df_attention_forward_ref (lib/ops/ops_ref.c) and df_attention_backward_ref
 * (lib/ops/ops_backward_ref.c). Tested by tests/unit/test_cuda_ops.c on SD's
 * self-attention (4096 tokens, heads of 40 and 64) and cross-attention
 * (77 keys), and CLIP's causal self-attention (77 tokens).
 *
 * Keys and values go through shared memory in tiles of 32; each warp owns
 * 4 queries and keeps, per query, the running max, the running sum of
 * exponentials and an fp32 output accumulator (the online softmax), so no
 * Tq x Tk matrix is ever stored and every score is fp32 whatever the
 * storage dtype (SD 2.1's upcast_attention). Within a tile lane j scores key
 * j against the query, then the lanes, each owning head dimensions lane,
 * lane+32, ..., add the tile's weighted values. This is the simple,
 * CUDA-core version 1 (llm.c's dev/cuda pattern): a tensor-core version is
 * to be measured against it on a GPU. */
#include <math.h>

#include "cuda_internal.h"

#define BK 32          /* keys per tile: one per lane */
#define QPW 4          /* queries per warp */
#define WARPS 4
#define BQ (QPW * WARPS)

/* R = head-dimension chunks of 32 (HS <= 32 R). */
template <typename T, int R>
__global__ void __launch_bounds__(WARPS * 32)
attention_kernel(T *out, const T *q, const T *k, const T *v, int Tq, int Tk, int NH, int HS,
                 float scale, int causal)
{
    __shared__ float qs[BQ][R * 32];
    __shared__ float ks[BK][R * 32 + 1];   /* +1: lane j reads row j, no bank conflicts */
    __shared__ float vs[BK][R * 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * BQ;
    const size_t C = (size_t)NH * HS;
    const T *qb = q + (size_t)b * Tq * C + (size_t)h * HS;
    const T *kb = k + (size_t)b * Tk * C + (size_t)h * HS;
    const T *vb = v + (size_t)b * Tk * C + (size_t)h * HS;

    for (int i = threadIdx.x; i < BQ * R * 32; i += blockDim.x) {
        int qi = i / (R * 32), d = i % (R * 32);
        qs[qi][d] = (q0 + qi < Tq && d < HS) ? df_ld(qb[(size_t)(q0 + qi) * C + d]) : 0.0f;
    }
    float m[QPW], l[QPW], acc[QPW][R];
    for (int i = 0; i < QPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        for (int r = 0; r < R; r++)
            acc[i][r] = 0.0f;
    }
    // causal: no query of this block sees a key past its last query
    int kend = causal ? min(Tk, q0 + BQ) : Tk;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();   /* the previous tile (and at first qs) is done with */
        for (int i = threadIdx.x; i < BK * R * 32; i += blockDim.x) {
            int j = i / (R * 32), d = i % (R * 32);
            bool ok = k0 + j < Tk && d < HS;
            ks[j][d] = ok ? df_ld(kb[(size_t)(k0 + j) * C + d]) : 0.0f;
            vs[j][d] = ok ? df_ld(vb[(size_t)(k0 + j) * C + d]) : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < QPW; i++) {
            int qi = warp * QPW + i, qidx = q0 + qi;
            if (qidx >= Tq)
                break;   /* uniform across the warp */
            int key = k0 + lane;
            bool valid = key < Tk && (!causal || key <= qidx);
            float s = 0.0f;
            for (int d = 0; d < R * 32; d++)
                s = fmaf(qs[qi][d], ks[lane][d], s);
            s = valid ? s * scale : -INFINITY;
            float mnew = fmaxf(m[i], df_warp_max(s));
            if (mnew == -INFINITY)
                continue;   /* every key so far masked (cannot happen with key 0 first) */
            float p = valid ? expf(s - mnew) : 0.0f;
            float corr = expf(m[i] - mnew);   /* 0 on the first tile */
            l[i] = l[i] * corr + df_warp_sum(p);
            m[i] = mnew;
            for (int r = 0; r < R; r++)
                acc[i][r] *= corr;
            for (int j = 0; j < BK; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                for (int r = 0; r < R; r++)
                    acc[i][r] = fmaf(pj, vs[j][lane + 32 * r], acc[i][r]);
            }
        }
    }
    for (int i = 0; i < QPW; i++) {
        int qidx = q0 + warp * QPW + i;
        if (qidx >= Tq)
            break;
        T *o = out + ((size_t)b * Tq + qidx) * C + (size_t)h * HS;
        float inv = 1.0f / l[i];
        for (int r = 0; r < R; r++) {
            int d = lane + 32 * r;
            if (d < HS)
                o[d] = df_st<T>(acc[i][r] * inv);
        }
    }
}

template <typename T>
static df_status attention(df_cuda_ctx *c, void *out, const void *q, const void *k, const void *v,
                           int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    dim3 grid((unsigned)((Tq + BQ - 1) / BQ), (unsigned)NH, (unsigned)B), block(WARPS * 32);
    T *o = (T *)out;
    const T *qq = (const T *)q, *kk = (const T *)k, *vv = (const T *)v;
#define LAUNCH(R) attention_kernel<T, R><<<grid, block, 0, c->stream>>>( \
        o, qq, kk, vv, Tq, Tk, NH, HS, scale, causal)
    switch ((HS + 31) / 32) {
    case 1: LAUNCH(1); break;
    case 2: LAUNCH(2); break;
    case 3: LAUNCH(3); break;
    default: LAUNCH(4); break;
    }
#undef LAUNCH
    DF_CU_LAUNCHED();
    return DF_OK;
}

extern "C" df_status df_cuda_attention_forward(df_cuda_ctx *c, df_dtype dt, void *out,
                                               const void *q, const void *k, const void *v, int B,
                                               int Tq, int Tk, int NH, int HS, float scale,
                                               int causal)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_attention_forward");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0 || HS <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_attention_forward: bad shape");
    if (HS > 128)
        return df_fail(DF_ERR_UNSUPPORTED, "df_cuda_attention_forward: head size %d > 128", HS);
    if (NH > 65535 || B > 65535)
        return df_fail(DF_ERR_RANGE, "df_cuda_attention_forward: %d heads x %d batch too many",
                       NH, B);
    return DF_DISPATCH(dt, attention, c, out, q, k, v, B, Tq, Tk, NH, HS, scale, causal);
}

/* ---- backward ----
 * With P = softmax(scale q k^T) (masked), O = P v, dout = dO and
 * D_i = dO_i . O_i:
 *   dV_j += sum_i P_ij dO_i
 *   dS_ij = P_ij (dO_i . v_j - D_i)
 *   dQ_i += scale sum_j dS_ij k_j,   dK_j += scale sum_i dS_ij q_i
 * P is recomputed from the scores and each query's log-sum-exp, never
 * stored. Two kernels, no atomics (deterministic): the first owns queries
 * (one warp per query: its log-sum-exp and D, then dQ over key tiles) and
 * saves (lse, D) per query; the second owns keys (dK and dV over query
 * tiles). Reference: df_attention_backward_ref (lib/ops/ops_backward_ref.c). */

#define QPW_B 2                 /* queries (kernel 1) or keys (kernel 2) per warp */
#define BQ_B (QPW_B * WARPS)

// block: BQ_B queries of head h, image b; stats (B,NH,Tq,2) = lse, D
template <typename T, int R>
__global__ void __launch_bounds__(WARPS * 32)
attention_bwd_q_kernel(T *dq, float *stats, const T *dout, const T *q, const T *k, const T *v,
                       const T *out, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    __shared__ float qs[BQ_B][R * 32], dos[BQ_B][R * 32];
    /* +1: lane j reads row j of both for its key's score and dO . v_j */
    __shared__ float kt[BK][R * 32 + 1], vs[BK][R * 32 + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * BQ_B;
    const size_t C = (size_t)NH * HS;
    const size_t qoff = (size_t)b * Tq * C + (size_t)h * HS;
    const size_t koff = (size_t)b * Tk * C + (size_t)h * HS;

    for (int i = threadIdx.x; i < BQ_B * R * 32; i += blockDim.x) {
        int qi = i / (R * 32), d = i % (R * 32);
        bool ok = q0 + qi < Tq && d < HS;
        qs[qi][d] = ok ? df_ld(q[qoff + (size_t)(q0 + qi) * C + d]) : 0.0f;
        dos[qi][d] = ok ? df_ld(dout[qoff + (size_t)(q0 + qi) * C + d]) : 0.0f;
    }
    __syncthreads();
    float m[QPW_B], l[QPW_B], Dq[QPW_B], acc[QPW_B][R];
    for (int i = 0; i < QPW_B; i++) {
        int qi = warp * QPW_B + i, qidx = q0 + qi;
        m[i] = -INFINITY;
        l[i] = 0.0f;
        float s = 0.0f;   // D_i = dO_i . O_i, lanes over dimensions
        for (int r = 0; r < R; r++) {
            int d = lane + 32 * r;
            if (qidx < Tq && d < HS)
                s = fmaf(dos[qi][d], df_ld(out[qoff + (size_t)qidx * C + d]), s);
            acc[i][r] = 0.0f;
        }
        Dq[i] = df_warp_sum(s);
    }
    int kend = causal ? min(Tk, q0 + BQ_B) : Tk;
    // pass 1: each query's running max and sum of exponentials
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < BK * R * 32; i += blockDim.x) {
            int j = i / (R * 32), d = i % (R * 32);
            kt[j][d] = (k0 + j < Tk && d < HS) ? df_ld(k[koff + (size_t)(k0 + j) * C + d]) : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < QPW_B; i++) {
            int qi = warp * QPW_B + i, qidx = q0 + qi, key = k0 + lane;
            if (qidx >= Tq)
                break;
            bool valid = key < Tk && (!causal || key <= qidx);
            float s = 0.0f;
            for (int d = 0; d < R * 32; d++)
                s = fmaf(qs[qi][d], kt[lane][d], s);
            s = valid ? s * scale : -INFINITY;
            float mnew = fmaxf(m[i], df_warp_max(s));
            if (mnew == -INFINITY)
                continue;
            l[i] = l[i] * expf(m[i] - mnew) + df_warp_sum(valid ? expf(s - mnew) : 0.0f);
            m[i] = mnew;
        }
    }
    float lse[QPW_B];
    for (int i = 0; i < QPW_B; i++)
        lse[i] = m[i] + logf(l[i]);
    // pass 2: dS and dQ
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < BK * R * 32; i += blockDim.x) {
            int j = i / (R * 32), d = i % (R * 32);
            bool ok = k0 + j < Tk && d < HS;
            kt[j][d] = ok ? df_ld(k[koff + (size_t)(k0 + j) * C + d]) : 0.0f;
            vs[j][d] = ok ? df_ld(v[koff + (size_t)(k0 + j) * C + d]) : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < QPW_B; i++) {
            int qi = warp * QPW_B + i, qidx = q0 + qi, key = k0 + lane;
            if (qidx >= Tq)
                break;
            bool valid = key < Tk && (!causal || key <= qidx);
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < R * 32; d++) {
                s = fmaf(qs[qi][d], kt[lane][d], s);
                dp = fmaf(dos[qi][d], vs[lane][d], dp);
            }
            float p = valid ? expf(s * scale - lse[i]) : 0.0f;
            float ds = p * (dp - Dq[i]);
            for (int j = 0; j < BK; j++) {
                float dsj = __shfl_sync(0xffffffffu, ds, j);
                for (int r = 0; r < R; r++)
                    acc[i][r] = fmaf(dsj, kt[j][lane + 32 * r], acc[i][r]);
            }
        }
    }
    for (int i = 0; i < QPW_B; i++) {
        int qidx = q0 + warp * QPW_B + i;
        if (qidx >= Tq)
            break;
        if (lane == 0) {
            size_t at = (((size_t)b * NH + h) * Tq + qidx) * 2;
            stats[at] = lse[i];
            stats[at + 1] = Dq[i];
        }
        if (!dq)
            continue;
        T *o = dq + qoff + (size_t)qidx * C;
        for (int r = 0; r < R; r++) {
            int d = lane + 32 * r;
            if (d < HS)
                o[d] = df_st<T>(df_ld(o[d]) + scale * acc[i][r]);
        }
    }
}

// block: BQ_B keys of head h, image b; queries in tiles of 32 (one per lane)
template <typename T, int R>
__global__ void __launch_bounds__(WARPS * 32)
attention_bwd_kv_kernel(T *dk, T *dv, const float *stats, const T *dout, const T *q, const T *k,
                        const T *v, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    __shared__ float qt[BK][R * 32 + 1], dot_[BK][R * 32 + 1];   /* lane i reads row i */
    __shared__ float kb[BQ_B][R * 32], vb[BQ_B][R * 32];
    __shared__ float lse_t[BK], D_t[BK];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y, b = blockIdx.z, j0 = blockIdx.x * BQ_B;
    const size_t C = (size_t)NH * HS;
    const size_t qoff = (size_t)b * Tq * C + (size_t)h * HS;
    const size_t koff = (size_t)b * Tk * C + (size_t)h * HS;
    const float *st = stats + ((size_t)b * NH + h) * Tq * 2;

    for (int i = threadIdx.x; i < BQ_B * R * 32; i += blockDim.x) {
        int kj = i / (R * 32), d = i % (R * 32);
        bool ok = j0 + kj < Tk && d < HS;
        kb[kj][d] = ok ? df_ld(k[koff + (size_t)(j0 + kj) * C + d]) : 0.0f;
        vb[kj][d] = ok ? df_ld(v[koff + (size_t)(j0 + kj) * C + d]) : 0.0f;
    }
    float gk[QPW_B][R], gv[QPW_B][R];
    for (int i = 0; i < QPW_B; i++)
        for (int r = 0; r < R; r++)
            gk[i][r] = gv[i][r] = 0.0f;
    // causal: queries before this block's first key see none of its keys
    int qstart = causal ? (j0 / BK) * BK : 0;
    for (int t0 = qstart; t0 < Tq; t0 += BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < BK * R * 32; i += blockDim.x) {
            int qi = i / (R * 32), d = i % (R * 32);
            bool ok = t0 + qi < Tq && d < HS;
            qt[qi][d] = ok ? df_ld(q[qoff + (size_t)(t0 + qi) * C + d]) : 0.0f;
            dot_[qi][d] = ok ? df_ld(dout[qoff + (size_t)(t0 + qi) * C + d]) : 0.0f;
        }
        if (threadIdx.x < BK) {
            bool ok = t0 + (int)threadIdx.x < Tq;
            lse_t[threadIdx.x] = ok ? st[(size_t)(t0 + threadIdx.x) * 2] : 0.0f;
            D_t[threadIdx.x] = ok ? st[(size_t)(t0 + threadIdx.x) * 2 + 1] : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < QPW_B; i++) {
            int kj = warp * QPW_B + i, key = j0 + kj, qidx = t0 + lane;
            if (key >= Tk)
                break;
            bool valid = qidx < Tq && (!causal || key <= qidx);
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < R * 32; d++) {
                s = fmaf(qt[lane][d], kb[kj][d], s);
                dp = fmaf(dot_[lane][d], vb[kj][d], dp);
            }
            float p = valid ? expf(s * scale - lse_t[lane]) : 0.0f;
            float ds = p * (dp - D_t[lane]);
            for (int qq = 0; qq < BK; qq++) {
                float pq = __shfl_sync(0xffffffffu, p, qq), dsq = __shfl_sync(0xffffffffu, ds, qq);
                for (int r = 0; r < R; r++) {
                    gv[i][r] = fmaf(pq, dot_[qq][lane + 32 * r], gv[i][r]);
                    gk[i][r] = fmaf(dsq, qt[qq][lane + 32 * r], gk[i][r]);
                }
            }
        }
    }
    for (int i = 0; i < QPW_B; i++) {
        int key = j0 + warp * QPW_B + i;
        if (key >= Tk)
            break;
        for (int r = 0; r < R; r++) {
            int d = lane + 32 * r;
            if (d >= HS)
                continue;
            size_t at = koff + (size_t)key * C + d;
            if (dk)
                dk[at] = df_st<T>(df_ld(dk[at]) + scale * gk[i][r]);
            if (dv)
                dv[at] = df_st<T>(df_ld(dv[at]) + gv[i][r]);
        }
    }
}

template <typename T, int R>
static df_status attention_bwd_r(df_cuda_ctx *c, void *dq, void *dk, void *dv, const void *dout,
                                 const void *q, const void *k, const void *v, const void *out,
                                 int B, int Tq, int Tk, int NH, int HS, float scale, int causal)
{
    float *stats = (float *)c->workspace;
    dim3 block(WARPS * 32);
    dim3 gq((unsigned)((Tq + BQ_B - 1) / BQ_B), (unsigned)NH, (unsigned)B);
    attention_bwd_q_kernel<T, R><<<gq, block, 0, c->stream>>>(
        (T *)dq, stats, (const T *)dout, (const T *)q, (const T *)k, (const T *)v, (const T *)out,
        Tq, Tk, NH, HS, scale, causal);
    DF_CU_LAUNCHED();
    if (!dk && !dv)
        return DF_OK;
    dim3 gk((unsigned)((Tk + BQ_B - 1) / BQ_B), (unsigned)NH, (unsigned)B);
    attention_bwd_kv_kernel<T, R><<<gk, block, 0, c->stream>>>(
        (T *)dk, (T *)dv, stats, (const T *)dout, (const T *)q, (const T *)k, (const T *)v, Tq, Tk,
        NH, HS, scale, causal);
    DF_CU_LAUNCHED();
    return DF_OK;
}

template <typename T>
static df_status attention_bwd(df_cuda_ctx *c, void *dq, void *dk, void *dv, const void *dout,
                               const void *q, const void *k, const void *v, const void *out, int B,
                               int Tq, int Tk, int NH, int HS, float scale, int causal)
{
#define CALL(R) attention_bwd_r<T, R>(c, dq, dk, dv, dout, q, k, v, out, B, Tq, Tk, NH, HS, \
                                       scale, causal)
    switch ((HS + 31) / 32) {
    case 1: return CALL(1);
    case 2: return CALL(2);
    case 3: return CALL(3);
    default: return CALL(4);
    }
#undef CALL
}

extern "C" df_status df_cuda_attention_backward(df_cuda_ctx *c, df_dtype dt, void *dq, void *dk,
                                                void *dv, const void *dout, const void *q,
                                                const void *k, const void *v, const void *out,
                                                int B, int Tq, int Tk, int NH, int HS, float scale,
                                                int causal)
{
    DF_CUDA_ENTER(c, dt, "df_cuda_attention_backward");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0 || HS <= 0)
        return df_fail(DF_ERR_ARG, "df_cuda_attention_backward: bad shape");
    if (HS > 128)
        return df_fail(DF_ERR_UNSUPPORTED, "df_cuda_attention_backward: head size %d > 128", HS);
    if (NH > 65535 || B > 65535)
        return df_fail(DF_ERR_RANGE, "df_cuda_attention_backward: %d heads x %d batch too many",
                       NH, B);
    if (!dq && !dk && !dv)
        return DF_OK;
    df_status st = df_cuda_scratch(c, &c->workspace, &c->workspace_size,
                                   (size_t)B * NH * Tq * 2 * sizeof(float));
    if (st != DF_OK)
        return st;
    return DF_DISPATCH(dt, attention_bwd, c, dq, dk, dv, dout, q, k, v, out, B, Tq, Tk, NH, HS,
                       scale, causal);
}
