// Elementwise, normalization, RoPE + cache write, MoE router/dispatch/combine, sampling and random
// fill kernels of the CUDA backend. One block per row for the row-wise ops; fp32 math throughout,
// bf16 only where a value is stored for a matrix product.
#include <algorithm>
#include <cfloat>
#include <cooperative_groups.h>
#include <cmath>
#include <cstdlib>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/route.cuh"
#include "backend/cuda/trace.cuh"
#include "common/error.h"

namespace dsv2::cuda {

void cuda_fail(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(fmt::format("CUDA error at {}:{}: {}: {} ({})", file, line, what, cudaGetErrorString(e), int(e)),
              "internal");
}

namespace {

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

// Warp-wide argmax of (value, index) pairs: the highest value, the lowest index on ties; every
// lane ends with the result.
__device__ __forceinline__ void warp_argmax(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
}

// Argmax over the block of every thread's (bv, bi) (highest value, lowest index on ties): the result
// in red[0] / ired[0] (one slot per warp each) after the closing barrier.
__device__ void block_argmax(float bv, int bi, float* red, int* ired) {
  const int tid = threadIdx.x, nw = int(blockDim.x) >> 5;
  warp_argmax(bv, bi);
  if ((tid & 31) == 0) {
    red[tid >> 5] = bv;
    ired[tid >> 5] = bi;
  }
  __syncthreads();
  if (tid < 32) {
    bv = tid < nw ? red[tid] : -INFINITY;
    bi = tid < nw ? ired[tid] : 0x7fffffff;
    warp_argmax(bv, bi);
    if (tid == 0) {
      red[0] = bv;
      ired[0] = bi;
    }
  }
  __syncthreads();
}

__device__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : -FLT_MAX;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

inline unsigned blocks_for(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535u * 16u ? b : 65535u * 16u);
}

// ---------------------------------------------------------------------------------------------

// Rows with H % 8 == 0 move in 16-byte pieces, up to kEmbedPieces per thread loaded before the first
// store: one memory round trip for H <= 8 x 256 x kEmbedPieces (a scalar loop that stores between its
// loads took ~7 us for one V2-Lite row on the H200, at the head of every decode step).
constexpr int kEmbedPieces = 4;
__global__ void embed_kernel(const bf16* __restrict__ embed, const int32_t* __restrict__ tokens, int H,
                             float* __restrict__ x) {
  DSV2_TRACE(kTrEmbed);
  pdl_entry();
  const int t = blockIdx.x;
  const bf16* src = embed + size_t(tokens[t]) * H;
  float* dst = x + size_t(t) * H;
  if (H % 8 != 0) {
    for (int i = threadIdx.x; i < H; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
    return;
  }
  const int n8 = H / 8, step = int(blockDim.x) * kEmbedPieces;
  for (int base = int(threadIdx.x); base < n8; base += step) {
    uint4 v[kEmbedPieces];
#pragma unroll
    for (int k = 0; k < kEmbedPieces; ++k) {
      const int p = base + k * int(blockDim.x);
      if (p < n8) v[k] = __ldg(reinterpret_cast<const uint4*>(src) + p);
    }
#pragma unroll
    for (int k = 0; k < kEmbedPieces; ++k) {
      const int p = base + k * int(blockDim.x);
      if (p >= n8) break;
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v[k]);
      const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]), c = __bfloat1622float2(h[2]),
                   d = __bfloat1622float2(h[3]);
      float4* o = reinterpret_cast<float4*>(dst + size_t(p) * 8);
      o[0] = make_float4(a.x, a.y, b.x, b.y);
      o[1] = make_float4(c.x, c.y, d.x, d.y);
    }
  }
}

// Each thread keeps its kNormPer values of the row in registers, so that all loads are issued
// before the first store (no reloads of x after writing it, no aliasing stalls between the passes).
constexpr int kNormPer = 16;
__global__ void add_rmsnorm_kernel(float* __restrict__ x, const float* __restrict__ add,
                                   const int32_t* __restrict__ rows, int H, const float* __restrict__ w, float eps,
                                   bf16* __restrict__ y, float* __restrict__ yf, MoeCombine comb) {
  DSV2_TRACE(kTrNorm);
  pdl_entry();
  __shared__ float red[32];
  const int r = blockIdx.x;
  const int i = rows ? rows[r] : r;
  float* xr = x + size_t(i) * H;
  const float* ar = add ? add + size_t(i) * H : nullptr;
  const int nt = blockDim.x;
  float v[kNormPer];
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int k = threadIdx.x + j * nt;
    v[j] = k < H ? xr[k] : 0.0f;
  }
  if (comb.yp) {
    // the MoE combine, summed as moe_combine sums it into a zeroed delta, then added to x
    float cv[kNormPer];
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) cv[j] = 0.0f;
    for (int q = 0; q < comb.K; ++q) {
      const float wq = comb.weights[i * comb.K + q];
      const float* yr = comb.yp + size_t(comb.slot_of[i * comb.K + q]) * H;
#pragma unroll
      for (int j = 0; j < kNormPer; ++j) {
        const int k = threadIdx.x + j * nt;
        if (k < H) cv[j] += wq * yr[k];
      }
    }
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) v[j] += cv[j];
  }
  if (ar) {
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int k = threadIdx.x + j * nt;
      if (k < H) v[j] += ar[k];
    }
  }
  if (ar || comb.yp) {
#pragma unroll
    for (int j = 0; j < kNormPer; ++j) {
      const int k = threadIdx.x + j * nt;
      if (k < H) xr[k] = v[j];
    }
  }
  float ss = 0;
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) ss += v[j] * v[j];
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / float(H) + eps);
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int k = threadIdx.x + j * nt;
    if (k < H) {
      const float o = w[k] * (v[j] * inv);
      y[size_t(r) * H + k] = __float2bfloat16(o);
      if (yf) yf[size_t(r) * H + k] = o;
    }
  }
}

__global__ void rmsnorm_bf16_kernel(const bf16* x, int ldx, int n, const float* w, float eps, bf16* y, int ldy) {
  pdl_entry();
  __shared__ float red[32];
  const bf16* xr = x + size_t(blockIdx.x) * ldx;
  float ss = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    float v = __bfloat162float(xr[k]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / float(n) + eps);
  for (int k = threadIdx.x; k < n; k += blockDim.x)
    y[size_t(blockIdx.x) * ldy + k] = __float2bfloat16(w[k] * (__bfloat162float(xr[k]) * inv));
}

__global__ void silu_mul_kernel(const bf16* gu, int R, int I, bf16* a) {
  DSV2_TRACE(kTrSilu);
  pdl_entry();
  const size_t n = size_t(R) * I;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < n; idx += size_t(gridDim.x) * blockDim.x) {
    const size_t r = idx / I, i = idx % I;
    const float g = __bfloat162float(gu[r * 2 * I + i]);
    const float u = __bfloat162float(gu[r * 2 * I + I + i]);
    a[idx] = __float2bfloat16(silu_times(g, u));
  }
}

// Token t's cache row (normalized c, roped k_pe) and the roped q_pe of every head, by one block;
// red holds 32 floats. Split over parts > 1 blocks: part 0 writes the cache row, part i >= 1 the q_pe
// of heads i - 1, i - 1 + (parts - 1), ...
__device__ void rope_cache_row(const RopeCacheParams& p, int t, float* red, int part = 0, int parts = 1) {
  const int half = p.rope / 2;
  const int qd = p.nope + p.rope;
  {
    // Every line read below (the kv row, each head's q_pe, cos/sin, the cache slot) requested into L1 at
    // once: one round trip instead of one per dependent step.
    const char* kvb = reinterpret_cast<const char*>(p.kv + size_t(t) * p.kv_stride);
    const uintptr_t l0 = reinterpret_cast<uintptr_t>(kvb) & ~uintptr_t(127);
    const uintptr_t l1 = (reinterpret_cast<uintptr_t>(kvb) + size_t(p.kv_lora + p.rope) * 2 - 1) & ~uintptr_t(127);
    const int kv_lines = int((l1 - l0) / 128) + 1;  // lines 1.. start inside the row
    const float* csr = p.cossin + size_t(t) * p.rope;
    const int n = kv_lines + p.heads + (p.rope + 31) / 32 + 1;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int j = i - kv_lines, k = j - p.heads;  // q_pe of head j, then the cos/sin lines, the slot
      const void* a = i < kv_lines ? (i == 0 ? static_cast<const void*>(kvb) : reinterpret_cast<const void*>(l0 + 128 * size_t(i)))
                      : j < p.heads ? static_cast<const void*>(p.q + size_t(t) * p.q_stride + size_t(j) * qd + p.nope)
                      : k < (p.rope + 31) / 32 ? static_cast<const void*>(csr + 32 * k)
                                                : static_cast<const void*>(p.slot + t);
      asm volatile("prefetch.global.L1 [%0];\n" ::"l"(a));
    }
  }
  const float* cs = p.cossin + size_t(t) * p.rope;
  const float* sn = cs + half;
  const bf16* kv = p.kv + size_t(t) * p.kv_stride;
  const int D = p.kv_lora + p.rope;
  if (parts > 1 && part > 0) {
    const int hs = parts - 1, nh = (p.heads - (part - 1) + hs - 1) / hs;  // heads part-1, part-1+hs, ...
    for (int j = threadIdx.x; j < nh * half; j += blockDim.x) {
      const int h = part - 1 + (j / half) * hs, i = j % half;
      const bf16* qh = p.q + size_t(t) * p.q_stride + size_t(h) * qd + p.nope;
      const float a = __bfloat162float(qh[2 * i]), b = __bfloat162float(qh[2 * i + 1]);
      bf16* dst = p.qfull + (size_t(t) * p.heads + h) * D + p.kv_lora;
      rope_pair(a, b, cs[i], sn[i], dst[i], dst[half + i]);
    }
    return;
  }
  bf16* crow = p.cache + size_t(p.slot[t]) * D;
  float ss = 0;
  for (int k = threadIdx.x; k < p.kv_lora; k += blockDim.x) {
    float v = __bfloat162float(kv[k]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float inv = kv_inv_rms(ss, p.kv_lora);
  for (int k = threadIdx.x; k < p.kv_lora; k += blockDim.x)
    crow[k] = __float2bfloat16(p.kv_norm[k] * (__bfloat162float(kv[k]) * inv));
  // Adjacent pairs in, de-interleaved out (reference section 3), for k_pe and every head's q_pe.
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = __bfloat162float(kv[p.kv_lora + 2 * i]), b = __bfloat162float(kv[p.kv_lora + 2 * i + 1]);
    rope_pair(a, b, cs[i], sn[i], crow[p.kv_lora + i], crow[p.kv_lora + half + i]);
  }
  if (parts > 1) return;
  for (int j = threadIdx.x; j < p.heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const bf16* qh = p.q + size_t(t) * p.q_stride + size_t(h) * qd + p.nope;
    const float a = __bfloat162float(qh[2 * i]), b = __bfloat162float(qh[2 * i + 1]);
    bf16* dst = p.qfull + (size_t(t) * p.heads + h) * D + p.kv_lora;
    rope_pair(a, b, cs[i], sn[i], dst[i], dst[half + i]);
  }
}

// One block per token.
__global__ void rope_cache_kernel(RopeCacheParams p) {
  pdl_entry();
  __shared__ float red[32];
  rope_cache_row(p, blockIdx.x, red);
}

// Absorbed queries of one token: block (64 columns, head). Thread (cg, dg) owns columns cg*8..+8 of
// the slice and rows d = dg + 32 j of W_UK; its first kAbsorbU weight pieces are loaded before the
// PDL wait. The 32 row groups are summed in shared memory in a fixed order.
constexpr int kAbsorbU = 4;
constexpr int kAbsorbMaxRope = 256;
__global__ void __launch_bounds__(256) absorb_q1_kernel(const bf16* __restrict__ q, int q_stride,
                                                        const bf16* __restrict__ w, int nope, long long w_head_rows,
                                                        int C, bf16* __restrict__ out, int out_stride,
                                                        RopeCacheParams rp, bool with_rope) {
  DSV2_TRACE(kTrAbsorb);
  __shared__ float part[32][65];
  const int h = blockIdx.y, c0 = blockIdx.x * 64;
  if (h == int(gridDim.y) - 1 && with_rope) {
    // the last row of blocks: block 0 writes the token's cache row, the others rope its q_pe (heads
    // spread over them)
    pdl_entry();
    const int parts = min(int(gridDim.x), rp.heads + 1);
    if (int(blockIdx.x) < parts) rope_cache_row(rp, 0, &part[0][0], int(blockIdx.x), parts);
    return;
  }
  const int cg = threadIdx.x & 7, dg = threadIdx.x >> 3;
  const bf16* wh = w + size_t(h) * w_head_rows * C + c0 + cg * 8;
  uint4 wv[kAbsorbU];
#pragma unroll
  for (int j = 0; j < kAbsorbU; ++j) {
    const int d = dg + 32 * j;
    wv[j] = d < nope ? *reinterpret_cast<const uint4*>(wh + size_t(d) * C) : make_uint4(0, 0, 0, 0);
  }
  pdl_entry();
  const bf16* qh = q + size_t(h) * q_stride;
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.f;
  for (int d0 = 0; d0 < nope; d0 += 32 * kAbsorbU) {
    if (d0 > 0) {
#pragma unroll
      for (int j = 0; j < kAbsorbU; ++j) {
        const int d = d0 + dg + 32 * j;
        wv[j] = d < nope ? *reinterpret_cast<const uint4*>(wh + size_t(d) * C) : make_uint4(0, 0, 0, 0);
      }
    }
    float qv[kAbsorbU];  // all q loads in flight together
#pragma unroll
    for (int j = 0; j < kAbsorbU; ++j) {
      const int d = d0 + dg + 32 * j;
      qv[j] = d < nope ? __bfloat162float(qh[d]) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kAbsorbU; ++j) axpy8(qv[j], wv[j], acc);
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) part[dg][cg * 8 + i] = acc[i];
  __syncthreads();
  if (threadIdx.x < 64) {
    float v = 0.f;
    for (int g = 0; g < 32; ++g) v += part[g][threadIdx.x];
    out[size_t(h) * out_stride + c0 + threadIdx.x] = __float2bfloat16(v);
  }
}

// ---------------------------------------------------------------------------------------------
// MoE router: softmax, (group-limited) top-k and weights of token t from its fp32 logits row. Called
// by every thread of the block (any multiple of 32 threads); s holds E + n_group floats.
__device__ void route_token(const RouterParams& p, int t, const float* logits_row, float* s, float* red, int* sel) {
  const int E = p.E;
  const int lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < E; e += blockDim.x) s[e] = logits_row[e];
  __syncthreads();
  float mx = -FLT_MAX;
  for (int e = threadIdx.x; e < E; e += blockDim.x) mx = fmaxf(mx, s[e]);
  mx = block_max(mx, red);
  float sum = 0;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float v = expf(s[e] - mx);
    s[e] = v;
    sum += v;
  }
  sum = block_sum(sum, red);
  for (int e = threadIdx.x; e < E; e += blockDim.x) s[e] = s[e] / sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    // One warp does the selection: group limit, then K rounds of argmax (highest score, lowest id).
    if (p.group_limited && p.n_group > 1) {
      float* g = s + E;
      const int per = E / p.n_group;
      for (int gi = lane; gi < p.n_group; gi += 32) {
        float m = -FLT_MAX;
        for (int e = gi * per; e < (gi + 1) * per; ++e) m = fmaxf(m, s[e]);
        g[gi] = m;
      }
      __syncwarp();
      if (lane == 0) {
        // keep topk_group groups (ties: lower group first), zero the others' experts
        unsigned long long kept[4] = {0, 0, 0, 0};
        for (int r = 0; r < p.topk_group; ++r) {
          int best = -1;
          for (int gi = 0; gi < p.n_group; ++gi)
            if (!(kept[gi >> 6] >> (gi & 63) & 1ull) && (best < 0 || g[gi] > g[best])) best = gi;
          kept[best >> 6] |= 1ull << (best & 63);
        }
        for (int gi = 0; gi < p.n_group; ++gi)
          if (!(kept[gi >> 6] >> (gi & 63) & 1ull))
            for (int e = gi * per; e < (gi + 1) * per; ++e) s[e] = 0.0f;
      }
      __syncwarp();
    }
    for (int k = 0; k < p.K; ++k) {
      float bv = -1.0f;
      int bi = 0x7fffffff;
      for (int e = lane; e < E; e += 32) {
        bool taken = false;
        for (int q = 0; q < k; ++q) taken |= sel[q] == e;
        if (!taken && s[e] > bv) {  // ascending e per lane: first max kept
          bv = s[e];
          bi = e;
        }
      }
      warp_argmax(bv, bi);
      if (lane == 0) sel[k] = bi;
      __syncwarp();
    }
    if (lane == 0) {
      float tot = 0;
      for (int k = 0; k < p.K; ++k) tot += s[sel[k]];
      const size_t row = size_t(t) * (p.ids_stride > 0 ? p.ids_stride : p.K);
      for (int k = 0; k < p.K; ++k) {
        const float v = s[sel[k]];
        p.ids[row + k] = sel[k];
        p.weights[row + k] = (p.K > 1 && p.norm_topk) ? v / (tot + 1e-20f) : v * p.scaling;
      }
      for (int x = 0; x < p.n_extra; ++x) {
        p.ids[row + p.K + x] = E + x;
        p.weights[row + p.K + x] = 1.0f;
      }
    }
  }
  __syncthreads();  // s and sel are reused by the next token
}

// One block per token over precomputed logits.
__global__ void route_kernel(RouterParams p) {
  pdl_entry();
  extern __shared__ float s[];  // [E] scores, then [n_group] group scores
  __shared__ float red[32];
  __shared__ int sel[64];
  route_token(p, blockIdx.x, p.logits + size_t(blockIdx.x) * p.E, s, red, sel);
}

// Few tokens: the logits and the routing in one launch, one thread-block cluster (kRouteCluster
// blocks of kRouteWarps warps, Hopper) per 8 tokens. Warp g of a cluster computes experts g, g + 64,
// ... for each of its tokens: fp32 dot products over H <= 32 * 4 * kRouteU, the first expert's
// weights (and the norm weights) held in registers from before the PDL wait, each token's row
// loaded with all its loads in flight at once. Token j's logits go to block j's shared memory
// through the cluster's distributed shared memory; after one cluster barrier block j routes token j
// (with one warp when route_token_warp applies, else the whole block). No global round trips
// between the dot products and the routing.
constexpr int kRouteCluster = 8, kRouteWarps = 8;
constexpr int kRouteU = 16;
// kFold: w holds the router rows already scaled by the RMSNorm weights (fold_norm_rows), x is the
// residual stream: logit = rsqrt(mean(x^2) + eps) * sum_h x_h w'_h, with the squares and the products
// summed in one pass over x, so that only the weight row is held in registers (144 at most: a router
// block then fits on an SM next to a bulk-copy gate/up block, 288 threads x 96).
template <bool kFold>
__global__ void __cluster_dims__(kRouteCluster, 1, 1) __launch_bounds__(kRouteWarps * 32)
    route_small_kernel(RouterParams p, const float* x, const float* w, int H, const float* norm_w, float eps,
                       bool warp_route) {
  DSV2_TRACE(kTrRoute);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float s[];  // [E + n_group] routing scratch, then [T, E] logits (block 0's are used)
  __shared__ float red[32];
  __shared__ int sel[64];
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nw = kRouteCluster * kRouteWarps;
  const int g = int(cluster.block_rank()) * kRouteWarps + warp;
  const int H4 = H / 4;
  const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);
  float4 wv[kRouteU];
  auto load_w = [&](int e) {
    const float4* wr = reinterpret_cast<const float4*>(w + size_t(e < p.E ? e : 0) * H);
#pragma unroll
    for (int u = 0; u < kRouteU; ++u) wv[u] = (e < p.E && u * 32 + lane < H4) ? wr[u * 32 + lane] : zero4;
  };
  load_w(g);
  [[maybe_unused]] float4 gv[kFold ? 1 : kRouteU];
  if constexpr (!kFold) {
#pragma unroll
    for (int u = 0; u < kRouteU; ++u)
      gv[u] = (norm_w && u * 32 + lane < H4) ? reinterpret_cast<const float4*>(norm_w)[u * 32 + lane] : zero4;
  }
  pdl_entry();
  // this cluster's tokens t0 .. t0 + nt - 1; token t0 + j is routed by block j
  const int t0 = int(blockIdx.x) / kRouteCluster * kRouteCluster, nt = min(kRouteCluster, p.T - t0);
  for (int e0 = g; e0 < p.E; e0 += nw) {
    if (e0 != g) load_w(e0);
    for (int j = 0; j < nt; ++j) {
      const int t = t0 + j;
      const float4* xr = reinterpret_cast<const float4*>(x + size_t(t) * H);
      float logit;
      if constexpr (kFold) {
        float4 xv[kRouteU];
#pragma unroll
        for (int u = 0; u < kRouteU; ++u) xv[u] = (u * 32 + lane < H4) ? xr[u * 32 + lane] : zero4;
        asm volatile("" ::: "memory");  // all of x's loads issued before the first product: one round trip
        float ss = 0.f, acc = 0.f;
#pragma unroll
        for (int u = 0; u < kRouteU; ++u) {
          ss += xv[u].x * xv[u].x + xv[u].y * xv[u].y + xv[u].z * xv[u].z + xv[u].w * xv[u].w;
          acc += xv[u].x * wv[u].x + xv[u].y * wv[u].y + xv[u].z * wv[u].z + xv[u].w * wv[u].w;
        }
        for (int o = 16; o > 0; o >>= 1) {
          ss += __shfl_xor_sync(0xffffffffu, ss, o);
          acc += __shfl_xor_sync(0xffffffffu, acc, o);
        }
        logit = acc * rsqrtf(ss / float(H) + eps);
      } else {
        float4 xv[kRouteU];
#pragma unroll
        for (int u = 0; u < kRouteU; ++u) xv[u] = (u * 32 + lane < H4) ? xr[u * 32 + lane] : zero4;
        if (norm_w) {
          // x is the residual stream: the logits read norm_w * x * inv, add_rmsnorm's fp32 output
          float ss = 0.f;
#pragma unroll
          for (int u = 0; u < kRouteU; ++u)
            ss += xv[u].x * xv[u].x + xv[u].y * xv[u].y + xv[u].z * xv[u].z + xv[u].w * xv[u].w;
          for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
          const float inv = rsqrtf(ss / float(H) + eps);
#pragma unroll
          for (int u = 0; u < kRouteU; ++u)
            xv[u] = make_float4(gv[u].x * (xv[u].x * inv), gv[u].y * (xv[u].y * inv), gv[u].z * (xv[u].z * inv),
                                gv[u].w * (xv[u].w * inv));
        }
        float acc = 0.f;
#pragma unroll
        for (int u = 0; u < kRouteU; ++u)
          acc += xv[u].x * wv[u].x + xv[u].y * wv[u].y + xv[u].z * wv[u].z + xv[u].w * wv[u].w;
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        logit = acc;
      }
      if (lane == 0) cluster.map_shared_rank(s + p.E + p.n_group, j)[e0] = logit;
    }
  }
  cluster.sync();
  const int j = int(cluster.block_rank());
  if (j < nt) {
    if (warp_route) {
      if (warp == 0) route_token_warp(p, t0 + j, s + p.E + p.n_group);
    } else {
      route_token(p, t0 + j, s + p.E + p.n_group, s, red, sel);
    }
  }
#endif
}

__global__ void moe_count_kernel(const int32_t* ids, int n, int32_t* counts) {
  pdl_entry();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&counts[ids[i]], 1);
}

// One block of kScanThreads: offsets, the GEMM tile list, and the per-expert fill cursors (reusing
// counts). Experts are taken kScanThreads at a time with a shared-memory scan of rows and tiles.
constexpr int kScanThreads = 256;
__global__ void moe_scan_kernel(int32_t* counts, int E, int32_t* offsets, int32_t* tile_info, int max_tiles,
                                int tile_m) {
  pdl_entry();
  __shared__ int rows_scan[kScanThreads], tiles_scan[kScanThreads];
  __shared__ int base_rows, base_tiles;
  const int tid = threadIdx.x;
  if (tid == 0) base_rows = base_tiles = 0;
  for (int e0 = 0; e0 < E; e0 += kScanThreads) {
    const int e = e0 + tid;
    const int c = e < E ? counts[e] : 0;
    const int nt = (c + tile_m - 1) / tile_m;
    rows_scan[tid] = c;
    tiles_scan[tid] = nt;
    __syncthreads();
    for (int o = 1; o < kScanThreads; o <<= 1) {  // inclusive Hillis-Steele scans
      const int a = tid >= o ? rows_scan[tid - o] : 0, b = tid >= o ? tiles_scan[tid - o] : 0;
      __syncthreads();
      rows_scan[tid] += a;
      tiles_scan[tid] += b;
      __syncthreads();
    }
    const int off = base_rows + rows_scan[tid] - c, t0 = base_tiles + tiles_scan[tid] - nt;
    if (e < E) {
      offsets[e] = off;
      for (int i = 0; i < nt; ++i) {
        tile_info[(t0 + i) * 3 + 0] = e;
        tile_info[(t0 + i) * 3 + 1] = off + i * tile_m;
        tile_info[(t0 + i) * 3 + 2] = min(tile_m, c - i * tile_m);
      }
      counts[e] = 0;
    }
    __syncthreads();
    if (tid == kScanThreads - 1) {
      base_rows += rows_scan[tid];
      base_tiles += tiles_scan[tid];
    }
    __syncthreads();
  }
  if (tid == 0) {
    offsets[E] = base_rows;
    tile_info[max_tiles * 3] = base_tiles;
  }
}

// One bf16 row of H values copied by the whole block (16-byte pieces when H allows).
__device__ __forceinline__ void copy_row_block(const bf16* src, bf16* dst, int H) {
  if ((H & 7) == 0) {
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    for (int k = threadIdx.x; k < H / 8; k += blockDim.x) d4[k] = s4[k];
  } else {
    for (int k = threadIdx.x; k < H; k += blockDim.x) dst[k] = src[k];
  }
}

// One block per (token, k): its permuted row and the copy of the token's hidden row.
__global__ void moe_permute_kernel(const int32_t* ids, int K, const int32_t* offsets, int32_t* cursor,
                                   int32_t* slot_of, int32_t* row_token, const bf16* x, int H, bf16* xp) {
  pdl_entry();
  __shared__ int slot;
  const int i = blockIdx.x;
  if (threadIdx.x == 0) {
    const int e = ids[i];
    slot = offsets[e] + atomicAdd(&cursor[e], 1);
    slot_of[i] = slot;
    row_token[slot] = i / K;
  }
  if (xp == nullptr) return;  // the grouped product gathers through row_token
  __syncthreads();
  const bf16* src = x + size_t(i / K) * H;
  bf16* dst = xp + size_t(slot) * H;
  copy_row_block(src, dst, H);
}

// Decode-sized dispatch in one block (n = T*K <= kDispatchOneBlockMax): counts with shared-memory
// atomics, offsets and tile list, then each (token, k)'s permuted row. The order of rows within an
// expert depends on the atomics; every row's product is computed on its own, so results do not.
constexpr int kDispatchThreads = 1024;
__global__ void __launch_bounds__(kDispatchThreads)
    moe_dispatch_block_kernel(const int32_t* __restrict__ ids, int n, int K, int E, int32_t* offsets,
                              int32_t* tile_info, int max_tiles, int tile_m, int32_t* slot_of, int32_t* row_token) {
  DSV2_TRACE(kTrDispatch);
  pdl_entry();
  extern __shared__ int dsm[];  // [E] counts, then [E] offsets, then [n] ranks
  int* cnt = dsm;
  int* off = dsm + E;
  int* rank = dsm + 2 * E;
  __shared__ int wrows[32], wtiles[32], base_rows, base_tiles;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = int(blockDim.x >> 5);
  for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
  if (tid == 0) base_rows = base_tiles = 0;
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) rank[i] = atomicAdd(&cnt[ids[i]], 1);
  __syncthreads();
  // exclusive scans of rows and tiles over the experts, blockDim.x experts at a time
  for (int e0 = 0; e0 < E; e0 += blockDim.x) {
    const int e = e0 + tid;
    const int c = e < E ? cnt[e] : 0, nt = (c + tile_m - 1) / tile_m;
    int rs = c, ts = nt;  // inclusive within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int a = __shfl_up_sync(0xffffffffu, rs, o), b = __shfl_up_sync(0xffffffffu, ts, o);
      if (lane >= o) {
        rs += a;
        ts += b;
      }
    }
    if (lane == 31) {
      wrows[warp] = rs;
      wtiles[warp] = ts;
    }
    __syncthreads();
    if (warp == 0) {
      int a = lane < nwarps ? wrows[lane] : 0, b = lane < nwarps ? wtiles[lane] : 0;
      for (int o = 1; o < 32; o <<= 1) {
        const int pa = __shfl_up_sync(0xffffffffu, a, o), pb = __shfl_up_sync(0xffffffffu, b, o);
        if (lane >= o) {
          a += pa;
          b += pb;
        }
      }
      wrows[lane] = a;  // inclusive over warps
      wtiles[lane] = b;
    }
    __syncthreads();
    const int r_excl = base_rows + (warp ? wrows[warp - 1] : 0) + rs - c;
    const int t_excl = base_tiles + (warp ? wtiles[warp - 1] : 0) + ts - nt;
    if (e < E) {
      off[e] = r_excl;
      offsets[e] = r_excl;
      for (int i = 0; i < nt; ++i) {
        tile_info[(t_excl + i) * 3 + 0] = e;
        tile_info[(t_excl + i) * 3 + 1] = r_excl + i * tile_m;
        tile_info[(t_excl + i) * 3 + 2] = min(tile_m, c - i * tile_m);
      }
    }
    __syncthreads();
    if (tid == 0) {
      base_rows += wrows[nwarps - 1];
      base_tiles += wtiles[nwarps - 1];
    }
    __syncthreads();
  }
  if (tid == 0) {
    offsets[E] = base_rows;
    tile_info[max_tiles * 3] = base_tiles;
  }
  for (int i = tid; i < n; i += blockDim.x) {
    const int slot = off[ids[i]] + rank[i];
    slot_of[i] = slot;
    row_token[slot] = i / K;
  }
}

// The permuted copy of x: one block per permuted row.
__global__ void moe_copy_rows_kernel(const int32_t* __restrict__ row_token, const bf16* __restrict__ x, int H,
                                     bf16* __restrict__ xp) {
  pdl_entry();
  const int slot = blockIdx.x;
  const bf16* src = x + size_t(row_token[slot]) * H;
  bf16* dst = xp + size_t(slot) * H;
  copy_row_block(src, dst, H);
}

__global__ void moe_combine_kernel(const float* yp, const int32_t* slot_of, const float* weights, int K, int H,
                                   float* y) {
  pdl_entry();
  const int t = blockIdx.x;
  for (int k = threadIdx.x; k < H; k += blockDim.x) {
    float acc = y[size_t(t) * H + k];
    for (int j = 0; j < K; ++j) acc += weights[t * K + j] * yp[size_t(slot_of[t * K + j]) * H + k];
    y[size_t(t) * H + k] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling: one block of 1024 threads per row; the row is overwritten with exp((l - max) / temp).
constexpr int kSampleThreads = 1024;

// fsum[t] <- fsum[0] + ... + fsum[t] over the block (Hillis-Steele; blockDim.x entries).
__device__ void block_inclusive_scan(float* fsum) {
  const int tid = threadIdx.x;
  for (int o = 1; o < int(blockDim.x); o <<= 1) {
    const float v = tid >= o ? fsum[tid - o] : 0.0f;
    __syncthreads();
    fsum[tid] += v;
    __syncthreads();
  }
}

// The inverse-CDF pick inside one thread's segment [b0, b1) of e: the first kept id (e >= theta) at
// which the running mass, starting from acc, passes u; the last kept id if none does; -1 if none kept.
__device__ int segment_pick(const float* e, int b0, int b1, float theta, float u, float acc) {
  int pick = -1;
  for (int i = b0; i < b1; ++i) {
    if (e[i] < theta) continue;
    pick = i;
    acc += e[i];
    if (u < acc) break;
  }
  return pick;
}

// Largest theta in [lo, 1] with measure(e >= theta) >= target, by bisection over the block's row
// (measure: the count of such e, or their mass). e <= 1 everywhere and the row's maximum is 1.
// A 16-byte aligned row is read in float4 pieces, four in flight per thread.
// The bisection itself: measure(mid) is the (block- or cluster-wide) measure of e >= mid.
template <typename Measure>
__device__ float bisect(float lo, float target, Measure measure) {
  float hi = 1.0f;
  for (int it = 0; it < 30; ++it) {
    const float mid = 0.5f * (lo + hi);
    if (measure(mid) >= target)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

template <bool kMass>
__device__ float bisect_threshold(const float* l, int n, float lo, float target, float* red) {
  const int n4 = reinterpret_cast<uintptr_t>(l) % 16 == 0 ? n / 4 : 0;
  const float4* l4 = reinterpret_cast<const float4*>(l);
  return bisect(lo, target, [&](float mid) {
    auto f = [&](float e) { return e >= mid ? (kMass ? e : 1.0f) : 0.0f; };
    float m = 0;
#pragma unroll 4
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = l4[i];
      m += (f(v.x) + f(v.y)) + (f(v.z) + f(v.w));
    }
    for (int i = 4 * n4 + threadIdx.x; i < n; i += blockDim.x) m += f(l[i]);
    return block_sum(m, red);
  });
}

// rp: per-row parameters (sample_rows_each), or null for the shared ones with counter-based draws.
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(float* logits, int V, int n, float temperature,
                                                                float top_p, uint64_t seed, uint64_t step,
                                                                const SampleRowParams* rp, int32_t* out) {
  DSV2_TRACE(kTrSample);
  pdl_entry();
  float min_p = 0.0f;
  int top_k = 0;
  if (rp) {
    const SampleRowParams q = rp[blockIdx.x];
    temperature = q.temperature;
    top_p = q.top_p;
    min_p = q.min_p;
    top_k = q.top_k;
  }
  __shared__ float red[32];
  __shared__ float fsum[kSampleThreads];
  __shared__ int ired[32];
  __shared__ int found;
  const int r = blockIdx.x, tid = threadIdx.x;
  float* l = logits + size_t(r) * V;
  // argmax, lowest index on ties
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  // 16-byte loads, eight in flight per thread (one block streams the whole row: ~400 KB for V2)
  const int n4 = (V % 4 == 0) ? n / 4 : 0;
  const float4* l4 = reinterpret_cast<const float4*>(l);
#pragma unroll 8
  for (int i = tid; i < n4; i += blockDim.x) {
    const float4 v = l4[i];
    if (v.x > bv) bv = v.x, bi = 4 * i;
    if (v.y > bv) bv = v.y, bi = 4 * i + 1;
    if (v.z > bv) bv = v.z, bi = 4 * i + 2;
    if (v.w > bv) bv = v.w, bi = 4 * i + 3;
  }
  for (int i = 4 * n4 + tid; i < n; i += blockDim.x)
    if (l[i] > bv) {
      bv = l[i];
      bi = i;
    }
  block_argmax(bv, bi, red, ired);
  const float mx = red[0];
  const int amax = ired[0];
  __syncthreads();
  if (temperature <= 0.0f || !(mx > -INFINITY)) {
    if (tid == 0) out[r] = amax;
    return;
  }
  const float invt = 1.0f / temperature;
  float z = 0;
  {
    // e = exp((l - max) / temperature) in place; aligned rows in float4 pieces, four loaded per thread
    // before their stores
    auto ex = [&](float v) { return __expf((v - mx) * invt); };
    float4* w4 = reinterpret_cast<float4*>(l);
    constexpr int kU = 4;
    for (int i0 = tid; i0 < n4; i0 += kU * int(blockDim.x)) {
      float4 v[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (i0 + u * int(blockDim.x) < n4) v[u] = w4[i0 + u * int(blockDim.x)];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (i0 + u * int(blockDim.x) >= n4) break;
        const float4 e = make_float4(ex(v[u].x), ex(v[u].y), ex(v[u].z), ex(v[u].w));
        z += (e.x + e.y) + (e.z + e.w);
        w4[i0 + u * int(blockDim.x)] = e;
      }
    }
    for (int i = 4 * n4 + tid; i < n; i += blockDim.x) {
      const float e = ex(l[i]);
      l[i] = e;
      z += e;
    }
  }
  z = block_sum(z, red);
  // top-k: the largest theta that keeps at least k tokens; then the nucleus: the largest theta whose
  // kept mass sum(e >= theta) reaches top_p times the mass top-k kept; then min-p (e is p / p_max).
  float theta = 0.0f;
  if (top_k > 0 && top_k < n) {
    theta = bisect_threshold<false>(l, n, 0.0f, float(top_k), red);
    float zk = 0;
    for (int i = tid; i < n; i += blockDim.x) zk += l[i] >= theta ? l[i] : 0.0f;
    z = block_sum(zk, red);
  }
  if (top_p < 1.0f) theta = bisect_threshold<true>(l, n, theta, top_p * z, red);
  theta = fmaxf(theta, min_p);
  // Inverse CDF over the kept tokens in index order: contiguous segment per thread.
  const int seg = (n + blockDim.x - 1) / blockDim.x;
  const int b0 = min(n, tid * seg), b1 = min(n, b0 + seg);
  float part = 0;
  for (int i = b0; i < b1; ++i) part += l[i] >= theta ? l[i] : 0.0f;
  fsum[tid] = part;
  if (tid == 0) found = -1;
  __syncthreads();
  block_inclusive_scan(fsum);
  const float total = fsum[blockDim.x - 1];
  const float u = (rp ? rp[r].u : float(sample_uniform(seed, step, uint64_t(r)))) * total;
  const float before = tid > 0 ? fsum[tid - 1] : 0.0f;
  if (u >= before && u < fsum[tid]) {
    const int pick = segment_pick(l, b0, b1, theta, u, before);
    if (pick >= 0) found = pick;
  }
  __syncthreads();
  if (tid == 0) out[r] = found >= 0 ? found : amax;
}

// The same draw with the row spread over a cluster of kSampleCluster blocks (Hopper): each block holds
// a slice of the row in shared memory, and the block partials of every pass (argmax, the softmax sum,
// each bisection step's measure, the kept mass) meet through distributed shared memory, summed in rank
// order so that every block takes the same decisions. One block streams the whole row from L2 for
// every bisection step in sample_kernel (~5 us per pass for 102,400 ids); here a pass is a shared-memory
// sweep of 1/8 of the row and one cluster barrier.
constexpr int kSampleCluster = 8, kSampleClusterThreads = 512;
namespace cg = cooperative_groups;

// Sum over the cluster of every block's v (block-reduced first): partials in rank order, the same bits
// in every block. slot: this block's two exchange slots (alternating, so that one barrier per call does).
__device__ float cluster_sum(cg::cluster_group& cl, float v, float* red, float* slot, int& parity) {
  v = block_sum(v, red);
  if (threadIdx.x == 0) slot[parity] = v;
  cl.sync();
  __shared__ float total;
  if (threadIdx.x == 0) {
    float parts[kSampleCluster];
#pragma unroll
    for (int b = 0; b < kSampleCluster; ++b) parts[b] = cl.map_shared_rank(slot, b)[parity];
    float t = 0.0f;
#pragma unroll
    for (int b = 0; b < kSampleCluster; ++b) t += parts[b];
    total = t;
  }
  parity ^= 1;
  __syncthreads();
  return total;
}

// bisect_threshold over the cluster's slices (e in shared memory, ns of them in this block).
template <bool kMass>
__device__ float cluster_bisect(cg::cluster_group& cl, const float* e, int ns, float lo, float target, float* red,
                                float* slot, int& parity) {
  return bisect(lo, target, [&](float mid) {
    float m = 0;
    for (int i = threadIdx.x; i < ns; i += blockDim.x) m += e[i] >= mid ? (kMass ? e[i] : 1.0f) : 0.0f;
    return cluster_sum(cl, m, red, slot, parity);
  });
}

__global__ void __launch_bounds__(kSampleClusterThreads)
    sample_cluster_kernel(const float* logits, int V, int n, float temperature, float top_p, uint64_t seed,
                          uint64_t step, const SampleRowParams* rp, int32_t* out) {
  DSV2_TRACE(kTrSample);
  cg::cluster_group cl = cg::this_cluster();
  extern __shared__ float se[];  // this block's slice of the row: logits, then e
  __shared__ float red[32], slot[2], fsum[kSampleClusterThreads];
  __shared__ int ired[32], islot, found;
  __shared__ float xv[2];  // argmax exchange: value; index in islot
  const int rank = int(cl.block_rank()), r = int(blockIdx.x) / kSampleCluster, tid = threadIdx.x;
  const int span = ((n + kSampleCluster - 1) / kSampleCluster + 3) / 4 * 4;
  const int s0 = min(n, rank * span), ns = min(n, s0 + span) - s0;
  pdl_entry();
  float min_p = 0.0f;
  int top_k = 0;
  if (rp) {
    const SampleRowParams q = rp[r];
    temperature = q.temperature;
    top_p = q.top_p;
    min_p = q.min_p;
    top_k = q.top_k;
  }
  const float* l = logits + size_t(r) * V + s0;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = tid; i < ns; i += blockDim.x) {
    const float v = l[i];
    se[i] = v;
    if (v > bv) bv = v, bi = s0 + i;
  }
  block_argmax(bv, bi, red, ired);
  if (tid == 0) {
    xv[0] = red[0];
    islot = ired[0];
  }
  cl.sync();
  __shared__ float mx_s;
  __shared__ int amax_s;
  if (tid == 0) {
    float m = -INFINITY;
    int a = 0x7fffffff;
    for (int b = 0; b < kSampleCluster; ++b) {
      const float v = cl.map_shared_rank(xv, b)[0];
      const int i = *cl.map_shared_rank(&islot, b);
      if (v > m || (v == m && i < a)) m = v, a = i;
    }
    mx_s = m;
    amax_s = a;
  }
  __syncthreads();
  const float mx = mx_s;
  const int amax = amax_s;
  int parity = 0;
  if (temperature <= 0.0f || !(mx > -INFINITY)) {
    if (rank == 0 && tid == 0) out[r] = amax;
    cl.sync();  // no block leaves while another reads its shared memory
    return;
  }
  const float invt = 1.0f / temperature;
  float z = 0;
  for (int i = tid; i < ns; i += blockDim.x) {
    const float e = __expf((se[i] - mx) * invt);
    se[i] = e;
    z += e;
  }
  z = cluster_sum(cl, z, red, slot, parity);
  float theta = 0.0f;
  if (top_k > 0 && top_k < n) {
    theta = cluster_bisect<false>(cl, se, ns, 0.0f, float(top_k), red, slot, parity);
    float zk = 0;
    for (int i = tid; i < ns; i += blockDim.x) zk += se[i] >= theta ? se[i] : 0.0f;
    z = cluster_sum(cl, zk, red, slot, parity);
  }
  if (top_p < 1.0f) theta = cluster_bisect<true>(cl, se, ns, theta, top_p * z, red, slot, parity);
  theta = fmaxf(theta, min_p);
  // Inverse CDF over the kept ids in index order: the kept mass of every block, then the block whose
  // share holds u (the last with kept mass when rounding leaves u past the total) scans its slice.
  const int seg = (ns + int(blockDim.x) - 1) / int(blockDim.x);
  const int b0 = min(ns, tid * seg), b1 = min(ns, b0 + seg);
  float part = 0;
  for (int i = b0; i < b1; ++i) part += se[i] >= theta ? se[i] : 0.0f;
  fsum[tid] = part;
  const float kept = block_sum(part, red);
  if (tid == 0) slot[parity] = kept;
  cl.sync();
  __shared__ float base_s, target_s;
  __shared__ int mine_s;
  if (tid == 0) {
    float ks[kSampleCluster], tot = 0.0f;
    for (int b = 0; b < kSampleCluster; ++b) tot += (ks[b] = cl.map_shared_rank(slot, b)[parity]);
    const float u = (rp ? rp[r].u : float(sample_uniform(seed, step, uint64_t(r)))) * tot;
    float before = 0.0f, base = 0.0f;
    int pick_b = -1;
    for (int b = 0; b < kSampleCluster; ++b) {
      if (ks[b] > 0.0f && (pick_b < 0 || u >= before)) {
        pick_b = b;
        base = before;
      }
      before += ks[b];
    }
    mine_s = pick_b == rank;
    base_s = base;
    target_s = u;
    found = -1;
  }
  __syncthreads();
  if (mine_s) {
    block_inclusive_scan(fsum);  // over the threads' segment sums, offset below by the earlier blocks' mass
    const float u = target_s, before = base_s + (tid > 0 ? fsum[tid - 1] : 0.0f), after = base_s + fsum[tid];
    const bool last = tid == int(blockDim.x) - 1;
    if (u >= before && (u < after || last)) {
      const int pick = segment_pick(se, b0, b1, theta, u, before);
      if (pick >= 0) found = s0 + pick;
    }
    __syncthreads();
    if (tid == 0) out[r] = found >= 0 ? found : amax;
  }
  cl.sync();  // no block leaves while another reads its shared memory
}

__device__ inline float hash_uniform(uint64_t seed, size_t i) {
  uint64_t z = (seed + 1) * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(z >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
}

__global__ void fill_bf16_kernel(bf16* p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(offset + scale * hash_uniform(seed, i));
}
__global__ void fill_f32_kernel(float* p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = offset + scale * hash_uniform(seed, i);
}

__global__ void sleep_kernel(int us) {
  for (int i = 0; i < us; ++i) __nanosleep(1000);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void gpu_sleep(int us, cudaStream_t s) {
  sleep_kernel<<<1, 1, 0, s>>>(us);
  DSV2_CUDA_LAUNCHED();
}

void embed_rows(const bf16* embed, const int32_t* tokens, int T, int H, float* x, cudaStream_t s) {
  if (T == 0) return;
  launch_pdl(embed_kernel, dim3(T), dim3(256), 0, s, embed, tokens, H, x);
  DSV2_CUDA_LAUNCHED();
}

void add_rmsnorm(float* x, const float* add, const int32_t* rows, int R, int H, const float* w, float eps, bf16* y,
                 float* yf, cudaStream_t s, const MoeCombine& comb) {
  if (R == 0) return;
  // enough threads for kNormPer values each (H at most 16384)
  DSV2_CHECK(H <= 1024 * kNormPer, "add_rmsnorm: hidden size {} above {}", H, 1024 * kNormPer);
  const int threads = std::max(128, (H + kNormPer - 1) / kNormPer + 31) / 32 * 32;
  launch_pdl(add_rmsnorm_kernel, dim3(R), dim3(std::min(threads, 1024)), 0, s, x, add, rows, H, w, eps, y, yf,
             comb);
  DSV2_CUDA_LAUNCHED();
}

void rmsnorm_bf16(const bf16* x, int ldx, int T, int n, const float* w, float eps, bf16* y, int ldy, cudaStream_t s) {
  if (T == 0) return;
  launch_pdl(rmsnorm_bf16_kernel, dim3(T), dim3(256), 0, s, x, ldx, n, w, eps, y, ldy);
  DSV2_CUDA_LAUNCHED();
}

void silu_mul(const bf16* gu, int R, int I, bf16* a, cudaStream_t s) {
  if (R == 0) return;
  launch_pdl(silu_mul_kernel, dim3(blocks_for(size_t(R) * I, 256)), dim3(256), 0, s, gu, R, I, a);
  DSV2_CUDA_LAUNCHED();
}

void rope_and_cache(const RopeCacheParams& p, cudaStream_t s) {
  if (p.T == 0) return;
  launch_pdl(rope_cache_kernel, dim3(p.T), dim3(256), 0, s, p);
  DSV2_CUDA_LAUNCHED();
}

void absorb_q1(const bf16* q, int q_stride, const bf16* w, int heads, int nope, long long w_head_rows, int C,
               bf16* out, int out_stride, cudaStream_t s, const RopeCacheParams* rope) {
  DSV2_CHECK(C % 64 == 0, "absorb_q1: latent width {} is not a multiple of 64", C);
  DSV2_CHECK(!rope || (rope->T == 1 && rope->rope <= kAbsorbMaxRope), "absorb_q1: rope part for {} tokens, width {}",
             rope ? rope->T : 0, rope ? rope->rope : 0);
  const RopeCacheParams rp = rope ? *rope : RopeCacheParams{};
  launch_pdl(absorb_q1_kernel, dim3(unsigned(C / 64), unsigned(heads + (rope ? 1 : 0))), dim3(256), 0, s, q, q_stride,
             w, nope, w_head_rows, C, out, out_stride, rp, rope != nullptr);
  DSV2_CUDA_LAUNCHED();
}

bool moe_route_small_supported(int H, int K, int n_group) {
  return device_is_hopper() && K <= 64 && n_group <= 256 && H % 4 == 0 && H <= 32 * 4 * kRouteU;
}

// DSV2_CUDA_ROUTE_BLOCK=1: the block-wide routing (route_token) where the one-warp form applies too.
static bool route_warp_on() {
  static const bool on = std::getenv("DSV2_CUDA_ROUTE_BLOCK") == nullptr;
  return on;
}

void moe_route_small(const RouterParams& p, const float* x, const float* w, int H, cudaStream_t s,
                     const float* norm_w, float eps) {
  if (p.T == 0) return;
  DSV2_CHECK(p.T <= kRouteSmallMaxTokens && moe_route_small_supported(H, p.K, p.n_group),
             "router: {} tokens, top_k {}, n_group {} or H {} unsupported", p.T, p.K, p.n_group, H);
  const unsigned clusters = unsigned((p.T + kRouteCluster - 1) / kRouteCluster);
  const size_t smem = size_t(2 * p.E + p.n_group) * sizeof(float);
  launch_pdl(route_small_kernel<false>, dim3(kRouteCluster * clusters), dim3(kRouteWarps * 32), smem, s, p, x, w, H,
             norm_w, eps,
             route_warp_on() && route_warp_supported(p));
  DSV2_CUDA_LAUNCHED();
}

void moe_route_small_folded(const RouterParams& p, const float* x, const float* w_folded, int H, float eps,
                            cudaStream_t s) {
  if (p.T == 0) return;
  DSV2_CHECK(p.T <= kRouteSmallMaxTokens && moe_route_small_supported(H, p.K, p.n_group),
             "router: {} tokens, top_k {}, n_group {} or H {} unsupported", p.T, p.K, p.n_group, H);
  const unsigned clusters = unsigned((p.T + kRouteCluster - 1) / kRouteCluster);
  const size_t smem = size_t(2 * p.E + p.n_group) * sizeof(float);
  launch_pdl(route_small_kernel<true>, dim3(kRouteCluster * clusters), dim3(kRouteWarps * 32), smem, s, p, x,
             w_folded, H, nullptr, eps,
             route_warp_on() && route_warp_supported(p));
  DSV2_CUDA_LAUNCHED();
}

__global__ void fold_norm_rows_kernel(const float* w, const float* g, int rows, int cols, float* out) {
  const size_t n = size_t(rows) * cols;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = w[i] * g[i % size_t(cols)];
}

void fold_norm_rows(const float* w, const float* g, int rows, int cols, float* out, cudaStream_t s) {
  if (rows == 0 || cols == 0) return;
  fold_norm_rows_kernel<<<blocks_for(size_t(rows) * cols, 256), 256, 0, s>>>(w, g, rows, cols, out);
  DSV2_CUDA_LAUNCHED();
}

void moe_route(const RouterParams& p, cudaStream_t s) {
  if (p.T == 0) return;
  DSV2_CHECK(p.K <= 64 && p.n_group <= 256, "router: top_k {} or n_group {} too large", p.K, p.n_group);
  launch_pdl(route_kernel, dim3(p.T), dim3(128), size_t(p.E + p.n_group) * sizeof(float), s, p);
  DSV2_CUDA_LAUNCHED();
}

void moe_dispatch(const int32_t* ids, int T, int K, int E, const bf16* x, int H, const MoeDispatch& d, bf16* xp,
                  cudaStream_t s) {
  if (T == 0) return;
  const int n = T * K;
  if (n <= kDispatchOneBlockMax) {
    const size_t smem = (size_t(2) * E + size_t(n)) * sizeof(int);
    launch_pdl(moe_dispatch_block_kernel, dim3(1), dim3(kDispatchThreads), smem, s, ids, n, K, E, d.offsets,
               d.tile_info, d.max_tiles, d.tile_m, d.slot_of, d.row_token);
    DSV2_CUDA_LAUNCHED();
    if (xp) {
      launch_pdl(moe_copy_rows_kernel, dim3(n), dim3(128), 0, s, d.row_token, x, H, xp);
      DSV2_CUDA_LAUNCHED();
    }
    return;
  }
  DSV2_CUDA_CHECK(cudaMemsetAsync(d.counts, 0, size_t(E) * sizeof(int32_t), s));
  launch_pdl(moe_count_kernel, dim3(blocks_for(size_t(T) * K, 256)), dim3(256), 0, s, ids, T * K, d.counts);
  DSV2_CUDA_LAUNCHED();
  launch_pdl(moe_scan_kernel, dim3(1), dim3(kScanThreads), 0, s, d.counts, E, d.offsets, d.tile_info, d.max_tiles,
             d.tile_m);
  DSV2_CUDA_LAUNCHED();
  launch_pdl(moe_permute_kernel, dim3(T * K), dim3(xp ? 128 : 32), 0, s, ids, K, d.offsets, d.counts, d.slot_of,
             d.row_token, x, H, xp);
  DSV2_CUDA_LAUNCHED();
}

void moe_combine(const float* yp, const int32_t* slot_of, const float* weights, int T, int K, int H, float* y,
                 cudaStream_t s) {
  if (T == 0) return;
  launch_pdl(moe_combine_kernel, dim3(T), dim3(256), 0, s, yp, slot_of, weights, K, H, y);
  DSV2_CUDA_LAUNCHED();
}

// The candidate columns of a row: the first v_limit (when 0 < v_limit < V), else all V.
static int candidates(int V, int v_limit) { return v_limit > 0 && v_limit < V ? v_limit : V; }

// Measured on the H200 (engine, temperature 0.7 / top-p 0.95, one call, two rounds): batch 1 570.8 /
// 569.8 tok/s with the cluster form against 534.6 / 536.3 with one block per row, batch 64 6,344 /
// 6,346 against 6,322 / 6,322, batch 256 20,656 / 20,673 against 20,699 / 20,705.
static void launch_sample(const float* logits, int R, int V, int v_limit, float temperature, float top_p,
                          uint64_t seed, uint64_t step, const SampleRowParams* rp, int32_t* out, cudaStream_t s,
                          SampleForm form) {
  if (R == 0) return;
  static const bool one_block = std::getenv("DSV2_CUDA_SAMPLE_ONE_BLOCK") != nullptr;
  const int n = candidates(V, v_limit);
  const size_t smem = size_t((n + kSampleCluster - 1) / kSampleCluster + 3) / 4 * 4 * sizeof(float);
  if (form == SampleForm::automatic)
    form = !one_block && R <= kSampleClusterMaxRows ? SampleForm::cluster : SampleForm::one_block;
  if (form == SampleForm::cluster && device_is_hopper() && smem <= 200 * 1024) {
    raise_smem_limit<sample_cluster_kernel>(smem);
    launch_ex(sample_cluster_kernel, dim3(unsigned(R) * kSampleCluster), dim3(kSampleClusterThreads), smem, s,
              dim3(kSampleCluster, 1, 1), true, logits, V, n, temperature, top_p, seed, step, rp, out);
    DSV2_CUDA_LAUNCHED();
    return;
  }
  launch_pdl(sample_kernel, dim3(R), dim3(kSampleThreads), 0, s, const_cast<float*>(logits), V, n, temperature, top_p,
             seed, step, rp, out);
  DSV2_CUDA_LAUNCHED();
}

void sample_rows(const float* logits, int R, int V, int v_limit, float temperature, float top_p, uint64_t seed,
                 uint64_t step, int32_t* out, cudaStream_t s, SampleForm form) {
  launch_sample(logits, R, V, v_limit, temperature, top_p, seed, step, nullptr, out, s, form);
}

void sample_rows_each(const float* logits, int R, int V, int v_limit, const SampleRowParams* p, int32_t* out,
                      cudaStream_t s, SampleForm form) {
  launch_sample(logits, R, V, v_limit, 0.0f, 1.0f, 0, 0, p, out, s, form);
}

// argmax_rows: block (p, r) takes columns [p * chunk, (p + 1) * chunk) of row r's first n.
constexpr int kArgmaxThreads = 256, kArgmaxChunk = 1024;
inline int argmax_parts(int n) { return std::max(1, (n + kArgmaxChunk - 1) / kArgmaxChunk); }

__global__ void __launch_bounds__(kArgmaxThreads) argmax_part_kernel(const float* logits, int V, int n, float* pv,
                                                                     int* pi) {
  DSV2_TRACE(kTrSample);
  pdl_entry();
  __shared__ float red[kArgmaxThreads / 32];
  __shared__ int ired[kArgmaxThreads / 32];
  const int r = blockIdx.y, P = gridDim.x, tid = threadIdx.x;
  const float* l = logits + size_t(r) * V;
  const int c0 = blockIdx.x * kArgmaxChunk, c1 = min(n, c0 + kArgmaxChunk);
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  // ascending columns per thread: the first maximum is kept
  for (int i = c0 + tid; i < c1; i += kArgmaxThreads)
    if (l[i] > bv) {
      bv = l[i];
      bi = i;
    }
  block_argmax(bv, bi, red, ired);
  if (tid == 0) {
    pv[size_t(r) * P + blockIdx.x] = red[0];
    pi[size_t(r) * P + blockIdx.x] = ired[0];
  }
}

__global__ void argmax_final_kernel(const float* pv, const int* pi, int P, int32_t* out) {
  pdl_entry();
  const int r = blockIdx.x, lane = threadIdx.x;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int p = lane; p < P; p += 32) {
    const float v = pv[size_t(r) * P + p];
    const int i = pi[size_t(r) * P + p];
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  }
  warp_argmax(bv, bi);
  if (lane == 0) out[r] = bi;
}

size_t argmax_scratch_bytes(int R, int V) { return size_t(R) * argmax_parts(V) * (sizeof(float) + sizeof(int)); }

void argmax_rows(const float* logits, int R, int V, int v_limit, int32_t* out, void* scratch, cudaStream_t s) {
  if (R == 0) return;
  const int n = candidates(V, v_limit);
  const int P = argmax_parts(n);
  float* pv = static_cast<float*>(scratch);
  int* pi = reinterpret_cast<int*>(pv + size_t(R) * P);
  launch_pdl(argmax_part_kernel, dim3(unsigned(P), unsigned(R)), dim3(kArgmaxThreads), 0, s, logits, V, n, pv, pi);
  DSV2_CUDA_LAUNCHED();
  launch_pdl(argmax_final_kernel, dim3(unsigned(R)), dim3(32), 0, s, static_cast<const float*>(pv),
             static_cast<const int*>(pi), P, out);
  DSV2_CUDA_LAUNCHED();
}

void fill_random_bf16(bf16* p, size_t n, uint64_t seed, float scale, float offset, cudaStream_t s) {
  if (n == 0) return;
  fill_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(p, n, seed, scale, offset);
  DSV2_CUDA_LAUNCHED();
}

void fill_random_f32(float* p, size_t n, uint64_t seed, float scale, float offset, cudaStream_t s) {
  if (n == 0) return;
  fill_f32_kernel<<<blocks_for(n, 256), 256, 0, s>>>(p, n, seed, scale, offset);
  DSV2_CUDA_LAUNCHED();
}

DSV2_TRACE_BINDER(trace_bind_kernels)
void trace_bind_attention(const TraceBuf& b);
void trace_bind_moe_gemm(const TraceBuf& b);
void trace_bind_moe_tma(const TraceBuf& b);

void trace_bind(const TraceBuf& b) {
  trace_bind_kernels(b);
  trace_bind_attention(b);
  trace_bind_moe_gemm(b);
  trace_bind_moe_tma(b);
}

bool trace_compiled() {
#if defined(DSV2_CUDA_TRACE)
  return true;
#else
  return false;
#endif
}

const char* trace_kernel_name(uint32_t k) {
  static const char* const names[kTrKernels] = {
      "?",         "embed",    "norm",     "qkv_norm", "gemv_f32", "gemv_bf16", "uv_combine", "absorb",   "attention",
      "combine",   "router",   "moe_gu",   "moe_down", "tma_gu",   "tma_down",  "grouped",    "dispatch", "silu_mul",
      "sample",    "qkv_absorb"};
  return k < kTrKernels ? names[k] : "?";
}

}  // namespace dsv2::cuda
