#pragma once
// Block-level staging of one activation row into shared memory, shared by the one-token kernels.
// Only for .cu files.
#include "backend/cuda/ops.h"

namespace dsv2::cuda {

// Barrier among the first nt threads of the block: __syncthreads() for bar == 0, else the named
// barrier bar (kernels whose other warps do different work, such as a copy-issuing warp).
__device__ __forceinline__ void stage_sync(int bar, int nt) {
  if (bar == 0)
    __syncthreads();
  else
    asm volatile("bar.sync %0, %1;\n" ::"r"(bar), "r"(nt) : "memory");
}

// The block's rsqrt(mean(x^2) + eps) for a row of length H from each thread's partial sum of squares
// (threads 0..nt-1; red holds one float per warp; barrier stage_sync(bar, nt)).
__device__ __forceinline__ float block_inv_rms(float ss, float* red, int H, float eps, int nt, int bar) {
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  stage_sync(bar, nt);
  ss = 0.f;
  for (int w = 0; w < (nt >> 5); ++w) ss += red[w];
  return rsqrtf(ss / float(H) + eps);
}
__device__ __forceinline__ float sum_squares4(const float4& v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }
// y[0:4] = bf16(g * (x * inv)): add_rmsnorm's operations for 4 values
__device__ __forceinline__ void store_norm4(bf16* y, const float4& x, const float4& g, float inv) {
  __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(y);
  d[0] = __floats2bfloat162_rn(g.x * (x.x * inv), g.y * (x.y * inv));
  d[1] = __floats2bfloat162_rn(g.z * (x.z * inv), g.w * (x.w * inv));
}

// y[k] = bf16(g[k] * x[k] * rsqrt(mean(x^2) + eps)) for the fp32 row x of length H (H % 4 == 0), by
// threads 0..nt-1 (nt a multiple of 32; the whole block by default) into shared memory (add_rmsnorm's
// bf16 values); red holds one float per warp. Ends with a barrier (stage_sync(bar, nt)).
// Rows of up to kStageRowPer float4 per thread are loaded into registers with every load of x and g
// issued together (one round trip: x comes from the kernel just before, after the PDL wait); longer
// rows are read twice in loops.
constexpr int kStageRowPer = 2;
__device__ __forceinline__ void stage_rmsnorm_bf16(const float* __restrict__ x, const float* __restrict__ g, int H,
                                                   float eps, bf16* y, float* red, int nt = 0, int bar = 0) {
  if (nt == 0) nt = blockDim.x;
  const int tid = threadIdx.x;
  float ss = 0.f;
  if (H <= nt * 4 * kStageRowPer) {
    float4 xv[kStageRowPer], gv[kStageRowPer];
    const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int j = 0; j < kStageRowPer; ++j) {
      const int k = (tid + j * nt) * 4;
      xv[j] = k < H ? *reinterpret_cast<const float4*>(x + k) : z;
      gv[j] = k < H ? *reinterpret_cast<const float4*>(g + k) : z;
    }
#pragma unroll
    for (int j = 0; j < kStageRowPer; ++j) ss += sum_squares4(xv[j]);  // the loop's order below
    const float inv = block_inv_rms(ss, red, H, eps, nt, bar);
#pragma unroll
    for (int j = 0; j < kStageRowPer; ++j) {
      const int k = (tid + j * nt) * 4;
      if (k >= H) break;
      store_norm4(y + k, xv[j], gv[j], inv);
    }
    stage_sync(bar, nt);
    return;
  }
#pragma unroll 4
  for (int k = tid * 4; k < H; k += nt * 4) ss += sum_squares4(*reinterpret_cast<const float4*>(x + k));
  const float inv = block_inv_rms(ss, red, H, eps, nt, bar);
#pragma unroll 4
  for (int k = tid * 4; k < H; k += nt * 4)
    store_norm4(y + k, *reinterpret_cast<const float4*>(x + k), *reinterpret_cast<const float4*>(g + k), inv);
  stage_sync(bar, nt);
}

}  // namespace dsv2::cuda
