#pragma once
// Arithmetic shared by kernels whose results must agree bit for bit (each fused form is tested
// against the kernels it replaces): the same expressions in one place. Only for .cu files.
#include <cstdint>

#include "backend/cuda/ops.h"

namespace dsv2::cuda {

// x rounded to bf16, as a bf16 product would have stored it.
__device__ __forceinline__ float bf16r(float x) { return __bfloat162float(__float2bfloat16(x)); }

// One rope pair of rope_and_cache (reference section 3): adjacent values (a, b) in, de-interleaved out
// (lo to position i, hi to position half + i).
__device__ __forceinline__ void rope_pair(float a, float b, float cs, float sn, bf16& lo, bf16& hi) {
  lo = __float2bfloat16(a * cs - b * sn);
  hi = __float2bfloat16(b * cs + a * sn);
}

// 1 / RMS of the latent row c (kv_a_layernorm, eps 1e-6) from its sum of squares over n values.
__device__ __forceinline__ float kv_inv_rms(float ss, int n) { return rsqrtf(ss / float(n) + 1e-6f); }

// SiLU(g) * u, as silu_mul computes it from the bf16 g and u of a gate/up product.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// The same from fp32 sums, rounded to bf16 first as a bf16 product would have stored them.
__device__ __forceinline__ float silu_times_bf16(float g, float u) {
  return silu_times(bf16r(g), bf16r(u));
}

// acc += w . x over the 8 bf16 values of two 16-byte pieces (by value: one vector load each).
__device__ __forceinline__ void dot8(const uint4 w, const uint4 x, float& acc) {
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 wf = __bfloat1622float2(w2[q]), xf = __bfloat1622float2(x2[q]);
    acc += wf.x * xf.x + wf.y * xf.y;
  }
}

// acc[i] += s * w[i] over the 8 bf16 values of a 16-byte piece.
__device__ __forceinline__ void axpy8(float s, const uint4 w, float (&acc)[8]) {
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 wf = __bfloat1622float2(w2[q]);
    acc[2 * q] += s * wf.x;
    acc[2 * q + 1] += s * wf.y;
  }
}

// ag += g . x and au += u . x: a gate row and its up row against the same piece of x.
__device__ __forceinline__ void dot8_gate_up(const uint4 g, const uint4 u, const uint4 x, float& ag, float& au) {
  const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
  const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
  const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 xf = __bfloat1622float2(x2[q]), gf = __bfloat1622float2(g2[q]), uf = __bfloat1622float2(u2[q]);
    ag += gf.x * xf.x + gf.y * xf.y;
    au += uf.x * xf.x + uf.y * xf.y;
  }
}

// The merge weight of one attention split (row max m in log2 units, row sum l; l == 0: empty split)
// among up to 16 splits held by 16 consecutive lanes of the shuffle group `mask`: w = 2^(m - M)
// for the group's maximum M, and L = the group's sum of l * w.
__device__ __forceinline__ float split_weight16(float m, float l, unsigned mask, float& L) {
  float M = m;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(mask, M, o));  // within the 16 lanes
  const float w = l > 0.0f ? exp2f(m - M) : 0.0f;
  L = l * w;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) L += __shfl_xor_sync(mask, L, o);
  return w;
}

}  // namespace dsv2::cuda
