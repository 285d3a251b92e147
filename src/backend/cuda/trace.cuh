#pragma once
// Kernel timeline of a decode step, for builds configured with -DDSV2_CUDA_TRACE=ON (elsewhere
// DSV2_TRACE expands to nothing). Thread 0 of every block of an instrumented kernel records the
// global timer when it starts and when it leaves, with its SM, into the buffer bound by trace_bind();
// the host writes the records of each pass to DSV2_CUDA_TRACE_FILE and bench/gpu/trace.py turns
// them into launches (first start, last end, blocks). Inside CUDA graphs with PDL this is the only
// view of what overlaps and where the gaps are (the profilers time kernels one at a time).
// Only for .cu files.
#include <cstdint>

#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"

namespace dsv2::cuda {

#if defined(DSV2_CUDA_TRACE)
// One buffer per translation unit (no relocatable device code): trace_bind() sets them all.
static __device__ TraceBuf g_trace;

// DSV2_TRACE_MARK(i) stamps of the block (thread 0's), i < kTraceMarks.
__device__ __forceinline__ unsigned long long* trace_mark_stamps() {
  __shared__ unsigned long long t[kTraceMarks];
  return t;
}

struct TraceScope {
  uint32_t kernel;
  uint64_t t0 = 0;
  __device__ static uint64_t now() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  }
  __device__ explicit TraceScope(uint32_t k) : kernel(k) {
    if (threadIdx.x == 0 && threadIdx.y == 0) {
      t0 = now();
      trace_wait_stamp() = 0;
      for (int i = 0; i < kTraceMarks; ++i) trace_mark_stamps()[i] = 0;
    }
  }
  __device__ ~TraceScope() {
    if (threadIdx.x != 0 || threadIdx.y != 0 || g_trace.rec == nullptr) return;
    const uint32_t i = atomicAdd(g_trace.n, 1u);
    if (i >= g_trace.cap) return;
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    TraceRec r;
    r.kernel = kernel;
    r.sm = sm;
    r.block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    r.blocks = gridDim.x * gridDim.y * gridDim.z;
    r.t0 = t0;
    r.t1 = now();
    r.tw = trace_wait_stamp();
    for (int i = 0; i < kTraceMarks; ++i) r.tm[i] = trace_mark_stamps()[i];
    g_trace.rec[i] = r;
  }
};
#define DSV2_TRACE(k) ::dsv2::cuda::TraceScope dsv2_trace_scope_(k)
// Stamps point i (< kTraceMarks) of thread 0's way through the kernel into its block's record.
#define DSV2_TRACE_MARK(i)                                                \
  do {                                                                    \
    if (threadIdx.x == 0 && threadIdx.y == 0)                             \
      ::dsv2::cuda::trace_mark_stamps()[i] = ::dsv2::cuda::TraceScope::now(); \
  } while (0)
// Defines this translation unit's binder (called by trace_bind in kernels.cu).
#define DSV2_TRACE_BINDER(name)                                          \
  void name(const TraceBuf& b) {                                         \
    DSV2_CUDA_CHECK(cudaMemcpyToSymbol(g_trace, &b, sizeof(TraceBuf)));  \
  }
#else
#define DSV2_TRACE(k)
#define DSV2_TRACE_MARK(i)
#define DSV2_TRACE_BINDER(name) \
  void name(const TraceBuf&) {}
#endif

}  // namespace dsv2::cuda
