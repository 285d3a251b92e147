#pragma once
// One-warp MoE routing of one token from its fp32 logits (shared by the router kernels and the
// one-token gate/up kernel that routes inside its blocks). Only for .cu files.
#include <cfloat>

#include "backend/cuda/ops.h"

namespace dsv2::cuda {

// Warp maximum of a float (no NaN) through the integer reduction: the bits mapped to an unsigned order.
__device__ __forceinline__ float warp_max_redux(float v) {
  const unsigned b = __float_as_uint(v);
  const unsigned m = __reduce_max_sync(0xffffffffu, (b & 0x80000000u) ? ~b : (b | 0x80000000u));
  return __uint_as_float((m & 0x80000000u) ? (m & 0x7fffffffu) : ~m);
}

// The same routing by one warp, without block barriers (E % 32 == 0, E <= 32 * kRouteWarpMaxPer, no
// group limit, K <= 32): each lane holds experts lane, lane + 32, ...; the softmax reductions and the
// K argmax rounds are warp shuffles; the selection is route_token's (highest score, lowest id), the
// weights equal route_token's up to the order of the softmax sum. Called by all 32 lanes of a warp.
constexpr int kRouteWarpMaxPer = 8;
__device__ inline void route_token_warp(const RouterParams& p, int t, const float* logits_row) {
  const int lane = threadIdx.x & 31, per = p.E / 32;
  float v[kRouteWarpMaxPer];
  float mx = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < kRouteWarpMaxPer; ++i) {
    v[i] = i < per ? logits_row[lane + 32 * i] : -FLT_MAX;
    mx = fmaxf(mx, v[i]);
  }
  mx = warp_max_redux(mx);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kRouteWarpMaxPer; ++i) {
    v[i] = i < per ? expf(v[i] - mx) : 0.f;
    sum += v[i];
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
  for (int i = 0; i < kRouteWarpMaxPer; ++i) v[i] = i < per ? v[i] / sum : -1.0f;  // -1: never selected
  int my_id = 0;
  float my_v = 0.f, tot = 0.f;
  for (int k = 0; k < p.K; ++k) {
    float bv = -1.0f;
    int bi = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kRouteWarpMaxPer; ++i)
      if (v[i] > bv) {  // ascending ids within the lane: the first maximum is kept
        bv = v[i];
        bi = lane + 32 * i;
      }
    // the warp's highest score, then the lowest id holding it (warp_argmax's choice, two reductions)
    const unsigned key = bv >= 0.0f ? __float_as_uint(bv) + 1u : 0u;  // scores >= 0 order as integers
    const unsigned top = __reduce_max_sync(0xffffffffu, key);
    bi = int(__reduce_min_sync(0xffffffffu, key == top ? unsigned(bi) : 0x7fffffffu));
    bv = top == 0u ? -1.0f : __uint_as_float(top - 1u);
#pragma unroll
    for (int i = 0; i < kRouteWarpMaxPer; ++i)
      if (lane + 32 * i == bi) v[i] = -1.0f;  // taken (scores are >= 0)
    if (lane == k) {
      my_id = bi;
      my_v = bv;
    }
    tot += bv;
  }
  const size_t row = size_t(t) * (p.ids_stride > 0 ? p.ids_stride : p.K);
  if (lane < p.K) {
    p.ids[row + lane] = my_id;
    p.weights[row + lane] = (p.K > 1 && p.norm_topk) ? my_v / (tot + 1e-20f) : my_v * p.scaling;
  }
  if (lane < p.n_extra) {
    p.ids[row + p.K + lane] = p.E + lane;
    p.weights[row + p.K + lane] = 1.0f;
  }
}

inline bool route_warp_supported(const RouterParams& p) {
  return p.E % 32 == 0 && p.E <= 32 * kRouteWarpMaxPer && p.K <= 32 && p.n_extra <= 32 &&
         !(p.group_limited && p.n_group > 1);
}

}  // namespace dsv2::cuda
