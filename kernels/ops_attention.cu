/* ops_attention.cu - flash-style multi-head attention,
 * df_cuda_attention_forward, whose reference is df_attention_forward_ref
 * (lib/ops/ops_ref.c). Tested by tests/unit/test_cuda_ops.c on SD's
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
    switch ((HS + 31) / 32) {
    case 1: attention_kernel<T, 1><<<grid, block, 0, c->stream>>>(o, qq, kk, vv, Tq, Tk, NH, HS, scale, causal); break;
    case 2: attention_kernel<T, 2><<<grid, block, 0, c->stream>>>(o, qq, kk, vv, Tq, Tk, NH, HS, scale, causal); break;
    case 3: attention_kernel<T, 3><<<grid, block, 0, c->stream>>>(o, qq, kk, vv, Tq, Tk, NH, HS, scale, causal); break;
    default: attention_kernel<T, 4><<<grid, block, 0, c->stream>>>(o, qq, kk, vv, Tq, Tk, NH, HS, scale, causal); break;
    }
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
