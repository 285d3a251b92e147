#pragma once
// Programmatic dependent launch (Hopper): a kernel launched by launch_pdl may be scheduled while
// the previous kernel in the stream finishes; it must call pdl_entry() first, which waits until
// that kernel has completed and its writes are visible, then lets the next kernel launch early.
// The saving is the launch latency between consecutive decode kernels (also inside CUDA graphs).
// DSV2_CUDA_NO_PDL=1 launches normally. Only for .cu files.
#include <cstdlib>
#include <utility>

#include "backend/cuda/ops.h"

namespace dsv2::cuda {

// The two halves of pdl_entry, for kernels that issue independent loads (weights) before waiting.
// Anything read before pdl_wait() must not be written by the kernel just before this one; results
// of earlier kernels are complete, because that kernel itself waited for them.
#if defined(DSV2_CUDA_TRACE)
// Kernel timeline builds: when thread 0's PDL wait returned (trace.cuh records it).
__device__ __forceinline__ unsigned long long& trace_wait_stamp() {
  __shared__ unsigned long long t;
  return t;
}
#endif
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
#if defined(DSV2_CUDA_TRACE)
  if (threadIdx.x == 0 && threadIdx.y == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(trace_wait_stamp()));
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Starts moving the 128-byte line at p into L2 (constants a kernel needs right after its PDL wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}
// The lines of n floats at p, spread over the 32 lanes of one warp.
__device__ __forceinline__ void prefetch_l2_floats(const float* p, int n, int lane) {
  for (int i = lane * 32; i < n; i += 32 * 32) prefetch_l2(p + i);
}
__device__ __forceinline__ void pdl_entry() {
  pdl_wait();
  pdl_launch();
}

// L2 eviction policies. A decode step streams far more weights than the L2 holds, each read once:
// with evict_first the stream stops pushing out what is read again soon (the latent cache, the
// activations between kernels, small weights that can stay from one step to the next).
__device__ __forceinline__ unsigned long long l2_policy(bool evict_first) {
  unsigned long long p;
  if (evict_first)
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  else
    asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}

// The 16 bytes at ptr (read-only data) with L2 policy pol, or zeros without a memory access if !ok.
__device__ __forceinline__ uint4 ld_weight(const void* ptr, bool ok, unsigned long long pol) {
  uint4 r;
  asm volatile(
      "{\n\t.reg .pred q;\n\tsetp.ne.b32 q, %4, 0;\n\tmov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\t"
      "mov.b32 %3, 0;\n\t@q ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%5], %6;\n\t}\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "r"(int(ok)), "l"(ptr), "l"(pol));
  return r;
}

// Which kernels stream their weights with L2 evict_first (DSV2_CUDA_L2HINT=mask, default 11): 1 gemv1,
// 2 moe_rows and moe_rows_tma (one-token MoE), 8 the grouped expert products (moe_gemm). Measured on
// the H200 against mask 0 in one call: batch 1 450 -> 467 tok/s, 8: 1,191 -> 1,243, 64: 6,089 ->
// 6,312, 256: 19,693 -> 21,314; 32K context 377 -> 387. Later, without bit 2 alone: batch 1 569 -> 546.
inline int l2_hint_mask() {
  static const int m = [] {
    const char* v = std::getenv("DSV2_CUDA_L2HINT");
    return v ? std::atoi(v) : 11;
  }();
  return m;
}

// Whether the device in use (at the first call) is Hopper or newer: thread-block clusters, bulk
// copies on mbarriers.
inline bool device_is_hopper() {
  static const bool hopper = [] {
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
  }();
  return hopper;
}

// Raises Kernel's dynamic shared-memory limit to at least `bytes`, once per device (needed above 48 KB);
// max_carveout also asks for the largest shared-memory carveout of the SM's on-chip memory.
template <auto Kernel>
void raise_smem_limit(size_t bytes, bool max_carveout = false) {
  static size_t configured[64] = {};
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && configured[dev] >= bytes) return;
  DSV2_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  if (max_carveout)
    DSV2_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared)));
  if (dev < 64) configured[dev] = bytes;
}

inline bool pdl_enabled() {
  static const bool on = std::getenv("DSV2_CUDA_NO_PDL") == nullptr;
  return on;
}

// kernel<<<grid, block, smem, s>>>(args...) in thread-block clusters of `cluster` blocks (none for
// 1 x 1 x 1), with the programmatic-serialization attribute when pdl (and PDL is on, on a non-default
// stream).
template <typename... KArgs, typename... Args>
void launch_ex(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, dim3 cluster, bool pdl,
               Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n].val.clusterDim.z = cluster.z;
    ++n;
  }
  if (pdl && pdl_enabled() && s != nullptr) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  DSV2_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// kernel<<<grid, block, smem, s>>>(args...), with the programmatic-serialization attribute on a
// non-default stream.
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  launch_ex(kernel, grid, block, smem, s, dim3(1, 1, 1), true, std::forward<Args>(args)...);
}

}  // namespace dsv2::cuda
